"""Stop protection: a long position never sits without a resting stop for long.

The protective stop goes out when the entry fills: a fill of an entry or fallback that carries
the Strategy's ``rules.StopHandoff`` is protected as the event is routed (the helper thread of
``protector.py``, else ``_protect_at_arrival``, else the loop's ``_protect_pending``), with the
Strategy's rule and client order id; a later partial fill resizes that one stop; a stop
canceled by someone else is re-placed on the cancel event. A position that has been without a
live stop for ``stop_grace_s`` gets one from the broker (``_check_stops``), and every
``stop_audit_s`` the tracked stops are compared with Alpaca's open orders. The prices come
from ``strategies.rules`` (``protective_stop_level``, ``stop_placeable``).
"""

from __future__ import annotations

import logging
import math
import time
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import backtrader as bt

from brokers.alpaca import parsing
from brokers.alpaca.orders import Outcome, SubmitResult
from brokers.alpaca.parsing import TradeUpdateRecord
from brokers.alpaca.protector import Armed, Job
from brokers.alpaca.tracking import ZERO, BrokerCore, ProtectDue, Tracked, is_stop_order
from ratchet.common.errors import BrokerError, RetryableError, UnknownStateError
from strategies import rules

logger = logging.getLogger(__name__)


class Protection(BrokerCore):
    """Stop protection (see the module docstring)."""

    def _check_stops(self) -> None:
        """A long position must never sit without a resting stop for long.

        Local and cheap (every loop): a position with no live stop and no working exit is
        timed; once that has lasted ``stop_grace_s`` (the Strategy re-places a stop it lost
        on its next bar) the broker places one and hands it to the Strategy: as its stop
        (``adopt_order``) while notifications wait for it (it then moves this stop instead
        of sending a second one), else with the position (``adopt_position``)."""
        if not self._attached:
            return
        now = self.clock.monotonic()
        for symbol, (qty, avg) in sorted(self._pos_by_symbol.items()):
            if qty <= 0 or self._has_live_stop(symbol) or self._exit_working(symbol) \
                    or self._ambiguous_in(symbol):
                self._unprotected_since.pop(symbol, None)
                continue
            since = self._unprotected_since.setdefault(symbol, now)
            if now - since < self.stop_grace_s:
                continue
            self._unprotected_since.pop(symbol, None)
            if self._claim(symbol) and self._has_live_stop(symbol):
                continue  # the helper thread's stop for a fill was just taken over
            logger.error("%s: position of %s has had no resting stop for %.0fs: placing one",
                         symbol, qty, now - since)
            result = self._place_missing_stop(symbol, qty)
            owner = self._owner()
            data = self.store.feed(symbol)
            if result.outcome is Outcome.REJECTED \
                    and parsing.stop_through_market_refusal(result.reason):
                self._exit_at_once(symbol, owner, result.reason, None)
                continue
            if owner is None or self._notifications_pending(symbol):
                self._hand_over_stop(symbol, result)
            elif result.snapshot is not None and not result.snapshot.terminal \
                    and data is not None:
                order = self._adopt_order(owner, result.snapshot)
                owner.adopt_position(data, float(qty), float(avg), stop_order=order,
                                     atr=self.store.atr(symbol))

    def _hand_over_stop(self, symbol: str, result: SubmitResult) -> None:
        # A stop placed while the Strategy runs becomes ITS stop: a fill it has yet to see
        # then moves this stop (PATCH) instead of sending a second one (Alpaca refuses it:
        # the quantity is held).
        snap = result.snapshot
        if not self._attached or snap is None or snap.terminal \
                or self.store.feed(symbol) is None:
            return
        owner = self._owner()
        order = self._adopt_order(owner, snap)
        if owner is not None:
            owner.adopt_order(order)

    def _mark_due(self, tr: Tracked, kind: str, price: float,
                  event: TradeUpdateRecord | None) -> None:
        """Protect ``tr``'s position in this loop: an entry of it filled (``fill``) or its
        stop was canceled by someone else (``lost``). Only orders that carry the Strategy's
        ``StopHandoff`` (the rule and numbering of its stops) are protected here."""
        handoff = tr.order.info.get("handoff")
        if not isinstance(handoff, rules.StopHandoff):
            return  # no rule to apply: the Strategy's next bar and ``_check_stops`` cover it
        arrived = event.arrived if event is not None and event.arrived else time.perf_counter()
        old = self._due.get(tr.symbol)
        if old is not None and old.kind == "fill" and kind == "fill":
            return  # the first fill's price sets the stop; the rest only resize it
        self._due[tr.symbol] = ProtectDue(
            handoff, tr.order.owner, kind, fill_price=price if kind == "fill" else math.nan,
            stop_price=price if kind == "lost" else math.nan, arrived=arrived)

    def _protect_pending(self) -> None:
        """Place, resize or re-place the stops of the positions marked by ``_mark_due``.

        Runs only between the Strategy's turns (``next``, ``settle``, the shutdown), never in
        the middle of one of its calls (a cancel it waits for, a reconciliation)."""
        if not self._due or not self._attached:
            return
        due, self._due = self._due, {}
        now = self.clock.monotonic()
        for symbol, d in sorted(due.items()):
            if now < d.next_at:
                done = False
            else:
                try:
                    done = self._protect(symbol, d)
                except (BrokerError, RetryableError, UnknownStateError) as exc:
                    logger.error("%s: could not protect the position now (%s); retrying",
                                 symbol, exc)
                    done = False
                if not done:  # in flight or refused: again later, with backoff
                    d.next_at, d.backoff = now + d.backoff, min(30.0, d.backoff * 2)
            if not done and symbol not in self._due:
                self._due[symbol] = d

    def _protect(self, symbol: str, d: ProtectDue, qty: Decimal | None = None,
                 place_only: bool = False) -> bool:
        """Make one resting stop cover the whole position of ``symbol`` now. False: an order
        of the symbol is unresolved (its outcome decides; asked again next loop).
        ``qty``: the position (default: ours); ``place_only``: never resize."""
        self._take_busy(symbol)  # the helper thread's stop first: it may be all we need
        if qty is None:
            qty = self._pos_by_symbol.get(symbol, (ZERO, ZERO))[0]
        if qty <= 0 or self._exit_working(symbol):
            return True  # flat, or an exit is selling the position
        stops = [t for t in self._by_cid.values() if t.symbol == symbol and t.order.alive()
                 and is_stop_order(t.order) and t.state != "done"]
        if self._ambiguous_in(symbol) or any(
                t.state != "sent" or t.alpaca_id is None or t.replace_pending
                or t.cancel_pending for t in stops):
            return False  # e.g. the Strategy's own stop request is still unresolved
        h, data = d.handoff, self.store.feed(symbol)
        if data is None:
            return True
        when = self._notify_bar_time(symbol, data)
        if stops and place_only:
            return True
        if stops:
            tr = max(stops, key=lambda t: float(t.order.created.price or 0.0))
            if Decimal(str(abs(tr.order.executed.remsize))) == qty:
                return True  # already covers the position
            price = float(tr.order.created.price or 0.0)
            new = self.replace_stop_order(tr.order, price, h.stop_cid(when), size=float(qty))
            if new is tr.order:
                return False  # not replaced now (refused or unresolved): next loop
            h.placed = new
            self._protected(d, symbol, "resize_stop", new, qty, price)
            return True
        if self._broker_stops.get(symbol) is not None:
            return True  # a stop found by reconciliation rests at Alpaca
        if d.kind == "lost":
            # whoever canceled it may be closing the position too: ask Alpaca (a stop for
            # shares no longer held would sell short when it triggers)
            held = {p.symbol: p.qty for p in self.gateway.client.get_positions()}
            qty = held.get(symbol, ZERO)
            if qty <= 0:
                return True
            price, ref = d.stop_price, self.store.last_close(symbol)
        else:
            if h.state is None:
                h.state = h.initial_state(d.fill_price)
            price, ref = h.level(), d.fill_price
        if not rules.stop_placeable(price, ref):
            logger.warning("%s: stop %.2f is at or above the market (%s): left to the "
                           "Strategy's next bar", symbol, price, ref)
            return True
        order = self._new_order(bt.SellOrder, d.owner, data, float(qty), price, None,
                                bt.Order.Stop, None, 0, None, None,
                                {"cid": h.stop_cid(when), "purpose": "stop", "handoff": h})
        if order.alive():
            h.placed = order
        self._protected(d, symbol, "place_stop", order, qty, price)
        return True

    def _protected(self, d: ProtectDue, symbol: str, action: str, order: bt.Order,
                   qty: Decimal, price: float, answered: float | None = None) -> None:
        tr = self._by_ref.get(order.ref)
        accepted = tr is not None and tr.state == "sent" and tr.alpaca_id is not None
        now = answered or time.perf_counter()
        if accepted:
            self.stop_latency.append((d.kind, now - d.arrived))
        cid = str(order.info.get("cid", ""))
        logger.info("%s: %s %s for %s @ %.2f on the %s event (%s; %.0f ms after its arrival, "
                    "%.0f ms of them waiting for the loop)%s", symbol, action, cid, qty, price,
                    d.kind, "accepted" if accepted else "not accepted", (now - d.arrived) * 1e3,
                    ((d.taken or now) - d.arrived) * 1e3,
                    "; placed by the helper thread" if answered else "")
        if self.audit is not None:
            self.audit.record(self._now(), "broker", symbol, action,
                              "entry_fill" if d.kind == "fill" else "lost_stop",
                              qty=float(qty), price=price, client_order_id=cid)

    def _exit_at_once(self, symbol: str, owner: Any, reason: str, handoff: Any) -> None:
        """A sell stop refused as already through the market (the venue compares it with
        the current price, the Strategy with the decision bar's close): the position would
        be naked, so it is sold at market now, as the Strategy does when the level is
        through the market, and the Strategy takes the exit over (``adopt_order``)."""
        qty = self._pos_by_symbol.get(symbol, (ZERO, ZERO))[0]
        data = self.store.feed(symbol)
        if qty <= 0 or data is None or self._exit_working(symbol) \
                or self._has_live_stop(symbol):
            return  # flat, already selling, or another stop still covers it
        why = rules.refused_stop_exit_reason(
            handoff.state if isinstance(handoff, rules.StopHandoff) else None)
        cid = rules.client_order_id(self.settings.strategy_id, symbol,
                                    self._notify_bar_time(symbol, data), rules.Purpose.EXIT)
        logger.error("%s: stop refused as through the market (%s): selling %s at market (%s)",
                     symbol, reason, qty, cid)
        if self.audit is not None:
            self.audit.record(self._now(), "broker", symbol, "sell", "stop_refused",
                              qty=float(qty), client_order_id=cid, exit_reason=str(why),
                              detail=reason)
        order = self._new_order(bt.SellOrder, owner, data, float(qty), None, None,
                                bt.Order.Market, None, 0, None, None,
                                {"cid": cid, "purpose": "exit", "exit_reason": str(why)})
        owner = self._owner()
        if order.alive() and owner is not None:
            owner.adopt_order(order)

    def _protect_at_arrival(self, ev: TradeUpdateRecord, tr: Tracked) -> None:
        """An entry fill of an unprotected position: its stop goes out now, before the event
        (and the ones queued before it) is even journaled, with the position Alpaca reports
        after the fill. Also while a cancel of the Strategy waits for its answer (a limit
        entry's fill that wins the timeout's cancel race): the Strategy adopts the stop
        before it acts on the position (``_protect``, ``_exit``). Resizes and re-placements
        wait for ``_protect_pending``."""
        if not self._attached or ev.event not in ("fill", "partial_fill"):
            return
        if self.protector is not None and self.protector.busy(tr.symbol):
            return  # the helper thread is placing it (taken over in ``_apply_events``)
        if tr.purpose not in ("entry", "fallback") or ev.order.side != "buy" \
                or ev.position_qty is None or ev.position_qty <= 0 or ev.price is None:
            return
        handoff = tr.order.info.get("handoff")
        if not isinstance(handoff, rules.StopHandoff):
            return
        d = ProtectDue(handoff, tr.order.owner, "fill", fill_price=float(ev.price),
                       arrived=ev.arrived or time.perf_counter())
        d.taken = time.perf_counter()
        try:
            self._protect(tr.symbol, d, qty=ev.position_qty, place_only=True)
        except (BrokerError, RetryableError) as exc:  # the loop's own pass retries it
            logger.warning("%s: stop at the fill event not placed (%s)", tr.symbol, exc)

    def _notify_bar_time(self, symbol: str, data: Any) -> datetime:
        """The bar the Strategy will see this event with (its stop's client order id is built
        from it): the step being delivered now, else the bar after the newest one."""
        when = self._step_bars.get(symbol)
        if when is not None:
            return when
        last = self._bar_time(data)
        if last is None:
            return self._cid_time(symbol)
        return last + timedelta(seconds=self.settings.bar_seconds)

    def _audit_stops(self) -> None:
        """Every ``stop_audit_s``: are the stops we track still open at Alpaca? A stop
        canceled (or filled) whose trade update never came is read and applied."""
        self._next_stop_audit = self.clock.monotonic() + self.stop_audit_s
        tracked = [t for t in self._by_cid.values()
                   if t.state == "sent" and t.order.alive() and is_stop_order(t.order)
                   and not t.cancel_pending and not t.replace_pending]
        if not tracked:
            return
        try:
            open_ids = {o.id for o in self.gateway.client.get_open_orders()}
        except UnknownStateError as exc:
            logger.warning("stop check postponed: %s", exc)
            return
        for tr in tracked:
            if tr.alpaca_id not in open_ids and tr.order.alive():
                logger.warning("%s: stop %s is not open at Alpaca: reading it", tr.symbol,
                               tr.cid)
                self._refresh(tr)

    def _thread_bar_time(self, symbol: str) -> datetime | None:
        """``_notify_bar_time`` for the helper thread: plain values only (no Backtrader)."""
        when = self._step_bars.get(symbol)
        if when is not None:
            return when
        last = self.store.last_bar_time(symbol)
        return None if last is None else last + timedelta(seconds=self.settings.bar_seconds)

    def _publish_armed(self) -> None:
        """Tell the helper thread which entries' fills it may protect: those with a handoff,
        of symbols with no stop or sell of ours live or unresolved, nothing due here."""
        if self.protector is None or self.closing:
            return
        blocked: dict[str, bool] = {}
        armed: dict[str, Armed] = {}
        for tr in self._by_cid.values():
            if tr.purpose not in ("entry", "fallback") or tr.state == "done" \
                    or not tr.order.alive():
                continue
            h = tr.order.info.get("handoff")
            if not isinstance(h, rules.StopHandoff):
                continue
            symbol = tr.symbol
            if symbol not in blocked:
                known = self._broker_stops.get(symbol)
                blocked[symbol] = symbol in self._due or self._ambiguous_in(symbol) or (
                    known is not None and not known.terminal) or any(
                    t.symbol == symbol and t.order.issell() and t.state != "done"
                    and t.order.alive() for t in self._by_cid.values())
            if not blocked[symbol]:
                armed[tr.cid] = Armed(tr.cid, symbol, h.strategy_id, h.atr,
                                      h.atr_stop_multiplier, h.trail_pct, h.seq)
        self.protector.publish(armed)

    def _take_busy(self, symbol: str) -> None:
        if self.protector is not None and self.protector.busy(symbol):
            self._claim(symbol)

    def _claim(self, symbol: str) -> bool:
        """The main thread is about to send a sell of ``symbol``: the helper thread starts
        nothing for it until the next publish, and its stop in flight is taken over first.
        True if one was taken over."""
        if self.protector is None:
            return False
        if self.protector.claim(symbol) is None:
            return False
        return self._take_jobs(wait=True, symbols=[symbol]) > 0

    def _take_jobs(self, wait: bool = False, symbols: list[str] | None = None) -> int:
        """Take over the stops the helper thread placed (finished ones; ``wait``: also the
        ones in flight): tracked, handed to the Strategy. Returns how many."""
        if self.protector is None:
            return 0
        n = 0
        for symbol in symbols if symbols is not None else self.protector.symbols():
            job = self.protector.take(symbol, timeout=None if wait else 0.0)
            if job is not None:
                self._adopt_job(job)
                n += 1
        return n

    def _adopt_job(self, job: Job) -> None:
        self._audit_quarantined_later()
        symbol, cid = job.armed.symbol, job.spec.client_order_id
        result = job.result or SubmitResult(Outcome.AMBIGUOUS, cid, reason="no answer")
        entry = self._by_cid.get(job.armed.entry_cid)
        h = entry.order.info.get("handoff") if entry is not None else None
        data = self.store.feed(symbol)
        if entry is None or not isinstance(h, rules.StopHandoff) or data is None:
            # cannot happen (an entry is tracked before it is armed); the 60 s check and the
            # reconciliation still see the stop at Alpaca
            logger.error("%s: stop %s placed at the fill has no entry to attach to (%s)",
                         symbol, cid, result.outcome.value)
            return
        h.seq = max(h.seq, job.seq)
        if h.state is None:
            h.state = h.initial_state(job.fill_price)
        order = bt.SellOrder(owner=entry.order.owner, data=data, size=float(job.qty),
                             price=job.price, exectype=bt.Order.Stop)
        order.addinfo(cid=cid, purpose="stop", handoff=h)
        order.addcomminfo(self.getcommissioninfo(data))
        order.submit(self)
        tr = Tracked(order, cid, symbol, "stop", decision_time=job.bar_time)
        tr.spec, tr.state = job.spec, "sent"
        self._track(tr)
        self.notify(order)
        self._resolved(tr, result)
        if order.alive():
            h.placed = order
        d = ProtectDue(h, entry.order.owner, "fill", fill_price=job.fill_price,
                       arrived=job.arrived, taken=job.arrived)
        self._protected(d, symbol, "place_stop", order, job.qty, job.price,
                        answered=job.finished)
