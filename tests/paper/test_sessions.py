"""Whole paper sessions against the loopback Alpaca (lockstep replay, real alpaca-py).

The replayed session must decide exactly as a backtest of the same bars; faults (dropped or
silent streams, lost responses) must not change that, nor create a duplicate order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from analyzers import load_run
from brokers.alpaca.credentials import Credentials
from brokers.alpaca_sim.testing import SimServer
from ratchet.common.config import Settings
from ratchet.engine.backtest import run_backtest
from ratchet.engine.datasets import load_datasets
from ratchet.engine.paper_run import PaperResult
from tests.paper.conftest import BARS, REPLAY_START, SYMBOLS, decisions, session


def backtest(minutes: int, symbols: tuple[str, ...] = SYMBOLS,
             settings: Settings | None = None) -> Any:
    """The backtest of the same bars: warm-up from the data's start, trading from the replay
    start, ``minutes`` bars."""
    settings = settings or Settings(symbols=symbols)
    start = pd.Timestamp(REPLAY_START)
    end = start + pd.Timedelta(minutes=minutes - 1)
    datasets = load_datasets(BARS / "1Min", symbols, "1Min", end=end)
    return run_backtest(settings, datasets, out=None, start=start)


def bt_decisions(result: Any) -> list[tuple[Any, ...]]:
    audit = pd.DataFrame(result.audit.rows, columns=["time", "kind", "symbol", "action",
                                                     "reason", "qty", "price",
                                                     "client_order_id", "detail"])
    return decisions(audit)


def paper_decisions(result: PaperResult) -> list[tuple[Any, ...]]:
    assert result.run_dir is not None
    return decisions(load_run(result.run_dir).audit)


def assert_state_equals_broker(result: PaperResult, sim: SimServer) -> None:
    state = json.loads(result.state_path.read_text())
    with sim.market.lock:
        broker_pos = {s: float(p.qty) for s, p in sim.market.positions.items() if p.qty}
        open_stops = {o.client_order_id: float(o.qty) - float(o.filled_qty)
                      for o in sim.market.orders.values()
                      if o.status in ("new", "accepted", "partially_filled", "held")
                      and o.type == "stop"}
    saved_pos = {s: p["qty"] for s, p in state["positions"].items()}
    assert saved_pos == broker_pos
    assert {v["cid"]: v["qty"] for v in state["stops"].values()} == open_stops


def test_replayed_session_decides_like_a_backtest(sim: SimServer, creds: Credentials,
                                                  tmp_path: Path) -> None:
    """Same decisions (symbol, side, size, bar time), orders and trades as the backtest."""
    minutes = 150
    result = session(sim, creds, tmp_path, minutes)
    expected = backtest(minutes)
    assert result.steps == minutes
    got = paper_decisions(result)
    assert got == bt_decisions(expected)
    assert any(d[2] == "buy" for d in got)
    run = load_run(result.run_dir)
    cols = ["client_order_id", "side", "type", "qty"]
    bt_orders = expected.recorder.orders
    assert sorted(run.orders[cols].itertuples(index=False, name=None)) == sorted(
        (o["client_order_id"], o["side"], o["type"], o["qty"]) for o in bt_orders.values())
    trades = run.trades[["symbol", "entry_price", "exit_price", "qty", "exit_reason"]]
    bt_trades = expected.trades[["symbol", "entry_price", "exit_price", "qty", "exit_reason"]]
    pd.testing.assert_frame_equal(trades.reset_index(drop=True).round(6),
                                  bt_trades.reset_index(drop=True).round(6),
                                  check_dtype=False)
    assert sim.posts.duplicates() == {}  # type: ignore[attr-defined]
    assert_state_equals_broker(result, sim)


def test_data_stream_drop_misses_no_bar(sim: SimServer, creds: Credentials,
                                        tmp_path: Path) -> None:
    """A market-data stream dropped mid-session: the gap is backfilled from REST (DELAYED),
    no bar is missing, none is delivered twice, and the decisions do not change."""
    minutes = 90
    drops = {20: lambda: sim.faults.drop_stream("data", after=0),
             21: lambda: None,
             55: lambda: sim.faults.drop_stream("data", after=2)}
    result = session(sim, creds, tmp_path, minutes, hooks=drops)
    assert result.backfilled > 0
    prices = load_run(result.run_dir).prices
    for sym in SYMBOLS:
        ts = prices.loc[prices.symbol == sym, "timestamp"]
        assert ts.is_unique and len(ts) == minutes
        assert (ts.diff().dropna() == pd.Timedelta(minutes=1)).all()
    assert paper_decisions(result) == bt_decisions(backtest(minutes))


def test_silent_stream_is_reconnected_by_the_watchdog(sim: SimServer, creds: Credentials,
                                                      tmp_path: Path) -> None:
    """Connected but silent while the market is open (alpaca-py #740): reconnect, backfill."""
    minutes = 40
    hooks = {10: lambda: sim.faults.silence_stream("data", seconds=2.5)}
    result = session(sim, creds, tmp_path, minutes, hooks=hooks, stream_silence=0.6)
    data_stream = next(s for s in result.streams if s.name == "market data")
    assert data_stream.silent_reconnects >= 1
    assert result.steps == minutes
    assert paper_decisions(result) == bt_decisions(backtest(minutes))


def test_faults_on_order_requests_create_no_duplicate(sim: SimServer, creds: Credentials,
                                                      tmp_path: Path) -> None:
    """504 after accept, a dropped response and a trading-stream drop during a session:
    every order exists once and the decisions still match the backtest."""
    minutes = 120
    hooks = {i: (lambda: sim.faults.lose_response(status=504, times=3)) for i in (5, 40)}
    hooks[70] = lambda: sim.faults.lose_response(status=None, times=2)
    hooks[90] = lambda: sim.faults.drop_stream("trading", after=0)
    result = session(sim, creds, tmp_path, minutes, hooks=hooks)
    assert sim.posts.duplicates() == {}  # type: ignore[attr-defined]
    assert paper_decisions(result) == bt_decisions(backtest(minutes))
    assert_state_equals_broker(result, sim)


def test_dry_run_sends_nothing_and_labels_every_row(sim: SimServer, creds: Credentials,
                                                    tmp_path: Path) -> None:
    minutes = 90
    result = session(sim, creds, tmp_path, minutes, live=False)
    assert result.orders_sent == 0
    assert sum(sim.posts.posts.values()) == 0  # type: ignore[attr-defined]
    audit = pd.read_csv(result.audit_path)
    assert audit["detail"].fillna("").str.contains("DRY_RUN").all()
    # the shadow book uses the backtest's fill rules: the same decisions
    assert paper_decisions(result) == bt_decisions(backtest(minutes))
    state = json.loads(result.state_path.read_text())
    assert state["mode"] == "dry_run"


def test_partial_fills_are_applied_once(book: Any, creds: Credentials, tmp_path: Path) -> None:
    """Partial fills (volume cap): each applied once; position and state equal the broker."""
    sim = SimServer(book=book, key=creds.key_id, secret=creds.secret_key, start=REPLAY_START,
                    volume_participation=0.002, rate_limit=10**6).start()
    try:
        from tests.paper.conftest import PostCounter

        sim.posts = PostCounter(sim)  # type: ignore[attr-defined]
        result = session(sim, creds, tmp_path, 90, symbols=("CRUX", "BOLT"))
        from brokers.alpaca.journal import Journal

        journal = Journal(tmp_path / "state" / "journal.sqlite")
        partial = [o for o in journal.orders() if len(journal.fills(o.cid)) > 1]
        assert partial, "the volume cap should have split some fills"
        with sim.market.lock:
            for o in journal.orders():
                at_sim = next(x for x in sim.market.orders.values()
                              if x.client_order_id == o.cid)
                applied = sum(float(f["qty"]) for f in journal.fills(o.cid))
                assert applied == pytest.approx(float(at_sim.filled_qty)), o.cid
        assert sim.posts.duplicates() == {}  # type: ignore[attr-defined]
        assert_state_equals_broker(result, sim)
    finally:
        sim.stop()


def test_five_minute_bars_are_built_from_the_minute_stream(sim: SimServer, creds: Credentials,
                                                           tmp_path: Path) -> None:
    """Alpaca streams 1-minute bars only: 5Min bars are aggregated live (and fetched whole
    from REST for the warm-up); the decisions equal a 5Min backtest of the same data."""
    settings = Settings(symbols=SYMBOLS, bar_interval="5Min")
    minutes = 150
    result = session(sim, creds, tmp_path, minutes, settings=settings)
    assert result.steps == minutes // 5
    start = pd.Timestamp(REPLAY_START)
    datasets = load_datasets(BARS / "1Min", SYMBOLS, "5Min",
                             end=start + pd.Timedelta(minutes=minutes - 1))
    expected = run_backtest(settings, datasets, out=None, start=start)
    assert paper_decisions(result) == bt_decisions(expected)
