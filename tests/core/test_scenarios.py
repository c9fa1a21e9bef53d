"""Scenario tests: small hand-made bar files whose trades are known in advance.

Bars are flat at 100 with a 1.0 range (ATR exactly 1.0, so the fixed stop sits 2.0 below the
fill); a scripted signal fires BUY/SELL on chosen bars. Each test runs the real backtest path
(Parquet file -> feed -> Strategy -> SimBroker -> run folder) and checks the run folder.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analyzers import load_run
from feeds.store import write_bars
from ratchet.common.config import Settings
from ratchet.engine.backtest import run_backtest
from ratchet.engine.datasets import load_datasets
from strategies.signals import MASignal
from tests.conftest import flat_bars

T0 = pd.Timestamp("2025-10-01 13:30", tz="UTC")


def at(i: int) -> pd.Timestamp:
    """Start time of bar ``i``."""
    return T0 + pd.Timedelta(minutes=i)


class ScriptedSignal:
    """BUY/SELL on given bar indices (for every symbol); NaN before ``warmup``."""

    name = "scripted"

    def __init__(self, script: dict[int, float], warmup: int = 20) -> None:
        self.script = script
        self.warmup = warmup

    def compute(self, bars: pd.DataFrame) -> pd.DataFrame:
        sig = np.zeros(len(bars))
        sig[: self.warmup] = np.nan
        for i, v in self.script.items():
            if i < len(bars):
                sig[i] = v
        return pd.DataFrame({"signal": sig}, index=bars.index)


def run(tmp_path: Path, frames: dict[str, pd.DataFrame], script: dict[int, float] | None = None,
        signal: object | None = None, session: object | None = None,
        **overrides: object):
    data = tmp_path / "bars" / "1Min"
    for sym, f in frames.items():
        write_bars(data / f"{sym}.parquet", f)
    settings = Settings(symbols=tuple(frames), **overrides)  # type: ignore[arg-type]
    datasets = load_datasets(data, tuple(frames), "1Min")
    sig = signal if signal is not None else ScriptedSignal(script or {})
    result = run_backtest(settings, datasets, out=tmp_path / "runs", signal=sig,  # type: ignore[arg-type]
                          session=session)  # type: ignore[arg-type]
    return result, load_run(result.run_dir)


def actions(run, action: str) -> pd.DataFrame:
    a = run.audit
    return a[(a["kind"] == "decision") & (a["action"] == action)]


def test_limit_entry_fills_and_signal_exit(tmp_path: Path) -> None:
    result, r = run(tmp_path, {"ACME": flat_bars(60)}, {40: 1.0, 50: -1.0})
    # Regression: the broker notifies with clones; an identity check left the filled entry
    # tracked as the symbol's working entry for the rest of the run.
    book = result.strategy.books["ACME"]
    assert book.entry is None and book.entry_placed is None
    assert len(r.trades) == 1
    t = r.trades.iloc[0]
    # Decided on bar 40's close, limit at 100.00 fills on bar 41; SELL on bar 50 -> bar 51 open.
    assert (t.entry_time, t.exit_time) == (at(41), at(51))
    assert (t.entry_price, t.exit_price, t.qty) == (100.0, 100.0, 100.0)  # 10% cap binds
    assert t.exit_reason == "signal" and t.bars_held == 10 and t.pnl == 0.0
    entry = r.orders[r.orders.purpose == "entry"].iloc[0]
    assert entry.type == "limit" and entry.limit_price == 100.0 and entry.status == "filled"
    assert entry.client_order_id == "ratchet-ACME-20251001T141000-entry"
    stop = r.orders[r.orders.purpose == "stop"].iloc[0]
    assert stop.stop_price == 98.0 and stop.status == "canceled"  # canceled by the exit
    assert t.exit_order_id == "ratchet-ACME-20251001T142000-exit"


def test_fixed_stop_exit(tmp_path: Path) -> None:
    f = flat_bars(60)
    f.loc[45, ["open", "low"]] = [99.0, 97.5]  # trades through the 98.00 stop
    _, r = run(tmp_path, {"ACME": f}, {40: 1.0})
    t = r.trades.iloc[0]
    assert t.exit_reason == "stop" and t.exit_time == at(45)
    assert t.exit_price == 98.0 and t.pnl == pytest.approx(-200.0)


def test_trailing_stop_exit_and_ratchet(tmp_path: Path) -> None:
    f = flat_bars(60)
    f.loc[42:44, ["open", "close"]] = 103.0
    f.loc[42:44, "high"] = 104.0
    f.loc[42:44, "low"] = 102.5
    f.loc[45:, ["open", "close", "high", "low"]] = [102.0, 102.0, 102.5, 101.5]
    f.loc[47, ["open", "low"]] = [100.5, 99.0]  # through 104 * 0.97 = 100.88
    _, r = run(tmp_path, {"ACME": f}, {40: 1.0})
    t = r.trades.iloc[0]
    assert t.exit_reason == "trail" and t.exit_time == at(47)
    assert t.exit_price == pytest.approx(100.5)  # gapped below the 100.88 stop: filled at open
    stops = r.orders[r.orders.purpose == "stop"]
    assert list(stops.stop_price) == sorted(stops.stop_price)  # it only ever moved up
    assert stops.stop_price.iloc[-1] == pytest.approx(100.88)
    assert len(actions(r, "raise_stop")) >= 1
    # prices.parquet carries the stop level while the position is open, never decreasing
    lv = r.prices.dropna(subset=["stop"]).stop.to_numpy()
    assert (np.diff(lv) >= 0).all() and lv.max() == pytest.approx(100.88)


def test_limit_timeout_then_market_fallback_after_partial_fill(tmp_path: Path) -> None:
    # 0.5% of 10,000 volume = 50 shares a bar: the 100-share limit fills 50 on bar 41,
    # times out at bar 41's close, and a market order buys the other 50 on bar 42.
    _, r = run(tmp_path, {"ACME": flat_bars(60)}, {40: 1.0}, volume_participation=0.005)
    entry = r.orders[r.orders.purpose == "entry"].iloc[0]
    assert entry.status == "canceled" and entry.filled_qty == 50.0
    fb = r.orders[r.orders.purpose == "fallback"].iloc[0]
    assert fb.type == "market" and fb.qty == 50.0 and fb.status == "filled"
    assert fb.client_order_id == "ratchet-ACME-20251001T141100-fallback"
    assert list(actions(r, "cancel_entry").reason) == ["limit_timeout"]
    # The stop always covers the whole position: 50 after the partial, 100 after the fallback.
    stops = r.orders[r.orders.purpose == "stop"]
    assert list(stops.qty[:2]) == [50.0, 100.0]
    assert len(r.trades) == 0 and r.stats["open_positions"] == {"ACME": 100.0}


def test_unfilled_limit_falls_back_to_market_for_the_full_size(tmp_path: Path) -> None:
    f = flat_bars(60)
    f.loc[41:, ["open", "high", "low", "close"]] = [101.0, 101.5, 100.5, 101.0]  # above 100
    _, r = run(tmp_path, {"ACME": f}, {40: 1.0})
    assert r.orders[r.orders.purpose == "entry"].iloc[0].filled_qty == 0.0
    fb = r.orders[r.orders.purpose == "fallback"].iloc[0]
    assert fb.qty == 100.0 and fb.avg_fill_price == 101.0


def test_market_entries_when_limit_orders_are_off(tmp_path: Path) -> None:
    _, r = run(tmp_path, {"ACME": flat_bars(60)}, {40: 1.0}, use_limit_orders=False)
    entry = r.orders[r.orders.purpose == "entry"].iloc[0]
    assert entry.type == "market" and entry.status == "filled"


def test_duplicate_order_guard(tmp_path: Path) -> None:
    f = flat_bars(60)
    f.loc[41:, ["open", "high", "low", "close"]] = [101.0, 101.5, 100.5, 101.0]
    _, r = run(tmp_path, {"ACME": f}, {40: 1.0, 41: 1.0, 42: 1.0}, limit_order_timeout=600)
    skipped = actions(r, "skip_buy")
    assert list(skipped.reason) == ["duplicate_order", "duplicate_order"]
    assert len(r.orders[r.orders.purpose == "entry"]) == 1


def test_no_second_entry_while_a_position_is_open(tmp_path: Path) -> None:
    _, r = run(tmp_path, {"ACME": flat_bars(60)}, {40: 1.0, 45: 1.0})
    assert list(actions(r, "skip_buy").reason) == ["position_open"]


def test_max_positions(tmp_path: Path) -> None:
    frames = {s: flat_bars(60) for s in ("AAA", "BBB", "CCC")}
    _, r = run(tmp_path, frames, {40: 1.0}, max_positions=2)
    entries = r.orders[r.orders.purpose == "entry"]
    assert sorted(entries.symbol) == ["AAA", "BBB"]
    skip = actions(r, "skip_buy")
    assert list(zip(skip.symbol, skip.reason, strict=True)) == [("CCC", "max_positions")]


def test_size_zero_is_recorded_and_no_order_sent(tmp_path: Path) -> None:
    _, r = run(tmp_path, {"ACME": flat_bars(60)}, {40: 1.0}, cash=50.0)
    assert r.orders.empty
    skip = actions(r, "skip_buy")
    assert list(skip.reason) == ["size_zero"]


def test_sell_signal_never_opens_a_short(tmp_path: Path) -> None:
    _, r = run(tmp_path, {"ACME": flat_bars(60)}, {40: -1.0})
    assert r.orders.empty
    assert list(actions(r, "skip_sell").reason) == ["no_position"]


def test_warmup_makes_no_decision(tmp_path: Path) -> None:
    """MA(10/30) on 25 bars never has a signal: the audit says insufficient data."""
    result, r = run(tmp_path, {"ACME": flat_bars(25)}, signal=MASignal(10, 30))
    assert r.orders.empty and r.trades.empty
    assert list(actions(r, "wait").reason) == ["insufficient_data"]
    assert not (r.audit["action"] == "ready").any()
    assert result.stats["trade_count"] == 0


def test_ma_crossover_buys_on_the_crossing_bar(tmp_path: Path) -> None:
    f = flat_bars(60)
    f.loc[35:, ["open", "close"]] = 101.0
    f.loc[35:, "high"] = 101.5
    f.loc[35:, "low"] = 100.5
    _, r = run(tmp_path, {"ACME": f}, signal=MASignal(10, 30))
    buys = actions(r, "buy")
    assert len(buys) == 1
    assert pd.Timestamp(buys.iloc[0]["time"]) == at(35)  # fast > slow first on bar 35
    assert r.orders.iloc[0].limit_price == 101.0


def test_run_folder_files_and_stats(tmp_path: Path) -> None:
    result, r = run(tmp_path, {"ACME": flat_bars(60)}, {40: 1.0, 50: -1.0})
    for name in ("config.json", "trades.parquet", "orders.parquet", "equity.parquet",
                 "prices.parquet", "audit.csv", "stats.json"):
        assert (result.run_dir / name).is_file(), name
    assert len(r.equity) == 60 and r.equity.value.iloc[-1] == pytest.approx(100_000.0)
    assert r.stats["trade_count"] == 1 and r.stats["win_rate"] == 0.0
    assert r.config["mode"] == "backtest" and r.config["settings"]["max_positions"] == 5
    assert math.isclose(r.equity.benchmark.iloc[-1], 100_000.0)
    held = r.equity[(r.equity.timestamp >= at(41)) & (r.equity.timestamp < at(51))]
    assert (held.positions == 1).all() and (held.exposure > 0.09).all()


def test_stop_placed_and_raised_on_the_same_bar_leaves_one_stop(tmp_path: Path) -> None:
    """Regression: BackBroker.cancel ignores orders submitted in the same step, so a stop
    placed on the fill bar and raised on that bar survived as a second resting stop."""
    f = flat_bars(60)
    f.loc[41, "high"] = 104.0  # the fill bar makes a new high: the stop is raised at once
    f.loc[41, "close"] = 103.0
    f.loc[46, ["open", "low"]] = [100.0, 95.0]
    _, r = run(tmp_path, {"ACME": f}, {40: 1.0})
    stops = r.orders[r.orders.purpose == "stop"]
    assert len(stops) == 2
    first, second = stops.iloc[0], stops.iloc[1]
    assert first.status == "canceled" and first.filled_qty == 0
    assert second.status == "filled" and second.stop_price == pytest.approx(100.88)
    assert r.trades.iloc[0].qty == 100 and r.trades.iloc[0].exit_reason == "trail"
    # the account ends flat: no second stop sold short
    assert r.stats.get("open_positions") in (None, {})
    assert r.equity.positions.iloc[-1] == 0


def _extended_from(i: int):
    return lambda when: "extended" if when >= at(i).to_pydatetime() else "regular"


def test_extended_hours_stop_is_enforced_by_the_strategy(tmp_path: Path) -> None:
    """Outside regular hours Alpaca's stop orders do not trigger: the strategy sells with an
    extended-hours limit when a bar breaches the stop."""
    f = flat_bars(60)
    f.loc[47, ["low", "close"]] = [97.0, 97.5]
    _, r = run(tmp_path, {"ACME": f}, {40: 1.0}, session=_extended_from(45),
               extended_hours=True)
    exits = r.orders[r.orders.purpose == "exit"]
    assert len(exits) == 1
    ex = exits.iloc[0]
    assert ex.type == "limit" and ex.limit_price == 97.5
    assert ex.client_order_id == "ratchet-ACME-20251001T141700-exit"
    t = r.trades.iloc[0]
    # a sell limit at 97.50 fills at the better next open (100.00)
    assert t.exit_reason == "stop" and t.exit_price == 100.0 and t.exit_time == at(48)


def test_extended_hours_entries_are_limits_without_fallback(tmp_path: Path) -> None:
    f = flat_bars(60)
    f.loc[46:, ["open", "high", "low", "close"]] = [101.0, 101.5, 100.5, 101.0]
    _, r = run(tmp_path, {"ACME": f}, {45: 1.0}, session=_extended_from(40),
               extended_hours=True, use_limit_orders=False)
    assert list(r.orders.purpose) == ["entry"]
    assert r.orders.iloc[0].type == "limit" and r.orders.iloc[0].status == "canceled"
    skip = actions(r, "skip_buy")
    assert list(skip.reason) == ["limit_timeout"]


def test_no_entries_in_extended_hours_unless_enabled(tmp_path: Path) -> None:
    """Without extended hours, bars outside the regular session are dropped before the
    indicators, as the paper path drops them: no decision, no order on them."""
    _, r = run(tmp_path, {"ACME": flat_bars(60)}, {45: 1.0}, session=_extended_from(40))
    assert r.orders.empty
    assert pd.to_datetime(r.audit["time"]).max() < at(40)
    assert r.equity.timestamp.max() == at(39)


def test_stop_raised_through_the_market_exits_at_once(tmp_path: Path) -> None:
    """Regression (paper): a bar that spikes to a new high and closes more than the trail
    below it raised the stop above the price; Alpaca refuses such a stop with 422 and the
    position sat unprotected. The strategy now sells at market, reason `trail`."""
    f = flat_bars(60)
    f.loc[43, ["high", "close"]] = [110.0, 105.0]  # trail 106.70 > close 105.00
    _, r = run(tmp_path, {"ACME": f}, {40: 1.0})
    t = r.trades.iloc[0]
    assert t.exit_reason == "trail" and t.exit_time == at(44) and t.exit_price == 100.0
    exits = r.orders[r.orders.purpose == "exit"]
    assert list(exits.type) == ["market"]
    stops = r.orders[r.orders.purpose == "stop"]
    assert (stops.stop_price < 105.0).all()  # no stop was ever placed through the market


def test_initial_stop_without_atr_is_trailing_only() -> None:
    from strategies.rules import initial_stop

    s = initial_stop(100.0, float("nan"), 2.0, 0.03)
    assert s.level == pytest.approx(97.0) and s.binding == "trail"


def test_run_folder_of_a_run_without_bars(tmp_path: Path) -> None:
    """Regression (paper): a session stopped before its first bar crashed the writer."""
    from analyzers.audit import Audit
    from analyzers.recorder import RunRecorder, write_run_folder

    rec = RunRecorder.__new__(RunRecorder)
    rec.orders, rec.equity, rec.stops, rec.bars = {}, [], [], {}
    stats = write_run_folder(tmp_path, rec, [], Audit(), Settings(symbols=("A",)),
                             {"mode": "paper"})
    assert stats["trade_count"] == 0
    r = load_run(tmp_path)
    assert r.prices.empty and r.equity.empty and r.trades.empty


def test_a_stop_cancelled_by_someone_else_is_placed_again(tmp_path: Path) -> None:
    """Review finding: a resting stop cancelled outside the strategy (Alpaca dashboard,
    corporate action) left the position without protection until the next signal."""
    import backtrader as bt

    from brokers.backtest import SimBroker

    class Meddler(SimBroker):
        done = False

        def next(self) -> None:
            super().next()
            for o in list(self.pending):
                bar = len(o.data)
                if not self.done and o.exectype == bt.Order.Stop and bar >= 44:
                    self.done = True
                    self.cancel(o)

    import brokers.backtest as bb

    orig = bb.SimBroker
    bb.SimBroker = Meddler
    try:
        _, r = run(tmp_path, {"ACME": flat_bars(60)}, {40: 1.0})
    finally:
        bb.SimBroker = orig
    stops = r.orders[r.orders.purpose == "stop"]
    assert len(stops) == 2 and stops.iloc[0].status == "canceled"
    assert stops.iloc[1].status == "accepted" and stops.iloc[1].qty == 100
    assert list(actions(r, "replace_lost_stop").reason) == ["canceled"]


def test_no_market_fallback_while_the_market_is_closed(tmp_path: Path) -> None:
    """Review finding: a timed-out entry sent a DAY market order while the market was closed,
    to fill on the next open's gap."""
    from ratchet.engine.backtest import run_backtest
    from ratchet.engine.datasets import load_datasets

    f = flat_bars(60)
    f.loc[41:, ["open", "high", "low", "close"]] = [101.0, 101.5, 100.5, 101.0]
    data = tmp_path / "bars" / "1Min"
    write_bars(data / "ACME.parquet", f)
    ds = load_datasets(data, ("ACME",), "1Min")
    import backtrader as bt  # noqa: F401

    from strategies import ratchet

    closed_after = at(40).to_pydatetime()
    orig_init = ratchet.RatchetStrategy.__init__

    def init(self) -> None:
        orig_init(self)
        self._market_open = lambda when: when <= closed_after

    ratchet.RatchetStrategy.__init__ = init
    try:
        res = run_backtest(Settings(symbols=("ACME",)), ds, out=tmp_path / "runs",
                           signal=ScriptedSignal({40: 1.0}))
    finally:
        ratchet.RatchetStrategy.__init__ = orig_init
    r = load_run(res.run_dir)
    assert list(r.orders.purpose) == ["entry"]
    skip = actions(r, "skip_buy")
    assert list(skip.reason) == ["market_closed"]
