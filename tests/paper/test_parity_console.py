"""The parity summary reads like the rest of the CLI: New York time, no '-0.00'."""

from __future__ import annotations

from typing import Any

from analyzers.parity import console_lines


def _report(**kw: Any) -> dict[str, Any]:
    r: dict[str, Any] = {
        "run": "20261130-114258-paper", "mode": "paper", "symbols": ["ACME", "BOLT"],
        "bars": 180, "start": "2025-10-03T13:30:00+00:00", "end": "2025-10-03T13:59:00+00:00",
        "identical": 3, "differences": [], "live_decisions": 3, "backtest_decisions": 3,
        "pct_identical": 100.0, "settings_changed": {}, "first_difference": None, "causes": {},
        "totals": {"fills_compared": 4, "slippage_dollars": 0.0, "slippage_bps": 0.0,
                   "slippage_cents_mean": 0.0, "decision_to_fill_s_median": 60.0,
                   "unmatched_fills": 0},
        "pnl": {"live_pnl": 29.19, "backtest_pnl": 29.190000001, "difference": -1e-9,
                "explained_by_slippage": None},
    }
    r.update(kw)
    return r


def test_parity_summary_in_new_york_time_without_negative_zero() -> None:
    """Regression: `cli.py parity` printed its span in UTC ('2025-10-03T13:30 .. 13:59 UTC')
    where every other command shows New York time, and a P&L difference of -1e-9 as
    'difference -0.00' (reads as a loss)."""
    text = "\n".join(console_lines(_report()))
    assert "2025-10-03 09:30 -> 2025-10-03 09:59 New York time" in text
    assert "UTC" not in text
    assert "-0.00" not in text and "difference +0.00" in text
    first = {"time": "2025-10-03T13:41:00+00:00", "symbol": "ACME",
             "live": None, "backtest": {"side": "buy", "qty": 10, "reason": "signal"},
             "cause": "missed bar", "detail": "x"}
    text = "\n".join(console_lines(_report(first_difference=first, causes={"missed bar": 1})))
    assert "First difference: 2025-10-03 09:41 ACME" in text
