"""Cancels and parked exits.

``cancel`` is confirmed synchronously (bounded), so the Strategy sees the result in the same
step as in a backtest; a cancel that loses the race to a fill is normal (the fill is applied,
the order is Completed). The confirmation is the order's terminal trade update, signaled by
the stream thread (``watch.py``, ``stream_confirm_s``), else a read of the order.
Unconfirmed cancels are polled with a per-order backoff (0.25 s -> 30 s); an order Alpaca
knows neither by id (404) nor by client order id is given up as Canceled. An exit sell sent
while the resting stop's cancel is pending is parked and sent once the cancel is confirmed
(Alpaca holds the stop's quantity until then).
"""

from __future__ import annotations

import logging

from brokers.alpaca.client import CancelResult
from brokers.alpaca.exit_chain import ExitChain, cancel_then_submit
from brokers.alpaca.tracking import BrokerCore, Tracked, is_stop_order
from brokers.alpaca.watch import OrderWatch, Watched
from ratchet.common.errors import BrokerError, RetryableError

logger = logging.getLogger(__name__)


class Cancels(BrokerCore):
    """Cancels and parked exits (see the module docstring)."""

    #: real seconds a cancel waits for its terminal trade update before reading the order
    stream_confirm_s: float = 0.1

    def _cancel_sent(self, tr: Tracked) -> None:
        tr.cancel_pending = True
        tr.cancel_backoff = 0.25
        watch: OrderWatch | None = getattr(self.store, "order_watch", None)
        alpaca_id = tr.alpaca_id
        watched = watch.watch(alpaca_id) if watch is not None and alpaca_id else None
        try:
            result = self._send_cancel(tr)
            if result is None:
                return
            if watched is not None and result is CancelResult.REQUESTED \
                    and self._ended_on_stream(tr, watched):
                return
            self._confirm_cancel(tr, self.cancel_confirm_s)
        finally:
            if watch is not None and alpaca_id:
                watch.unwatch(alpaca_id)

    def _ended_on_stream(self, tr: Tracked, watched: Watched) -> bool:
        """The DELETE was accepted: the order's terminal trade update (``canceled``, or the
        fill that won the race) is on its way or already queued. Wait for the stream
        thread's signal (bounded) and apply that update's snapshot as the GET's answer
        would be applied (``watch.py``); False: not signaled in time, read the order."""
        if not watched.ended.wait(self.stream_confirm_s) or watched.snapshot is None:
            return False
        self._apply_events()  # the updates routed before it first, as before a read
        if tr.order.alive():
            self._apply_snapshot(watched.snapshot, source="cancel")
        if tr.order.alive():
            return False
        tr.cancel_pending = False
        return True

    def _send_cancel(self, tr: Tracked) -> CancelResult | None:
        # DELETE is idempotent: re-sent until Alpaca answers it (then confirmed by status)
        assert tr.alpaca_id is not None  # noqa: S101 - narrows the type: only tracked orders with an id get here
        try:
            result = self.gateway.cancel(tr.alpaca_id)
        except (RetryableError, BrokerError) as exc:
            self._cancel_answered(tr, None, str(exc))
            return None
        self._cancel_answered(tr, result)
        return result

    def _cancel_answered(self, tr: Tracked, result: CancelResult | None,
                         error: str = "") -> None:
        """Record a DELETE's outcome on ``tr`` (sent here or by an exit's chain): None =
        it failed, sent again later with backoff; else Alpaca has it (404: looked up by
        client order id)."""
        if result is None:
            logger.warning("%s: cancel of %s failed (%s); retrying", tr.symbol, tr.cid, error)
            self._cancel_later(tr)
            return
        tr.cancel_acked = True
        if result is CancelResult.NOT_FOUND:
            logger.error("%s: cancel of %s: Alpaca does not know order id %s; looking it up "
                         "by client order id", tr.symbol, tr.cid, tr.alpaca_id)
            tr.cancel_not_found = True

    def _cancel_later(self, tr: Tracked) -> None:
        # per-order backoff: an unconfirmed cancel must not drain the request budget
        tr.next_cancel = self.clock.monotonic() + tr.cancel_backoff
        tr.cancel_backoff = min(30.0, tr.cancel_backoff * 2)

    def _poll_cancel(self, tr: Tracked) -> bool:
        """Read the order once; True when the cancel is settled (the order is done)."""
        client = self.gateway.client
        try:
            snap = None if tr.cancel_not_found or tr.alpaca_id is None else \
                client.get_order(tr.alpaca_id)
            if snap is None:
                # 404 by id: the terminal answer is a lookup by client order id
                tr.cancel_not_found = True
                snap = client.get_order_by_client_id(tr.cid, attempts=1)
                if snap is None:
                    self._cancel_gone(tr)
                    return True
                tr.cancel_not_found = False
                if snap.id != tr.alpaca_id:
                    self._index_alpaca(tr, snap.id)
                if not snap.terminal:
                    tr.cancel_acked = False  # the DELETE did not reach it: send it again
        except Exception as exc:  # noqa: BLE001 - a failed read changes nothing
            logger.info("read of %s failed: %s", tr.cid, exc)
            return False
        self._apply_snapshot(snap, source="cancel")
        if snap.terminal or not tr.order.alive():
            tr.cancel_pending = False
            return True
        return False

    def _cancel_gone(self, tr: Tracked) -> None:
        reason = "not found at Alpaca (404 by order id and by client order id)"
        logger.error("%s: %s is %s: taken as canceled", tr.symbol, tr.cid, reason)
        tr.cancel_pending = False
        tr.state = "done"
        row = self.journal.get(tr.cid)
        if row is not None and not row.terminal:
            self.journal.mark_lost(tr.cid, reason)
        if tr.order.alive():
            tr.order.cancel()
            self.notify(tr.order)
        self._audit("cancel", tr, reason)

    def _confirm_cancel(self, tr: Tracked, budget: float) -> None:
        deadline = self.clock.monotonic() + budget
        delay = 0.01
        while True:
            self._apply_events()
            if not tr.order.alive():
                tr.cancel_pending = False
                return
            if self._poll_cancel(tr):
                return
            if not tr.cancel_acked or self.clock.monotonic() + delay > deadline:
                # not confirmed (or the DELETE must be sent again): later, with backoff
                if budget > 0:
                    logger.info("%s: cancel of %s not confirmed yet", tr.symbol, tr.cid)
                self._cancel_later(tr)
                return
            self.store.pump_events(delay)
            delay = min(0.2, delay * 2)

    def _chain_exit(self, tr: Tracked, stops: list[Tracked]) -> bool:
        """Hand the exit ``tr`` and the cancel of its one resting stop to a sender worker
        (``exit_chain.py``): the main thread goes on with the step. False: this exit takes
        the main thread's path (no worker or stream signal, several stops, a stop whose
        cancel or replace is under way, nothing left to sell)."""
        watch: OrderWatch | None = getattr(self.store, "order_watch", None)
        if self.sender is None or watch is None or len(stops) != 1:
            return False
        stop = stops[0]
        if stop.alpaca_id is None or stop.cancel_pending or stop.cancel_requested \
                or stop.replace_pending or self._stop_cancel_pending(tr.symbol) is not None:
            return False
        available, _ = self._sellable(tr)
        if available <= 0:
            return False  # the main thread cancels the stop and withdraws the exit
        self._clip_to_position(tr)
        try:
            spec = self._spec(tr)
        except BrokerError:
            return False  # refused on the main thread's path, as before
        # the stop counts as being canceled from now on: not "lost" when its ``canceled``
        # arrives, never canceled twice, nothing else of the symbol goes out meanwhile
        stop.cancel_pending, stop.cancel_acked, stop.cancel_backoff = True, False, 0.25
        stop.cancel_on_worker = True
        chain = ExitChain(stop.cid, stop.alpaca_id, watch.watch(stop.alpaca_id),
                          tr.early_intent)
        tr.early_intent, tr.chain, tr.spec, tr.state = None, chain, spec, "sent"
        gateway, purpose, when = self.gateway, tr.purpose, tr.decision_time
        confirm_s, budget_s = self.stream_confirm_s, self.cancel_confirm_s
        assert self.sender is not None  # noqa: S101 - narrowed above
        self.sender.post(tr.cid, tr.symbol, lambda: cancel_then_submit(
            gateway, chain, spec, purpose, when, confirm_s, budget_s))
        return True

    def _chain_taken(self, tr: Tracked) -> bool:
        """The main thread takes an exit chain back: the stop's cancel state first (as
        ``_cancel_sent`` would have set it), then True if the exit was POSTed (its answer is
        applied next). False: it was not, and it is parked behind the stop's cancel as
        before. The stop's terminal update is not applied here: the stream's queue (routed
        next, in order) or the loop's poll applies it."""
        chain, tr.chain = tr.chain, None
        assert chain is not None  # noqa: S101 - only called for a chained exit
        watch: OrderWatch | None = getattr(self.store, "order_watch", None)
        if watch is not None:
            watch.unwatch(chain.stop_alpaca_id)
        stop = self._by_cid.get(chain.stop_cid)
        if stop is not None:
            stop.cancel_on_worker = False
            self._cancel_answered(stop, chain.cancel, chain.error)
            if chain.cancel is not None:
                stop.next_cancel = self.clock.monotonic()  # confirmed by the loop's next poll
            if not stop.order.alive():
                stop.cancel_pending = False
        if chain.posted or tr.state != "sent":
            return chain.posted
        tr.state, tr.waiting_on, tr.early_intent = "parked", chain.stop_cid, chain.early
        self._audit("park", tr, f"waiting for the cancel of {chain.stop_cid}")
        logger.info("%s: exit %s waits for the cancel of stop %s", tr.symbol, tr.cid,
                    chain.stop_cid)
        return False

    def _confirm_pending_cancels(self) -> None:
        now = self.clock.monotonic()
        for tr in list(self._by_cid.values()):
            if not tr.cancel_pending or tr.cancel_on_worker:
                continue
            if not tr.order.alive():
                tr.cancel_pending = False
            elif now >= tr.next_cancel and (tr.cancel_acked
                                            or self._send_cancel(tr) is not None):
                self._confirm_cancel(tr, 0.0)

    def _stop_cancel_pending(self, symbol: str) -> Tracked | None:
        for tr in self._by_cid.values():
            if tr.symbol == symbol and tr.cancel_pending and tr.order.alive() \
                    and is_stop_order(tr.order):
                return tr
        return None

    def _release_parked(self) -> None:
        for tr in list(self._by_cid.values()):
            if tr.state != "parked" or not tr.order.alive():
                continue
            blocker = self._by_cid.get(tr.waiting_on or "")
            if blocker is not None and blocker.order.alive():
                continue
            tr.state, tr.waiting_on = "new", None
            logger.info("%s: stop cancel settled; sending exit %s", tr.symbol, tr.cid)
            self._send(tr)

    def _release_parked_now(self) -> None:
        """Shutdown: no loop turn is left to send an exit parked behind its stop's cancel.
        That cancel is confirmed now (bounded, sent again if it failed) and the exit goes out;
        one still parked after it is withdrawn later (``withdraw_unsent``)."""
        for tr in list(self._by_cid.values()):
            stop = self._by_cid.get(tr.waiting_on or "")
            if tr.state != "parked" or not tr.order.alive() or stop is None \
                    or not stop.order.alive() or not stop.cancel_pending:
                continue
            if stop.cancel_acked or self._send_cancel(stop) is not None:
                self._confirm_cancel(stop, self.cancel_confirm_s)
        self._release_parked()
        self._collect_sends()

    def _cancel_by_cid(self, cid: str, why: str) -> None:
        row = self.journal.get(cid)
        snap = None
        if row is None or row.alpaca_id is None:
            snap = self.gateway.client.get_order_by_client_id(cid, attempts=2)
        alpaca_id = row.alpaca_id if row is not None and row.alpaca_id else \
            (snap.id if snap else None)
        if alpaca_id is None:
            return
        logger.warning("canceling %s (%s)", cid, why)
        self.gateway.cancel(alpaca_id)
        tr = self._by_cid.get(cid)
        if tr is not None:
            tr.cancel_pending = tr.cancel_acked = True
            self._confirm_cancel(tr, self.cancel_confirm_s)

    def cancel_working_entries(self) -> None:
        """Graceful stop: cancel working ENTRY orders (a fill while nobody watches would
        leave a position without a stop); resting stops stay at the broker. The results
        (fills that won the race included) are queued as notifications for the Strategy."""
        for tr in list(self._by_cid.values()):
            if tr.order.alive() and tr.purpose in ("entry", "fallback") and tr.alpaca_id:
                logger.info("shutdown: canceling working entry %s", tr.cid)
                try:
                    self.cancel(tr.order)
                except Exception as exc:  # noqa: BLE001 - the next run reconciles it
                    logger.error("shutdown: cancel of %s failed: %s", tr.cid, exc)
