"""The broker's side of ``reconcile.py``: startup, reconciliation, adoption.

``reconcile.py`` compares (pure); this applies its report: before any trading (and at the
shutdown) the broker's positions win, a position without a resting stop gets one at once
(``rules.protective_stop_level``, id ``rules.broker_stop_seq``), extra stops are canceled, a
stop of the wrong size is resized (id ``rules.resized_order_id``); mid-session differences are
checked again a few loops later (``_verify``). At the first loop the Strategy
(``ports.PositionOwner``) adopts the positions and every open order of ours.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
import threading
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import backtrader as bt
from alpaca.trading.enums import OrderSide, OrderType

from brokers.alpaca import parsing
from brokers.alpaca.client import OrderSpec
from brokers.alpaca.orders import SubmitResult
from brokers.alpaca.parsing import OrderSnapshot
from brokers.alpaca.ports import PositionOwner
from brokers.alpaca.protector import StopProtector
from brokers.alpaca.reconcile import (
    AdoptOrder,
    ExtraStops,
    MissingStop,
    OrderMissing,
    OrderUpdate,
    PositionChanged,
    PositionClosed,
    PositionFound,
    ReconcileReport,
    StopQtyMismatch,
    describe,
    is_ours,
    is_stop,
    reconcile,
)
from brokers.alpaca.sender import OrderSender
from brokers.alpaca.tracking import (
    UNSENT,
    ZERO,
    BrokerCore,
    Tracked,
    order_price,
    same_positions,
)
from ratchet.common.errors import BrokerError, UnknownStateError
from strategies import rules

logger = logging.getLogger(__name__)

#: ``sys.setswitchinterval`` once the helper thread runs (issue 17: 1 ms left a fill's stop
#: ~20 ms behind it at the server, most of it threads waiting for the GIL; see
#: benchmarks/README.md "Naked positions")
GIL_SWITCH_S = 0.0001


class Reconciling(BrokerCore):
    """Startup, reconciliation and adoption (see the module docstring)."""

    def startup(self, saved: dict[str, Any] | None) -> ReconcileReport:
        """Cash from the account, then reconcile against the saved state (before trading).

        A failed read raises ``UnknownStateError``: the run must not trade on a guess.
        """
        account = self.gateway.client.get_account()
        self.cash = self.startingcash = float(account.cash)
        saved = saved or {}
        self._saved_strategy = dict(saved.get("strategy") or {})
        saved_pos = {s: Decimal(str(p.get("qty", 0)))
                     for s, p in (saved.get("positions") or {}).items()}
        report = self.reconcile_now("startup", saved_positions=saved_pos)
        self._startup_report = report
        for symbol in list(self._saved_strategy):
            if self._pos_by_symbol.get(symbol, (ZERO, ZERO))[0] <= 0:
                # flat at the broker (e.g. the stop filled while we were away): the saved
                # stop/trade state belongs to a position that no longer exists
                logger.warning("%s: flat at Alpaca; dropping its saved stop state", symbol)
                del self._saved_strategy[symbol]
        return report

    def request_reconcile(self, reason: str) -> None:
        """Ask for a reconciliation at the next loop (after a reconnect)."""
        self._reconcile_reasons.append(reason)

    def reconcile_now(self, reason: str,
                      saved_positions: dict[str, Decimal] | None = None) -> ReconcileReport:
        """Read positions and open orders, compare, and fix (see ``reconcile.py``).

        Before trading (and at shutdown) the broker's positions replace ours at once. During
        a session a fill may be on its way while we read, so differences are checked again a
        few loops later (``_verify``) before anything is changed.
        """
        self._collect_sends()  # our orders' answers before open orders are read
        if self.protector is not None:
            with self.protector.paused():
                # a stop the thread placed is tracked before open orders are read
                self._take_jobs(wait=True)
                return self._reconcile_now(reason, saved_positions)
        return self._reconcile_now(reason, saved_positions)

    def _reconcile_now(self, reason: str,
                       saved_positions: dict[str, Decimal] | None) -> ReconcileReport:
        client = self.gateway.client
        authoritative = not self._attached or reason == "shutdown"
        for _ in range(3):
            # apply what the stream already told us first, so in-flight events are no surprise
            self._apply_events()
            before = client.get_positions()  # UnknownStateError on failure: never "flat"
            open_orders = client.get_open_orders()
            open_cids = {o.client_order_id for o in open_orders}
            # an exit journaled early and parked behind its stop's cancel is not sent yet:
            # not looked for at Alpaca (its "not found" would resolve it as never sent)
            journal_open = [jo for jo in self.journal.open_orders()
                            if getattr(self._by_cid.get(jo.cid), "state", "") not in UNSENT]
            lookups: dict[str, OrderSnapshot | None] = {}
            for jo in journal_open:
                if jo.cid in open_cids:
                    continue
                if jo.alpaca_id and not jo.unresolved:
                    lookups[jo.cid] = client.get_order(jo.alpaca_id)
                else:
                    lookups[jo.cid] = client.get_order_by_client_id(jo.cid, attempts=2)
            positions = client.get_positions()
            if same_positions(before, positions):
                break  # no fill slipped in between the reads
        if saved_positions is None:
            saved_positions = {s: q for s, (q, _) in self._pos_by_symbol.items()}
        report = reconcile(self.settings.symbols, self.settings.strategy_id, positions,
                           open_orders, journal_open, saved_positions, lookups,
                           [o.cid for o in self.journal.orders()])
        self._apply_report(report, positions, authoritative)
        if authoritative:
            self.cash = float(client.get_account().cash)
        level = logging.INFO if report.clean else logging.WARNING
        logger.log(level, "%s (%s)", report.summary(), reason)
        if self.audit is not None and not report.clean:
            self.audit.record(self._now(), "reconcile", "", "reconcile", reason,
                              detail=report.summary())
        return report

    def _apply_report(self, report: ReconcileReport, positions: list[Any],
                      authoritative: bool) -> None:
        for action in report.actions:
            try:
                self._apply_order_action(action)
            except (sqlite3.Error, KeyError, ValueError) as exc:
                # one bad journal row must not stop the run: positions still get their stops
                logger.error("RECONCILE: could not apply %s (%s): the row is left as it is "
                             "and trading continues; inspect the journal", action, exc)
                if self.audit is not None:
                    self.audit.record(self._now(), "reconcile", "", "row_skipped",
                                      type(exc).__name__, detail=str(exc)[:200])
        for action in report.actions:
            if isinstance(action, (PositionFound, PositionChanged, PositionClosed)):
                logger.warning("%s.", describe(action))
        if not authoritative:
            if not report.clean:
                self._verify_in = 3  # look again once in-flight events have landed
            return
        # before trading: the broker is the truth, and every position gets its stop now
        self._broker_stops = dict(report.stops)
        broker = {p.symbol: (p.qty, p.avg_entry_price) for p in positions}
        for symbol in self.settings.symbols:
            qty, avg = broker.get(symbol, (ZERO, ZERO))
            self._set_position(symbol, qty, avg)
        for action in report.actions:
            if isinstance(action, ExtraStops):
                for cid in action.cancel:
                    self._cancel_by_cid(cid, "extra stop")
            elif isinstance(action, MissingStop):
                self._hand_over_stop(action.symbol,
                                     self._place_missing_stop(action.symbol, action.qty))
            elif isinstance(action, StopQtyMismatch):
                self._resize_stop(action.stop_cid, action.position_qty)

    def _apply_order_action(self, action: Any) -> None:
        if isinstance(action, OrderUpdate):
            self._apply_snapshot(action.snapshot, source="reconcile")
        elif isinstance(action, OrderMissing):
            self._missing(action.cid)
        elif isinstance(action, AdoptOrder):
            snap = action.snapshot
            self.journal.adopt(snap.client_order_id, snap.symbol, snap.side, snap.type,
                               snap.qty, rules.purpose_of(snap.client_order_id), snap.id,
                               snap.status, snap.filled_qty,
                               snap.filled_qty * (snap.filled_avg_price or ZERO))
            logger.warning("adopted open order %s found at Alpaca", snap.client_order_id)

    def _journal_quarantined(self, cid: str, alpaca_id: str, taken_by: str) -> None:
        """A journal row lost its Alpaca id to another order (see ``Journal``): audit it."""
        if threading.current_thread() is not self._main_thread:
            # a helper thread's journal write (stop at a fill, order sender): broker state
            # is the main thread's; audited when the main thread takes the thread's result
            self._quarantined_later.append((cid, alpaca_id, taken_by))
            return
        stale = self._by_alpaca.get(alpaca_id)
        if stale is not None and stale.cid == cid:
            del self._by_alpaca[alpaca_id]
        if self.audit is not None:
            self.audit.record(self._now(), "journal", "", "quarantine", "alpaca_id_reused",
                              client_order_id=cid,
                              detail=f"alpaca_id={alpaca_id} now_of={taken_by}")

    def _audit_quarantined_later(self) -> None:
        """Audit, on the main thread, the rows a helper thread's journal write quarantined."""
        while self._quarantined_later:
            self._journal_quarantined(*self._quarantined_later.popleft())

    def _verify(self) -> None:
        """Mid-session check: positions equal the broker's and each one has a live stop."""
        self._apply_events()
        try:
            positions = self.gateway.client.get_positions()
        except UnknownStateError as exc:
            logger.warning("verification postponed: %s", exc)
            self._verify_in = 5
            return
        broker = {p.symbol: (p.qty, p.avg_entry_price) for p in positions}
        mismatched = False
        for symbol in self.settings.symbols:
            qty, avg = broker.get(symbol, (ZERO, ZERO))
            local = self._pos_by_symbol.get(symbol, (ZERO, ZERO))[0]
            if local != qty:
                if self._mismatch_seen.get(symbol) == (local, qty):
                    logger.error("%s: position %s here, %s at Alpaca: taking Alpaca's", symbol,
                                 local, qty)
                    self._set_position(symbol, qty, avg)
                    self._mismatch_seen.pop(symbol, None)
                else:
                    self._mismatch_seen[symbol] = (local, qty)
                    mismatched = True
            else:
                self._mismatch_seen.pop(symbol, None)
        if mismatched:
            self._verify_in = 3

    def _missing(self, cid: str) -> None:
        row = self.journal.get(cid)
        if row is None:
            return
        if row.unresolved:
            result = self.gateway.resolve(cid, attempts=1)
            tr = self._by_cid.get(cid)
            if tr is not None:
                self._resolved(tr, result)
        else:
            logger.error("order %s (journal: %s) is unknown to Alpaca", cid, row.alpaca_status)

    def _attach(self) -> None:
        owner = self._owner()
        # A failed read is NOT "no open orders": positions would be adopted without the stops
        # that rest at Alpaca (and get a second one). Like startup: raise, do not trade.
        open_orders = self.gateway.client.get_open_orders()  # UnknownStateError
        self._attached = True
        if self.protector is None and hasattr(self.store, "trade_update_hook"):
            self.protector = StopProtector(self.gateway, self._thread_bar_time)
            self.protector.start()
            self.sender = OrderSender()
            # the bar step holds the GIL; the stream, helper (and --sim server) threads need
            # it back after every read, fsync and socket call, each waiting one switch
            # interval: 5 ms by default; ~10 such hand-offs lie between a fill and its stop
            sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_S))
            self.store.trade_update_hook = self.protector.on_event
            self.store.fills_in_flight = self._fills_in_flight
            self.store.collect_sends = self._collect_sends
        if self._saved_strategy and owner is not None:
            owner.restore_state(self._saved_strategy)
        stops: dict[str, bt.Order] = {}
        for snap in open_orders:
            if not is_ours(snap.client_order_id, self.settings.strategy_id):
                continue
            if snap.client_order_id in self._by_cid or self.store.feed(snap.symbol) is None:
                continue
            order = self._adopt_order(owner, snap)
            if owner is not None:
                owner.adopt_order(order)  # the guards, the limit timeout and stops see it
            if is_stop(snap):
                prev = stops.get(snap.symbol)
                if prev is None or order.created.price > prev.created.price:
                    stops[snap.symbol] = order
        for symbol, (qty, avg) in sorted(self._pos_by_symbol.items()):
            data = self.store.feed(symbol)
            if qty <= 0 or data is None or owner is None:
                continue
            owner.adopt_position(data, float(qty), float(avg), stop_order=stops.get(symbol),
                                 atr=self.store.atr(symbol))
            logger.info("%s: Strategy takes over %s shares @ %s (stop %s)", symbol, qty, avg,
                        stops[symbol].info.get("cid") if symbol in stops else "none")

    def _fills_in_flight(self) -> bool:
        """An entry of the last step has no fill (nor end) yet, or the helper thread's stop
        has no answer yet: the store's writes after the step wait (``store.py``)."""
        if self.protector is not None and self.protector.in_flight():
            return True
        if self.sender is not None and self.sender.in_flight():
            return True
        last = self.store.status.last_bar
        if last is None:
            return False
        return any(tr.purpose in ("entry", "fallback") and tr.state == "sent"
                   and tr.outcomes == 0 and tr.decision_time is not None
                   and abs((tr.decision_time - last).total_seconds()) < 1.0
                   and tr.order.alive() for tr in self._by_cid.values())

    def _adopt_order(self, owner: PositionOwner | None, snap: OrderSnapshot) -> bt.Order:
        data = self.store.feed(snap.symbol)
        cls = bt.BuyOrder if snap.side == "buy" else bt.SellOrder
        exectype = parsing.ORDER_TYPES_BACK.get(parsing.OrderType(snap.type), bt.Order.Market)
        price = float(snap.stop_price or snap.limit_price or 0) or None
        order = cls(owner=owner, data=data, size=float(snap.remaining), price=price,
                    exectype=exectype, simulated=True)
        order.addinfo(cid=snap.client_order_id, purpose=rules.purpose_of(snap.client_order_id),
                      adopted=True)
        order.addcomminfo(self.getcommissioninfo(data))
        order.submit(self)
        order.accept(self)
        parsed = rules.parse_client_order_id(snap.client_order_id)
        tr = Tracked(order, snap.client_order_id, snap.symbol,
                     rules.purpose_of(snap.client_order_id), state="sent",
                     decision_time=parsed[2] if parsed else None)
        tr.base_filled = snap.filled_qty
        self._track(tr)
        self._index_alpaca(tr, snap.id)
        logger.info("%s: tracking open order %s (%s %s)", snap.symbol, snap.client_order_id,
                    snap.type, snap.remaining)
        return order

    def _stop_level(self, symbol: str, avg: Decimal) -> float:
        saved = (self._saved_strategy.get(symbol) or {}).get("stop") or {}
        known = saved.get("level")
        owner = self._owner() if self._attached else None
        if owner is not None:
            # mid-session: the Strategy's current (ratcheted) level, not the startup one
            known = owner.stop_level(symbol) or known
        p = rules.protective_stop_level(float(avg), self.store.atr(symbol), known,
                                        self.store.last_close(symbol),
                                        self.settings.atr_stop_multiplier,
                                        self.settings.trail_stop_pct)
        if p.below_market:
            # Alpaca refuses a sell stop at or above the market; protect just below it
            logger.warning("%s: stop level %.2f is above the last price %.2f: placing it just "
                           "below the market", symbol, p.level, self.store.last_close(symbol))
        return p.price

    def _cid_time(self, symbol: str) -> datetime:
        """The time a broker-made client order id is built from: the symbol's newest bar,
        else the broker clock's last answer floored to the bar interval (never the local
        clock), so a restart within the same bar rebuilds the same id."""
        when = self.store.last_bar_time(symbol)
        if when is not None:
            return when
        last = self.store.clock.last
        if last is None:
            raise BrokerError(f"{symbol}: no bar and no broker clock to name an order after")
        secs = self.settings.bar_seconds
        return datetime.fromtimestamp(int(last.timestamp.timestamp()) // secs * secs, UTC)

    def _place_missing_stop(self, symbol: str, qty: Decimal) -> SubmitResult:
        _, avg = self._pos_by_symbol.get(symbol, (qty, ZERO))
        level = self._stop_level(symbol, avg)
        when = self._cid_time(symbol)
        n = self._stops_placed[symbol] = self._stops_placed.get(symbol, -1) + 1
        seq = rules.broker_stop_seq(
            int((self._saved_strategy.get(symbol) or {}).get("stop_seq") or 0), n)
        cid = rules.client_order_id(self.settings.strategy_id, symbol, when, "stop", seq=seq)
        spec = OrderSpec(cid, symbol, OrderSide.SELL, OrderType.STOP, qty,
                         parsing.choose_time_in_force(bt.Order.Stop, "stop"),
                         stop_price=order_price(level))
        logger.warning("%s: position of %s has no resting stop: placing %s at %.2f", symbol,
                       qty, cid, level)
        result = self.gateway.submit(spec, "stop", when)
        if result.snapshot is not None and not result.snapshot.terminal:
            self._broker_stops[symbol] = result.snapshot
        if self.audit is not None:
            self.audit.record(when, "reconcile", symbol, "place_stop", "missing_stop",
                              qty=float(qty), price=level, client_order_id=cid,
                              outcome=result.outcome.value)
        return result

    def _resize_stop(self, cid: str, qty: Decimal) -> None:
        row = self.journal.get(cid)
        if row is None or row.alpaca_id is None:
            return
        tr = self._by_cid.get(cid)
        if tr is not None and tr.order.alive():
            return  # the Strategy resizes its own stop on its fills
        new_cid = rules.resized_order_id(cid)
        spec = OrderSpec(new_cid, row.symbol, OrderSide.SELL, OrderType.STOP, qty,
                         parsing.choose_time_in_force(bt.Order.Stop, "stop"),
                         stop_price=parsing.to_decimal(row.spec.get("stop_price")))
        logger.warning("%s: resizing stop %s to %s", row.symbol, cid, qty)
        self.gateway.replace(row, row.alpaca_id, spec, None, qty)
