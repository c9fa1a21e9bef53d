"""``exit_chain.cancel_then_submit``: when the worker POSTs an exit behind its stop's cancel.

The rule, one case per row: the exit is POSTed only once its stop is known canceled with
nothing filled (the stream's signal, else a read of the stop within the budget); in every
other case nothing is POSTed (the broker parks the exit as before). The broker-level
behaviour runs against the loopback server in ``test_broker.py``
(``test_two_exits_of_a_step_cancel_their_stops_side_by_side``,
``test_exit_whose_stop_cancel_is_not_signaled_reads_the_stop_then_sends``,
``test_exit_parked_on_the_last_step_is_sent_at_shutdown``, the race tests).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from alpaca.trading.enums import OrderSide, OrderType, TimeInForce

from brokers.alpaca.client import CancelResult, OrderSpec
from brokers.alpaca.exit_chain import ExitChain, cancel_then_submit
from brokers.alpaca.orders import Outcome, SubmitResult
from brokers.alpaca.parsing import OrderSnapshot
from brokers.alpaca.watch import Watched
from ratchet.common.errors import RetryableError

SPEC = OrderSpec("ratchet-ACME-20251003T133200-exit", "ACME", OrderSide.SELL, OrderType.MARKET,
                 Decimal(10), TimeInForce.DAY)


def _stop(status: str, filled: str) -> OrderSnapshot:
    return OrderSnapshot("stop-id", "ratchet-ACME-20251003T133100-stop1", "ACME", "sell", "stop",
                         Decimal(10), Decimal(filled), None, None, Decimal("95"), status, "gtc",
                         False)


class Gateway:
    """Records the chain's calls: one DELETE answer (or error), reads of the stop, a submit."""

    def __init__(self, cancel: CancelResult | Exception,
                 read: OrderSnapshot | Exception | None) -> None:
        self.answer = cancel
        self.read = read
        self.calls: list[tuple[str, Any]] = []
        self.client = self

    def get_order(self, alpaca_id: str) -> OrderSnapshot | None:
        self.calls.append(("get", alpaca_id))
        if isinstance(self.read, Exception):
            raise self.read
        return self.read

    def cancel(self, alpaca_id: str) -> CancelResult:
        self.calls.append(("cancel", alpaca_id))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def submit(self, spec: OrderSpec, purpose: str, when: datetime | None,
               early: Any = None) -> SubmitResult:
        self.calls.append(("submit", spec.client_order_id))
        return SubmitResult(Outcome.ACCEPTED, spec.client_order_id)


@pytest.mark.parametrize(("cancel", "ended", "read", "posted"), [
    (CancelResult.REQUESTED, _stop("canceled", "0"), None, True),
    (CancelResult.REQUESTED, _stop("filled", "10"), None, False),  # the stop won the race
    (CancelResult.REQUESTED, _stop("canceled", "4"), None, False),  # partly filled: clip first
    # no stream signal in time: the stop is read, as the main thread's confirmation did
    (CancelResult.REQUESTED, None, _stop("canceled", "0"), True),
    (CancelResult.REQUESTED, None, _stop("filled", "10"), False),
    (CancelResult.REQUESTED, None, _stop("pending_cancel", "0"), False),  # budget spent
    (CancelResult.REQUESTED, None, RetryableError("GET: 503"), False),
    (CancelResult.ALREADY_DONE, None, None, False),  # 422: filled or canceled already
    (CancelResult.NOT_FOUND, None, None, False),  # 404: looked up by client order id
    (RetryableError("DELETE: 503"), None, None, False),  # retried by the loop
], ids=["canceled", "filled", "partly-filled", "read-canceled", "read-filled",
        "read-pending", "read-failed", "already-done", "not-found", "delete-failed"])
def test_the_exit_is_posted_only_behind_a_clean_cancel(
        cancel: CancelResult | Exception, ended: OrderSnapshot | None,
        read: OrderSnapshot | Exception | None, posted: bool) -> None:
    watched = Watched()
    if ended is not None:
        watched.snapshot = ended
        watched.ended.set()
    chain = ExitChain("ratchet-ACME-20251003T133100-stop1", "stop-id", watched, None)
    gateway = Gateway(cancel, read)
    result = cancel_then_submit(gateway, chain, SPEC, "exit",  # type: ignore[arg-type]
                                datetime(2025, 10, 3, 13, 32, tzinfo=UTC), confirm_s=0.01,
                                budget_s=0.05)
    assert chain.posted is posted
    assert (result is not None) is posted
    assert gateway.calls[0] == ("cancel", "stop-id")
    assert (("submit", SPEC.client_order_id) in gateway.calls) is posted
    assert gateway.calls[-1][0] != "get" or not posted  # never a read after the POST
    if posted:
        assert chain.stop_ended is (ended or read)
    else:
        assert chain.stop_ended is None
    if ended is not None or not isinstance(cancel, CancelResult) \
            or cancel is not CancelResult.REQUESTED:
        assert ("get", "stop-id") not in gateway.calls  # the signal (or the answer) settled it
    if isinstance(cancel, Exception):
        assert chain.cancel is None and "503" in chain.error
    else:
        assert chain.cancel is cancel
