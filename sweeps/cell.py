"""One sweep cell: the settings, the span, and the backtest that produces its stats.

Cells run the very code path of ``cli.py backtest``
(``ratchet.engine.backtest.run_backtest`` over ``load_datasets``), so a cell's stats equal a
backtest with those settings. ``run_backtest`` is called only through ``backtest_cell``
below: if its signature changes, this is the one place to fix.

On Dask, each worker keeps the bars it loaded in ``DataCachePlugin`` (a worker plugin,
registered once per sweep, set up again on a replacement worker) keyed by the data spec, so a
worker reads the Parquet files once and every later cell reuses the arrays; tasks carry only
the settings. The worker checks it read the same bars (fingerprint) and runs the same code
(code version) as the client, so a stale copy on another machine cannot mix in.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import resource
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
from distributed import WorkerPlugin

from analyzers.stats import daily_last
from feeds.store import BarArrays
from ratchet.common.config import Settings
from ratchet.common.errors import DataError

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
PLUGIN_NAME = "ratchet-sweep-data"
#: Test-only: seconds each cell sleeps on the worker (gives kill tests a window; no CPU).
DELAY_ENV = "SWEEPS_TEST_CELL_DELAY"
#: Sources whose change changes a cell's result (part of every cell's key).
CODE_GLOBS: tuple[str, ...] = (
    "strategies/*.py", "feeds/*.py", "brokers/backtest.py", "analyzers/recorder.py",
    "analyzers/stats.py", "analyzers/audit.py", "ratchet/common/*.py",
    "ratchet/engine/backtest.py", "ratchet/engine/datasets.py", "sweeps/cell.py",
)


def code_version() -> str:
    """A hash of the sources on the backtest's code path (changes invalidate cached cells)."""
    h = hashlib.sha256()
    for pattern in CODE_GLOBS:
        for path in sorted(REPO.glob(pattern)):
            h.update(path.relative_to(REPO).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def fingerprint(datasets: Mapping[str, BarArrays]) -> str:
    """A hash of the bars themselves (symbols, times, OHLCV), not of file names or mtimes."""
    h = hashlib.blake2b(digest_size=16)
    for sym in sorted(datasets):
        a = datasets[sym]
        h.update(sym.encode())
        for arr in (a.ts, a.open, a.high, a.low, a.close, a.volume):
            h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------- the adapter to backtest


def load_bars(data: str, symbols: tuple[str, ...] | None, interval: str, end_ns: int | None,
              drop_bad: bool) -> dict[str, BarArrays]:
    """The backtest's loader (same files, same resampling, same validation)."""
    from ratchet.engine.datasets import load_datasets

    end = None if end_ns is None else pd.Timestamp(end_ns, tz="UTC")
    return load_datasets(Path(data), symbols, interval, end, drop_bad)


@dataclass
class CellOutcome:
    """What one backtest of a cell produced."""

    stats: dict[str, Any]
    equity: pd.DataFrame
    frames: dict[str, Any] | None  # trades/orders/prices/audit rows, when asked for
    seconds: float


def backtest_cell(settings: Settings, datasets: dict[str, BarArrays], start: pd.Timestamp | None,
                  keep_frames: bool = False) -> CellOutcome:
    """``run_backtest`` without a run folder: the one call into the backtest (adapter)."""
    from analyzers.recorder import orders_table
    from ratchet.engine.backtest import run_backtest

    t0 = time.perf_counter()
    result = run_backtest(settings, datasets, out=None, start=start)
    stats = dict(result.stats)
    strategy = result.strategy
    # run_backtest adds open positions to stats.json when it writes a run folder; so do we.
    stats["open_positions"] = {
        d._name: float(strategy.getposition(d).size)
        for d in strategy.datas if strategy.getposition(d).size
    }
    equity = result.recorder.equity_frame()
    frames = None
    if keep_frames:
        frames = {
            "trades": result.trades,
            "orders": orders_table(result.recorder.orders).to_pandas(),
            "prices": result.recorder.prices_frame(),
            "audit": list(result.audit.rows),
        }
    return CellOutcome(stats, equity, frames, time.perf_counter() - t0)


# ---------------------------------------------------------------------------- data on workers


@dataclass(frozen=True)
class DataSpec:
    """Which bars a sweep reads; hashable, sent once per task (a few hundred bytes)."""

    data: str
    symbols: tuple[str, ...] | None
    interval: str
    end_ns: int | None
    drop_bad: bool
    fingerprint: str
    code_version: str


class DataCache:
    """Bars loaded once per data spec and kept for every later cell on this process."""

    def __init__(self) -> None:
        self._entries: dict[DataSpec, dict[str, BarArrays]] = {}
        self._lock = threading.Lock()
        self.loads = 0

    def get(self, spec: DataSpec, where: str = "this process") -> dict[str, BarArrays]:
        """The spec's bars, reading them on first use; checks fingerprint and code version."""
        with self._lock:
            hit = self._entries.get(spec)
            if hit is not None:
                return hit
            mine = code_version()
            if mine != spec.code_version:
                raise DataError(
                    f"worker {where} runs other ratchet code ({mine} vs the client's "
                    f"{spec.code_version}): install the same version on every worker"
                )
            try:
                datasets = load_bars(spec.data, spec.symbols, spec.interval, spec.end_ns,
                                     spec.drop_bad)
            except DataError as exc:
                raise DataError(f"worker {where} cannot read the data: {exc}") from None
            except OSError as exc:
                raise DataError(f"worker {where} cannot read {spec.data}: {exc} (the data path "
                                "must be readable by every worker)") from None
            got = fingerprint(datasets)
            if got != spec.fingerprint:
                raise DataError(
                    f"worker {where} reads other bars at {spec.data} than the client "
                    f"(fingerprint {got[:10]} vs {spec.fingerprint[:10]}): give every worker "
                    "the same files"
                )
            self._entries = {spec: datasets}  # one sweep at a time: drop older data sets
            self.loads += 1
            logger.info("%s loaded %s (%d symbols)", where, spec.data, len(datasets))
            return datasets


class DataCachePlugin(WorkerPlugin):
    """Gives each Dask worker its own ``DataCache`` (set up again on a replacement worker)."""

    name = PLUGIN_NAME

    def setup(self, worker: Any) -> None:
        """Called by Dask on each worker."""
        self.cache = DataCache()
        # Import the backtest stack now, not inside the first cell (keeps ETAs honest).
        import ratchet.engine.backtest  # noqa: F401 - imported for its side effect (see above)


# -------------------------------------------------------------------------------- the task


@dataclass(frozen=True)
class CellTask:
    """One backtest to run: a cell on a span (walk-forward window or the whole period)."""

    key: str
    phase: str  # "cell" (plain sweep), "train" or "test" (walk-forward)
    window: int  # -1 outside walk-forward
    settings: Settings
    params: dict[str, Any]
    start_ns: int | None  # trading starts here (earlier bars warm up)
    end_ns: int | None  # bars at or after this are not seen (exclusive)
    keep_frames: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def cell_key(data_fp: str, code: str, settings: Settings, phase: str, start_ns: int | None,
             end_ns: int | None) -> str:
    """hash(data fingerprint + settings + code version + span): the row's identity."""
    blob = json.dumps({"data": data_fp, "code": code, "settings": settings.to_dict(),
                       "phase": "test" if phase == "test" else "run",
                       "span": [start_ns, end_ns]}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def slice_until(datasets: dict[str, BarArrays], end_ns: int | None) -> dict[str, BarArrays]:
    """Every symbol's bars before ``end_ns`` (views): later bars cannot leak into the run."""
    if end_ns is None:
        return datasets
    out = {}
    for sym, arrays in datasets.items():
        n = int(np.searchsorted(arrays.ts, end_ns, side="left"))
        out[sym] = arrays.slice(0, n)
    return out


def daily_moments(equity: pd.DataFrame) -> dict[str, float | None]:
    """Daily Sharpe (not annualised), skewness, kurtosis and day count (deflated Sharpe)."""
    if equity.empty:
        return {"daily_sharpe": None, "skew": None, "kurtosis": None, "n_days": 0}
    ts_ns = pd.DatetimeIndex(equity["timestamp"]).as_unit("ns").asi8
    daily = daily_last(ts_ns, equity["value"].to_numpy(np.float64))
    rets = daily[1:] / daily[:-1] - 1.0
    rets = rets[np.isfinite(rets)]
    n = len(rets)
    sd = float(rets.std(ddof=1)) if n >= 2 else 0.0
    if n < 2 or sd == 0 or not math.isfinite(sd):
        return {"daily_sharpe": None, "skew": None, "kurtosis": None, "n_days": n}
    z = (rets - rets.mean()) / rets.std(ddof=0) if rets.std(ddof=0) > 0 else rets * 0
    return {"daily_sharpe": float(rets.mean() / sd), "skew": float(np.mean(z ** 3)),
            "kurtosis": float(np.mean(z ** 4)), "n_days": n}


def execute(task: CellTask, datasets: dict[str, BarArrays], where: str = "local") -> dict[str, Any]:
    """Run one task on loaded bars and return its result row (plus frames for test runs)."""
    t0, c0 = time.perf_counter(), time.process_time()
    view = slice_until(datasets, task.end_ns)
    empty = [s for s, a in view.items() if len(a) == 0]
    if empty:
        raise DataError(f"{', '.join(empty)}: no bars before "
                        f"{pd.Timestamp(task.end_ns, tz='UTC')} (check --start/--walk-forward)")
    start = None if task.start_ns is None else pd.Timestamp(task.start_ns, tz="UTC")
    out = backtest_cell(task.settings, view, start, keep_frames=task.keep_frames)
    row: dict[str, Any] = {
        "key": task.key, "phase": task.phase, "window": task.window,
        "params": json.dumps(task.params, sort_keys=True),
        **{f"p_{k}": v for k, v in task.params.items()},
        "stats": json.dumps(out.stats, sort_keys=True, default=str),
        **{k: v for k, v in out.stats.items() if not isinstance(v, dict)},
        **daily_moments(out.equity),
        "settings": json.dumps(task.settings.to_dict(), sort_keys=True),
        "worker": where, "pid": os.getpid(),
        "seconds": round(time.perf_counter() - t0, 4),
        "cpu_seconds": round(time.process_time() - c0, 4),  # whole process, all threads
        "backtest_seconds": round(out.seconds, 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "computed_at": datetime.now(UTC).isoformat(),
        **task.extra,
    }
    if out.frames is not None:
        row["_frames"] = {**out.frames, "equity": out.equity}
    return row


def run_cell_task(spec: DataSpec, task: CellTask) -> dict[str, Any]:
    """The Dask task: bars from this worker's cache, then ``execute``."""
    from distributed import get_worker

    worker = get_worker()
    plugin = cast(DataCachePlugin, worker.plugins[PLUGIN_NAME])  # registered by the runner
    datasets = plugin.cache.get(spec, worker.address)
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    if delay > 0:
        time.sleep(delay)
    return execute(task, datasets, worker.address)
