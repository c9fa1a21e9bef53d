"""The same strategy written the stock-Backtrader way: the baseline of ``bench_backtest.py``.

What a user would write without ratchet's feed: one ``bt.feeds.PandasData`` per symbol from a
DataFrame read with ``pd.read_parquet``, and the signal and ATR as ``bt.indicators`` built in
the Strategy's ``__init__`` (computed by Backtrader in its ``runonce`` pass). The trading rules
are NOT re-implemented: ``StockRatchetStrategy`` is ``strategies.ratchet.RatchetStrategy``
unchanged, except that the feed's ``signal`` / ``atr`` lines are these indicators' output
lines instead of the precomputed lines of ``feeds.btfeed.ArrayData``. The broker
(``SimBroker``), the analyzer (``RunRecorder``), the audit and the Cerebro flags are those of
``commands.backtest``.

Crossover: ``bt.indicators.CrossOver`` remembers the last NON-ZERO difference of the two
averages, so after a bar where fast == slow exactly it can miss a cross that SPEC counts
(SPEC: BUY when fast[-1] <= slow[-1] and fast[0] > slow[0]). ``SpecCrossOver`` writes SPEC's
comparison with Backtrader line operations instead, which matches
``strategies.signals.crossover`` bar for bar.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import backtrader as bt
import pandas as pd

from analyzers.audit import Audit
from analyzers.recorder import RunRecorder
from brokers.backtest import make_backtest_broker
from common.config import Settings
from strategies.ratchet import RatchetStrategy
from strategies.rules import Reason

logger = logging.getLogger(__name__)


class SpecCrossOver(bt.Indicator):
    """+1 when ``data0`` crosses above ``data1`` on this bar, -1 below, else 0 (SPEC's rule).

    ``up = data0[-1] <= data1[-1] and data0[0] > data1[0]``; ``down`` mirrors it. Minimum
    period: that of the slower input plus one (the previous bar).
    """

    lines = ("cross",)
    _mindatas = 2

    def __init__(self) -> None:
        a, b = self.data0, self.data1
        up = bt.And(a(-1) <= b(-1), a > b)
        down = bt.And(a(-1) >= b(-1), a < b)
        self.lines.cross = up - down


class StockRatchetStrategy(RatchetStrategy):
    """``RatchetStrategy`` whose ``signal`` and ``atr`` come from ``bt.indicators``.

    For every data feed it builds ``SMA(close, fast)``, ``SMA(close, slow)``, their
    ``SpecCrossOver`` and ``ATR(period)``, and hands their output lines to the feed as the
    ``signal`` and ``atr`` lines the rule code reads (``data.lines.signal``, and through
    Backtrader's attribute lookup ``data.signal``). Backtrader holds ``next`` back
    until every indicator has its minimum period, which is the bar where ``ArrayData``'s
    precomputed lines stop being NaN; ``prenext`` writes the same "insufficient data" audit
    row the parent writes during its warm-up, so both versions leave the same audit trail.
    """

    def __init__(self) -> None:
        super().__init__()
        cfg = self.cfg
        for data in self.datas:
            fast = bt.indicators.SMA(data.close, period=cfg.fast_period)
            slow = bt.indicators.SMA(data.close, period=cfg.slow_period)
            cross = SpecCrossOver(fast, slow)
            atr = bt.indicators.ATR(data, period=cfg.atr_period)
            # The indicators' line buffers, computed and advanced by Backtrader in step with
            # the feed, stand in for ArrayData's precomputed ``signal`` and ``atr`` lines.
            data.lines.signal = cross.lines.cross
            data.lines.atr = atr.lines.atr

    def prenext(self) -> None:
        for data in self.datas:
            if len(data) == 1:
                self.audit.record(self.bar_time(data), "decision", data._name, "wait",
                                  Reason.INSUFFICIENT_DATA)


def read_frames(paths: Mapping[str, Path]) -> dict[str, pd.DataFrame]:
    """``pd.read_parquet`` each symbol's file, indexed by ``timestamp`` (what PandasData reads)."""
    return {sym: pd.read_parquet(path).set_index("timestamp") for sym, path in paths.items()}


def build_stock_cerebro(
    settings: Settings, frames: Mapping[str, pd.DataFrame], audit: Audit
) -> bt.Cerebro:
    """A Cerebro set up exactly like ``commands.backtest.run_backtest`` but with stock feeds.

    Same flags (``stdstats=False``, preload, runonce), broker (``make_backtest_broker``),
    analyzer (``RunRecorder`` as ``recorder``) and audit; ``PandasData`` feeds and
    ``StockRatchetStrategy`` instead of ``ArrayData`` and ``RatchetStrategy``.
    """
    cerebro = bt.Cerebro(stdstats=False, preload=True, runonce=True)
    cerebro.setbroker(make_backtest_broker(settings))
    for sym, frame in frames.items():
        cerebro.adddata(bt.feeds.PandasData(dataname=frame, name=sym))
    cerebro.addstrategy(StockRatchetStrategy, settings=settings, audit=audit)
    cerebro.addanalyzer(RunRecorder, _name="recorder")
    return cerebro


def run_stock_backtest(
    settings: Settings, paths: Mapping[str, Path], audit: Audit | None = None
) -> StockRatchetStrategy:
    """Read ``paths`` (symbol -> Parquet file) with pandas and run the stock version.

    Returns the finished strategy (``.closed_trades``, ``.analyzers.recorder``).
    """
    audit = audit if audit is not None else Audit()
    cerebro = build_stock_cerebro(settings, read_frames(paths), audit)
    return cerebro.run()[0]
