"""Broker behaviours that a replay rarely hits on its own, driven by scripted strategies.

* a cancel that loses the race to a fill is normal: the stop's fill is applied, the exit is
  not sent and is reported Canceled (freqtrade #3647: cancel on timeout, exchange filled);
* an exit waits while the stop's cancel is unconfirmed (Alpaca holds the stop's quantity);
* a position found without a resting stop gets one before any trading;
* an intent journaled right before a crash is never POSTed by the restarted process;
* a failed open-orders read at attach stops the run (never "no orders");
* a stop canceled behind our back is noticed and replaced; unconfirmed cancels back off.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
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
from brokers.alpaca_sim.testing import SimServer
from feeds.store import read_bars
from ratchet.common.clock import FastForwardClock
from ratchet.common.config import Settings
from ratchet.common.errors import ConfigError
from tests.paper.conftest import BARS, REPLAY_START, session


class Scripted(bt.Strategy):
    """Calls ``script(strategy, step)`` on every bar; records every notification."""

    params = (("settings", None), ("audit", None), ("market_open", None), ("script", None))

    def __init__(self) -> None:
        self.step = 0
        self.closed_trades: list[dict[str, Any]] = []
        self.notes: list[tuple[str, str, float]] = []
        self.orders: dict[str, bt.Order] = {}

    def notify_order(self, order: bt.Order) -> None:
        self.notes.append((order.info.get("cid", ""), order.getstatusname(),
                           order.executed.size))

    def next(self) -> None:
        self.step += 1
        self.p.script(self, self.step)

    def export_state(self) -> dict[str, Any]:
        return {}


def _bars(symbol: str) -> list[Any]:
    # the replay's future bars, from the file the sim replays (the sim never serves them)
    frame = read_bars(BARS / "1Min" / f"{symbol}.parquet", REPLAY_START,
                      REPLAY_START + timedelta(minutes=60))
    return list(frame.itertuples(index=False))


def _run(sim: SimServer, creds: Credentials, root: Path, minutes: int,
         script: Callable[[Scripted, int], None], hooks: dict[int, Callable[[], None]],
         symbols: tuple[str, ...] = ("ACME",), **kw: Any) -> Scripted:
    box: dict[str, Scripted] = {}

    def wrapped(strat: Scripted, step: int) -> None:
        box["s"] = strat
        script(strat, step)

    session(sim, creds, root, minutes, symbols=symbols, settings=Settings(symbols=symbols),
            hooks=hooks, strategy_cls=Scripted, strategy_kwargs={"script": wrapped}, **kw)
    return box["s"]


def _stop_price_touched_soon(bars: list[Any]) -> tuple[float, int]:
    # a sell stop below the last trade when it is placed (Alpaca refuses it otherwise) that a
    # later bar's low touches
    price = round(min(bars[1].close, bars[2].open) - 0.01, 2)
    for k in range(2, len(bars)):
        if bars[k].low <= price:
            return price, k
    raise AssertionError("no bar touches the stop")


@pytest.mark.parametrize("sell_first", [False, True], ids=["cancel-then-sell", "sell-first"])
def test_cancel_that_loses_the_race_to_a_fill_is_normal(sim: SimServer, creds: Credentials,
                                                        tmp_path: Path, sell_first: bool) -> None:
    """Regression (exit sent after the stop filled = a short): the stop fill wins the race,
    whether the Strategy cancels the stop before the exit or sells first (the broker then
    cancels the stop itself: what ``RatchetStrategy`` does since issue 11)."""
    bars = _bars("ACME")
    stop_price, touched = _stop_price_touched_soon(bars)
    flags = {"filled_at_sim": False}

    def script(s: Scripted, step: int) -> None:
        d = s.datas[0]
        if step == 1:
            s.orders["entry"] = s.buy(data=d, size=10, exectype=bt.Order.Market,
                                      cid="ratchet-ACME-20251003T133000-entry",
                                      purpose="entry")
        elif step == 2:
            s.orders["stop"] = s.sell(data=d, size=10, exectype=bt.Order.Stop,
                                      price=stop_price, cid="ratchet-ACME-20251003T133100-stop1",
                                      purpose="stop")
        elif flags["filled_at_sim"] and "exit" not in s.orders:
            assert s.orders["stop"].alive()  # the broker has not heard of the fill yet
            if not sell_first:
                s.cancel(s.orders["stop"])
            s.orders["exit"] = s.sell(data=d, size=10, exectype=bt.Order.Market,
                                      cid="ratchet-ACME-20251003T140000-exit", purpose="exit")
            if sell_first:
                s.cancel(s.orders["stop"])

    def stop_filled() -> None:
        with sim.market.lock:
            flags["filled_at_sim"] = any(o.client_order_id.endswith("stop1")
                                         and o.status == "filled"
                                         for o in sim.market.orders.values())

    hooks: dict[int, Callable[[], None]] = {2: lambda: sim.faults.silence_stream("trading")}
    for k in range(3, touched + 4):
        hooks[k] = stop_filled
    strat = _run(sim, creds, tmp_path, touched + 5, script, hooks, fence_s=None)
    assert strat.orders["stop"].status == bt.Order.Completed
    assert strat.orders["exit"].status == bt.Order.Canceled
    assert "ratchet-ACME-20251003T140000-exit" not in sim.posts.posts  # type: ignore[attr-defined]
    assert strat.getposition(strat.datas[0]).size == 0
    # its intent, written while the stop was canceled, is withdrawn: never looked for
    row = Journal(tmp_path / "state" / "journal.sqlite").get("ratchet-ACME-20251003T140000-exit")
    assert row is not None and row.state is JournalState.LOST
    assert row.reason.startswith("not sent: no position left")
    with sim.market.lock:
        assert not any(p.qty for p in sim.market.positions.values())  # never short


def _enter_then_stop(s: Scripted, step: int) -> bool:
    """Steps 1-2 of the exit tests: 10 ACME at market, then its stop 10% below; False after."""
    d = s.datas[0]
    if step == 1:
        s.orders["entry"] = s.buy(data=d, size=10, exectype=bt.Order.Market,
                                  cid="ratchet-ACME-20251003T133000-entry", purpose="entry")
    elif step == 2:
        s.orders["stop"] = s.sell(data=d, size=10, exectype=bt.Order.Stop,
                                  price=round(d.close[0] * 0.9, 2),
                                  cid="ratchet-ACME-20251003T133100-stop1", purpose="stop")
    return step in (1, 2)


def _sell_behind_failing_deletes(sim: SimServer, s: Scripted, exit_cid: str) -> None:
    """Step 3 of the parked-exit tests: every DELETE fails 3 times (5xx, the client's retries
    spent), then the exit sell: its stop's cancel is not confirmed, the exit is parked."""
    sim.faults.server_error(500, method="DELETE", path="/v2/orders/*", times=3)
    s.orders["exit"] = s.sell(data=s.datas[0], size=10, exectype=bt.Order.Market,
                              cid=exit_cid, purpose="exit")


