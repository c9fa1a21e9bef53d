"""Trade updates and fills: venue messages become Backtrader order updates.

Every Alpaca status maps through ONE table (``parsing.ORDER_STATUS``). Fills are applied from
the order's cumulative ``filled_qty`` minus what was applied, through the journal
(``journal.apply_fill``), so a replayed or duplicated event is a no-op; each new fill becomes
one ``order.execute(...)`` as ``BackBroker`` does. Before a step reaches the Strategy, orders
the step's bar should have filled are settled (``settle``).
"""

from __future__ import annotations

import logging
import math
from datetime import datetime
from decimal import Decimal
from typing import Any

import backtrader as bt

from brokers.alpaca import parsing
from brokers.alpaca.journal import JournalState
from brokers.alpaca.parsing import Life, OrderSnapshot, TradeUpdateRecord
from brokers.alpaca.reconcile import is_ours
from brokers.alpaca.tracking import (
    ZERO,
    BrokerCore,
    Tracked,
    bt_date_num,
    is_stop_order,
    would_fill,
)
from strategies import rules

logger = logging.getLogger(__name__)

#: trade_updates events that neither fill nor end an order (the fill fence ignores them)
_NOT_OUTCOMES = frozenset({"new", "accepted", "pending_new", "pending_cancel",
                           "pending_replace", "order_cancel_rejected",
                           "order_replace_rejected", "calculated"})


