"""The report's pure parts (returns, breakdowns, formatting, time axis) and page layout rules,
on synthetic run folders built to the contract."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analyzers import load_run
from analyzers.report import (
    build_report,
    exit_breakdown,
    format_stat,
    monthly_table,
    most_traded,
    period_returns,
    resolve_run_path,
    write_report,
)
from analyzers.report_assets.charts import TimeAxis, drawdown, shared_time_axis
from ratchet.common.errors import DataError
from tests.report.conftest import images, text_of

UTC = "UTC"


def equity_frame(times: list[str], values: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"timestamp": pd.to_datetime(times, utc=True), "value": values,
                         "benchmark": values})


def test_period_returns_chain_from_the_first_value_in_new_york_months() -> None:
    # 2025-01-01 02:00 UTC is still Dec 31 in New York: it belongs to December 2024.
    eq = equity_frame(["2024-12-31 15:00", "2025-01-01 02:00", "2025-01-15 15:00",
                       "2025-02-10 15:00", "2025-02-28 20:00"], [100, 110, 121, 121, 133.1])
    monthly = period_returns(eq, "M")
    assert [str(p) for p in monthly.index] == ["2024-12", "2025-01", "2025-02"]
    assert monthly.to_numpy() == pytest.approx([0.10, 0.10, 0.10])
    # Compounded months give the whole run's return.
    assert np.prod(1 + monthly.to_numpy()) - 1 == pytest.approx(133.1 / 100 - 1)
    table = monthly_table(eq)
    assert list(table.index) == [2024, 2025]
    assert table.loc[2024, 12] == pytest.approx(0.10)
    assert table.loc[2025, "Year"] == pytest.approx(1.21 - 1)
    assert np.isnan(table.loc[2025, 3])


def test_monthly_table_of_a_one_month_run_is_a_single_cell(make_run: Callable[..., Path]
                                                           ) -> None:
    run = load_run(make_run())
    table = monthly_table(run.equity)
    assert table.drop(columns="Year").notna().sum().sum() == 1
    assert table.loc[2025, 10] == pytest.approx(run.equity["value"].iloc[-1]
                                                / run.equity["value"].iloc[0] - 1)


def test_drawdown_is_the_fall_from_the_running_peak() -> None:
    dd = drawdown(pd.Series([100.0, 120.0, 90.0, 130.0, 117.0]))
    assert dd.to_numpy() == pytest.approx([0, 0, -0.25, 0, -0.1])


def test_exit_breakdown_counts_and_sums_per_reason(make_run: Callable[..., Path]) -> None:
    run = load_run(make_run())
    table = exit_breakdown(run.trades)
    assert dict(table["trades"]) == {"signal": 2, "stop": 1, "trail": 1}
    assert table["pnl"].sum() == pytest.approx(run.trades["pnl"].sum())
    signal = run.trades[run.trades["exit_reason"] == "signal"]
    assert table.loc["signal", "win_rate"] == pytest.approx((signal["pnl"] > 0).mean())
    assert table.loc["signal", "avg_bars"] == pytest.approx(signal["bars_held"].mean())
    assert exit_breakdown(run.trades.iloc[0:0]).empty


@pytest.mark.parametrize(("key", "value", "text"), [
    ("total_return", 0.01234, "+1.23%"),
    ("total_return", -0.5, "-50.00%"),
    ("win_rate", 0.325, "32.5%"),
    ("max_drawdown", -0.0391, "-3.91%"),
    ("max_drawdown", 0.0391, "-3.91%"),  # either sign convention reads as a loss
    ("max_drawdown", 0.0, "0.00%"),
    ("max_drawdown_duration_days", 5.016, "5.0 days"),
    ("max_drawdown_duration_days", 0.42, "10 h 05 min"),
    ("max_drawdown_duration_days", 0.01, "14 min"),
    ("sharpe", 2.95731, "2.96"),
    ("profit_factor", None, "—"),
    ("profit_factor", float("nan"), "—"),
    ("profit_factor", float("inf"), "∞"),
    ("end_value", 100313.5092, "$100,313.51"),
    ("trade_count", 1234, "1,234"),
    ("start", "2025-10-01T13:30:00+00:00", "2025-10-01 09:30"),
    ("start", "2025-01-02T05:00:00+00:00", "2025-01-02"),  # a daily bar: NY midnight
    ("open_positions", {"ACME": 92.0}, "ACME 92"),
    ("open_positions", {}, "none"),
    ("something_new", 7, "7"),
])
def test_format_stat(key: str, value: object, text: str) -> None:
    assert format_stat(key, value) == text


def test_time_axis_compresses_closed_hours_and_labels_new_york_time() -> None:
    ts = pd.to_datetime(["2025-10-01 19:58", "2025-10-01 19:59", "2025-10-02 13:30",
                         "2025-10-02 13:31"], utc=True)
    axis = TimeAxis(ts)
    assert axis.intraday
    # The night between two sessions takes one step, like any other bar.
    assert list(axis.positions(ts)) == [0, 1, 2, 3]
    # A time between bars belongs to the bar that started before it.
    assert list(axis.positions(pd.to_datetime(["2025-10-02 13:30:30"], utc=True))) == [2]
    pos, labels = axis.ticks()
    # Ticks sit on the first bar of each hour, labelled with its New York time and the date
    # when the day changes: 19:58 UTC is 15:58 EDT, 13:30 UTC next day is 09:30 EDT.
    assert labels == ["Oct 01\n15:58", "Oct 02\n09:30"]
    assert pos == [0, 2]
    assert "New York" in axis.label


def test_shared_axis_only_for_runs_that_overlap_in_time() -> None:
    minutes = equity_frame(["2025-10-01 13:30", "2025-10-01 13:31"], [1.0, 1.0])
    later = equity_frame(["2025-11-03 14:30", "2025-11-03 14:31"], [1.0, 1.0])
    daily = equity_frame(["2025-09-30 04:00", "2025-10-01 04:00", "2025-10-02 04:00"],
                         [1.0, 1.0, 1.0])
    assert shared_time_axis([minutes, minutes.copy()]) is not None
    assert shared_time_axis([minutes, later]) is None
    assert shared_time_axis([minutes, daily]) is None


def test_most_traded_symbols_are_plotted_and_the_choice_is_said(
        make_run: Callable[..., Path]) -> None:
    run = load_run(make_run(symbols=("ACME", "BOLT", "CRUX"), trades=(
        ("CRUX", 10, 20, "signal"), ("CRUX", 30, 40, "stop"), ("CRUX", 50, 60, "trail"),
        ("BOLT", 10, 20, "signal"), ("BOLT", 30, 40, "stop"), ("ACME", 10, 20, "signal"))))
    assert most_traded(run, 2) == ["CRUX", "BOLT"]
    text = text_of(build_report([run], max_symbols=2))
    assert "The 2 most traded of 3 traded symbols" in text


def test_long_daily_run_gets_a_year_by_month_heatmap_and_no_daily_chart(
        make_run: Callable[..., Path]) -> None:
    run = load_run(make_run(interval="1Day", start="2022-01-01", end="2024-06-30", trades=(
        ("ACME", 10, 60, "signal"), ("BOLT", 100, 180, "trail"), ("ACME", 300, 350, "stop"))))
    page = build_report([run])
    heat = page[page.index('<table class="heat">'):]
    heat = heat[: heat.index("</table>")]
    assert re.findall(r"<tr><td>(\d{4})</td>", heat) == ["2022", "2023", "2024"]
    text = text_of(page)
    assert "Daily returns" not in text
    assert "2022-01-03 → 2024-06-28" in text  # daily bars are shown as dates


def test_runs_of_different_periods_compare_without_crashing(
        make_run: Callable[..., Path]) -> None:
    a = load_run(make_run("20251124-120000-backtest"))
    b = load_run(make_run("20251124-120001-paper", mode="paper", interval="1Day",
                          start="2024-01-01", end="2024-12-31", trades=()))
    page = build_report([a, b])
    text = text_of(page)
    assert "Comparison of 2 runs" in text
    assert "paper" in text and "No trades in this run" in text
    assert len(images(page)) == 1 + 7 + 3  # the year-long daily run has no daily chart


def test_empty_equity_still_renders(make_run: Callable[..., Path]) -> None:
    run = load_run(make_run(trades=()))
    run.equity = run.equity.iloc[0:0]
    text = text_of(build_report([run]))
    assert "No equity rows" in text and "No trades" in text


def test_an_output_folder_resolves_to_its_newest_run(make_run: Callable[..., Path]) -> None:
    make_run("20251124-120000-backtest")
    newest = make_run("20251124-130000-backtest")
    assert resolve_run_path(newest.parent) == newest
    assert resolve_run_path(newest) == newest


def test_write_report_defaults_into_the_first_run_folder(make_run: Callable[..., Path]) -> None:
    first, second = make_run("20251124-120000-backtest"), make_run("20251124-130000-backtest")
    out = write_report([first, second])
    assert out == first / "report.html"
    assert out.stat().st_mode & 0o044  # readable by others: a report is meant to be shared
    assert "Comparison of 2 runs" in out.read_text(encoding="utf-8")


def test_no_runs_is_a_data_error() -> None:
    with pytest.raises(DataError, match="at least one run folder"):
        write_report([])
