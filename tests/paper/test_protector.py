"""``StopProtector`` (issue 17, second pass): which fills the helper thread protects.

No server: a gateway double records what the thread sends. The rules pinned here are what
keeps "exactly one stop per position" when the thread and the main loop both place stops.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from decimal import Decimal

from brokers.alpaca.client import OrderSpec
from brokers.alpaca.orders import Outcome, SubmitResult
from brokers.alpaca.parsing import OrderSnapshot, TradeUpdateRecord
from brokers.alpaca.protector import Armed, StopProtector
from strategies import rules

BAR = datetime(2025, 10, 3, 13, 32, tzinfo=UTC)


class Gateway:
    """Records submits; ``gate`` holds the POST until set (a request in flight)."""

    def __init__(self) -> None:
        self.sent: list[OrderSpec] = []
        self.journal_first: list[bool] = []
        self.gate = threading.Event()
        self.gate.set()

    def submit(self, spec: OrderSpec, purpose: str = "",
               decision_time: datetime | None = None,
               journal_first: bool = True) -> SubmitResult:
        self.gate.wait(5.0)
        self.sent.append(spec)
        self.journal_first.append(journal_first)
        return SubmitResult(Outcome.ACCEPTED, spec.client_order_id)


def _fill(cid: str, price: str = "100", position: str = "10",
          event: str = "fill", side: str = "buy") -> TradeUpdateRecord:
    snap = OrderSnapshot("id", cid, "ACME", side, "market", Decimal(10), Decimal(10),
                         Decimal(price), None, None, "filled", "day", False)
    return TradeUpdateRecord(event, snap, BAR, qty=Decimal(10), price=Decimal(price),
                             position_qty=Decimal(position))


def _armed(cid: str = "ratchet-ACME-20251003T133100-entry", seq: int = 0) -> Armed:
    return Armed(cid, "ACME", "ratchet", 1.5, 2.0, 0.03, seq)


def _protector() -> tuple[StopProtector, Gateway]:
    gw = Gateway()
    return StopProtector(gw, lambda symbol: BAR), gw  # type: ignore[arg-type]


def test_an_armed_fill_is_protected_at_the_rule_level_with_the_next_stop_number() -> None:
    p, gw = _protector()
    p.start()
    try:
        p.publish({a.entry_cid: a for a in [_armed(seq=2)]})
        assert p.on_event(_fill("ratchet-ACME-20251003T133100-entry", "100", "10"))
        job = p.take("ACME", timeout=5.0)
    finally:
        p.close()
    assert job is not None and job.result is not None
    level = rules.round_price(rules.initial_stop(100.0, 1.5, 2.0, 0.03).level)
    assert [(s.client_order_id, s.qty, s.stop_price) for s in gw.sent] == [
        ("ratchet-ACME-20251003T133200-stop3", Decimal(10), Decimal(str(level)))]
    assert job.seq == 3 and not p.busy("ACME")
    # sent before its intent is journaled (no fsync on the fill path; the id is
    # deterministic, so a crash in between is adopted at restart, never resent)
    assert gw.journal_first == [False]


def test_unarmed_claimed_paused_or_second_fill_starts_nothing() -> None:
    """Only fills the main thread allowed; after ``claim`` (the main thread sends a sell of
    the symbol) nothing until the next publish; one job per symbol; none while paused."""
    p, gw = _protector()
    entry = "ratchet-ACME-20251003T133100-entry"
    assert not p.on_event(_fill(entry))  # nothing published
    p.publish({entry: _armed()})
    assert not p.on_event(_fill(entry, event="new"))
    assert not p.on_event(_fill("other-cid"))
    assert not p.on_event(_fill(entry, side="sell"))
    assert p.claim("ACME") is None
    assert not p.on_event(_fill(entry))  # claimed by the main thread
    p.publish({entry: _armed()})
    with p.paused():
        assert not p.on_event(_fill(entry))
    p.publish({entry: _armed()})
    gw.gate.clear()  # the POST hangs: the job stays in flight
    p.start()
    try:
        assert p.on_event(_fill(entry))
        assert not p.on_event(_fill(entry, position="20"))  # one job per symbol
        job = p.claim("ACME")
        assert job is not None and p.busy("ACME")
        assert p.take("ACME", timeout=0.05) is None  # still in flight: still the thread's
        assert p.in_flight()  # the store's writes after the step wait for it
        gw.gate.set()
        assert job.done.wait(5.0) and not p.in_flight()  # answered, not yet taken
        assert p.take("ACME", timeout=5.0) is job
    finally:
        p.close()
    assert len(gw.sent) == 1


def test_a_level_through_the_fill_price_is_left_to_the_strategy() -> None:
    p, gw = _protector()
    entry = "ratchet-ACME-20251003T133100-entry"
    p.publish({entry: Armed(entry, "ACME", "ratchet", float("nan"), 2.0, -0.01, 0)})
    assert not p.on_event(_fill(entry))
    assert gw.sent == []
