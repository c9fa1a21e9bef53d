"""The backtest benchmark compares like with like: the stock-Backtrader script trades the same.

``benchmarks/bench_backtest.py`` times ``cli.py backtest`` against
``benchmarks/stock_backtrader.py`` (plain Backtrader: ``PandasData``, ``bt.indicators``,
``BackBroker``, its own Strategy). Its ratio means something only if both make the same
decisions, so this runs both on a small real Parquet data set and demands identical trades
and end value. No timing here: speed is measured by the benchmark command only.
"""

from __future__ import annotations

import math
from pathlib import Path

import backtrader as bt
import numpy as np
import pandas as pd
import pytest

from benchmarks.bench_backtest import trade_rows_from_dicts
from benchmarks.stock_backtrader import SpecCross, run
from feeds.store import write_bars
from feeds.synthetic import random_walk_bars, trading_minutes
from ratchet.common.config import Settings
from ratchet.engine.backtest import run_backtest
from ratchet.engine.datasets import load_datasets
from strategies.signals import MASignal

SYMBOLS = ("ACME", "BOLT", "CRUX")


@pytest.fixture(scope="module")
def bars_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 symbols x 3 NYSE sessions of synthetic 1-minute bars in the store layout."""
    folder = tmp_path_factory.mktemp("bars") / "1Min"
    folder.mkdir()
    index = trading_minutes("2025-09-02", "2025-09-04")
    for i, sym in enumerate(SYMBOLS):
        frame = random_walk_bars(index, seed=100 + i, start_price=40.0 + 25.0 * i)
        write_bars(folder / f"{sym}.parquet", frame)
    return folder


@pytest.mark.parametrize("use_limit_orders", [True, False])
def test_stock_script_makes_the_same_trades(bars_dir: Path, use_limit_orders: bool) -> None:
    settings = Settings(symbols=SYMBOLS, use_limit_orders=use_limit_orders, max_positions=2)
    ours = run_backtest(settings, load_datasets(bars_dir, None, "1Min"), out=None)
    stock, value, _ = run(bars_dir, limit_orders=use_limit_orders, max_positions=2)

    trades = ours.strategy.closed_trades
    assert len(trades) >= 10  # enough trading to compare anything
    reasons = {t["exit_reason"] for t in trades}
    assert "signal" in reasons and reasons & {"stop", "trail"}
    assert trade_rows_from_dicts(stock.trades) == trade_rows_from_dicts(trades)
    assert value == pytest.approx(ours.stats["end_value"], abs=1e-6)


class _Capture(bt.Strategy):
    """Builds SpecCross and bt's CrossOver over SMA(close, 3) / SMA(close, 6)."""

    def __init__(self) -> None:
        fast = bt.indicators.SMA(self.data.close, period=3)
        slow = bt.indicators.SMA(self.data.close, period=6)
        self.spec = SpecCross(fast, slow)
        self.stock = bt.indicators.CrossOver(fast, slow)


def _line(indicator: bt.Indicator) -> np.ndarray:
    return np.asarray(indicator.lines[0].array, dtype=np.float64)


def test_spec_crossover_matches_ma_signal_on_exact_ties() -> None:
    """SPEC's rule, not ``bt.indicators.CrossOver``: after a bar where fast == slow exactly
    (flat prices), a move up is a BUY. CrossOver remembers the last non-zero difference and
    misses it, so the stock version would trade differently if it used CrossOver."""
    closes = [100.0] * 10 + [101.0, 102.0, 101.0, 100.0, 99.0, 98.0] + [98.0] * 8 \
        + [97.0, 98.0, 99.0, 100.0]
    index = pd.date_range("2025-09-02 13:30", periods=len(closes), freq="1min", tz="UTC")
    frame = pd.DataFrame({"open": closes, "high": closes, "low": closes, "close": closes,
                          "volume": 1000.0}, index=index)
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(bt.feeds.PandasData(dataname=frame))
    cerebro.addstrategy(_Capture)
    strat = cerebro.run()[0]

    expected = MASignal(3, 6).compute(frame.reset_index(names="timestamp"))["signal"]
    got = _line(strat.spec)
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert (math.isnan(g) and math.isnan(e)) or g == e, f"bar {i}: {g} != {e}"
    buys = np.flatnonzero(got == 1.0)
    assert 10 in buys  # fast == slow on bar 9, fast > slow on bar 10
    assert _line(strat.stock)[10] == 0.0  # why the benchmark does not use CrossOver
