"""Sending orders: the client order id, the refusals, the spec, the outcome, replaces.

Submission goes through ``orders.OrderGateway`` (intent journaled first, one POST, ambiguity
resolved by client order id). While an order of a symbol is ambiguous, new entries in that
symbol are refused; new ENTRY/FALLBACK orders are refused while the market is closed by
Alpaca's clock and once the shutdown has begun. A sell never exceeds the position
(long-only). ``replace_stop_order`` moves the resting stop with one PATCH /v2/orders/{id}.
"""

from __future__ import annotations

import logging
from decimal import Decimal

import backtrader as bt
from alpaca.trading.enums import OrderSide, OrderType

from brokers.alpaca import parsing
from brokers.alpaca.client import OrderSpec
from brokers.alpaca.orders import Outcome, SubmitResult
from brokers.alpaca.parsing import OrderSnapshot
from brokers.alpaca.tracking import BrokerCore, Tracked, is_stop_order, order_price
from ratchet.common.errors import BrokerError
from strategies import rules

logger = logging.getLogger(__name__)


class Sending(BrokerCore):
    """Order submission (see the module docstring)."""

    def _fallback_cid(self, order: bt.Order) -> str:
        # From the decision bar, never from a clock: a restart must rebuild the same id.
        when = self._bar_time(order.data)
        if when is None:
            raise BrokerError(f"{order.data._name}: an order without a client order id needs "
                              "a decision bar, and no bar has been seen yet")
        return rules.unnamed_order_id(self.settings.strategy_id, order.data._name, when,
                                      str(order.info.get("purpose") or ""), order.isbuy(),
                                      order.ref)

    def _send(self, tr: Tracked) -> None:
        order = tr.order
        if order.isbuy() and self._ambiguous_in(tr.symbol, exclude=tr):
            self._reject(tr, "an earlier order of this symbol is unresolved", margin=False)
            return
        if order.isbuy() and tr.purpose in ("entry", "fallback"):
            refusal = self._entry_refusal(order)
            if refusal:
                logger.error("%s: %s %s NOT sent: %s", tr.symbol, tr.purpose.upper(), tr.cid,
                             refusal)
                self._reject(tr, refusal, margin=False)
                return
        if order.issell() and not is_stop_order(order):
            self._journal_early(tr)  # side by side with the stop's cancel below
        if order.issell() and self._claim(tr.symbol) and is_stop_order(order) \
                and self._has_live_stop(tr.symbol, exclude=tr):
            # the helper thread placed the stop of a fill meanwhile: a second one would
            # sell short; the Strategy adopts that one (``StopHandoff.placed``)
            self._reject(tr, "the stop placed at the fill covers the position", margin=False)
            return
        if order.issell() and not is_stop_order(order):
            # an exit: the symbol's resting stop goes first (Alpaca holds its shares until
            # the cancel is done; the exit waits for it), the one the helper thread placed
            # meanwhile included; on a worker with the exit's POST when it can (exit_chain.py)
            stops = [t for t in self._by_cid.values()
                     if t.symbol == tr.symbol and t is not tr and is_stop_order(t.order)
                     and t.order.alive() and t.state == "sent"]
            if self._chain_exit(tr, stops):
                return
            for t in stops:
                self.cancel(t.order)
        if order.isbuy() and tr.purpose in ("entry", "fallback"):
            self._publish_armed()  # its fill may come before the POST's answer
        if order.issell() and not is_stop_order(order):
            blocking = self._stop_cancel_pending(tr.symbol)
            if blocking is not None:
                tr.state, tr.waiting_on = "parked", blocking.cid
                self._audit("park", tr, f"waiting for the cancel of {blocking.cid}")
                logger.info("%s: exit %s waits for the cancel of stop %s", tr.symbol, tr.cid,
                            blocking.cid)
                return
            if not self._clip_to_position(tr):
                return
        spec = self._spec(tr)
        tr.spec = spec
        tr.state = "sent"
        if self.sender is not None and not is_stop_order(order):
            # side by side with the step's other symbols (``sender.py``); the answer is
            # applied by the main thread before anything else of this order or symbol
            purpose, when, early = tr.purpose, tr.decision_time, tr.early_intent
            tr.early_intent = None
            self.sender.post(tr.cid, tr.symbol,
                             lambda: self.gateway.submit(spec, purpose, when, early=early))
            return
        result = self.gateway.submit(spec, tr.purpose, tr.decision_time)
        self._resolved(tr, result)

    def _journal_early(self, tr: Tracked) -> None:
        """Start writing an exit's intent (an fsynced commit) on a worker now, so it runs
        while the main thread cancels the resting stop (DELETE, then the stream's
        ``canceled``): the exit's POST no longer waits for both one after the other. If
        the exit is not sent after all, the row is withdrawn (``_withdraw_early``)."""
        if self.sender is None or tr.early_intent is not None:
            return
        try:
            spec = self._spec(tr)
        except BrokerError:
            return  # refused below, as before
        purpose, when = tr.purpose, tr.decision_time
        tr.early_intent = self.sender.call(
            lambda: self.gateway.journal_intent(spec, purpose, when))

    def _withdraw_early(self, tr: Tracked, reason: str) -> None:
        """The exit journaled early is not sent: its row ends LOST (it never existed at
        Alpaca), so neither a restart nor reconciliation looks for it."""
        early, tr.early_intent = tr.early_intent, None
        if early is None:
            return
        try:
            early.result()
        except Exception:  # noqa: BLE001 - not written by us (duplicate) or not at all
            return
        if self.journal.withdraw(tr.cid, f"not sent: {reason}"):
            logger.info("%s: exit %s withdrawn from the journal (%s)", tr.symbol, tr.cid,
                        reason)

    def _collect_sends(self, cid: str | None = None, symbol: str | None = None) -> None:
        """Take the sender's jobs (of ``cid`` / ``symbol``; None, None: all), waiting for
        the ones in flight, and apply their answers in submission order."""
        sender = self.sender
        if sender is None or not sender.pending(cid, symbol):
            return
        for job in sender.take(cid, symbol):
            self._audit_quarantined_later()  # a worker's journal write may have quarantined
            tr = self._by_cid.get(job.cid)
            result = job.result or SubmitResult(Outcome.AMBIGUOUS, job.cid, reason="no answer")
            if tr is not None and tr.chain is not None and not self._chain_taken(tr):
                continue  # the exit was not POSTed: parked behind its stop's cancel
            if tr is None or tr.state != "sent":  # pragma: no cover - a job's order is in flight
                logger.error("order %s: answer %s for an order not in flight",
                             job.cid, result.outcome.value)
                continue
            self._resolved(tr, result)

    def _entry_refusal(self, order: bt.Order) -> str:
        """Why a new entry/fallback must not go out now ('' = it may)."""
        if self.closing:
            return "shutting down: no new entries"
        extended = bool(order.info.get("extended_hours"))
        if not self.store.entries_open(extended=extended):
            return (f"market closed (Alpaca clock; broker time "
                    f"{self.store.now().isoformat(timespec='seconds')}; "
                    f"{self.store.clock.describe_wait()})")
        return ""

    def _spec(self, tr: Tracked) -> OrderSpec:
        order = tr.order
        qty = Decimal(str(abs(order.executed.remsize or order.size)))
        otype = parsing.ORDER_TYPES.get(order.exectype)
        if otype is None or otype is OrderType.TRAILING_STOP:
            raise BrokerError(f"order type {order.getordername()} is not supported on Alpaca")
        limit = stop = None
        if otype is OrderType.LIMIT:
            limit = order_price(order.created.price)
        elif otype is OrderType.STOP:
            stop = order_price(order.created.price)
        elif otype is OrderType.STOP_LIMIT:
            stop, limit = order_price(order.created.price), order_price(order.created.pricelimit)
        tif = parsing.choose_time_in_force(order.exectype, tr.purpose)
        # the Strategy marks extended-hours orders (limits only: Alpaca refuses the rest)
        extended = bool(order.info.get("extended_hours")) and otype is OrderType.LIMIT
        return OrderSpec(tr.cid, tr.symbol, parsing.SIDES[order.ordtype], otype, qty, tif,
                         limit_price=limit, stop_price=stop, extended_hours=extended)

    def _resolved(self, tr: Tracked, result: SubmitResult) -> None:
        if result.outcome is Outcome.ACCEPTED and result.snapshot is not None:
            tr.state = "sent"
            self._index_alpaca(tr, result.snapshot.id)
            if result.repeated:
                logger.info("%s: order %s was already at Alpaca (%s): tracking it", tr.symbol,
                            tr.cid, result.snapshot.status)
                self._replay_journal_fills(tr)
            self._apply_snapshot(result.snapshot, source="submit")
            if tr.cancel_requested and tr.order.alive():
                tr.cancel_requested = False
                self._cancel_sent(tr)
            return
        if result.outcome is Outcome.AMBIGUOUS:
            if tr.state != "ambiguous":
                self._audit("ambiguous", tr, result.reason)
            tr.state = "ambiguous"
            tr.next_resolve = self.clock.monotonic() + tr.resolve_backoff
            tr.resolve_backoff = min(30.0, tr.resolve_backoff * 2)
            return
        margin = "buying power" in result.reason
        reason = result.reason or result.outcome.value
        self._reject(tr, reason, margin=margin)

    def _reject(self, tr: Tracked, reason: str, margin: bool) -> None:
        tr.state = "done"
        if margin:
            tr.order.margin()
        else:
            tr.order.reject(self)
        self.notify(tr.order)
        self._audit("rejected", tr, reason)
        if is_stop_order(tr.order) and tr.order.issell() \
                and parsing.stop_through_market_refusal(reason):
            self._exit_at_once(tr.symbol, tr.order.owner, reason,
                               tr.order.info.get("handoff"))
        logger.warning("%s: order %s %s: %s", tr.symbol, tr.cid,
                       "margin" if margin else "rejected", reason)

    def _sellable(self, tr: Tracked) -> tuple[float, float]:
        """(what the exit ``tr`` may sell, what it asks for): long-only, a sell never
        exceeds what is held less the other sells in flight."""
        order = tr.order
        pos = self.positions[order.data].size
        others = sum(abs(t.order.executed.remsize) for t in self._by_cid.values()
                     if t is not tr and t.symbol == tr.symbol and t.order.alive()
                     and t.order.issell() and not is_stop_order(t.order)
                     and t.state in ("sent", "ambiguous"))
        want = abs(order.executed.remsize or order.size)
        return rules.sellable_qty(pos, others, want), want

    def _clip_to_position(self, tr: Tracked) -> bool:
        # Long-only: a sell never exceeds what is held (a stop that filled first made it 0).
        order = tr.order
        available, want = self._sellable(tr)
        if available <= 0:
            tr.state = "done"
            order.cancel()
            self.notify(order)
            self._audit("cancel", tr, "no position left to sell (the stop filled first)")
            self._withdraw_early(tr, "no position left to sell (the stop filled first)")
            logger.info("%s: exit %s not sent: no position left", tr.symbol, tr.cid)
            return False
        if available < want:
            logger.warning("%s: exit %s clipped from %s to %s (position)", tr.symbol, tr.cid,
                           want, available)
            order.size = -available
            order.created.size = -available
            order.executed.remsize = -available
        return True

    def _resolve_ambiguous(self) -> None:
        now = self.clock.monotonic()
        for tr in list(self._by_cid.values()):
            if tr.state == "ambiguous" and now >= tr.next_resolve:
                self._resolved(tr, self.gateway.resolve(tr.cid, attempts=1))
            if tr.replace_pending and now >= tr.next_resolve:
                result = self.gateway.resolve(tr.replace_pending, attempts=1)
                if result.outcome is Outcome.ACCEPTED and result.snapshot is not None:
                    self._repoint(tr, result.snapshot.id)
                elif result.outcome in (Outcome.LOST, Outcome.REJECTED):
                    tr.replace_pending = None
                else:
                    tr.next_resolve = now + tr.resolve_backoff
                    tr.resolve_backoff = min(30.0, tr.resolve_backoff * 2)

    def replace_stop_order(self, order: bt.Order, price: float, cid: str,
                           size: float | None = None) -> bt.Order:
        """Move the resting stop to ``price`` (and ``size``) with one PATCH; returns the order
        to track from now on (the same one when nothing could be replaced)."""
        tr = self._by_ref.get(order.ref)
        if tr is None or not order.alive():
            return order
        self._collect_sends(symbol=tr.symbol)
        if not order.alive():
            return order
        if tr.state != "sent" or tr.alpaca_id is None or tr.cancel_pending or tr.replace_pending:
            logger.info("%s: stop %s not replaceable now (%s)", tr.symbol, tr.cid, tr.state)
            return order
        remaining = Decimal(str(abs(size))) if size is not None else \
            Decimal(str(abs(order.executed.remsize)))
        qty = remaining if size is not None else None
        stop_price = order_price(price)
        spec = OrderSpec(cid, tr.symbol, OrderSide.SELL, OrderType.STOP, remaining,
                         parsing.choose_time_in_force(bt.Order.Stop, "stop"),
                         stop_price=stop_price)
        result = self.gateway.replace(self.journal.get(tr.cid), tr.alpaca_id, spec, stop_price,
                                      qty, self._bar_time(order.data))
        if result.outcome is Outcome.ACCEPTED and result.snapshot is not None:
            return self._replaced(tr, result.snapshot, float(remaining), price)
        if result.outcome is Outcome.AMBIGUOUS:
            tr.replace_pending = cid
            logger.warning("%s: replace of stop %s -> %s unresolved; the old stop stays",
                           tr.symbol, tr.cid, cid)
            return order
        logger.warning("%s: stop %s not moved to %.2f: %s", tr.symbol, tr.cid, price,
                       result.reason)
        self._refresh(tr)
        return order

    def _replaced(self, old: Tracked, snap: OrderSnapshot, size: float,
                  price: float) -> bt.Order:
        order = old.order
        new = bt.SellOrder(owner=order.owner, data=order.data, size=size,
                           price=float(snap.stop_price or order_price(price) or price),
                           exectype=bt.Order.Stop, simulated=not len(order.data))
        new.addinfo(cid=snap.client_order_id, purpose=old.purpose or "stop",
                    replaces=old.cid)
        if isinstance(order.info.get("handoff"), rules.StopHandoff):
            new.addinfo(handoff=order.info["handoff"])
        new.addcomminfo(self.getcommissioninfo(order.data))
        new.submit(self)
        tr = Tracked(new, snap.client_order_id, old.symbol, old.purpose or "stop", state="sent",
                     decision_time=self._bar_time(order.data))
        self._track(tr)
        self._index_alpaca(tr, snap.id)
        old.state = "done"
        if order.alive():
            order.cancel()
            self.notify(order)
        self.journal.set_status(old.cid, "replaced")
        self.notify(new)
        self._apply_snapshot(snap, source="replace")
        return new
