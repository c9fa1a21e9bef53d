"""Helpers for sweep tests: tiny bar sets, a Dask cluster started as a user starts one."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from feeds.store import write_bars
from feeds.synthetic import random_walk_bars, trading_minutes
from tests.conftest import wait_for

DASK = str(Path(sys.executable).with_name("dask"))
#: Two sessions of the bundled bars: a cell is a ~0.1 s backtest.
SMALL = ("--symbols", "ACME,BOLT", "--start", "2025-10-06", "--end", "2025-10-07")


def write_tiny_bars(root: Path, start: str = "2025-10-06", end: str = "2025-10-09",
                    symbols: tuple[str, ...] = ("AAA", "BBB")) -> Path:
    """A couple of symbols, a few sessions of seeded 1-minute bars: ``root/1Min``."""
    folder = root / "1Min"
    idx = trading_minutes(start, end)
    for i, sym in enumerate(symbols):
        write_bars(folder / f"{sym}.parquet", random_walk_bars(idx, seed=11 + i, regime_len=120,
                                                               bar_vol=0.0015))
    return folder


def stop(proc: subprocess.Popen) -> None:
    """Terminate a process we started (its whole session), then reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture
def dask_cluster(tmp_path: Path) -> Iterator[dict]:
    """``dask scheduler`` + two ``dask worker`` processes on 127.0.0.1, dashboards off.

    Workers sleep 0.4 s per cell (test hook, no CPU) so a test can kill one mid-sweep.
    """
    sched_file = tmp_path / "scheduler.json"
    env = {**os.environ, "SWEEPS_TEST_CELL_DELAY": "0.4", "PYTHONUNBUFFERED": "1"}
    procs: list[subprocess.Popen] = []
    logs = tmp_path / "dask-logs"
    logs.mkdir()
    try:
        procs.append(subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
             "--scheduler-file", str(sched_file)],
            stdout=subprocess.DEVNULL, stderr=(logs / "scheduler.log").open("w"),
            start_new_session=True, env=env))
        wait_for(lambda: sched_file.exists() and sched_file.stat().st_size > 0, 60,
                 "the scheduler file")
        address = json.loads(sched_file.read_text())["address"]
        workers = []
        for i in range(2):
            p = subprocess.Popen(
                [DASK, "worker", "--scheduler-file", str(sched_file), "--nworkers", "1",
                 "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1",
                 "--name", f"w{i}"],
                stdout=subprocess.DEVNULL, stderr=(logs / f"worker{i}.log").open("w"),
                start_new_session=True, env=env)
            procs.append(p)
            workers.append(p)
        yield {"address": address, "workers": workers, "logs": logs}
    finally:
        for p in reversed(procs):
            stop(p)


@pytest.fixture(scope="module")
def local_client() -> Iterator[object]:
    """One local cluster (a single worker process) shared by a module's in-process tests."""
    from sweeps.cluster import open_client

    with open_client(workers=1) as client:
        yield client