def _venue_events(sim: SimServer) -> list[tuple[str, str]]:
    """(client order id, event) of every trade update the server sent, in order."""
    with sim.market.lock:
        return [(e.order["client_order_id"], e.event) for e in sim.market.event_log]


def _canceled_before_sent(sim: SimServer, stop_cid: str, exit_cid: str) -> bool:
    """At the venue, the stop's ``canceled`` came before the exit's ``new`` (SPEC rule 1)."""
    events = _venue_events(sim)
    return events.index((stop_cid, "canceled")) < events.index((exit_cid, "new"))


def test_exit_waits_for_the_stop_cancel(sim: SimServer, creds: Credentials,
                                        tmp_path: Path) -> None:
    """The cancel fails for a while (5xx): the exit is parked, sent once the stop is gone."""

    def script(s: Scripted, step: int) -> None:
        d = s.datas[0]
        if _enter_then_stop(s, step):
            pass
        elif step == 3:
            sim.faults.server_error(500, method="DELETE", path="/v2/orders/*", times=3)
            s.cancel(s.orders["stop"])
            assert s.orders["stop"].alive()  # not confirmed: Alpaca still holds its qty
            s.orders["exit"] = s.sell(data=d, size=10, exectype=bt.Order.Market,
                                      cid="ratchet-ACME-20251003T133200-exit", purpose="exit")
            assert "ratchet-ACME-20251003T133200-exit" not in sim.posts.posts  # parked

    clock = FastForwardClock()  # the retries' backoff passes on it (no real sleep)
    slow = {k: (lambda: clock.advance(0.2)) for k in range(4, 9)}
    strat = _run(sim, creds, tmp_path, 10, script, slow, clock=clock)
    assert strat.orders["stop"].status == bt.Order.Canceled
    assert strat.orders["exit"].status == bt.Order.Completed
    assert sim.posts.posts["ratchet-ACME-20251003T133200-exit"] == 1  # type: ignore[attr-defined]
    assert _canceled_before_sent(sim, "ratchet-ACME-20251003T133100-stop1",
                                 "ratchet-ACME-20251003T133200-exit")


