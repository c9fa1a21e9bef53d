"""``client.py`` and ``orders.py`` against the loopback Alpaca through the real alpaca-py.

The faults are the ones reliability.md §2 and §5 list: 504 after the order was accepted, a
lost response, 429, 5xx, a duplicate client order id, a failed positions read.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from alpaca.trading.enums import OrderSide, OrderType, TimeInForce

from brokers.alpaca.client import AlpacaClient, CancelResult, OrderSpec
from brokers.alpaca.credentials import Credentials
from brokers.alpaca.journal import DuplicateIntentError, Journal, JournalState
from brokers.alpaca.orders import OrderGateway, Outcome
from brokers.alpaca_sim.testing import SimServer
from ratchet.common.errors import AmbiguousOrderError, UnknownStateError
from tests.conftest import wait_for

CID = "ratchet-ACME-20251003T133000-entry"


def _client(sim: SimServer, creds: Credentials) -> AlpacaClient:
    return AlpacaClient(creds, base_url=sim.base_url, timeout=(2.0, 3.0), backoff_base=0.01,
                        rate_limit_max_wait=0.2)


def _gateway(sim: SimServer, creds: Credentials, tmp_path: Path,
             **kw: float) -> tuple[OrderGateway, Journal]:
    journal = Journal(tmp_path / "journal.sqlite")
    return OrderGateway(_client(sim, creds), journal, **kw), journal  # type: ignore[arg-type]


def _market(cid: str = CID, qty: int = 5) -> OrderSpec:
    return OrderSpec(cid, "ACME", OrderSide.BUY, OrderType.MARKET, Decimal(qty), TimeInForce.DAY)


def _orders_at_sim(sim: SimServer, cid: str) -> int:
    with sim.market.lock:
        return sum(1 for o in sim.market.orders.values() if o.client_order_id == cid)


def test_submit_is_journaled_then_accepted(sim: SimServer, creds: Credentials,
                                           tmp_path: Path) -> None:
    gw, journal = _gateway(sim, creds, tmp_path)
    result = gw.submit(_market(), "entry")
    assert result.outcome is Outcome.ACCEPTED and result.snapshot is not None
    row = journal.get(CID)
    assert row is not None and row.state is JournalState.ACCEPTED
    assert row.alpaca_id == result.snapshot.id
    kinds = [e["kind"] for e in journal.events(CID)]
    assert kinds[:2] == ["intent", "accepted"]  # the intent was written before the answer


def test_fill_stop_is_sent_first_and_journaled_after(sim: SimServer, creds: Credentials,
                                                     tmp_path: Path) -> None:
    """Regression (issue 17): the protective stop of a fill waited for an fsynced intent
    (7-15 ms of naked time per fill) before its POST. ``send_then_journal`` POSTs first:
    when the server takes the order the journal has no row yet; after the answer, intent
    and acceptance are one row. A lost answer is resolved by lookup, and a client order id
    already journaled is never sent again.

    Regression (issue 17, naked time): that never-resend check read the journal under its
    lock, so a fill's stop waited for any fsynced write the main thread was in. It now
    reads an in-memory set of the journal's client order ids (rebuilt at every open): the
    POST reaches the server while another thread holds the lock."""
    gw, journal = _gateway(sim, creds, tmp_path)
    assert gw.submit(_market(qty=15), "entry").outcome is Outcome.ACCEPTED
    sim.advance(minutes=1)  # filled: 15 shares to protect
    stop = OrderSpec("ratchet-ACME-20251003T133100-stop1", "ACME", OrderSide.SELL,
                     OrderType.STOP, Decimal(5), TimeInForce.GTC, stop_price=Decimal("90"))
    seen: list[object] = []
    submit = sim.market.submit

    def spying(req: object) -> object:
        seen.append(journal.get(stop.client_order_id))
        return submit(req)

    sim.market.submit = spying  # type: ignore[method-assign]
    result = gw.submit(stop, "stop", journal_first=False)
    sim.market.submit = submit  # type: ignore[method-assign]
    assert seen == [None]  # nothing journaled when the server took it
    assert result.outcome is Outcome.ACCEPTED and result.snapshot is not None
    row = journal.get(stop.client_order_id)
    assert row is not None and row.state is JournalState.ACCEPTED
    assert row.alpaca_id == result.snapshot.id and row.purpose == "stop"
    assert [e["kind"] for e in journal.events(stop.client_order_id)] == ["intent", "accepted"]
    again = gw.submit(stop, "stop", journal_first=False)  # journaled: looked up, not sent
    assert again.repeated and again.outcome is Outcome.ACCEPTED
    lost = OrderSpec("ratchet-ACME-20251003T133100-stop2", "ACME", OrderSide.SELL,
                     OrderType.STOP, Decimal(5), TimeInForce.GTC, stop_price=Decimal("90"))
    sim.faults.lose_response(status=None)
    assert gw.submit(lost, "stop", journal_first=False).outcome is Outcome.ACCEPTED
    assert journal.get(lost.client_order_id).state is JournalState.ACCEPTED  # type: ignore[union-attr]
    posts = sim.posts.posts  # type: ignore[attr-defined]
    assert posts[stop.client_order_id] == 1 and posts[lost.client_order_id] == 1
    third = OrderSpec("ratchet-ACME-20251003T133100-stop3", "ACME", OrderSide.SELL,
                      OrderType.STOP, Decimal(5), TimeInForce.GTC, stop_price=Decimal("90"))
    results: list[object] = []
    with journal._lock:  # the main thread inside an fsynced journal write
        worker = threading.Thread(target=lambda: results.append(
            gw.submit(third, "stop", journal_first=False)))
        worker.start()
        wait_for(lambda: posts[third.client_order_id] == 1, 5.0,
                 "the stop's POST while the journal's lock is held")
    worker.join(5.0)
    assert [r.outcome for r in results] == [Outcome.ACCEPTED]  # type: ignore[attr-defined]
    reopened = Journal(journal.path)  # a restart: the ids come back from the file
    assert reopened.has(third.client_order_id) and reopened.has(lost.client_order_id)
    assert not reopened.has("ratchet-ACME-20251003T133100-stop4")
    assert OrderGateway(gw.client, reopened).submit(third, "stop", journal_first=False).repeated
    assert posts[third.client_order_id] == 1


def test_exit_journaled_early_is_posted_once_with_its_final_qty(
        sim: SimServer, creds: Credentials, tmp_path: Path) -> None:
    """An exit's intent written while its stop's cancel was out (``journal_intent`` on a
    worker), then clipped to 3 by the stop's partial fill: the row is revised to what is
    POSTed, the intent is not written twice, one POST."""
    gw, journal = _gateway(sim, creds, tmp_path)
    early: Future[dict[str, Any]] = Future()
    early.set_result(gw.journal_intent(_market(qty=5), "exit"))
    result = gw.submit(_market(qty=3), "exit", early=early)
    assert result.outcome is Outcome.ACCEPTED and sim.posts.posts[CID] == 1  # type: ignore[attr-defined]
    row = journal.get(CID)
    assert row is not None and row.qty == Decimal(3) and row.state is JournalState.ACCEPTED
    assert [e["kind"] for e in journal.events(CID)][:3] == ["intent", "revised", "accepted"]


def test_exit_journaled_before_is_never_sent_again(sim: SimServer, creds: Credentials,
                                                   tmp_path: Path) -> None:
    """The early write found the client order id journaled already (a restart repeating the
    decision): nothing is sent; the row decides (``_known``)."""
    gw, journal = _gateway(sim, creds, tmp_path)
    journal.record_intent(_market().to_json(), "exit")
    journal.mark_rejected(CID, "refused before the restart")
    early: Future[dict[str, Any]] = Future()
    try:
        early.set_result(gw.journal_intent(_market(), "exit"))
    except DuplicateIntentError as exc:
        early.set_exception(exc)
    result = gw.submit(_market(), "exit", early=early)
    assert result.outcome is Outcome.REJECTED and result.repeated
    assert CID not in sim.posts.posts  # type: ignore[attr-defined]


def test_withdrawn_intent_ends_lost_and_a_sent_row_is_left_alone(tmp_path: Path) -> None:
    """An exit journaled early but never sent (the stop filled first) ends LOST; a row
    already past INTENT (POSTed) is never withdrawn."""
    journal = Journal(tmp_path / "journal.sqlite")
    journal.record_intent(_market().to_json(), "exit")
    assert journal.withdraw(CID, "not sent: no position left")
    row = journal.get(CID)
    assert row is not None and row.state is JournalState.LOST
    assert row.reason == "not sent: no position left"
    other = "ratchet-ACME-20251003T133000-exit"
    journal.record_intent(_market(other).to_json(), "exit")
    journal.mark_accepted(other, "alpaca-1", "new")
    assert not journal.withdraw(other, "not sent")
    assert journal.get(other).state is JournalState.ACCEPTED  # type: ignore[union-attr]


def test_504_after_accept_creates_no_duplicate(sim: SimServer, creds: Credentials,
                                               tmp_path: Path) -> None:
    """Regression (alpaca-py retries POST /v2/orders on 504): duplicate POST after 504."""
    sim.faults.lose_response(status=504)
    gw, journal = _gateway(sim, creds, tmp_path)
    result = gw.submit(_market(), "entry")
    assert result.outcome is Outcome.ACCEPTED
    assert sim.posts.posts[CID] == 1  # type: ignore[attr-defined]
    assert _orders_at_sim(sim, CID) == 1
    assert journal.get(CID).state is JournalState.ACCEPTED  # type: ignore[union-attr]


def test_lost_response_is_resolved_by_lookup(sim: SimServer, creds: Credentials,
                                             tmp_path: Path) -> None:
    """The connection drops after Alpaca accepted the order: found by client order id."""
    sim.faults.lose_response(status=None)
    gw, _ = _gateway(sim, creds, tmp_path)
    result = gw.submit(_market(), "entry")
    assert result.outcome is Outcome.ACCEPTED
    assert sim.posts.posts[CID] == 1  # type: ignore[attr-defined]
    assert _orders_at_sim(sim, CID) == 1


def test_429_creates_no_order_and_is_not_resent(sim: SimServer, creds: Credentials,
                                                tmp_path: Path) -> None:
    """Regression (alpaca-py retries on 429): a rate-limited POST is refused, not resent."""
    sim.faults.rate_limit(method="POST", path="/v2/orders", times=1)
    gw, journal = _gateway(sim, creds, tmp_path)
    client = gw.client
    result = gw.submit(_market(), "entry")
    assert result.outcome is Outcome.REJECTED and result.reason == "rate_limited"
    assert client.submit_count == 1
    assert _orders_at_sim(sim, CID) == 0
    assert journal.get(CID).state is JournalState.REJECTED  # type: ignore[union-attr]
    # a repeat of the same decision is answered from the journal, never sent again
    again = gw.submit(_market(), "entry")
    assert again.repeated and again.outcome is Outcome.REJECTED
    assert client.submit_count == 1


def test_500_not_processed_becomes_lost_only_after_lookups_and_age(
        sim: SimServer, creds: Credentials, tmp_path: Path) -> None:
    """An ambiguous order is LOST only after N not-found lookups AND an age threshold."""
    sim.faults.server_error(500, method="POST", path="/v2/orders")
    gw, journal = _gateway(sim, creds, tmp_path, lost_after_lookups=3, lost_after_s=0.3,
                           resolve_attempts=1)
    first = gw.submit(_market(), "entry")
    assert first.outcome is Outcome.AMBIGUOUS
    assert gw.resolve(CID, attempts=1).outcome is Outcome.AMBIGUOUS  # 2 lookups
    assert gw.resolve(CID, attempts=1).outcome is Outcome.AMBIGUOUS  # 3 lookups, too young
    time.sleep(0.35)
    assert gw.resolve(CID, attempts=1).outcome is Outcome.LOST
    assert journal.get(CID).state is JournalState.LOST  # type: ignore[union-attr]
    assert gw.client.submit_count == 1


def test_duplicate_client_order_id_resolves_to_the_existing_order(
        sim: SimServer, creds: Credentials, tmp_path: Path) -> None:
    """"client_order_id must be unique" means it exists (the journal was lost): adopt it."""
    gw1, _ = _gateway(sim, creds, tmp_path / "a")
    first = gw1.submit(_market(), "entry")
    gw2, journal2 = _gateway(sim, creds, tmp_path / "b")  # an empty journal
    second = gw2.submit(_market(), "entry")
    assert second.outcome is Outcome.ACCEPTED
    assert second.snapshot is not None and first.snapshot is not None
    assert second.snapshot.id == first.snapshot.id
    assert _orders_at_sim(sim, CID) == 1


def test_restart_repeating_a_decision_is_not_resent(sim: SimServer, creds: Credentials,
                                                    tmp_path: Path) -> None:
    gw, journal = _gateway(sim, creds, tmp_path)
    gw.submit(_market(), "entry")
    journal.close()
    gw2, _ = _gateway(sim, creds, tmp_path)  # same journal file: a restarted process
    again = gw2.submit(_market(), "entry")
    assert again.repeated and again.outcome is Outcome.ACCEPTED
    assert gw2.client.submit_count == 0
    assert sim.posts.posts[CID] == 1  # type: ignore[attr-defined]


def test_failed_positions_read_is_unknown_never_flat(sim: SimServer, creds: Credentials) -> None:
    """Regression (nautilus #4228): a failed positions read returned [] = "flat"."""
    client = _client(sim, creds)
    sim.faults.server_error(500, method="GET", path="/v2/positions", times=10)
    with pytest.raises(UnknownStateError, match="positions unknown"):
        client.get_positions()


def test_reads_are_retried_with_backoff(sim: SimServer, creds: Credentials) -> None:
    client = _client(sim, creds)
    sim.faults.server_error(503, method="GET", path="/v2/account", times=2)
    assert client.get_account().cash == Decimal("100000")


def test_sdk_retry_is_disabled(sim: SimServer, creds: Credentials) -> None:
    client = _client(sim, creds)
    assert client.trading._retry == 0 and client.trading._retry_codes == []
    assert client.data._retry == 0


def test_cancel_after_fill_is_already_done(sim: SimServer, creds: Credentials,
                                           tmp_path: Path) -> None:
    """A cancel that loses the race to a fill is normal: 422 -> ALREADY_DONE."""
    gw, _ = _gateway(sim, creds, tmp_path)
    snap = gw.submit(_market(), "entry").snapshot
    assert snap is not None
    sim.advance(minutes=1)
    assert gw.cancel(snap.id) is CancelResult.ALREADY_DONE
    filled = gw.client.get_order(snap.id)
    assert filled is not None and filled.status == "filled"


def test_bars_history_pages(sim: SimServer, creds: Credentials) -> None:
    from datetime import timedelta

    client = _client(sim, creds)
    start = sim.now() - timedelta(days=3)
    bars = client.get_bars(["ACME", "BOLT"], start, sim.now() - timedelta(microseconds=1))
    assert len(bars["ACME"]) == 780 and len(bars["BOLT"]) == 780  # two sessions
    ts = [b.ts for b in bars["ACME"]]
    assert ts == sorted(set(ts))


class _WouldWait(Exception):
    pass


def test_protective_stop_never_waits_behind_the_rate_budget(sim: SimServer,
                                                            creds: Credentials) -> None:
    """Regression (issue 11.7): one 429 paused every request, protective stops included, for
    up to 60 s. Placing or ratcheting a stop goes out at once; entries still wait."""
    client = AlpacaClient(creds, base_url=sim.base_url, timeout=(2.0, 3.0),
                          backoff_base=0.01, rate_limit_max_wait=20.0)
    client.submit_order(_market(qty=5))
    sim.advance(minutes=1)
    bucket = client.trading_bucket
    bucket.update({"X-RateLimit-Remaining": "0",
                   "X-RateLimit-Reset": str(time.time() + 50)}, 429)  # a 429 just came back
    stop = OrderSpec("ratchet-ACME-20251003T133100-stop", "ACME", OrderSide.SELL,
                     OrderType.STOP, Decimal(5), TimeInForce.GTC, stop_price=Decimal("1.00"))
    t0 = time.monotonic()
    placed = client.submit_order(stop)
    raised = client.replace_order(placed.id, "ratchet-ACME-20251003T133200-stop",
                                  stop_price=Decimal("1.50"))
    assert time.monotonic() - t0 < 2.0
    assert raised.stop_price == Decimal("1.50") and bucket.urgent_sent == 2

    def refuse_to_sleep(seconds: float) -> None:
        raise _WouldWait(seconds)

    bucket._sleep = refuse_to_sleep
    with pytest.raises(AmbiguousOrderError, match="_WouldWait"):  # entries still wait
        client.submit_order(_market("ratchet-BOLT-20251003T133100-entry"))
    assert _orders_at_sim(sim, "ratchet-BOLT-20251003T133100-entry") == 0
