"""Regressions found on real market bars (issue 10): staggered symbols, sessions, rounding,
the cash-sized fallback, per-fill exit reasons and the store root for ``backtest --data``.

Each test runs the real backtest path on small hand-made Parquet files (see
``tests/core/test_scenarios.py`` for the bar conventions: flat at 100, ATR exactly 1.0).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from ratchet.common.errors import ConfigError, DataError
from tests.conftest import REPO, flat_bars, run_cli
from tests.core.test_scenarios import actions, at, run


def _fills(r, symbol: str, purpose: str = "entry") -> list[str]:
    rows = r.orders[(r.orders.symbol == symbol) & (r.orders.purpose == purpose)]
    out: list[str] = []
    for fills in rows.fills:
        out += [f[0] for f in json.loads(fills)]
    return out


def test_a_late_listing_does_not_mute_the_other_symbols(tmp_path: Path) -> None:
    """Regression (issue 10.1): without ``prenext`` Backtrader called ``next`` only once
    every feed had a bar, so ACME's BUY on bar 25 was lost while BOLT (listed at bar 30)
    had no bar yet."""
    frames = {"ACME": flat_bars(60), "BOLT": flat_bars(30, start=str(at(30))[:16])}
    _, r = run(tmp_path, frames, {25: 1.0})
    buys = actions(r, "buy")
    assert list(zip(buys.symbol, pd.to_datetime(buys.time), strict=True)) == [
        ("ACME", at(25)), ("BOLT", at(55))]
    assert r.equity.timestamp.iloc[0] == at(0)  # the run is recorded from the first bar


def test_an_order_never_fills_on_the_old_bar_of_a_symbol_without_a_new_one(
        tmp_path: Path) -> None:
    """Regression (issue 10.1): BackBroker tried a working order on its symbol's CURRENT bar
    even when that symbol had no new bar in the step (its data ended, or a gap), so a limit
    placed on ACME's last bar filled on that same stale bar in the next step. Now an order
    fills only on a newer bar of its own symbol: never after the data ends, and after a gap
    on the first bar after it."""
    ended = flat_bars(30)  # ACME ends at bar 29; BOLT goes on
    gap = pd.concat([flat_bars(60).iloc[:30], flat_bars(60).iloc[40:]], ignore_index=True)
    _, r = run(tmp_path, {"ACME": ended, "BOLT": flat_bars(60), "CRUX": gap},
               {29: 1.0})
    assert _fills(r, "ACME") == []  # no bar after the decision: nothing can fill
    assert _fills(r, "ACME", "fallback") == []
    assert [pd.Timestamp(t) for t in _fills(r, "CRUX")] == [at(40)]  # first bar after the gap
    assert [pd.Timestamp(t) for t in _fills(r, "BOLT")] == [at(30)]


def test_a_symbol_without_bars_in_the_session_is_refused(tmp_path: Path) -> None:
    """Issue 10.1: a symbol with no bar the Strategy could see is a one-line error naming it
    (here every bar lies in the night, outside regular and extended hours)."""
    night = flat_bars(60, start="2025-10-02 03:00")
    with pytest.raises(DataError, match=r"^NITE: no bars in regular trading hours"):
        run(tmp_path, {"ACME": flat_bars(60), "NITE": night}, {40: 1.0})
    with pytest.raises(DataError, match=r"^NONE: no bars in .*NONE\.parquet$"):
        run(tmp_path / "empty", {"ACME": flat_bars(60), "NONE": flat_bars(0)}, {40: 1.0})


def test_no_new_entry_on_the_last_bar_of_the_session(tmp_path: Path) -> None:
    """Regression (issue 10.2): the backtest sent an entry decided on the session's last bar
    (it could only fill at the next open, on the overnight gap); paper refuses new orders on
    that bar (MarketClock.market_open), so the backtest now does too."""
    _, r = run(tmp_path, {"ACME": flat_bars(390)}, {389: 1.0})  # 09:30..15:59 New York
    assert r.orders.empty
    assert list(actions(r, "skip_buy").reason) == ["market_closed"]
    # With extended hours the 15:59 bar is still the regular session's last (paper: Alpaca's
    # clock says closed at 16:00); the 16:00 bar may send an extended-hours limit.
    _, rx = run(tmp_path / "x", {"ACME": flat_bars(392)}, {389: 1.0, 390: 1.0},
                extended_hours=True)
    assert list(actions(rx, "skip_buy").reason) == ["market_closed"]
    assert list(rx.orders.client_order_id) == ["ratchet-ACME-20251001T200000-entry"]
    assert rx.orders.type.iloc[0] == "limit"


def test_extended_hours_bars_are_dropped_and_never_traded_by_default(tmp_path: Path) -> None:
    """Regression (issue 10.2): bars at 07:28 New York produced entries and fills. Now bars
    outside regular hours are dropped (not traded, not fed to the indicators), as in paper;
    with ``extended_hours`` they are kept and only extended-hours limits fill on them."""
    pre = flat_bars(120, start="2025-10-01 11:30")  # 07:30..09:29 New York: pre-market
    f = pd.concat([pre, flat_bars(60)], ignore_index=True)
    _, r = run(tmp_path, {"ACME": f}, {25: 1.0, 150: 1.0})
    created = pd.to_datetime(r.orders.created_time)
    assert len(r.orders) and (created >= at(0)).all()
    assert r.equity.timestamp.min() == at(0)
    _, rx = run(tmp_path / "x", {"ACME": f}, {25: 1.0}, extended_hours=True)
    entry = rx.orders[rx.orders.purpose == "entry"].iloc[0]
    assert entry.type == "limit" and pd.Timestamp(entry.created_time) < at(0)
    stops = rx.orders[rx.orders.purpose == "stop"]
    # the resting stop sleeps in extended hours: placed, but never filled before the open
    assert all(pd.Timestamp(f[0]) >= at(0) for s in stops.fills for f in json.loads(s))


def test_fallback_is_sized_to_the_cash_when_it_is_sent(tmp_path: Path) -> None:
    """Regression (issue 10.5): the fallback bought the whole remainder sized at the limit
    price; the market had moved up, the broker refused it for margin and the entry vanished
    (YHOO 2001-04-20). Now it buys what the cash affords at the last close."""
    f = flat_bars(60)
    f.loc[41:, ["open", "high", "low", "close"]] = [101.0, 101.5, 100.5, 101.0]  # above 100
    _, r = run(tmp_path, {"ACME": f}, {40: 1.0}, cash=10_000.0, max_position_pct=1.0,
               risk_per_trade_pct=0.2)
    assert r.orders[r.orders.purpose == "entry"].iloc[0].qty == 100
    fb = r.orders[r.orders.purpose == "fallback"].iloc[0]
    assert fb.status == "filled" and fb.qty == 99 and fb.avg_fill_price == 101.0
    assert "margin" not in set(r.orders.status)


def test_fallback_the_cash_cannot_buy_is_an_audit_row(tmp_path: Path) -> None:
    """Regression (issue 10.5): fewer than one affordable share left no trace."""
    f = flat_bars(60)
    f.loc[41:, ["open", "high", "low", "close"]] = [101.0, 101.5, 100.5, 101.0]
    _, r = run(tmp_path, {"ACME": f}, {40: 1.0}, cash=100.0, max_position_pct=1.0,
               risk_per_trade_pct=0.2)
    assert list(r.orders.purpose) == ["entry"]
    skip = actions(r, "skip_buy")
    assert list(skip.reason) == ["size_zero"] and pd.Timestamp(skip.time.iloc[0]) == at(41)


def test_a_mixed_exit_records_the_reason_of_each_fill(tmp_path: Path) -> None:
    """Regression (issue 10.6): the stop sold 60 shares (volume-capped), a SELL signal the
    other 40, and the trade said ``signal`` only. Each exit fill now carries its reason
    (audit fill rows, the trade's ``exit_reasons``); ``exit_reason`` is the reason that
    sold the most shares."""
    f = flat_bars(60)
    f.loc[46, ["low", "volume"]] = [97.5, 120.0]  # through the 98.00 stop; 50% of 120 = 60
    _, r = run(tmp_path, {"ACME": f}, {40: 1.0, 46: -1.0}, volume_participation=0.5)
    t = r.trades.iloc[0]
    assert t.qty == 100 and t.exit_reasons == "stop:60,signal:40" and t.exit_reason == "stop"
    fills = r.audit[(r.audit.kind == "fill") & (r.audit.action == "sell")]
    assert [json.loads(d)["exit_reason"] for d in fills.detail] == ["stop", "signal"]


def test_store_root_picks_the_interval(tmp_path: Path) -> None:
    """Regression (issue 10.8): ``backtest --data data/bars`` read the interval folders
    ``1Day`` and ``1Min`` as symbols, printed nonsense and exited 0."""
    from ratchet.engine.datasets import pick_store_interval

    root = REPO / "data" / "bars"
    assert pick_store_interval(root, "1Day") == root / "1Day"
    assert pick_store_interval(root, "5Min") == root / "1Min"  # resampled from 1-minute bars
    assert pick_store_interval(root / "1Min", None) == root / "1Min"
    with pytest.raises(ConfigError, match="several intervals .1Day, 1Min.: pick one"):
        pick_store_interval(root, None)
    bad = run_cli("backtest", "--data", str(root), "--out", str(tmp_path))
    assert bad.returncode == 2 and "--interval" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    ok = run_cli("backtest", "--data", str(root), "--interval", "1Day", "--symbols", "ACME",
                 "--no-progress", "--out", str(tmp_path))
    assert ok.returncode == 0, ok.stderr
    assert "Backtesting ACME (1Day bars)" in ok.stdout
