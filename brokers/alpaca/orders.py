"""Idempotent order submission: intent first, one POST, ambiguity resolved by lookup.

Implements the client side of POST /v2/orders with ``client_order_id`` and of
GET /v2/orders:by_client_order_id (docs.alpaca.markets/reference/postorder,
.../getorderbyclientorderid), following reliability.md §2 "Our design":

1. The client order id is deterministic (``strategies.rules.client_order_id``) and unique.
2. The intent is written to the journal and synced BEFORE the POST. Exceptions, both with a
   deterministic client order id so that a crash between the request and the journal write
   is resolved at restart by adopting the order from Alpaca's open orders (never resent):
   the protective stop of an entry fill (``send_then_journal``) and the PATCH of a stop
   (``replace``); they are journaled, synced, right after the answer.
3. The POST is sent once, with alpaca-py's own retry switched off (``client.py``).
4. The failure is classified: refused -> REJECTED; anything else -> AMBIGUOUS, resolved by
   looking the order up by its client order id with backoff. It becomes LOST (never created)
   only after ``lost_after_lookups`` "not found" answers AND ``lost_after_s`` seconds of age
   (an order Alpaca accepted is visible at once, but a stale read must not kill a live one).
5. A client order id already in the journal is never sent again, whatever its state: a
   restart that repeats a decision finds the journal row and resolves it instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from brokers.alpaca.client import AlpacaClient, CancelResult, OrderSpec, SubmitOutcome
from brokers.alpaca.journal import DuplicateIntentError, Journal, JournalOrder, JournalState
from brokers.alpaca.parsing import OrderSnapshot
from brokers.alpaca.throttle import Backoff
from ratchet.common.errors import AmbiguousOrderError, BrokerError, RejectedError, RetryableError

logger = logging.getLogger(__name__)


class Outcome(StrEnum):
    """Result of a submission (or of resolving one)."""

    ACCEPTED = "accepted"  # Alpaca has it: ``snapshot`` is its state
    REJECTED = "rejected"  # refused: nothing exists
    AMBIGUOUS = "ambiguous"  # still unknown: try ``resolve`` later, never resend
    LOST = "lost"  # never reached Alpaca (not found after lookups and age): nothing exists


@dataclass(frozen=True)
class SubmitResult:
    """What happened to one order submission."""

    outcome: Outcome
    cid: str
    snapshot: OrderSnapshot | None = None
    reason: str = ""
    repeated: bool = False  # the cid was already journaled: nothing was sent this time


class OrderGateway:
    """Sends orders through ``client`` with the journal's guarantees."""

    def __init__(
        self,
        client: AlpacaClient,
        journal: Journal,
        resolve_attempts: int = 3,
        lost_after_lookups: int = 3,
        lost_after_s: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.journal = journal
        self.resolve_attempts = resolve_attempts
        self.lost_after_lookups = lost_after_lookups
        self.lost_after_s = lost_after_s
        self._sleep = sleep
        self._wall = wall

    def submit(self, spec: OrderSpec, purpose: str = "",
               decision_time: datetime | None = None, replaces: str | None = None,
               journal_first: bool = True,
               early: Future[dict[str, Any]] | None = None) -> SubmitResult:
        """Journal the intent, POST once, classify; resolve an ambiguous outcome by lookup.

        ``journal_first=False`` (the protective stop of a fill only): POST first, journal
        right after (``send_then_journal``). ``early``: the intent is being written already
        (``journal_intent`` on another thread, an exit while its stop's DELETE is out): wait
        for it instead of writing it again."""
        if not journal_first:
            return self.send_then_journal(spec, purpose, decision_time)
        cid = spec.client_order_id
        if early is None or not self._journaled_early(spec, early):
            try:
                self.journal.record_intent(spec.to_json(), purpose, decision_time, replaces)
            except DuplicateIntentError:
                row = self.journal.get(cid)
                logger.warning("order %s is already in the journal (%s): not sending it again",
                               cid, row.state.value if row else "?")
                return self._known(cid)
        try:
            snap = self.client.submit_order(spec)
        except RejectedError as exc:
            self.journal.mark_rejected(cid, str(exc))
            return SubmitResult(Outcome.REJECTED, cid, reason=str(exc))
        except AmbiguousOrderError as exc:
            outcome = getattr(exc, "outcome", SubmitOutcome.AMBIGUOUS)
            self.journal.mark_ambiguous(cid, f"{outcome.value}: {exc}")
            logger.warning("order %s: %s; looking it up by client order id", cid, exc)
            return self.resolve(cid)
        self.journal.mark_accepted(cid, snap.id, snap.status)
        return SubmitResult(Outcome.ACCEPTED, cid, snap)

    def journal_intent(self, spec: OrderSpec, purpose: str = "",
                       decision_time: datetime | None = None) -> dict[str, Any]:
        """Write ``spec``'s intent (synced) ahead of its POST; the spec as written. Raises
        ``DuplicateIntentError`` when the client order id is journaled already."""
        written = spec.to_json()
        self.journal.record_intent(written, purpose, decision_time)
        return written

    def _journaled_early(self, spec: OrderSpec, early: Future[dict[str, Any]]) -> bool:
        """True: ``early`` wrote this order's intent (revised to ``spec`` if the order
        changed meanwhile). False: it did not (already journaled, or the write failed):
        ``submit`` writes it now, and a row already there is never sent again."""
        try:
            written = early.result()
        except DuplicateIntentError:
            return False
        except Exception as exc:  # noqa: BLE001 - the normal path writes it (or finds it)
            logger.warning("order %s: early journal write failed (%s)", spec.client_order_id,
                           exc)
            return False
        now = spec.to_json()
        if now != written:
            self.journal.revise_intent(spec.client_order_id, now)
        return True

    def send_then_journal(self, spec: OrderSpec, purpose: str = "",
                          decision_time: datetime | None = None) -> SubmitResult:
        """POST once, then journal intent and answer together (one fsync, after the POST).

        For the protective stop of an entry fill (issue 17): its fsynced intent before the
        POST cost 7-15 ms of every fill's naked time. Safe because its client order id is
        deterministic: a crash between the POST and the journal write leaves a stop at
        Alpaca the journal does not know, which startup reconciliation finds among the open
        orders and adopts by client order id; it is never sent again. A client order id
        already journaled is still never sent (rule 5)."""
        cid = spec.client_order_id
        if self.journal.has(cid):  # lock-free: never waits for the main thread's fsync
            logger.warning("order %s is already in the journal: not sending it again", cid)
            return self._known(cid)
        try:
            snap = self.client.submit_order(spec)
        except RejectedError as exc:
            if self._journal_intent(spec, purpose, decision_time):
                self.journal.mark_rejected(cid, str(exc))
            return SubmitResult(Outcome.REJECTED, cid, reason=str(exc))
        except AmbiguousOrderError as exc:
            outcome = getattr(exc, "outcome", SubmitOutcome.AMBIGUOUS)
            if self._journal_intent(spec, purpose, decision_time):
                self.journal.mark_ambiguous(cid, f"{outcome.value}: {exc}")
            logger.warning("order %s: %s; looking it up by client order id", cid, exc)
            return self.resolve(cid)
        try:
            self.journal.record_sent(spec.to_json(), purpose, decision_time, snap.id,
                                     snap.status)
        except DuplicateIntentError:  # journaled meanwhile (e.g. adopted): Alpaca has it
            self.journal.mark_accepted(cid, snap.id, snap.status)
        return SubmitResult(Outcome.ACCEPTED, cid, snap)

    def _journal_intent(self, spec: OrderSpec, purpose: str,
                        decision_time: datetime | None, replaces: str | None = None) -> bool:
        """The intent of an order already sent (``send_then_journal``); False when another
        path journaled it meanwhile (its row then decides)."""
        try:
            self.journal.record_intent(spec.to_json(), purpose, decision_time, replaces)
        except DuplicateIntentError:
            return False
        return True

    def _known(self, cid: str) -> SubmitResult:
        row = self.journal.get(cid)
        if row is None:  # pragma: no cover - DuplicateIntentError implies a row
            return SubmitResult(Outcome.AMBIGUOUS, cid, repeated=True)
        if row.state is JournalState.REJECTED:
            return SubmitResult(Outcome.REJECTED, cid, reason=row.reason, repeated=True)
        if row.state is JournalState.LOST:
            return SubmitResult(Outcome.LOST, cid, reason=row.reason, repeated=True)
        result = self.resolve(cid)
        return SubmitResult(result.outcome, cid, result.snapshot, result.reason, repeated=True)

    def resolve(self, cid: str, attempts: int | None = None) -> SubmitResult:
        """Look ``cid`` up at Alpaca: found -> ACCEPTED; refused/lost by the rules -> REJECTED
        or LOST; otherwise still AMBIGUOUS. Never sends the order."""
        backoff = Backoff(base=0.1, cap=1.0)
        tries = attempts if attempts is not None else self.resolve_attempts
        for attempt in range(max(1, tries)):
            try:
                snap = self.client.get_order_by_client_id(cid, attempts=1)
            except (RetryableError, BrokerError) as exc:
                logger.info("lookup of %s failed: %s", cid, exc)
                snap = None
                failed = True
            except Exception as exc:  # noqa: BLE001 - an odd answer is "unknown", not "absent"
                logger.info("lookup of %s failed: %s", cid, exc)
                snap = None
                failed = True
            else:
                failed = False
            if snap is not None:
                row = self.journal.get(cid)
                if row is not None and row.state is not JournalState.ACCEPTED:
                    self.journal.mark_accepted(cid, snap.id, snap.status)
                    logger.info("order %s resolved: it exists at Alpaca (%s)", cid, snap.status)
                return SubmitResult(Outcome.ACCEPTED, cid, snap)
            if not failed:
                verdict = self._not_found(cid)
                if verdict is not None:
                    return verdict
            if attempt + 1 < tries:
                self._sleep(backoff.next_delay())
        row = self.journal.get(cid)
        return SubmitResult(Outcome.AMBIGUOUS, cid, reason=row.reason if row else "")

    def _not_found(self, cid: str) -> SubmitResult | None:
        lookups = self.journal.count_lookup(cid)
        row = self.journal.get(cid)
        if row is None:
            return SubmitResult(Outcome.LOST, cid, reason="not in journal")
        if row.reason.startswith(SubmitOutcome.RATE_LIMITED.value):
            # 429 means Alpaca refused the request before processing it; the lookup proves it.
            self.journal.mark_rejected(cid, "rate limited (429) and not found")
            return SubmitResult(Outcome.REJECTED, cid, reason="rate_limited")
        age = self._wall() - row.created_wall
        if lookups >= self.lost_after_lookups and age >= self.lost_after_s:
            reason = f"not found at Alpaca after {lookups} lookups over {age:.0f}s"
            self.journal.mark_lost(cid, reason)
            logger.warning("order %s: %s; it was never created", cid, reason)
            return SubmitResult(Outcome.LOST, cid, reason=reason)
        return None

    # ----------------------------------------------------------------- cancel / replace

    def cancel(self, alpaca_id: str) -> CancelResult:
        """DELETE the order (retried: idempotent)."""
        return self.client.cancel_order(alpaca_id)

    def replace(self, old: JournalOrder | None, old_alpaca_id: str, new_spec: OrderSpec,
                stop_price: Decimal | None, qty: Decimal | None,
                decision_time: datetime | None = None) -> SubmitResult:
        """PATCH the old stop into ``new_spec`` (new client order id), then journal intent and
        answer in one synced write (as ``send_then_journal``: the Strategy raises stops on
        the bar path, and two fsyncs per raise delayed the step's orders; issue 11). A crash
        between the PATCH and the write leaves the new stop at Alpaca, adopted at restart
        by client order id (the old row is found "replaced"); never sent again."""
        cid = new_spec.client_order_id
        replaces = old.cid if old else None
        if self.journal.has(cid):
            return self._known(cid)
        try:
            snap = self.client.replace_order(old_alpaca_id, cid, stop_price=stop_price, qty=qty)
        except RejectedError as exc:
            if self._journal_intent(new_spec, "stop", decision_time, replaces):
                self.journal.mark_rejected(cid, str(exc))
            return SubmitResult(Outcome.REJECTED, cid, reason=str(exc))
        except AmbiguousOrderError as exc:
            if self._journal_intent(new_spec, "stop", decision_time, replaces):
                self.journal.mark_ambiguous(cid, f"ambiguous: {exc}")
            return self.resolve(cid)
        try:
            self.journal.record_sent(new_spec.to_json(), "stop", decision_time, snap.id,
                                     snap.status, replaces=replaces)
        except DuplicateIntentError:  # journaled meanwhile (e.g. adopted): Alpaca has it
            self.journal.mark_accepted(cid, snap.id, snap.status)
        return SubmitResult(Outcome.ACCEPTED, cid, snap)
