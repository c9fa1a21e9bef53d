"""New orders only for a fresh bar while the market is open NOW (review finding 1), and the
store's notion of the broker's time (finding 4).

Before the fix the Strategy's ``market_open`` was calendar arithmetic on the bar's own time:
bars replayed after a restart while the market was closed, or backfilled after a data-stream
outage, sent real limit entries at old prices (and DAY market fallbacks one replayed bar
later, filling on the next open's gap).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import backtrader as bt
import pandas as pd

from analyzers import load_run
from brokers.alpaca.client import ClockInfo, SessionDay
from brokers.alpaca.credentials import Credentials
from brokers.alpaca.store import AlpacaStore
from brokers.alpaca_sim.testing import SimServer
from ratchet.common.clock import ManualClock
from ratchet.common.config import Settings
from strategies.signals import make_signal
from tests.paper.conftest import REPLAY_START, SYMBOLS, decisions, session
from tests.paper.test_broker import Scripted

OPEN_AT = datetime(2025, 10, 3, 13, 30, tzinfo=UTC)
CLOSE_AT = datetime(2025, 10, 3, 20, 0, tzinfo=UTC)


class FakeClient:
    """``get_clock``/``get_calendar`` of one regular session (2025-10-03), counting reads."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.clock_reads = 0

    def get_clock(self) -> ClockInfo:
        self.clock_reads += 1
        is_open = OPEN_AT <= self.now < CLOSE_AT
        next_open = OPEN_AT + timedelta(days=3) if self.now >= CLOSE_AT else OPEN_AT
        return ClockInfo(self.now, is_open, next_open, CLOSE_AT)

    def get_calendar(self, start: date, end: date) -> list[SessionDay]:
        days = [date(2025, 10, 3), date(2025, 10, 6)]
        return [SessionDay(d, datetime(d.year, d.month, d.day, 9, 30),
                           datetime(d.year, d.month, d.day, 16, 0))
                for d in days if start <= d <= end]


def _store(client: FakeClient, clock_rate: float, clock: ManualClock) -> AlpacaStore:
    settings = Settings(symbols=("ACME",))
    store = AlpacaStore(client, Credentials("k", "s", "test"), settings,  # type: ignore[arg-type]
                        make_signal(settings), "ws://127.0.0.1:9/v2/iex", None,
                        clock_rate=clock_rate, clock=clock)
    store.clock.refresh()
    return store


def test_broker_time_advances_between_clock_reads() -> None:
    """Finding 4: ``broker_time`` (state file) was the last clock read, frozen between reads.
    Against Alpaca it now runs on with the monotonic clock; against a simulator (rate 0) it
    follows the newest bar close instead (replayed time may run at any speed)."""
    t0 = datetime(2025, 10, 3, 14, 0, tzinfo=UTC)
    local = ManualClock()
    real = _store(FakeClient(t0), clock_rate=1.0, clock=local)
    assert real.clock.read_at is not None
    local.advance(42.0)  # 42 s of monotonic time since the read
    assert real.broker_time() == t0 + timedelta(seconds=42)
    local = ManualClock()
    sim = _store(FakeClient(t0), clock_rate=0.0, clock=local)
    local.advance(42.0)
    assert sim.broker_time() == t0
    sim._saw_close(t0 + timedelta(minutes=5), 60)  # a bar arrived: time has moved on
    assert sim.broker_time() == t0 + timedelta(minutes=6)


def test_gate_needs_a_fresh_bar_and_an_open_market_without_a_clock_read_per_bar() -> None:
    """The Strategy's ``market_open`` answers "may a new order go out now for this bar":
    fresh (closed within one interval + grace of the broker's now) and open now by Alpaca's
    clock, read again only when now crosses its next_close."""
    now = datetime(2025, 10, 3, 14, 0, 5, tzinfo=UTC)
    client = FakeClient(now)
    local = ManualClock()
    store = _store(client, clock_rate=1.0, clock=local)
    newest = now.replace(second=0) - timedelta(minutes=1)  # the bar that closed at 14:00
    assert store.order_gate(newest) == (True, "")
    for _ in range(100):
        store.market_open(newest)
    assert client.clock_reads == 1  # no REST call per bar
    assert store.order_gate(newest - timedelta(minutes=5)) == (False, "stale_bar")
    # 6 hours later by the broker's clock: now crossed next_close, so the clock is read
    # again, and it says closed (the 15:58 bar itself is fresh and inside the session)
    elapsed = (CLOSE_AT - now).total_seconds() + 1
    local.advance(elapsed)
    client.now = CLOSE_AT + timedelta(seconds=1)
    assert store.order_gate(CLOSE_AT - timedelta(minutes=2)) == (False, "market_closed")
    assert client.clock_reads == 2


def _audit(result: Any) -> pd.DataFrame:
    return pd.read_csv(result.audit_path)


