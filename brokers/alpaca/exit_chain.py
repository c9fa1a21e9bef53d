"""An exit sent behind its stop's cancel, both on a sender worker (issue 11).

Alpaca holds a resting stop's shares until its cancel is done, so an exit sell must wait for
the stop's ``canceled`` (SPEC rule 1: cancel, then exit). The main thread used to send the
stop's DELETE and wait for that confirmation itself: 4-8 ms at ``--speed 60`` during which
the step's other symbols waited, and the second exit of a step waited for the first one's.

``cancel_then_submit`` runs the whole chain on an ``OrderSender`` worker: DELETE the stop,
wait (bounded) for the stream thread's signal that the stop ended (``watch.py``), and POST
the exit (``OrderGateway.submit``: intent journaled first, one POST, ambiguity resolved by
client order id) only when that signal says the stop was canceled with nothing filled. In
every other case (DELETE failed or answered "already done", no signal in time, the stop
filled first) nothing is POSTed: the main thread parks the exit behind the stop's cancel
exactly as before, and the loop's polls settle it.

The worker touches no Backtrader object and no broker state: it fills in the ``ExitChain``
it was handed, which the main thread applies (the stop's cancel first, then the exit's
answer) when it takes the exit's job back (``Cancels._chain_taken``).
"""

from __future__ import annotations

import logging
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
    stop_ended: OrderSnapshot | None = None  # the stop's terminal update (when POSTed)
    posted: bool = False  # the exit's POST was attempted: its job's result is its answer


def cancel_then_submit(gateway: OrderGateway, chain: ExitChain, spec: OrderSpec, purpose: str,
                       decision_time: datetime | None, confirm_s: float) -> SubmitResult | None:
    """Worker: DELETE the stop, wait up to ``confirm_s`` for its terminal update, then submit
    the exit if the stop was canceled with nothing filled. None: nothing was POSTed."""
    try:
        chain.cancel = gateway.cancel(chain.stop_alpaca_id)
    except Exception as exc:  # noqa: BLE001 - nothing POSTed: the main thread retries the DELETE
        chain.error = str(exc) or type(exc).__name__
        return None
    if chain.cancel is not CancelResult.REQUESTED or not chain.watched.ended.wait(confirm_s):
        return None
    stop = chain.watched.snapshot
    if stop is None or stop.status != "canceled" or stop.filled_qty != Decimal(0):
        return None  # filled (or partly) first: the exit is clipped by the main thread
    chain.stop_ended, chain.posted = stop, True
    return gateway.submit(spec, purpose, decision_time, early=chain.early)
