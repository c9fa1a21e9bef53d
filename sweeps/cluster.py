"""Where a sweep runs: a local Dask cluster sized to the machine, or an existing scheduler."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from ratchet.common.errors import ConfigError
from sweeps.cell import DataCachePlugin


def machine_workers() -> int:
    """Worker processes for the local cluster: one per CPU this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def open_client(scheduler: str | None = None, workers: int | None = None,
                connect_timeout: float = 10.0) -> Iterator[Any]:
    """A Dask client with the data-cache plugin registered on every (future) worker.

    ``scheduler=None`` starts a local cluster of ``workers`` single-threaded processes
    (default: one per CPU), dashboard off, closed on exit; otherwise connects to it.
    """
    from distributed import Client, LocalCluster

    cluster = None
    if scheduler:
        if "://" not in scheduler:
            scheduler = f"tcp://{scheduler}"
        try:
            client = Client(scheduler, timeout=connect_timeout, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ConfigError(
                f"cannot reach the Dask scheduler at {scheduler} within {connect_timeout:g}s "
                f"({exc.__class__.__name__}): start it with `dask scheduler`, check the address, "
                "or drop --scheduler to use a local cluster"
            ) from None
    else:
        n = workers or machine_workers()
        # Processes, one thread each: the backtest is pure Python (the GIL) and cells are
        # independent. No dashboard: nothing listens beyond the cluster's own loopback ports.
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               dashboard_address=None, host="127.0.0.1",
                               silence_logs=logging.ERROR)
        client = Client(cluster, set_as_default=False)
    try:
        client.register_plugin(DataCachePlugin(), name=DataCachePlugin.name)
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