def test_parked_exit_journaled_early_survives_a_reconciliation(
        sim: SimServer, creds: Credentials, tmp_path: Path) -> None:
    """Regression (found in review of the early exit journal, issue 11): an exit parked
    behind its stop's unconfirmed cancel already has its journal row (INTENT). A
    reconciliation meanwhile (a stream reconnect) looked that row up at Alpaca, did not
    find it and resolved the parked exit as AMBIGUOUS: it was never sent, the position sat
    without its stop. Rows of orders not sent yet are not looked for: the exit goes out
    once, after the stop's cancel."""
    exit_cid = "ratchet-ACME-20251003T133200-exit"

    def script(s: Scripted, step: int) -> None:
        if _enter_then_stop(s, step):
            pass
        elif step == 3:
            _sell_behind_failing_deletes(sim, s, exit_cid)
            assert exit_cid not in sim.posts.posts  # type: ignore[attr-defined]  # parked
            s.broker.reconcile_now("stream reconnected")
            assert s.orders["exit"].alive()

    clock = FastForwardClock()
    slow = {k: (lambda: clock.advance(0.2)) for k in range(4, 9)}
    strat = _run(sim, creds, tmp_path, 10, script, slow, clock=clock)
    assert strat.orders["stop"].status == bt.Order.Canceled
    assert strat.orders["exit"].status == bt.Order.Completed
    assert sim.posts.posts[exit_cid] == 1  # type: ignore[attr-defined]
    row = Journal(tmp_path / "state" / "journal.sqlite").get(exit_cid)
    assert row is not None and row.state is JournalState.ACCEPTED


def test_position_without_stop_gets_one_before_trading(sim: SimServer, creds: Credentials,
                                                       tmp_path: Path) -> None:
    """A position at the broker with no resting stop (e.g. the stop was canceled by hand)."""
    client = AlpacaClient(creds, base_url=sim.base_url)
    client.submit_order(OrderSpec("manual-buy-1", "BOLT", OrderSide.BUY, OrderType.MARKET,
                                  Decimal(50), TimeInForce.DAY))
    sim.advance(minutes=1)
    result = session(sim, creds, tmp_path, 2, symbols=("BOLT",),
                     settings=Settings(symbols=("BOLT",)))
    assert "1 missing stop(s) to place" in result.reconcile or result.stops
    with sim.market.lock:
        stops = [o for o in sim.market.orders.values()
                 if o.type == "stop" and o.symbol == "BOLT" and o.status == "new"]
    assert len(stops) == 1 and float(stops[0].qty) == 50
    assert stops[0].client_order_id.startswith("ratchet-BOLT-")
    assert result.stops["BOLT"]["cid"] == stops[0].client_order_id


def test_intent_journaled_before_a_crash_is_never_posted(sim: SimServer, creds: Credentials,
                                                         tmp_path: Path) -> None:
    """Killed between the intent and the POST: the restarted process looks the order up; it
    is never sent (it becomes LOST once the lookups and the age say so)."""
    journal = Journal(tmp_path / "journal.sqlite")
    spec = OrderSpec("ratchet-ACME-20251003T133000-entry", "ACME", OrderSide.BUY,
                     OrderType.MARKET, Decimal(5), TimeInForce.DAY)
    journal.record_intent(spec.to_json(), "entry")  # ... and the process died here
    journal.close()
    client = AlpacaClient(creds, base_url=sim.base_url, backoff_base=0.01)
    gateway = OrderGateway(client, Journal(tmp_path / "journal.sqlite"), lost_after_s=0.0,
                           lost_after_lookups=2, resolve_attempts=1, sleep=lambda s: None)
    first = gateway.submit(spec, "entry")  # the restarted Strategy repeats the decision
    assert first.repeated and first.outcome is Outcome.AMBIGUOUS
    second = gateway.submit(spec, "entry")
    assert second.outcome is Outcome.LOST
    assert client.submit_count == 0 and sim.posts.posts == {}  # type: ignore[attr-defined]
    assert gateway.journal.get(spec.client_order_id).state is JournalState.LOST  # type: ignore[union-attr]