class Fills(BrokerCore):
    """Trade updates and fills (see the module docstring)."""

    def on_trade_update(self, update: TradeUpdateRecord) -> None:
        """Queue one ``trade_updates`` event (applied in ``next``, in arrival order)."""
        self._collect_sends(cid=update.order.client_order_id)  # the older POST answer first
        self._events.append(update)
        tr = self._by_cid.get(update.order.client_order_id)
        if tr is not None:
            tr.events += 1
            if update.event not in _NOT_OUTCOMES:
                tr.outcomes += 1
            self._protect_at_arrival(update, tr)

    def _apply_events(self) -> None:
        self._collect_sends()
        while self._events:
            # journaling each event costs an fsync: a fill that arrives meanwhile is routed
            # (and its stop placed, ``_protect_at_arrival``) before the next one
            self.store.pump_events(0.0)
            ev = self._events.popleft()
            if self.protector is not None and self.protector.busy(ev.order.symbol):
                # the stop's own events must find it tracked (its POST answer is older)
                self._take_jobs(wait=True, symbols=[ev.order.symbol])
            kind = ev.kind
            if kind is parsing.EventKind.CANCEL_REJECTED:
                tr = self._by_cid.get(ev.order.client_order_id)
                if tr is not None:
                    logger.info("%s: cancel of %s rejected (%s): it lives on or filled",
                                tr.symbol, tr.cid, ev.order.status)
            elif kind is parsing.EventKind.REPLACE_REJECTED:
                logger.info("replace of %s rejected", ev.order.client_order_id)
            self._apply_snapshot(ev.order, source=f"stream:{ev.event}", event=ev)

    def _apply_snapshot(self, snap: OrderSnapshot, source: str,
                        event: TradeUpdateRecord | None = None) -> None:
        """Bring journal, position, cash and the Backtrader order in line with ``snap``."""
        cid = snap.client_order_id
        row = self.journal.get(cid)
        if row is None:
            if not is_ours(cid, self.settings.strategy_id):
                self._foreign_fill(snap)
                return
            self.journal.adopt(cid, snap.symbol, snap.side, snap.type, snap.qty,
                               rules.purpose_of(cid), snap.id, snap.status, ZERO, ZERO)
            row = self.journal.get(cid)
            assert row is not None  # noqa: S101 - narrows the type: the row was just written
        if row.state is not JournalState.ACCEPTED or row.alpaca_status != snap.status \
                or row.alpaca_id != snap.id:
            self.journal.set_status(cid, snap.status, snap.id)
        ts = event.timestamp if event is not None else (snap.updated_at or self._now())
        fill = self.journal.apply_fill(
            cid, snap.filled_qty, snap.filled_avg_price, ts,
            exec_id=event.execution_id if event is not None else None,
            exec_qty=event.qty if event is not None else None,
            exec_price=event.price if event is not None else None)
        known = self._broker_stops.get(snap.symbol)
        if known is not None and known.client_order_id == cid:
            if snap.terminal:
                del self._broker_stops[snap.symbol]
            else:
                self._broker_stops[snap.symbol] = snap
        tr = self._by_cid.get(cid)
        if tr is not None and tr.alpaca_id is None:
            self._index_alpaca(tr, snap.id)
        if fill is not None:
            signed = fill.qty if snap.side == "buy" else -fill.qty
            self._fill(tr, snap.symbol, signed, fill.price, fill.ts)
            if tr is not None and snap.side == "buy" and tr.purpose in ("entry", "fallback"):
                self._mark_due(tr, "fill", float(fill.price), event)
        if tr is not None:
            lost = tr.order.alive() and is_stop_order(tr.order) and not tr.cancel_pending \
                and snap.rule.life is Life.CANCELED
            self._life(tr, snap)
            if lost and not tr.order.alive():
                # canceled by someone else (dashboard, another tool): re-placed in this loop
                logger.error("%s: stop %s was canceled at Alpaca, not by us: re-placing it",
                             tr.symbol, tr.cid)
                self._audit("lost_stop", tr, "canceled by someone else")
                self._mark_due(tr, "lost", float(tr.order.created.price or math.nan), event)

    def _fill(self, tr: Tracked | None, symbol: str, qty: Decimal, price: Decimal,
              when: datetime) -> None:
        data = self.store.feed(symbol)
        size, px = float(qty), float(price)
        comminfo = self.getcommissioninfo(data) if data is not None else self.p.commission
        if data is None:
            self._bump_symbol(symbol, qty, price)
            return
        pos = self.positions[data]
        pprice_orig = pos.price
        psize, pprice, opened, closed = pos.update(size, px)
        closedvalue = comminfo.getoperationcost(closed, pprice_orig)
        closedcomm = comminfo.getcommission(closed, px)
        openedvalue = comminfo.getoperationcost(opened, px)
        openedcomm = comminfo.getcommission(opened, px)
        pnl = comminfo.profitandloss(-closed, pprice_orig, px)
        self.cash -= size * px + closedcomm + openedcomm
        self._pos_by_symbol[symbol] = (Decimal(str(pos.size)), Decimal(str(pos.price)))
        if tr is None:
            logger.info("%s: fill of %s @ %s for an order not tracked this run", symbol, qty,
                        price)
            return
        tr.applied += abs(qty)
        order = tr.order
        order.execute(bt_date_num(when), size, px, closed, closedvalue, closedcomm, opened,
                      openedvalue, openedcomm, comminfo.margin, pnl, psize, pprice)
        order.addcomminfo(comminfo)
        self.notify(order)

    def _replay_journal_fills(self, tr: Tracked) -> None:
        # A decision repeated after a restart: the fills it already had are in the journal and
        # in the broker's position; show them on the Backtrader order (position untouched).
        order = tr.order
        comminfo = self.getcommissioninfo(order.data)
        pos = self.positions[order.data]
        for f in self.journal.fills(tr.cid):
            qty = Decimal(f["qty"])
            size = float(qty) if order.isbuy() else -float(qty)
            price = float(f["price"])
            opened, closed = (size, 0.0) if order.isbuy() else (0.0, size)
            order.execute(bt_date_num(datetime.fromisoformat(f["ts"])), size, price, closed,
                          comminfo.getoperationcost(closed, price), 0.0, opened,
                          comminfo.getoperationcost(opened, price), 0.0, comminfo.margin, 0.0,
                          pos.size, pos.price)
            tr.applied += qty
        if tr.applied:
            self.notify(order)
            logger.info("%s: %s already had %s filled before the restart", tr.symbol, tr.cid,
                        tr.applied)

    def _life(self, tr: Tracked, snap: OrderSnapshot) -> None:
        order = tr.order
        if not order.alive():
            return
        life = snap.rule.life
        if life is Life.FILLED:
            if order.status != bt.Order.Completed:
                order.completed()
                self.notify(order)
            tr.state = "done"
        elif life is Life.CANCELED or life is Life.REPLACED:
            if life is Life.REPLACED and snap.replaced_by:
                nxt = self._by_alpaca.get(snap.replaced_by)
                if nxt is None:
                    self._repoint(tr, snap.replaced_by)
                    return
            order.cancel()
            tr.state = "done"
            self.notify(order)
        elif life is Life.EXPIRED:
            order.status = bt.Order.Expired
            tr.state = "done"
            self.notify(order)
        elif life is Life.REJECTED:
            tr.state = "done"
            order.reject(self)
            self.notify(order)
            self._audit("rejected", tr, "rejected by Alpaca")
        elif life is Life.WORKING and order.status == bt.Order.Submitted:
            order.accept(self)
            self.notify(order)

    def _repoint(self, tr: Tracked, new_alpaca_id: str) -> None:
        # A replacement we did not see resolve (ambiguous PATCH): keep the Backtrader order,
        # follow the new Alpaca order from now on.
        try:
            snap = self.gateway.client.get_order(new_alpaca_id)
        except Exception as exc:  # noqa: BLE001 - a failed read changes nothing; reconciliation finds it
            logger.warning("%s: cannot read replacement %s: %s", tr.symbol, new_alpaca_id, exc)
            return
        if snap is None:
            return
        logger.warning("%s: stop %s was replaced by %s: following it", tr.symbol, tr.cid,
                       snap.client_order_id)
        self._by_cid.pop(tr.cid, None)
        tr.cid = snap.client_order_id
        tr.order.info["cid"] = tr.cid
        tr.replace_pending = None
        tr.applied = ZERO
        self._by_cid[tr.cid] = tr
        self._index_alpaca(tr, snap.id)
        if snap.stop_price is not None:
            tr.order.created.price = float(snap.stop_price)
        self._apply_snapshot(snap, source="repoint")

    def _foreign_fill(self, snap: OrderSnapshot) -> None:
        if snap.symbol not in self.settings.symbols:
            return
        seen = self._foreign_seen.get(snap.id, ZERO)
        delta = snap.filled_qty - seen
        if delta <= 0:
            return
        self._foreign_seen[snap.id] = snap.filled_qty
        price = snap.filled_avg_price or ZERO
        logger.warning("%s: fill of %s by an order that is not ours (%s)", snap.symbol, delta,
                       snap.client_order_id)
        self._fill(None, snap.symbol, delta if snap.side == "buy" else -delta, price,
                   snap.updated_at or self._now())

    def settle(self, bars: dict[str, Any]) -> None:
        """Before a step reaches the Strategy: make sure fills its bars imply have arrived.

        For every working order the bar would have executed (Backtrader's fill rules), wait up
        to ``fence_s`` for a trade update, then read the order. In real time fills come long
        before the bar closes; this only matters when both arrive at once (replays).
        """
        self._step_bars = {sym: bar.ts for sym, bar in bars.items() if hasattr(bar, "ts")}
        self._collect_sends()
        self.store.pump_events(0.0)  # fills that just arrived get their stop before the rest
        self._apply_events()
        if self.fence_s is None:
            self._protect_pending()
            return
        due = [tr for tr in self._by_cid.values()
               if tr.state == "sent" and tr.order.alive() and tr.symbol in bars
               and tr.outcomes == tr.outcomes_at_step
               and would_fill(tr.order, bars[tr.symbol])]
        if due:
            # counted by fills and ends only: an order sent in the last step has had its
            # "new" event by now, and counting every event let its fill race the step (at
            # 60x a faster bar path lost the race: parity 29-94%, issue 11)
            deadline = self.clock.monotonic() + self.fence_s
            while self.clock.monotonic() < deadline and any(
                    t.outcomes == t.outcomes_at_step for t in due):
                self.store.pump_events(0.005)
            self._apply_events()
            for tr in due:
                if tr.outcomes == tr.outcomes_at_step and tr.order.alive():
                    self._refresh(tr)
        for tr in self._by_cid.values():
            tr.outcomes_at_step = tr.outcomes
        self._protect_pending()
