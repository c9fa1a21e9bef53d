"""``run_backtest``: the Strategy over bars in memory, leaving a run folder (or not).

The one backtest path: ``cli.py backtest``, sweeps, ML validation, tests and benchmarks all
call it, so a change here is a change everywhere a backtest runs.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from analyzers.audit import Audit
from analyzers.recorder import RunRecorder, run_stats, trades_frame, write_run_folder
from analyzers.runfolder import make_run_dir
from brokers.backtest import make_backtest_broker
from feeds.btfeed import ArrayCerebro, make_feed
from feeds.sessions import codes_from_callable, session_codes, tradeable
from feeds.store import BarArrays
from ratchet.common.arrow import micros
from ratchet.common.config import Settings
from ratchet.common.errors import DataError
from strategies.ratchet import RatchetStrategy
from strategies.rules import atr_wilder
from strategies.signals import Signal, make_signal

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class BacktestResult:
    """What a backtest produced. ``trades`` (a DataFrame) is built on first use, so a run
    that does not ask for it never imports pandas."""

    run_dir: Path | None
    stats: dict[str, Any]
    strategy: RatchetStrategy
    audit: Audit
    recorder: RunRecorder
    seconds: float
    bars: int
    _trades: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def trades(self) -> pd.DataFrame:
        """Closed trades (``analyzers.recorder.TRADE_COLUMNS``)."""
        if self._trades is None:
            self._trades = trades_frame(self.strategy.closed_trades)
        return self._trades


def prepare_lines(
    arrays: BarArrays, signal: Signal, atr_period: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``signal`` and ``atr`` lines of one symbol, in one vectorised pass each."""
    from_close = getattr(signal, "compute_close", None)
    if from_close is not None:  # the MA signal needs the closes only: no DataFrame
        sig = np.asarray(from_close(arrays.close)[0], dtype=np.float64)
    else:
        sig = signal.compute(arrays.to_frame())["signal"].to_numpy(np.float64)
    atr = atr_wilder(arrays.high, arrays.low, arrays.close, atr_period)
    return sig, atr


def _ns(when: datetime) -> int:
    """Epoch nanoseconds of a datetime or pandas Timestamp (naive = UTC)."""
    value = getattr(when, "value", None)  # pd.Timestamp: exact nanoseconds
    return int(value) if value is not None else micros(when) * 1000


def run_backtest(
    settings: Settings,
    datasets: dict[str, BarArrays],
    out: Path | None = Path("runs"),
    start: datetime | None = None,
    signal: Signal | None = None,
    progress: Callable[[int], None] | None = None,
    meta: dict[str, Any] | None = None,
    session: Callable[[datetime], str] | None = None,
) -> BacktestResult:
    """Run the Strategy over ``datasets`` (bars up to the end date) and write a run folder.

    Bars before ``start`` only warm up the indicators; trading starts at ``start``.
    ``out=None`` writes nothing (tests, ML validation). Sessions come from the NYSE calendar
    (``feeds.sessions``): bars outside regular hours (outside the extended session with
    ``settings.extended_hours``) are dropped before the indicators, as in paper; ``session``
    (bar time -> ``regular``/``extended``/``closed``) replaces the calendar (tests).
    """
    t0 = time.perf_counter()
    signal = signal or make_signal(settings)
    cerebro = ArrayCerebro(stdstats=False, preload=True, runonce=True)
    cerebro.setbroker(make_backtest_broker(settings, session))
    start_ns = None if start is None else _ns(start)
    total_bars = 0
    for sym, arrays in datasets.items():
        codes = session_codes(arrays.ts, settings.bar_seconds, settings.extended_hours) \
            if session is None else codes_from_callable(arrays.ts, session)
        keep = tradeable(codes, settings.extended_hours)
        if not keep.all():
            # Outside the session: not traded, and not fed to the indicators (as in paper).
            arrays, codes = arrays.take(keep), codes[keep]
            if len(arrays) == 0:
                hours = "extended or regular" if settings.extended_hours else "regular"
                raise DataError(f"{sym}: no bars in {hours} trading hours (NYSE calendar); "
                                "check the data's timestamps (UTC bar starts) or "
                                "--extended-hours")
        sig, atr = prepare_lines(arrays, signal, settings.atr_period)
        if start_ns is not None:
            first = int(np.searchsorted(arrays.ts, start_ns))
            arrays, sig, atr = arrays.slice(first, len(arrays)), sig[first:], atr[first:]
            codes = codes[first:]
        if len(arrays) == 0:
            raise DataError(f"{sym}: no bars on or after {start:%Y-%m-%d %H:%M} UTC "
                            "(check --start/--end)")
        total_bars += len(arrays)
        cerebro.adddata(make_feed(arrays, sig, atr, codes))
    audit = Audit()
    cerebro.addstrategy(RatchetStrategy, settings=settings, audit=audit, session=session)
    cerebro.addanalyzer(RunRecorder, _name="recorder", progress=progress)
    # The bar loop allocates many short-lived objects and almost no reference cycles (a
    # 20 x 21 run leaves ~100 unreachable objects): the cyclic collector's passes over the
    # run's growing heap cost ~5-15% of its CPU. It runs again once the run is over.
    collect = gc.isenabled()
    gc.disable()
    try:
        strategy = cerebro.run()[0]
    finally:
        if collect:
            gc.enable()
    recorder: RunRecorder = strategy.analyzers.recorder
    elapsed = time.perf_counter() - t0
    open_positions = {
        d._name: float(strategy.getposition(d).size)
        for d in strategy.datas if strategy.getposition(d).size
    }
    run_dir = None
    meta = dict(meta or {})
    meta.update(mode="backtest", symbols=list(datasets), interval=settings.bar_interval,
                signal=repr(signal), start_value=settings.cash, open_positions=open_positions,
                seconds=round(elapsed, 3), symbol_bars=total_bars)
    if out is not None:
        run_dir = make_run_dir(Path(out), "backtest")
        stats = write_run_folder(run_dir, recorder, strategy.closed_trades, audit, settings, meta)
    else:
        stats = run_stats(recorder, strategy.closed_trades, settings.cash,
                          list(settings.symbols))
    return BacktestResult(run_dir, stats, strategy, audit, recorder, elapsed, total_bars)