def test_failed_open_orders_read_at_attach_stops_the_run(sim: SimServer, creds: Credentials,
                                                         tmp_path: Path) -> None:
    """Regression (finding 8: a failed read treated as "no orders"): the open-orders read
    that hands working orders to the Strategy failed, and the run went on with [] -- the
    position was adopted with no stop while its real stop rested at Alpaca. Now the run
    stops like a failed startup read: not trading on a guess, nothing sent."""
    client = AlpacaClient(creds, base_url=sim.base_url)
    client.submit_order(OrderSpec("manual-buy-2", "ACME", OrderSide.BUY, OrderType.MARKET,
                                  Decimal(20), TimeInForce.DAY))
    sim.advance(minutes=1)
    stop_cid = "ratchet-ACME-20251003T133000-stop1"
    client.submit_order(OrderSpec(stop_cid, "ACME", OrderSide.SELL, OrderType.STOP,
                                  Decimal(20), TimeInForce.GTC, stop_price=Decimal("1.00")))
    fail = {0: lambda: sim.faults.server_error(500, method="GET", path="/v2/orders",
                                               times=10**6)}  # right before the first loop
    with pytest.raises(ConfigError, match="state is unknown"):
        session(sim, creds, tmp_path, 2, symbols=("ACME",),
                settings=Settings(symbols=("ACME",)), hooks=fail)
    assert set(sim.posts.posts) == {"manual-buy-2", stop_cid}  # type: ignore[attr-defined]
    with sim.market.lock:
        stops = [o for o in sim.market.orders.values() if o.type == "stop"]
    assert [(o.client_order_id, o.status) for o in stops] == [(stop_cid, "new")]


def test_stop_canceled_by_someone_else_is_noticed_and_replaced(
        sim: SimServer, creds: Credentials, tmp_path: Path) -> None:
    """Regression (finding 6): the broker checked for a missing stop only after a reconnect
    with differences. A stop canceled at Alpaca (dashboard) whose trade update never came,
    under a Strategy that does not re-place it: the periodic check reads it, and once the
    position has been naked for ``stop_grace_s`` the broker protects it."""
    cid = "ratchet-ACME-20251003T133100-stop1"
    client = AlpacaClient(creds, base_url=sim.base_url)

    def script(s: Scripted, step: int) -> None:
        _enter_then_stop(s, step)

    def cancel_by_hand() -> None:
        sim.faults.silence_stream("trading")  # its trade update never arrives
        snap = client.get_order_by_client_id(cid)
        assert snap is not None
        client.cancel_order(snap.id)

    clock = FastForwardClock()
    hooks: dict[int, Callable[[], None]] = {4: cancel_by_hand}
    # the grace periods pass on the injected clock (they slept ~3 s in real time)
    hooks.update({k: (lambda: clock.advance(0.25)) for k in range(5, 16)})
    strat = _run(sim, creds, tmp_path, 16, script, hooks, stop_grace=0.5, stop_audit=0.5,
                 clock=clock)
    assert strat.orders["stop"].status == bt.Order.Canceled  # read at Alpaca, not streamed
    with sim.market.lock:
        stops = {o.client_order_id: o for o in sim.market.orders.values() if o.type == "stop"}
    placed = [c for c in stops if c != cid]
    assert len(placed) == 1 and placed[0].startswith("ratchet-ACME-")  # exactly one new stop
    assert float(stops[placed[0]].qty) == 10 and stops[placed[0]].status in (
        "new", "accepted", "filled")  # resting (or already hit: it sits near the market)


def _far_limit(s: Scripted, cid: str) -> None:
    d = s.datas[0]
    s.orders["entry"] = s.buy(data=d, size=5, exectype=bt.Order.Limit,
                              price=round(d.close[0] * 0.5, 2), cid=cid, purpose="entry")


class Reads:
    """Counts the order reads (GET by id, lookup by client order id) the sim answers."""

    def __init__(self, sim: SimServer) -> None:
        self.n = 0
        market = sim.market
        by_id, by_cid = market.get_order, market.get_order_by_client_id

        def count(fn: Callable[[str], Any]) -> Callable[[str], Any]:
            def wrapped(key: str) -> Any:
                self.n += 1
                return fn(key)
            return wrapped

        market.get_order = count(by_id)  # type: ignore[method-assign]
        market.get_order_by_client_id = count(by_cid)  # type: ignore[method-assign]