def test_restart_while_the_market_is_closed_sends_no_order(sim: SimServer, creds: Credentials,
                                                           tmp_path: Path) -> None:
    """Regression (finding 1): a restart after the close replayed the session's remaining
    bars (up to 8 h) and sent limit entries at old prices, then market fallbacks that
    filled on the next open's gap. Now the replay updates indicators and stops only."""
    first = session(sim, creds, tmp_path, 10)  # 13:30..13:40: warm, no trade yet
    assert first.orders_sent == 0
    sim.advance(to=CLOSE_AT + timedelta(minutes=30))
    before = dict(sim.posts.posts)  # type: ignore[attr-defined]
    second = session(sim, creds, tmp_path, 0)  # replays 13:40..15:59, then stops at idle
    assert second.steps > 300  # the bars were replayed (indicators, stop state)
    assert dict(sim.posts.posts) == before  # type: ignore[attr-defined]
    assert second.orders_sent == 0
    audit = _audit(second)
    since = REPLAY_START + timedelta(minutes=10)
    skipped = [d for d in decisions(audit, since) if d[2] == "skip_buy"]
    assert skipped and all(d[3] == "market_closed" for d in skipped)
    assert not [d for d in decisions(audit, since) if d[2] == "buy"]
    gates = audit[audit["kind"] == "gate"]
    assert set(gates["reason"]) <= {"stale_bar", "market_closed"} and len(gates) > 0


def test_backfill_after_an_outage_sends_no_entry_for_the_missed_bars(
        sim: SimServer, creds: Credentials, tmp_path: Path) -> None:
    """Regression (finding 1): after a data-stream outage the backfilled bars reached the
    Strategy as if live; a BUY on a bar 10 minutes old sent an entry at its old price.
    The CRUX crossover at 13:42 falls inside a 15-minute outage: no order for it."""

    def outage() -> None:  # 13:38: the stream goes quiet, the market moves 15 minutes
        sim.faults.silence_stream("data")
        sim.advance(minutes=15)
        sim.faults.silence_stream("data", seconds=0)
        sim.faults.drop_stream("data", after=0)  # reconnect -> backfill from REST

    result = session(sim, creds, tmp_path, 30, hooks={8: outage})
    assert result.backfilled >= 10
    assert "ratchet-CRUX-20251003T134200-entry" not in sim.posts.posts  # type: ignore[attr-defined]
    audit = _audit(result)
    crux = [d for d in decisions(audit) if d[1] == "CRUX" and d[0].startswith("2025-10-03T13:42")]
    assert crux == [("2025-10-03T13:42:00+00:00", "CRUX", "skip_buy", "market_closed", None)]
    gates = audit[(audit["kind"] == "gate") & (audit["reason"] == "stale_bar")]
    assert "2025-10-03T13:42:00+00:00" in set(gates["time"])
    prices = load_run(result.run_dir).prices
    for sym in SYMBOLS:  # the missed bars still reached the indicators, none twice
        ts = prices.loc[prices.symbol == sym, "timestamp"]
        assert ts.is_unique and (ts.diff().dropna() == pd.Timedelta(minutes=1)).all()


def test_broker_refuses_an_entry_while_the_clock_says_closed(
        sim: SimServer, creds: Credentials, tmp_path: Path) -> None:
    """Regression (finding 1, second line of defence): a strategy that ignores
    ``market_open`` and buys on a replayed bar after the close gets Rejected, with a log
    line and an audit row; nothing is sent."""
    session(sim, creds, tmp_path, 3, symbols=("ACME",), settings=Settings(symbols=("ACME",)),
            strategy_cls=Scripted, strategy_kwargs={"script": lambda s, n: None})
    sim.advance(to=CLOSE_AT + timedelta(minutes=30))
    box: dict[str, Any] = {}

    def script(s: Scripted, step: int) -> None:
        box["s"] = s
        if step == 1:
            s.orders["entry"] = s.buy(data=s.datas[0], size=5, exectype=bt.Order.Market,
                                      cid="ratchet-ACME-20251003T133300-entry", purpose="entry")

    result = session(sim, creds, tmp_path, 0, symbols=("ACME",),
                     settings=Settings(symbols=("ACME",)), strategy_cls=Scripted,
                     strategy_kwargs={"script": script})
    assert "ratchet-ACME-20251003T133300-entry" not in sim.posts.posts  # type: ignore[attr-defined]
    assert box["s"].orders["entry"].status == bt.Order.Rejected
    audit = _audit(result)
    rows = audit[(audit["client_order_id"] == "ratchet-ACME-20251003T133300-entry")
                 & (audit["action"] == "rejected")]
    assert len(rows) == 1 and "market closed" in rows.iloc[0]["reason"]


def test_writes_after_a_step_wait_for_its_fills() -> None:
    """Regression (issue 17, naked time at 60x): the writes after a step (state file, bar
    recording: long GIL-holding JSON, pandas and Parquet calls) ran while the entry the
    step had just sent was filling, so its fill event and the helper thread's stop waited
    for the GIL. They now wait while the broker says a fill of the step may be in flight,
    at most ``POST_STEP_HOLD_S`` after the step, then run as before."""
    from brokers.alpaca.store import POST_STEP_HOLD_S

    local = ManualClock()
    store = _store(FakeClient(datetime(2025, 10, 3, 14, 0, tzinfo=UTC)), clock_rate=1.0,
                   clock=local)
    store.poll_s = 0.001
    writes: list[float] = []
    store.on_step_done = lambda: writes.append(local.monotonic())
    busy = [True]
    store.fills_in_flight = lambda: busy[0]
    store._delivered_since_save, store._last_delivered = True, local.monotonic()
    store._cycle()
    assert writes == []  # the step's entry may be filling: its stop first
    busy[0] = False
    store._cycle()
    assert len(writes) == 1  # filled and protected: written at once
    store._delivered_since_save, store._last_delivered = True, local.monotonic()
    busy[0] = True
    store._cycle()
    local.advance(POST_STEP_HOLD_S)
    store._cycle()
    assert len(writes) == 2  # never more than POST_STEP_HOLD_S late
