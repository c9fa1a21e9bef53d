"""Paper sessions under the faults of issue 11: a short silence of the data stream (no
reconnect), the loopback server itself killed and restarted mid-session (``state_path``),
and a bot killed before its recorded bars reached the disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from analyzers import load_run
from brokers.alpaca.credentials import Credentials
from brokers.alpaca_sim.bars import BarBook
from brokers.alpaca_sim.testing import SimServer
from tests.paper.conftest import (
    REPLAY_START,
    SENTINEL_KEY,
    SENTINEL_SECRET,
    SYMBOLS,
    PostCounter,
    session,
)


def _contiguous(prices: pd.DataFrame, sym: str) -> pd.Series:
    ts = prices.loc[prices.symbol == sym, "timestamp"]
    assert ts.is_unique
    assert (ts.diff().dropna() == pd.Timedelta(minutes=1)).all(), ts[ts.diff() > pd.Timedelta(
        minutes=1)]
    return ts


def test_short_stream_silence_loses_no_bar(sim: SimServer, creds: Credentials,
                                           tmp_path: Path) -> None:
    """Regression (issue 11.2): a silence shorter than the watchdog (no reconnect) lost its
    bars for good, in prices.parquet and in the recorded bars. A gap between consecutive
    bars of a symbol is now backfilled from REST at once."""
    minutes = 24

    def silence() -> None:
        sim.faults.skip_frames("data", 2)  # two bar closes are never sent...
        sim.advance(minutes=2)  # ...and the stream stays connected

    result = session(sim, creds, tmp_path, minutes, hooks={12: silence})
    prices = load_run(result.run_dir).prices
    recorded = tmp_path / "state" / "bars" / "1Min"
    for sym in SYMBOLS:
        assert len(_contiguous(prices, sym)) == minutes + 2
        bars = pd.concat(pd.read_parquet(p) for p in (recorded / sym).glob("*.parquet"))
        assert len(bars) == minutes + 2 and bars.timestamp.is_unique
    data_stream = next(s for s in result.streams if s.name == "market data")
    assert data_stream.silent_reconnects == 0 and result.backfilled == 2 * len(SYMBOLS)


class _Restartable:
    """The loopback Alpaca that a test can kill and start again on the same port, with its
    state file: what ``Lockstep`` and ``session`` need of a ``SimServer``."""

    def __init__(self, book: BarBook, state: Path) -> None:
        self.book, self.state = book, state
        self.posts: list[PostCounter] = []
        self.restarts = 0
        self.current = self._start(0)

    def _start(self, port: int) -> SimServer:
        server = SimServer(book=self.book, key=SENTINEL_KEY, secret=SENTINEL_SECRET,
                           start=REPLAY_START, rate_limit=10**6, port=port,
                           state_path=self.state)
        server.start()
        self.posts.append(PostCounter(server))
        return server

    def restart(self) -> None:
        port = self.current.port
        self.current.stop()  # streams cut, nothing more is written
        self.current = self._start(port)
        self.restarts += 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.current, name)


def test_server_killed_and_restarted_mid_session(book: BarBook, creds: Credentials,
                                                 tmp_path: Path) -> None:
    """Issue 11.3: the server restarted twice during a session (with its state file): the
    bot reconnects, reconciles, sends no order twice, no journal conflict, every position
    keeps a resting stop, and the final state equals the broker's."""
    sim = _Restartable(book, tmp_path / "sim-state.json")
    minutes = 70
    try:
        result = session(sim, creds, tmp_path, minutes,  # type: ignore[arg-type]
                         hooks={25: sim.restart, 45: sim.restart})
        market = sim.current.market
        with market.lock:
            positions = {s: p.qty for s, p in market.positions.items() if p.qty}
            stops = {o.symbol: o.qty for o in market.orders.values()
                     if o.type == "stop" and o.is_open}
            cids = [o.client_order_id for o in market.orders.values()]
    finally:
        sim.current.stop()
    assert sim.restarts == 2
    sent: dict[str, int] = {}
    for counter in sim.posts:
        for cid, n in counter.posts.items():
            sent[cid] = sent.get(cid, 0) + n
    assert {c: n for c, n in sent.items() if n > 1} == {}
    assert len(cids) == len(set(cids)) and sent
    state = json.loads(result.state_path.read_text())
    assert {s: p["qty"] for s, p in state["positions"].items()} == positions
    assert stops == positions  # every position has its stop at the broker
    audit = pd.read_csv(result.audit_path)
    assert not (audit["action"] == "quarantine").any()
    assert result.steps == minutes


def test_recorded_bars_are_completed_after_a_kill(sim: SimServer, creds: Credentials,
                                                  tmp_path: Path) -> None:
    """Regression (issue 11.6): bars not yet flushed when the bot was killed were never
    recorded (12.6% lost) and a ``.tmp`` was left behind. The next start completes the
    recording from REST and removes partial files."""
    session(sim, creds, tmp_path, 12)
    folder = tmp_path / "state" / "bars" / "1Min" / "ACME"
    part = next(folder.glob("live-*.parquet"))
    full = pd.read_parquet(part)
    full.iloc[:5].to_parquet(part)  # what a SIGKILL before the last flushes leaves
    leftover = folder / f".{part.name}.x1y2.tmp"
    leftover.write_bytes(b"partial")
    sim.advance(minutes=3)  # the bot is down for three bars
    session(sim, creds, tmp_path, 2)
    bars = pd.read_parquet(part)
    assert bars.timestamp.is_unique and len(bars) == len(full) + 3 + 2
    assert set(full.timestamp) <= set(bars.timestamp)
    assert not leftover.exists() and not list(folder.glob(".*.tmp"))


def test_server_reusing_order_ids_does_not_crash_the_bot(book: BarBook, creds: Credentials,
                                                         tmp_path: Path) -> None:
    """Regression (issue 11.3): a loopback server restarted without state handed out the
    order ids of its previous life again (seed 0); the bot's startup reconciliation then
    died on ``UNIQUE constraint failed: orders.alpaca_id`` at every restart. Now the stale
    row is quarantined (audited) and the run goes on protecting its positions."""
    first = SimServer(book=book, key=SENTINEL_KEY, secret=SENTINEL_SECRET, start=REPLAY_START,
                      rate_limit=10**6, seed=0).start()
    try:
        session(first, creds, tmp_path, 45)
        later, port = first.now(), first.port
        used = set(first.market.orders)
    finally:
        first.stop()
    assert used
    again = SimServer(book=book, key=SENTINEL_KEY, secret=SENTINEL_SECRET, start=later,
                      rate_limit=10**6, seed=0, port=port).start()
    try:
        result = session(again, creds, tmp_path, 60)
        reused = used & set(again.market.orders)
        positions = {s: p.qty for s, p in again.market.positions.items() if p.qty}
        stops = {o.symbol: o.qty for o in again.market.orders.values()
                 if o.type == "stop" and o.is_open}
    finally:
        again.stop()
    assert reused  # the scenario happened: the new server gave out old ids
    audit = pd.read_csv(result.audit_path)
    assert (audit["action"] == "quarantine").sum() >= 1
    assert result.steps == 60 and stops == positions
