"""No naked position (issue 17): the protective stop goes out when the entry fills.

Against the stepped loopback Alpaca through the real alpaca-py client. Before, the stop was
sent by the Strategy when Backtrader handed it the fill, with its NEXT bar (and a stop lost
to someone else's cancel was re-placed a bar later, or by the broker after one bar + 15 s):
up to one bar naked after every entry. Now the broker protects the position on the
``trade_updates`` event, with the Strategy's rule and client order id, and the Strategy
adopts that stop.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import backtrader as bt
import pandas as pd
import pytest
from alpaca.trading.enums import OrderSide, OrderType, TimeInForce

from brokers.alpaca.client import AlpacaClient, OrderSpec
from brokers.alpaca.credentials import Credentials
from brokers.alpaca.journal import Journal, JournalState
from brokers.alpaca.orders import OrderGateway, Outcome
from brokers.alpaca_sim.calendar import ns_to_utc
from brokers.alpaca_sim.testing import SimServer
from feeds.store import read_bars
from ratchet.common.clock import FastForwardClock
from ratchet.common.config import Settings
from ratchet.engine.paper import run_paper
from ratchet.engine.paper_run import PaperResult
from strategies import rules
from tests.paper.conftest import (
    BARS,
    REPLAY_START,
    REPO,
    SENTINEL_KEY,
    SENTINEL_SECRET,
    paper_run,
    session,
    wait_until,
)
from tests.paper.test_broker import Scripted, _run

_OPEN = ("new", "accepted", "partially_filled", "held")


class Clock:
    """on_idle driver: moves the stepped sim ``step_s`` seconds at a time (a bar closes every
    60 s and must reach the Strategy before the clock moves on); before each move ``gate``
    may hold the clock for up to ``patience`` s of real time (the bot works meanwhile)."""

    def __init__(self, sim: SimServer, minutes: int, step_s: int = 30,
                 gate: Callable[[], bool] | None = None, patience: float = 3.0,
                 hooks: dict[datetime, Callable[[], None]] | None = None) -> None:
        self.sim, self.step_s, self.gate, self.patience = sim, step_s, gate, patience
        self.end = sim.now() + timedelta(minutes=minutes)
        self.hooks = dict(hooks or {})
        self.store: Any = None
        self.closes = 0
        self._held: float | None = None
        self._at = 0.0
        self.gate_timeouts = 0

    def __call__(self) -> None:
        store = self.store
        if store is None:
            return
        now = time.monotonic()
        if store.status.steps < self.closes and now - self._at < 8.0:
            return  # the last closed bar has not reached the Strategy yet
        if self.sim.now() >= self.end:
            store.request_stop()
            return
        if self.gate is not None and not self.gate():
            self._held = self._held or now
            if now - self._held < self.patience:
                return
            self.gate_timeouts += 1
        self._held = None
        hook = self.hooks.pop(self.sim.now(), None)
        if hook is not None:
            hook()
            return  # give the bot a turn before the clock moves
        self._at = now
        t = self.sim.advance(seconds=self.step_s)
        if t.second == 0:
            self.closes += 1


def run(sim: SimServer, creds: Credentials, root: Path, clock: Clock,
        symbols: tuple[str, ...], **extra: Any) -> PaperResult:
    def on_store(store: Any) -> None:
        clock.store = store

    run_, hooks = paper_run(sim, creds, root,
                            extra.pop("settings", None) or Settings(symbols=symbols),
                            live=extra.pop("live", True), on_store=on_store, **extra)
    return run_paper(run_, hooks=hooks, on_idle=lambda _store: clock())


def _orders(sim: SimServer, symbol: str) -> list[Any]:
    with sim.market.lock:
        return sorted((o for o in sim.market.orders.values() if o.symbol == symbol),
                      key=lambda o: (o.created_at, o.client_order_id))


def _protected(sim: SimServer) -> bool:
    """Every long position at the sim has exactly one open sell stop of its size."""
    with sim.market.lock:
        for sym, pos in sim.market.positions.items():
            stops = [o for o in sim.market.orders.values() if o.symbol == sym
                     and o.type == "stop" and o.status in _OPEN]
            if pos.qty > 0 and (len(stops) != 1 or abs(stops[0].remaining - pos.qty) > 1e-9):
                return False
    return True


def _spec_stop(symbol: str, decision_bar: datetime, fill_price: float) -> float:
    """SPEC's initial stop, computed here from the bar file: max(fill - 2 x ATR14 (Wilder) at
    the decision bar, fill x 0.97), rounded down to the cent."""
    bars = read_bars(BARS / "1Min" / f"{symbol}.parquet", end=decision_bar)
    high, low, close = (bars[c].to_numpy() for c in ("high", "low", "close"))
    tr = [max(h, c0) - min(lo, c0) for h, lo, c0 in zip(high[1:], low[1:], close[:-1],
                                                         strict=True)]
    atr = sum(tr[:14]) / 14
    for x in tr[14:]:
        atr = atr * (13 / 14) + x / 14
    return math.floor(max(fill_price - 2 * atr, fill_price * 0.97) * 100 + 1e-9) / 100


def test_entry_fill_is_protected_before_the_next_bar(sim: SimServer, creds: Credentials,
                                                     tmp_path: Path) -> None:
    """Regression (issue 17): after the entry filled, the position had no stop until the
    Strategy's next bar. Now the stop rests at the sim before the bar in which the fill
    happened closes, at SPEC's level, under the Strategy's client order id, and the Strategy
    adopts it (no second stop). A cancel by hand is then re-placed within a second.

    Regression (issue 17, naked time at 60x): every thread on the fill -> stop path (the
    stream, the helper, the --sim server) waits one GIL switch interval for each of its ~10
    hand-offs while the bar step computes; at 1 ms that was most of a fill's ~20 ms. The
    broker now sets 0.1 ms once the helper thread runs, and the session gives the process
    its own interval back when it ends (it stayed at 0.1 ms for the notebook or test worker)."""
    client = AlpacaClient(creds, base_url=sim.base_url)
    seen: dict[str, float] = {}
    outside = sys.getswitchinterval()

    def cancel_first_stop() -> None:
        stop = next(o for o in _orders(sim, "CRUX") if o.type == "stop" and o.status in _OPEN)
        seen["cancel_wall"], seen["cancel_sim"] = time.monotonic(), sim.now().timestamp()
        seen["switch_interval"] = sys.getswitchinterval()  # during the session
        client.cancel_order(stop.id)

    def gate() -> bool:
        ok = _protected(sim)
        if ok and "cancel_wall" in seen and "replaced_wall" not in seen:
            seen["replaced_wall"] = time.monotonic()
        return ok

    # CRUX buys on the 13:42 bar (limit); it fills at the 13:43 open
    hooks = {datetime(2025, 10, 3, 13, 46, tzinfo=REPLAY_START.tzinfo): cancel_first_stop}
    clock = Clock(sim, 18, gate=gate, hooks=hooks)
    result = run(sim, creds, tmp_path, clock, ("CRUX",))
    orders = _orders(sim, "CRUX")
    entry = next(o for o in orders if o.client_order_id.endswith("-entry"))
    assert entry.status == "filled"
    fill_t = entry.fills[0].t
    bar_end = (fill_t // 60_000_000_000 + 1) * 60_000_000_000
    stops = [o for o in orders if o.type == "stop"]
    first = stops[0]
    # at the broker before the bar holding the fill closed (and was delivered)
    assert fill_t <= first.created_at < bar_end, (ns_to_utc(fill_t), ns_to_utc(first.created_at))
    decided = datetime(2025, 10, 3, 13, 42, tzinfo=REPLAY_START.tzinfo)
    assert first.stop_price == pytest.approx(_spec_stop("CRUX", decided,
                                                        entry.filled_avg_price or 0.0))
    assert first.qty == entry.filled_qty
    # the id the Strategy itself would have used on the bar it sees the fill with
    assert first.client_order_id == "ratchet-CRUX-20251003T134300-stop1"
    # the cancel by hand: re-placed on the event, within a second, in the same replay second
    lost = [o for o in stops if o.status == "canceled"]
    assert len(lost) == 1
    assert seen["replaced_wall"] - seen["cancel_wall"] < 1.0
    again = next(o for o in stops if o.created_at > lost[0].created_at
                 and o.replaces is None and o is not first)
    assert again.created_at / 1e9 == pytest.approx(seen["cancel_sim"])
    assert again.stop_price == lost[0].stop_price and again.qty == lost[0].qty
    # exactly one stop rests; nothing was posted twice; the Strategy sent no stop of its own
    assert len([o for o in stops if o.status in _OPEN]) == 1
    assert sim.posts.duplicates() == {}  # type: ignore[attr-defined]
    posted = [c for c in sim.posts.posts if "-stop" in c]  # type: ignore[attr-defined]
    assert posted == [first.client_order_id, again.client_order_id]
    assert again.client_order_id == "ratchet-CRUX-20251003T134600-stop2"
    assert clock.gate_timeouts == 0
    audit = pd.read_csv(result.audit_path)
    adopted = audit[(audit["kind"] == "decision") & (audit["symbol"] == "CRUX")]
    assert list(adopted["action"][adopted["action"].str.contains("stop")]) == [
        "place_stop", "adopt_stop"]  # the Strategy took both broker stops as its own
    kinds = sorted({k for k, _ in result.stop_latency})
    assert kinds == ["fill", "lost"] and all(s < 0.5 for _, s in result.stop_latency)
    assert seen["switch_interval"] <= 0.0001 + 1e-9
    assert sys.getswitchinterval() == outside


def _participation_sizes(parts: int, p: float) -> int:
    # shares the sim fills per bar at participation p from the 13:31 bar on (one per bar)
    bars = read_bars(BARS / "1Min" / "ACME.parquet", REPLAY_START + timedelta(minutes=1),
                     REPLAY_START + timedelta(minutes=1 + parts - 1))
    return int(sum(math.floor(p * v + 1e-9) for v in bars["volume"]))


@pytest.mark.parametrize("parts", [2, 3])
def test_partial_fills_make_one_stop_of_the_filled_size(
        sim: SimServer, creds: Credentials, tmp_path: Path, parts: int) -> None:
    """A 2- and a 3-part fill of one entry: one stop, placed at the first part and resized by
    one PATCH per later part, always the filled size (old: no stop until the Strategy)."""
    p = 0.002
    size = _participation_sizes(parts, p)

    def script(s: Scripted, step: int) -> None:
        d = s.datas[0]
        if step == 1:
            sim.faults.partial_fills(p)
            h = rules.StopHandoff("ACME", "ratchet", float(d.atr[0]), 2.0, 0.03)
            s.orders["entry"] = s.buy(data=d, size=size, exectype=bt.Order.Market,
                                      cid="ratchet-ACME-20251003T133000-entry",
                                      purpose="entry", handoff=h)

    box: dict[str, Scripted] = {}

    def wrapped(strat: Scripted, step: int) -> None:
        box["s"] = strat
        script(strat, step)

    # the clock waits (up to 3 s) for the position to be protected before each bar
    clock = Clock(sim, parts + 2, step_s=60, gate=lambda: _protected(sim))
    run(sim, creds, tmp_path, clock, ("ACME",), strategy_cls=Scripted,
        strategy_kwargs={"script": wrapped})
    entry = box["s"].orders["entry"]
    assert entry.status == bt.Order.Completed and len(entry.executed.exbits) == parts
    stops = [o for o in _orders(sim, "ACME") if o.type == "stop"]
    open_stops = [o for o in stops if o.status in _OPEN]
    assert len(open_stops) == 1 and open_stops[0].qty == size
    assert [o.status for o in stops] == ["replaced"] * (parts - 1) + ["new"]
    posts = sim.posts  # type: ignore[attr-defined]
    assert [c for c in posts.posts if "-stop" in c] == [stops[0].client_order_id]
    assert sum(posts.patches.values()) == parts - 1
    # before the clock moved on, one stop always covered the whole position
    assert clock.gate_timeouts == 0


def test_fill_while_the_strategys_stop_is_in_flight_gives_one_stop(
        sim: SimServer, creds: Credentials, tmp_path: Path) -> None:
    """The Strategy's own stop request is unresolved (response lost, lookups failing) when a
    fill of the position arrives: the broker places no second stop; once the request
    resolves it resizes that one stop (one PATCH). Journal and server agree."""
    stop_cid = "ratchet-ACME-20251003T133100-stop1"

    def script(s: Scripted, step: int) -> None:
        d = s.datas[0]
        if step == 1:  # a position the broker does not protect by itself (no handoff)
            s.buy(data=d, size=5, exectype=bt.Order.Market,
                  cid="ratchet-ACME-20251003T133000-entry", purpose="entry")
        elif step == 2:
            h = rules.StopHandoff("ACME", "ratchet", float(d.atr[0]), 2.0, 0.03, seq=1)
            # a limit under the next bar's open, above its low: it fills at that bar's end,
            # after the stop below was sent (a market order would fill at once, on this
            # bar boundary, before the stop: the helper thread then protects it and the
            # Strategy's stop is not sent, see ``test_fill_before_the_strategys_stop``)
            s.buy(data=d, size=5, exectype=bt.Order.Limit, price=111.00,
                  cid="ratchet-ACME-20251003T133100-fallback", purpose="fallback", handoff=h)
            # the stop's POST is processed, its answer lost, and the lookups fail for a while
            sim.faults.lose_response(method="POST", path="/v2/orders", times=1)
            sim.faults.http_error(500, method="GET", path="/v2/orders:by_client_order_id",
                                  times=4)
            s.orders["stop"] = s.sell(data=d, size=5, exectype=bt.Order.Stop,
                                      price=round(d.close[0] * 0.95, 2), cid=stop_cid,
                                      purpose="stop", handoff=h)

    clock = FastForwardClock()  # the lookups' backoff passes on it (no real sleep)
    slow = {k: (lambda: clock.advance(0.4)) for k in range(3, 11)}
    _run(sim, creds, tmp_path, 12, script, slow, clock=clock)
    stops = [o for o in _orders(sim, "ACME") if o.type == "stop"]
    open_stops = [o for o in stops if o.status in _OPEN]
    with sim.market.lock:
        position = sim.market.positions["ACME"].qty
    assert position == 10 and len(open_stops) == 1 and open_stops[0].qty == 10
    posts = sim.posts  # type: ignore[attr-defined]
    assert [c for c in posts.posts if "-stop" in c] == [stop_cid]
    assert sum(posts.patches.values()) == 1
    journal = Journal(tmp_path / "state" / "journal.sqlite")
    rows = [r for r in journal.orders() if r.purpose == "stop"]
    assert [(r.cid, r.alpaca_status) for r in rows] == [
        (stop_cid, "replaced"), (open_stops[0].client_order_id, "new")]
    assert rows[1].replaces == stop_cid


def test_dry_run_protects_nothing_at_the_broker(sim: SimServer, creds: Credentials,
                                                tmp_path: Path) -> None:
    """Dry run: the shadow book fills the entry; nothing is sent, no broker stop row."""
    result = session(sim, creds, tmp_path, 16, live=False, symbols=("CRUX",),
                     settings=Settings(symbols=("CRUX",)))
    assert result.orders_sent == 0 and sum(sim.posts.posts.values()) == 0  # type: ignore[attr-defined]
    audit = result.audit_path.read_text()
    assert "place_stop" in audit and "entry_fill" not in audit


# ------------------------------------------------------------------ SIGKILL at the fill


def _bot(sim: SimServer, root: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "APCA_API_KEY_ID": SENTINEL_KEY, "APCA_API_SECRET_KEY": SENTINEL_SECRET,
           "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "cli.py", "paper", "--live", "--confirm-live",
            "--base-url", sim.base_url, "--symbols", "CRUX",
            "--state-dir", str(root / "state"), "--log-dir", str(root / "logs"),
            "--out", str(root / "runs"), "--clock-poll", "1", "-v"]
    log = (root / "bot-output.txt").open("a")
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            text=True)


def _last_bar(state: Path) -> str:
    try:
        return str(json.loads(state.read_text()).get("last_bar", {}).get("CRUX", ""))
    except (OSError, ValueError):
        return ""


def _step(sim: SimServer, state: Path, box: dict[str, Any]) -> None:
    """One replayed minute, then wait until the bot has processed the bar that closed (or
    was killed)."""
    closed, killed = sim.now(), box.get("killed")
    sim.advance(minutes=1)
    wait_until(lambda: box.get("killed") != killed
               or _last_bar(state) >= closed.isoformat(), timeout=10)


@pytest.mark.parametrize("when", ["before_post", "after_post"])
def test_sigkill_at_the_entry_fill_leaves_exactly_one_stop(sim: SimServer, tmp_path: Path,
                                                           when: str) -> None:
    """``cli.py paper`` is SIGKILLed as its stop for a just-filled entry reaches the server:
    before the server takes the POST and right after (the stop exists, its answer never
    arrives). The helper thread sends the stop FIRST and journals it after the answer
    (issue 17: no fsynced intent on the fill path), so "after" is a SIGKILL between the send
    and the journal write: the restart finds the stop among Alpaca's open orders and adopts
    it by client order id, never sends it again. The restarted bot ends with exactly one
    resting stop of the position's size, in the journal and at the server, and no client
    order id was posted twice."""
    box: dict[str, Any] = {"killed": None}
    market = sim.market
    submit = market.submit

    def killing_submit(req: Any) -> Any:
        ours = str(req.client_order_id).startswith("ratchet-CRUX-")
        if ours and req.type == "stop" and box["killed"] is None:
            box["killed"] = str(req.client_order_id)
            if when == "before_post":
                box["bot"].kill()
                box["bot"].wait(timeout=10)
                raise RuntimeError("the bot died before this request was processed")
            order = submit(req)
            box["bot"].kill()
            box["bot"].wait(timeout=10)
            return order
        return submit(req)

    market.submit = killing_submit  # type: ignore[method-assign]
    state = tmp_path / "state" / "portfolio_state.json"
    box["bot"] = _bot(sim, tmp_path)
    assert wait_until(state.exists, timeout=60), (tmp_path / "bot-output.txt").read_text()
    for _ in range(20):  # CRUX buys on the 13:42 bar; its fill is protected at once
        _step(sim, state, box)
        if box["killed"]:
            break
    assert box["killed"], (tmp_path / "bot-output.txt").read_text()[-3000:]
    with market.lock:
        position = market.positions["CRUX"].qty
    started = state.stat().st_mtime_ns
    box["bot"] = bot = _bot(sim, tmp_path)  # the restart reconciles before any trading
    assert wait_until(lambda: state.stat().st_mtime_ns != started, timeout=60)

    def one_stop() -> bool:
        with market.lock:
            return len([o for o in market.orders.values()
                        if o.type == "stop" and o.status in _OPEN]) == 1
    assert wait_until(one_stop, timeout=60), (tmp_path / "bot-output.txt").read_text()[-3000:]
    _step(sim, state, box)
    _step(sim, state, box)
    bot.send_signal(signal.SIGTERM)
    assert bot.wait(timeout=60) == 0, (tmp_path / "bot-output.txt").read_text()[-3000:]
    posts = sim.posts  # type: ignore[attr-defined]
    assert posts.duplicates() == {}
    stops = [o for o in _orders(sim, "CRUX") if o.type == "stop"]
    open_stops = [o for o in stops if o.status in _OPEN]
    assert len(open_stops) == 1 and open_stops[0].remaining == position
    journal = Journal(tmp_path / "state" / "journal.sqlite")
    killed = journal.get(box["killed"])
    with market.lock:
        server_open = {o.client_order_id for o in market.orders.values()
                       if o.type == "stop" and o.status in _OPEN}
    journal_open = {r.cid for r in journal.orders() if r.purpose == "stop"
                    and r.state is JournalState.ACCEPTED
                    and r.alpaca_status in (*_OPEN, None)}
    assert journal_open == server_open == {open_stops[0].client_order_id}
    if when == "before_post":  # never reached the server; a new stop was placed instead
        assert box["killed"] not in posts.posts
        assert open_stops[0].client_order_id != box["killed"]
        assert killed is None or killed.state is not JournalState.ACCEPTED
    else:  # the stop the dead process sent is found and kept; nothing new was posted
        assert killed is not None and killed.state is JournalState.ACCEPTED  # adopted
        assert open_stops[0].client_order_id == box["killed"]
        assert [c for c in posts.posts if "-stop" in c] == [box["killed"]]


def test_fill_before_the_strategys_stop_gives_one_stop(sim: SimServer, creds: Credentials,
                                                       tmp_path: Path) -> None:
    """The fill of a market fallback lands at once (on the bar boundary), while the
    Strategy's step goes on and then sends its own stop: the helper thread places the stop
    at the fill while the main thread is still in that step; the Strategy's stop is not
    sent (it would be a second stop). One stop of the whole position at the server, journal
    and server agree."""
    own_cid = "ratchet-ACME-20251003T133100-stop1"

    def script(s: Scripted, step: int) -> None:
        d = s.datas[0]
        if step == 1:  # a position the broker does not protect by itself (no handoff)
            s.buy(data=d, size=5, exectype=bt.Order.Market,
                  cid="ratchet-ACME-20251003T133000-entry", purpose="entry")
        elif step == 2:
            h = rules.StopHandoff("ACME", "ratchet", float(d.atr[0]), 2.0, 0.03, seq=1)
            s.buy(data=d, size=5, exectype=bt.Order.Market,
                  cid="ratchet-ACME-20251003T133100-fallback", purpose="fallback", handoff=h)
            # the fill event reaches the helper thread while this step still runs
            wait_until(lambda: any(o.type == "stop" for o in _orders(sim, "ACME")), 5.0)
            s.orders["stop"] = s.sell(data=d, size=5, exectype=bt.Order.Stop,
                                      price=round(d.close[0] * 0.95, 2), cid=own_cid,
                                      purpose="stop", handoff=h)

    s = _run(sim, creds, tmp_path, 4, script, {})
    stops = [o for o in _orders(sim, "ACME") if o.type == "stop"]
    with sim.market.lock:
        position = sim.market.positions["ACME"].qty
    assert position == 10 and len(stops) == 1 and stops[0].status in _OPEN
    assert stops[0].qty == 10 and stops[0].client_order_id.endswith("-stop2")
    posts = sim.posts  # type: ignore[attr-defined]
    assert posts.posts[stops[0].client_order_id] == 1 and own_cid not in posts.posts
    assert (own_cid, "Rejected", 0.0) in s.notes  # never sent: the Strategy is told
    journal = Journal(tmp_path / "state" / "journal.sqlite")
    rows = [r for r in journal.orders() if r.purpose == "stop"]
    assert [(r.cid, r.state) for r in rows if r.state is JournalState.ACCEPTED] == [
        (stops[0].client_order_id, JournalState.ACCEPTED)]


def test_stop_refused_through_the_market_exits_at_once(sim: SimServer, creds: Credentials,
                                                       tmp_path: Path) -> None:
    """Regression (real bars, AAPL 2021-08-25): a stop below the decision bar's close but at
    or above the current price was refused live ("422 stop price must be less than current
    price") and the position stayed naked until the Strategy's next bar tried the same stop
    again. Now the refusal sells the position at market at once, audited with the reason."""
    bars = [b for b in pd.read_parquet(BARS / "1Min" / "ACME.parquet").itertuples()
            if b.timestamp >= pd.Timestamp(REPLAY_START)][:4]
    # decision bar 13:31 (close 111.054); at the 13:32 boundary the price is 13:32's open
    level = round((bars[1].close + bars[2].open) / 2, 2)
    assert bars[2].open <= level < bars[1].close

    def script(s: Scripted, step: int) -> None:
        d = s.datas[0]
        if step == 1:
            s.buy(data=d, size=10, exectype=bt.Order.Market,
                  cid="ratchet-ACME-20251003T133000-entry", purpose="entry")
        elif step == 2:
            s.orders["stop"] = s.sell(data=d, size=10, exectype=bt.Order.Stop, price=level,
                                      cid="ratchet-ACME-20251003T133100-stop1",
                                      purpose="stop")

    _run(sim, creds, tmp_path, 4, script, {})
    orders = _orders(sim, "ACME")
    exits = [o for o in orders if o.client_order_id.endswith("-exit")]
    assert len(exits) == 1 and exits[0].type == "market" and exits[0].qty == 10
    assert exits[0].status == "filled"
    assert not any(o.type == "stop" for o in orders)  # refused: never created
    with sim.market.lock:
        pos = sim.market.positions.get("ACME")
    assert pos is None or pos.qty == 0
    audit = "\n".join(p.read_text() for p in (tmp_path / "logs").rglob("audit*"))
    assert "stop_refused" in audit and "less than current price" in audit


def test_exit_while_the_helper_threads_stop_is_in_flight_has_one_outcome(
        sim: SimServer, creds: Credentials, tmp_path: Path) -> None:
    """A working limit entry fills in the middle of a step (real time: at any moment); the
    helper thread's stop for it is still in flight (its POST not answered) when the
    Strategy, in that step, cancels the entry (too late) and exits at market, as
    ``RatchetStrategy._exit`` does. The exit takes the stop over first, cancels it, then
    sells. One outcome: the position is closed, no stop is left resting at the server (it
    would sell short when it triggers), each order was posted once, journal and server
    agree."""
    market = sim.market
    in_flight, answered = threading.Event(), threading.Event()
    submit = market.submit
    box: dict[str, bool] = {}

    def slow_stop(req: Any) -> Any:
        if req.type == "stop" and not in_flight.is_set():
            in_flight.set()
            time.sleep(0.3)  # the stop's answer is late: the exit is decided meanwhile
            try:
                return submit(req)
            finally:
                answered.set()
        return submit(req)

    market.submit = slow_stop  # type: ignore[method-assign]
    entry_cid, exit_cid = ("ratchet-ACME-20251003T133100-entry",
                           "ratchet-ACME-20251003T133200-exit")

    def fill_now() -> None:
        with market.lock:
            o = market.get_order_by_client_id(entry_cid)
            market._execute(o, market.book.last_closed("ACME", market.now_ns), 50.0)

    def script(s: Scripted, step: int) -> None:
        d = s.datas[0]
        if step == 2:  # far under the market: it works until the server fills it below
            h = rules.StopHandoff("ACME", "ratchet", float(d.atr[0]), 2.0, 0.03, seq=0)
            s.orders["entry"] = s.buy(data=d, size=5, exectype=bt.Order.Limit, price=50.0,
                                      cid=entry_cid, purpose="entry", handoff=h)
        elif step == 3:
            threading.Thread(target=fill_now).start()
            box["in_flight"] = in_flight.wait(5.0) and not answered.is_set()
            s.cancel(s.orders["entry"])  # the Strategy's exit: the entry first (too late)
            s.orders["exit"] = s.sell(data=d, size=5, exectype=bt.Order.Market, cid=exit_cid,
                                      purpose="exit")

    _run(sim, creds, tmp_path, 5, script, {})
    assert box.get("in_flight"), "the scenario did not happen: the stop was not in flight"
    orders = _orders(sim, "ACME")
    stops = [o for o in orders if o.type == "stop"]
    exits = [o for o in orders if o.client_order_id == exit_cid]
    with market.lock:
        pos = market.positions.get("ACME")
    assert pos is None or pos.qty == 0
    assert len(stops) == 1 and stops[0].status == "canceled"
    assert len(exits) == 1 and exits[0].status == "filled" and exits[0].qty == 5
    posts = sim.posts  # type: ignore[attr-defined]
    assert posts.duplicates() == {}
    journal = Journal(tmp_path / "state" / "journal.sqlite")
    row = journal.get(stops[0].client_order_id)
    assert row is not None and row.alpaca_status == "canceled"


def test_fill_event_during_startup_reconciliation_gives_one_stop(
        sim: SimServer, creds: Credentials, tmp_path: Path) -> None:
    """A limit entry of the last life is working when the bot starts again; it fills while
    startup reconciliation reads the open orders, so its fill event arrives on the stream
    in the middle of the reconciliation. The position is counted once (10, not 20) and
    ends with exactly one resting stop of its size; journal and server agree."""
    cid = "ratchet-ACME-20251003T132900-entry"
    journal = Journal(tmp_path / "state" / "journal.sqlite")
    client = AlpacaClient(creds, base_url=sim.base_url, trading_per_minute=1e6)
    spec = OrderSpec(cid, "ACME", OrderSide.BUY, OrderType.LIMIT, Decimal(10),
                     TimeInForce.DAY, limit_price=Decimal("50.00"))
    assert OrderGateway(client, journal).submit(spec, "entry").outcome is Outcome.ACCEPTED
    journal.close()
    market, box = sim.market, {"filled": False}
    list_orders = market.list_orders

    def filling(*args: Any, **kwargs: Any) -> Any:
        out = list_orders(*args, **kwargs)
        if not box["filled"] and any(o.client_order_id == cid for o in out):
            box["filled"] = True
            with market.lock:  # the entry fills right after the bot read it as working
                o = market.get_order_by_client_id(cid)
                market._execute(o, market.book.last_closed("ACME", market.now_ns), 50.0)
        return out

    market.list_orders = filling  # type: ignore[method-assign]
    session(sim, creds, tmp_path, 3, symbols=("ACME",), settings=Settings(symbols=("ACME",)))
    assert box["filled"]
    with market.lock:
        position = market.positions["ACME"].qty
    assert position == 10
    stops = [o for o in _orders(sim, "ACME") if o.type == "stop" and o.status in _OPEN]
    assert len(stops) == 1 and stops[0].remaining == 10
    assert sim.posts.duplicates() == {}  # type: ignore[attr-defined]
    state = json.loads((tmp_path / "state" / "portfolio_state.json").read_text())
    assert float(state["positions"]["ACME"]["qty"]) == 10
    journal = Journal(tmp_path / "state" / "journal.sqlite")
    open_stops = [r.cid for r in journal.orders() if r.purpose == "stop"
                  and r.state is JournalState.ACCEPTED and r.alpaca_status in _OPEN]
    assert open_stops == [stops[0].client_order_id]
    entry = journal.get(cid)
    assert entry is not None and entry.alpaca_status == "filled" and entry.filled_qty == 10