def test_unconfirmed_cancel_backs_off_and_a_vanished_order_ends(
        sim: SimServer, creds: Credentials, tmp_path: Path) -> None:
    """Regression (finding 9): after a 404 on cancel the order was read on every loop
    (~50 ms) forever, draining the 200/min budget. Now: per-order backoff while it stays
    open; and 404 by id + "not found" by client order id ends it (Canceled, journal LOST)."""
    reads = Reads(sim)
    cid_a, cid_b = "ratchet-ACME-20251003T133000-entry", "ratchet-ACME-20251003T133200-entry"
    counted: dict[str, int] = {}

    def script(s: Scripted, step: int) -> None:
        if step == 1:
            _far_limit(s, cid_a)
        elif step == 3:  # the DELETE is answered 404 (not processed): the order lives on
            sim.faults.http_error(404, method="DELETE", path="/v2/orders/*", times=10**6)
            s.orders["a"] = s.orders.pop("entry")
            s.cancel(s.orders["a"])
            counted["start"] = reads.n
        elif step == 16:
            counted["end"] = reads.n
            counted["a_alive"] = s.orders["a"].alive()  # still open at Alpaca: not given up
            sim.faults.clear()
            _far_limit(s, cid_b)
        elif step == 17:  # B vanishes: 404 on DELETE, on GET by id, on lookup by cid
            sim.faults.http_error(404, method="DELETE", path="/v2/orders/*", times=10**6)
            sim.faults.http_error(404, method="GET", path="/v2/orders/*", times=10**6)
            sim.faults.http_error(404, method="GET", path="/v2/orders:by_client_order_id",
                                  times=10**6)
            s.cancel(s.orders["entry"])

    slow = {k: (lambda: time.sleep(0.25)) for k in range(3, 16)}  # ~3 s of real time
    strat = _run(sim, creds, tmp_path, 20, script, slow)
    # old: one GET per loop pass (dozens in 3 s); now a handful, spaced 0.25 s -> 30 s
    assert counted["end"] - counted["start"] <= 12
    assert counted["a_alive"]
    assert strat.orders["entry"].status == bt.Order.Canceled
    journal = Journal(tmp_path / "state" / "journal.sqlite")
    assert journal.get(cid_b).state is JournalState.LOST  # type: ignore[union-attr]


def test_fill_fence_waits_for_a_late_fill_of_an_order_already_acknowledged(
        sim: SimServer, creds: Credentials, tmp_path: Path) -> None:
    """Regression (issue 11, parity at 60x): the fill fence waited for "any event" of a
    working order the bar would fill, but an order sent in the last step has had its "new"
    event by then, so the fence skipped it and its fill raced the step: when the fill event
    came a little after the bar, the Strategy learned of it a bar late (a limit entry timed
    out in paper and filled in the backtest; parity 29-94% once the bar path got faster).
    Now it waits for a fill or an end: the Strategy sees the fill with the bar that made it."""
    bars = _bars("ACME")
    cid = "ratchet-ACME-20251003T133100-entry"
    limit = round((bars[2].open + bars[2].low) / 2, 2)  # fills as the 13:32 bar closes
    assert bars[2].low < limit < bars[2].open
    publish = sim.market.on_trade_event
    assert publish is not None

    def late_fill(e: Any) -> None:
        if e.event == "fill" and e.order.get("client_order_id") == cid:
            threading.Timer(0.25, publish, [e]).start()  # after the bar, within the fence
        else:
            publish(e)

    sim.market.on_trade_event = late_fill
    seen: dict[int, bool] = {}

    def script(s: Scripted, step: int) -> None:
        d = s.datas[0]
        if step == 2:
            s.orders["entry"] = s.buy(data=d, size=5, exectype=bt.Order.Limit, price=limit,
                                      cid=cid, purpose="entry")
        seen[step] = any(n[0] == cid and n[1] == "Completed" for n in s.notes)

    _run(sim, creds, tmp_path, 4, script, {})
    assert seen.get(3) is True  # the step of the 13:32 bar, as a backtest would


