"""An exit sent behind its stop's cancel, both on a sender worker (issue 11).

Alpaca holds a resting stop's shares until its cancel is done, so an exit sell must wait for
the stop's ``canceled`` (SPEC rule 1: cancel, then exit). The main thread used to send the
stop's DELETE and wait for that confirmation itself: 4-8 ms at ``--speed 60`` during which
the step's other symbols waited, and the second exit of a step waited for the first one's.

``cancel_then_submit`` runs the whole chain on an ``OrderSender`` worker: DELETE the stop,
wait (bounded) for the stream thread's signal that the stop ended (``watch.py``), else read
the stop until the confirmation budget is spent (as the main thread did), and POST the exit
(``OrderGateway.submit``: intent journaled first, one POST, ambiguity resolved by client
order id) only when the stop ended canceled with nothing filled. In every other case
(DELETE failed or answered "already done", not confirmed in time, the stop filled first)
nothing is POSTed: the main thread parks the exit behind the stop's cancel exactly as
before, and the loop's polls settle it.

The worker touches no Backtrader object and no broker state: it fills in the ``ExitChain``
it was handed, which the main thread applies (the stop's cancel state first, then the
exit's answer) when it takes the exit's job back (``Cancels._chain_taken``). The stop's own
terminal update is applied in its turn, by the stream's queue or the loop's poll, never
ahead of older updates of it.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from brokers.alpaca.client import CancelResult, OrderSpec
from brokers.alpaca.orders import OrderGateway, SubmitResult
from brokers.alpaca.parsing import OrderSnapshot
from brokers.alpaca.watch import Watched

logger = logging.getLogger(__name__)


@dataclass
class ExitChain:
    """One exit behind its stop's cancel: what the worker was given and what it learned."""

    stop_cid: str
    stop_alpaca_id: str
    watched: Watched  # the stream thread's "the stop ended" signal
    early: Future[dict[str, Any]] | None  # the exit's intent being written (``_journal_early``)
    cancel: CancelResult | None = None  # the DELETE's answer (None: it failed)
    error: str = ""
    stop_ended: OrderSnapshot | None = None  # the stop's terminal state (when POSTed)
    posted: bool = False  # the exit's POST was attempted: its job's result is its answer


def cancel_then_submit(gateway: OrderGateway, chain: ExitChain, spec: OrderSpec, purpose: str,
                       decision_time: datetime | None, confirm_s: float,
                       budget_s: float) -> SubmitResult | None:
    """Worker: DELETE the stop; wait up to ``confirm_s`` for the stream's signal that it ended,
    then read it (GET, backing off) until ``budget_s`` is spent, as the main thread's
    confirmation did; submit the exit if the stop ended canceled with nothing filled. None:
    nothing was POSTed."""
    try:
        chain.cancel = gateway.cancel(chain.stop_alpaca_id)
    except Exception as exc:  # noqa: BLE001 - nothing POSTed: the main thread retries the DELETE
        chain.error = str(exc) or type(exc).__name__
        return None
    if chain.cancel is not CancelResult.REQUESTED:
        return None  # 422 (filled or canceled already) or 404: settled by the main thread
    stop = _stop_ended(gateway, chain, confirm_s, budget_s)
    if stop is None or stop.status != "canceled" or stop.filled_qty != Decimal(0):
        return None  # filled (or partly) first, or not confirmed: the main thread settles it
    chain.stop_ended, chain.posted = stop, True
    return gateway.submit(spec, purpose, decision_time, early=chain.early)


def _stop_ended(gateway: OrderGateway, chain: ExitChain, confirm_s: float,
                budget_s: float) -> OrderSnapshot | None:
    """The stop's terminal state: the stream's signal, else reads of the order (bounded);
    None when neither says it ended in time."""
    deadline = time.monotonic() + budget_s
    wait, delay = confirm_s, 0.01
    while True:
        if chain.watched.ended.wait(max(0.0, min(wait, deadline - time.monotonic()))):
            return chain.watched.snapshot
        try:
            snap = gateway.client.get_order(chain.stop_alpaca_id)
        except Exception as exc:  # noqa: BLE001 - a failed read settles nothing
            logger.info("read of stop %s failed: %s", chain.stop_cid, exc)
            snap = None
        if snap is not None and snap.terminal:
            return snap
        if time.monotonic() + delay > deadline:
            return None
        wait, delay = delay, min(0.2, delay * 2)
