"""Report points of issue 15: log scale for wide ranges, no loser as "Best trade", a price panel
for positions still open at the end, New York time stated once, old run folders' settings."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from analyzers import load_run
from analyzers.report import build_report
from analyzers.report_assets import charts
from tests.report.conftest import text_of

ONE_TRADE = (("ACME", 40, 150, "signal"),)


def _page(run_dir: Path, **kw: Any) -> str:
    return text_of(build_report([load_run(run_dir)], **kw))


def test_wide_range_gets_a_log_scale(make_run: Callable[..., Path]) -> None:
    """Regression: ORCL over 20 years, +2,146% buy-and-hold vs +2.6% strategy: a flat line."""
    run_dir = make_run(trades=ONE_TRADE)
    eq = pd.read_parquet(run_dir / "equity.parquet")
    assert not charts.wide_range(eq)  # a normal run keeps its linear axis
    eq["benchmark"] = eq["value"].iloc[0] * pd.Series(range(1, len(eq) + 1)) * 22 / len(eq)
    eq.to_parquet(run_dir / "equity.parquet")
    assert charts.wide_range(eq)
    assert "Log scale (the values span more than 3x)" in _page(run_dir, max_symbols=1)


def test_a_losing_trade_is_never_the_best_trade(make_run: Callable[..., Path]) -> None:
    run_dir = make_run()
    trades = pd.read_parquet(run_dir / "trades.parquet")
    trades["pnl"] = -trades["pnl"].abs() - 1.0
    trades.to_parquet(run_dir / "trades.parquet")
    text = _page(run_dir, max_symbols=1)
    assert "Best trade" not in text and "Worst trade" in text
    assert "Log scale" not in text


def test_open_position_at_the_end_gets_its_price_panel(make_run: Callable[..., Path],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = make_run(trades=ONE_TRADE)
    stats = json.loads((run_dir / "stats.json").read_text())
    stats["open_positions"] = {"BOLT": 50.0}
    (run_dir / "stats.json").write_text(json.dumps(stats))
    plotted: list[list[str]] = []
    real = charts.trades_chart
    monkeypatch.setattr(charts, "trades_chart",
                        lambda prices, trades, symbols, axis: plotted.append(list(symbols))
                        or real(prices, trades, symbols, axis))
    text = _page(run_dir, max_symbols=1)
    assert plotted == [["ACME", "BOLT"]]
    assert "its panel shows the price and the stop): BOLT 50 shares" in text
    # one time zone, named once in the header, not after every time
    assert "all times are New York time (America/New_York)" in text
    assert " EDT" not in text and " EST" not in text and "UTC" not in text
    # a run folder written before the public setting names still shows its settings right
    assert "2% risk per trade" in text and "10% max position" in text
    assert "3% trailing stop" in text and "MA 10/30 crossover" in text


def test_per_symbol_stats_get_a_table_not_a_python_repr(make_run: Callable[..., Path]) -> None:
    """Regression: after per-symbol rows and buy-and-hold joined stats.json (issue 15) the
    report's "All statistics" showed them raw: `buy_hold_return -0.0015113749621521455` and
    the `symbols` dict as a Python repr."""
    run_dir = make_run(trades=ONE_TRADE)
    stats = json.loads((run_dir / "stats.json").read_text())
    stats.update(buy_hold_return=-0.0015113749621521455, buy_hold_traded_return=0.0125,
                 symbols={"ACME": {"trades": 1, "win_rate": 1.0, "pnl": 437.4572,
                                   "exposure": 0.48051, "buy_hold_return": 0.0448}})
    (run_dir / "stats.json").write_text(json.dumps(stats))
    page = _page(run_dir, max_symbols=1)
    assert "{'" not in page and "0.0015113749621521455" not in page
    assert "Buy and hold, all symbols -0.15%" in page
    assert "Buy and hold, traded symbols +1.25%" in page
    assert "Per symbol" in page and "ACME 1 100.0% +437.46 48.1% +4.48%" in page


def test_the_run_name_is_in_the_report(make_run: Callable[..., Path]) -> None:
    """Regression: `backtest --name "slower MAs"` labelled the run for `cli.py runs` only;
    the README says the report shows it too, and it did not."""
    run_dir = make_run(trades=ONE_TRADE)
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, "name": "slower MAs"}))
    page = build_report([load_run(run_dir)], max_symbols=1)
    assert "<title>Run 20251124-120000-backtest · slower MAs" in page
    assert "slower MAs" in text_of(page[page.index('class="run-head"'):])