def test_exit_after_a_stop_cancel_confirmed_by_the_stream_reads_no_order(
        sim: SimServer, creds: Credentials, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (issue 11 latency): every confirmed cancel read the order back (GET) after
    the DELETE's answer although the stream's "canceled" event was already on its way; at 60x
    that read cost each exit 3-27 ms between the stop's cancel and the exit's POST. Now the
    stream thread signals the order's terminal update and the cancel applies it: the stop is
    Canceled in the same step with no read, the exit goes in that step, one outcome."""
    reads: list[str] = []
    for name in ("get_order", "get_order_by_client_id"):
        def counted(self: AlpacaClient, key: str, *a: Any,
                    _read: Any = getattr(AlpacaClient, name), **kw: Any) -> Any:
            reads.append(key)
            return _read(self, key, *a, **kw)
        monkeypatch.setattr(AlpacaClient, name, counted)
    seen: dict[str, Any] = {}

    def script(s: Scripted, step: int) -> None:
        d = s.datas[0]
        if _enter_then_stop(s, step):
            pass
        elif step == 3:
            before = len(reads)
            s.cancel(s.orders["stop"])
            seen["reads"], seen["stop"] = len(reads) - before, s.orders["stop"].getstatusname()
            s.orders["exit"] = s.sell(data=d, size=10, exectype=bt.Order.Market,
                                      cid="ratchet-ACME-20251003T133200-exit", purpose="exit")
        elif step == 4:  # sent from a worker (sender.py), answered before the next bar
            seen["posted"] = "ratchet-ACME-20251003T133200-exit" in sim.posts.posts  # type: ignore[attr-defined]

    strat = _run(sim, creds, tmp_path, 5, script, {})
    assert seen == {"reads": 0, "stop": "Canceled", "posted": True}
    assert strat.orders["exit"].status == bt.Order.Completed
    with sim.market.lock:
        assert not any(p.qty for p in sim.market.positions.values())
    journal = Journal(tmp_path / "state" / "journal.sqlite")
    row = journal.get("ratchet-ACME-20251003T133100-stop1")
    assert row is not None and row.alpaca_status == "canceled"


def test_exit_sold_before_its_stop_cancel_is_journaled_while_the_delete_is_out(
        sim: SimServer, creds: Credentials, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (issue 11, exits were the slowest orders at 60x: the stop's DELETE and its
    confirmation, THEN the exit's fsynced intent, THEN its POST). The Strategy now sells
    first and the broker cancels the resting stop itself before the exit: on 7a484ac a sell
    with a live stop went straight to Alpaca, which refuses it (the stop holds the shares).
    The exit's intent is written by a worker while the DELETE is out (held 0.3 s here); the
    POST still follows the stop's ``canceled``, once. Since the exit chain
    (``exit_chain.py``) the DELETE itself is out on a worker: ``sell`` returns before its
    answer (on b03f34b the main thread waited for the DELETE and its confirmation)."""
    exit_cid, stop_cid = "ratchet-ACME-20251003T133200-exit", "ratchet-ACME-20251003T133100-stop1"
    delete: dict[str, float] = {}
    returned: dict[str, bool] = {}
    real = AlpacaClient.cancel_order

    def slow_delete(self: AlpacaClient, order_id: str, *a: Any, **kw: Any) -> Any:
        delete["start"] = time.time()
        try:
            return real(self, order_id, *a, **kw)
        finally:
            time.sleep(0.3)  # the DELETE's answer is slow
            delete["end"] = time.time()

    monkeypatch.setattr(AlpacaClient, "cancel_order", slow_delete)

    def script(s: Scripted, step: int) -> None:
        d = s.datas[0]
        if _enter_then_stop(s, step):
            pass
        elif step == 3:
            s.orders["exit"] = s.sell(data=d, size=10, exectype=bt.Order.Market,
                                      cid=exit_cid, purpose="exit")
            returned["before_delete_answer"] = "end" not in delete
            # the broker cancels it on a worker, before the exit's POST
            assert s.orders["stop"].alive() and exit_cid not in sim.posts.posts

    strat = _run(sim, creds, tmp_path, 5, script, {})
    assert returned == {"before_delete_answer": True}  # the step did not wait for the DELETE
    assert strat.orders["stop"].status == bt.Order.Canceled
    assert strat.orders["exit"].status == bt.Order.Completed
    assert sim.posts.posts[exit_cid] == 1  # type: ignore[attr-defined]
    with sim.market.lock:
        assert not any(p.qty for p in sim.market.positions.values())
    assert _canceled_before_sent(sim, stop_cid, exit_cid)
    journal = Journal(tmp_path / "state" / "journal.sqlite")
    intent = [e["wall"] for e in journal.events(exit_cid) if e["kind"] == "intent"]
    assert len(intent) == 1 and intent[0] < delete["end"]  # not after the DELETE's answer
    row = journal.get(exit_cid)
    assert row is not None and row.state is JournalState.ACCEPTED
    assert row.alpaca_status == "filled"


def test_two_exits_of_a_step_cancel_their_stops_side_by_side(
        sim: SimServer, creds: Credentials, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (issue 11, the second exit of a step at 60x, ECHO 15:43 in the benchmark):
    the main thread sent each stop's DELETE and waited for its confirmation in turn, so the
    second exit of a step went out only after the first stop's cancel (b03f34b). Now each
    exit's chain (DELETE, ``canceled``, POST) runs on its own worker: the two DELETEs (each
    answered 0.3 s late here) are out at the same time, and each exit is still POSTed once,
    after its own stop's ``canceled``."""
    spans: dict[str, tuple[float, float]] = {}
    real = AlpacaClient.cancel_order

    def slow_delete(self: AlpacaClient, order_id: str, *a: Any, **kw: Any) -> Any:
        start = time.perf_counter()
        try:
            return real(self, order_id, *a, **kw)
        finally:
            time.sleep(0.3)
            spans[order_id] = (start, time.perf_counter())

    monkeypatch.setattr(AlpacaClient, "cancel_order", slow_delete)
    names = ("ACME", "BOLT")

    def script(s: Scripted, step: int) -> None:
        by_name = {d._name: d for d in s.datas}
        for name in names:
            d = by_name[name]
            if step == 1:
                s.orders[f"{name}-entry"] = s.buy(
                    data=d, size=10, exectype=bt.Order.Market,
                    cid=f"ratchet-{name}-20251003T133000-entry", purpose="entry")
            elif step == 2:
                s.orders[f"{name}-stop"] = s.sell(
                    data=d, size=10, exectype=bt.Order.Stop, price=round(d.close[0] * 0.9, 2),
                    cid=f"ratchet-{name}-20251003T133100-stop1", purpose="stop")
            elif step == 3:
                s.orders[f"{name}-exit"] = s.sell(
                    data=d, size=10, exectype=bt.Order.Market,
                    cid=f"ratchet-{name}-20251003T133200-exit", purpose="exit")
                s.cancel(s.orders[f"{name}-stop"])  # as RatchetStrategy._exit: sell, then cancel

    strat = _run(sim, creds, tmp_path, 5, script, {}, symbols=names)
    assert len(spans) == 2
    (a_start, a_end), (b_start, b_end) = sorted(spans.values())
    assert b_start < a_end  # the second DELETE went out while the first was unanswered
    with sim.market.lock:
        assert not any(p.qty for p in sim.market.positions.values())
    for name in names:
        stop_cid, exit_cid = (f"ratchet-{name}-20251003T133100-stop1",
                              f"ratchet-{name}-20251003T133200-exit")
        assert strat.orders[f"{name}-stop"].status == bt.Order.Canceled
        assert strat.orders[f"{name}-exit"].status == bt.Order.Completed
        assert sim.posts.posts[exit_cid] == 1  # type: ignore[attr-defined]
        assert _canceled_before_sent(sim, stop_cid, exit_cid)
        assert [n[1] for n in strat.notes if n[0] == stop_cid][-1] == "Canceled"


def test_exit_whose_stop_cancel_is_not_signaled_reads_the_stop_then_sends(
        sim: SimServer, creds: Credentials, tmp_path: Path) -> None:
    """The exit chain without the stream: the stop's DELETE is accepted but its ``canceled``
    never comes (trading stream silenced). The worker reads the stop, as the main thread's
    confirmation did, finds it canceled and POSTs the exit in the same step: not parked until
    a later loop turn (found in review of the chain's first version, 6cc9b8e, which parked
    it: fails there)."""
    exit_cid, stop_cid = "ratchet-ACME-20251003T133200-exit", "ratchet-ACME-20251003T133100-stop1"
    seen: dict[str, Any] = {}

    def script(s: Scripted, step: int) -> None:
        d = s.datas[0]
        if _enter_then_stop(s, step):
            pass
        elif step == 3:
            sim.faults.silence_stream("trading")
            s.orders["exit"] = s.sell(data=d, size=10, exectype=bt.Order.Market,
                                      cid=exit_cid, purpose="exit")
            s.cancel(s.orders["stop"])
        elif step == 4:
            seen["posts"] = sim.posts.posts.get(exit_cid, 0)  # type: ignore[attr-defined]
            seen["stop"] = s.orders["stop"].getstatusname()

    strat = _run(sim, creds, tmp_path, 6, script, {}, fence_s=None)
    assert seen == {"posts": 1, "stop": "Canceled"}
    assert strat.orders["exit"].status == bt.Order.Completed
    assert sim.posts.posts[exit_cid] == 1  # type: ignore[attr-defined]
    with sim.market.lock:
        assert not any(p.qty for p in sim.market.positions.values())
    assert _canceled_before_sent(sim, stop_cid, exit_cid)
    journal = Journal(tmp_path / "state" / "journal.sqlite")
    assert [e["kind"] for e in journal.events(exit_cid)].count("intent") == 1
    row = journal.get(exit_cid)
    assert row is not None and row.state is JournalState.ACCEPTED
    audit = pd.read_csv(tmp_path / "logs" / "audit_trail.csv")
    assert len(audit) > 0 and "park" not in set(audit["action"])


@pytest.mark.parametrize("cancel_too", [True, False], ids=["sell-then-cancel", "sell-only"])
def test_exit_parked_on_the_last_step_is_sent_at_shutdown(
        sim: SimServer, creds: Credentials, tmp_path: Path, cancel_too: bool) -> None:
    """Regression (found in review, issue 11): an exit decided on the last step whose stop's
    DELETE failed was parked; no loop turn came to send it, and the shutdown withdrew its
    journal row: the decision was lost and the position carried into the next run, its stop
    possibly canceled. Now the shutdown confirms the stop's cancel (sending the DELETE again)
    and sends the exit, once. sell-then-cancel (``RatchetStrategy._exit``) fails on 6cc9b8e,
    the chain's first version; sell-only fails on b03f34b too."""
    exit_cid, stop_cid = "ratchet-ACME-20251003T133200-exit", "ratchet-ACME-20251003T133100-stop1"

    def script(s: Scripted, step: int) -> None:
        if _enter_then_stop(s, step):
            pass
        elif step == 3:
            _sell_behind_failing_deletes(sim, s, exit_cid)
            if cancel_too:
                s.cancel(s.orders["stop"])

    strat = _run(sim, creds, tmp_path, 3, script, {})
    assert sim.posts.posts.get(exit_cid) == 1  # type: ignore[attr-defined]
    assert strat.orders["stop"].status == bt.Order.Canceled
    assert _canceled_before_sent(sim, stop_cid, exit_cid)
    row = Journal(tmp_path / "state" / "journal.sqlite").get(exit_cid)
    assert row is not None and row.state is JournalState.ACCEPTED


def test_second_order_of_a_step_goes_out_before_the_first_is_answered(
        sim: SimServer, creds: Credentials, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (issue 11, bar arrival -> order at 60x): the second order of a step was sent
    only after the first order's POST had been answered and applied, 9-27 ms behind it: the
    slowest entries of a rehearsal. Now a step's orders for different symbols go out side by
    side (``sender.py``). The first order's answer, held back here 0.3 s after the server
    created and filled it, is still applied before its fill event (never an older answer
    over a newer state): Submitted, Accepted, Completed, one fill."""
    first, second = "ratchet-ACME-20251003T133000-entry", "ratchet-BOLT-20251003T133000-entry"
    calls: dict[str, tuple[float, float]] = {}
    real = AlpacaClient.submit_order

    def late_answer(self: AlpacaClient, spec: OrderSpec) -> Any:
        start = time.perf_counter()
        try:
            return real(self, spec)
        finally:
            if spec.client_order_id == first:
                time.sleep(0.3)  # created and filled at the server; the answer comes late
            calls[spec.client_order_id] = (start, time.perf_counter())

    monkeypatch.setattr(AlpacaClient, "submit_order", late_answer)

    def script(s: Scripted, step: int) -> None:
        if step == 1:
            by_name = {d._name: d for d in s.datas}
            for key, cid in (("ACME", first), ("BOLT", second)):
                s.orders[key] = s.buy(data=by_name[key], size=10, exectype=bt.Order.Market,
                                      cid=cid, purpose="entry")

    strat = _run(sim, creds, tmp_path, 3, script, {}, symbols=("ACME", "BOLT"))
    assert calls[second][0] < calls[first][1]  # sent while the first's answer was out
    assert [n[1] for n in strat.notes if n[0] == first] == ["Submitted", "Accepted",
                                                            "Completed"]
    assert strat.orders["ACME"].executed.size == 10
    assert strat.orders["BOLT"].status == bt.Order.Completed
    row = Journal(tmp_path / "state" / "journal.sqlite").get(first)
    assert row is not None and row.state is JournalState.ACCEPTED
    assert row.alpaca_status == "filled" and row.filled_qty == Decimal(10)
