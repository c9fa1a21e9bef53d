"""``AlpacaBroker``: Backtrader's broker interface on Alpaca orders, positions and fills.

This module is the thin Backtrader side; the work is done by its parts, mixins on
``tracking.BrokerCore`` (the shared state): ``sending`` (submission, refusals, replaces),
``cancels`` (cancels, parked exits), ``fills`` (trade updates, fills, the fill fence),
``protection`` (stop protection, the helper thread's results) and ``reconciler`` (startup,
reconciliation, adoption). The trading rules it applies are in ``strategies.rules``; what it
asks of the Strategy goes through ``ports.PositionOwner``; its clock is ``ratchet.common.clock``.

Implements Backtrader's order life cycle (Submitted, Accepted, Partial, Completed, Canceled,
Expired, Margin, Rejected) on top of Alpaca's orders and ``trade_updates``
(docs.alpaca.markets/docs/orders-at-alpaca, .../websocket-streaming):

* Every Alpaca status maps through ONE table (``parsing.ORDER_STATUS``).
* Fills are applied from the order's cumulative ``filled_qty`` minus what was applied, through
  the journal (``journal.apply_fill``), so a replayed or duplicated event is a no-op; each new
  fill becomes one ``order.execute(...)`` as ``BackBroker`` does.
* Submission goes through ``orders.OrderGateway`` (intent journaled first, one POST,
  ambiguity resolved by client order id). While an order of a symbol is ambiguous, new
  entries in that symbol are refused.
* ``cancel`` is confirmed synchronously (bounded), so the Strategy sees the result in the
  same step as in a backtest; a cancel that loses the race to a fill is normal: the fill is
  applied and the order is Completed.
* An exit sell cancels the symbol's resting stop first (Alpaca holds the stop's quantity
  until the cancel is done): on sender workers, the DELETE, its ``canceled`` and the exit's
  POST, while another worker journals the exit (``exit_chain.py``); the stop's own
  ``cancel`` is then a no-op. Sent while that cancel is still pending (or not confirmed on
  the worker), the exit is parked and sent once the cancel is confirmed; if the stop filled
  instead, the exit is not sent, is reported Canceled and its journal row is withdrawn.
* ``replace_stop_order`` moves the resting stop with one PATCH /v2/orders/{id}.
* Before a step is handed to the Strategy, orders the step's bar should have filled are
  settled (``settle``): the broker waits briefly for their trade update, then reads them.
* The protective stop goes out when the entry fills: a ``fill``/``partial_fill`` of an entry
  or fallback that carries the Strategy's ``rules.StopHandoff`` is protected as the event is
  routed (``_protect_at_arrival``, before it is journaled; else in the loop's
  ``_protect_pending``), with the Strategy's rule and client order id; a later partial
  fill resizes that one stop (one PATCH); a stop canceled by someone else is re-placed on
  the cancel event. The Strategy adopts the order (``StopHandoff.placed``) on its next bar.
* Reconciliation (``reconcile.py``) runs before any trading and after every reconnect; a
  position without a resting stop gets one at once. During the session a position that has
  been without a live stop for ``stop_grace_s`` (the Strategy re-places its own stop on the
  next bar) gets one from the broker, and every ``stop_audit_s`` the tracked stops are
  compared with Alpaca's open orders (a cancel whose trade update never came).
* New ENTRY/FALLBACK orders are refused (Rejected, logged, audited; never sent) while the
  market is closed by Alpaca's clock, and once the shutdown has begun (``closing``).
* Unconfirmed cancels are polled with a per-order backoff (0.25 s -> 30 s); an order that
  Alpaca does not know by id (404) nor by client order id is given up as Canceled.
* Orders adopted at startup are handed to the Strategy (``adopt_order``); a notification
  waits until its feed has a bar (the Strategy reads the bar when it is notified).
"""

from __future__ import annotations

import copy
import logging
import threading
from collections import defaultdict, deque
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import backtrader as bt

from brokers.alpaca.cancels import Cancels
from brokers.alpaca.fills import Fills
from brokers.alpaca.journal import Journal
from brokers.alpaca.orders import OrderGateway
from brokers.alpaca.parsing import OrderSnapshot, TradeUpdateRecord
from brokers.alpaca.ports import PositionOwner
from brokers.alpaca.protection import Protection
from brokers.alpaca.protector import StopProtector
from brokers.alpaca.reconcile import ReconcileReport
from brokers.alpaca.reconciler import Reconciling
from brokers.alpaca.sender import OrderSender
from brokers.alpaca.sending import Sending
from brokers.alpaca.tracking import (
    UNSENT,
    BrokerCore,
    BrokerView,
    ProtectDue,
    Tracked,
    is_stop_order,
)
from ratchet.common.clock import SYSTEM_CLOCK, Clock
from ratchet.common.errors import RetryableError, UnknownStateError
from strategies import rules

if TYPE_CHECKING:
    from analyzers.audit import Audit
    from brokers.alpaca.store import AlpacaStore
    from ratchet.common.config import Settings

__all__ = ["AlpacaBroker", "BrokerView", "Tracked", "is_stop_order"]

logger = logging.getLogger(__name__)


class AlpacaBroker(Reconciling, Protection, Fills, Cancels, Sending, BrokerCore):
    """Backtrader broker for Alpaca (live paper/real trading through ``OrderGateway``).

    Construct with keyword arguments (Backtrader's params machinery passes them through):
    ``store`` (AlpacaStore), ``gateway`` (OrderGateway), ``journal`` (Journal), ``settings``
    (Settings), ``audit`` (Audit or None), ``owner`` (callable returning the running
    Strategy as a ``ports.PositionOwner``, None if it does not implement it),
    ``cancel_confirm_s``, ``fence_s``, ``stop_grace_s`` (None: one bar + 15 s) and
    ``stop_audit_s`` (seconds), ``clock`` (``ratchet.common.clock.Clock``).
    """

    params = ()

    def __init__(self, store: AlpacaStore | None = None, gateway: OrderGateway | None = None,
                 journal: Journal | None = None, settings: Settings | None = None,
                 audit: Audit | None = None,
                 owner: Callable[[], PositionOwner | None] | None = None,
                 cancel_confirm_s: float = 2.0, fence_s: float | None = 0.5,
                 sleep: Callable[[float], None] | None = None,
                 stop_grace_s: float | None = None, stop_audit_s: float = 60.0,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        super().__init__()
        if store is None or gateway is None or journal is None or settings is None:
            raise ValueError("AlpacaBroker needs store, gateway, journal and settings")
        self.store = store
        self.gateway = gateway
        self.journal = journal
        self.settings = settings
        self.audit = audit
        journal.on_quarantine = self._journal_quarantined
        self._owner: Callable[[], PositionOwner | None] = owner or (lambda: None)
        self.cancel_confirm_s = cancel_confirm_s
        self.fence_s = fence_s
        #: grace periods, backoff and timeouts are measured on this clock
        self.clock = clock
        self._sleep = sleep or clock.sleep
        self.setcommission(commission=settings.commission)
        self.cash = 0.0
        self.startingcash = 0.0
        self.positions: defaultdict[Any, bt.Position] = defaultdict(bt.Position)
        self._pos_by_symbol: dict[str, tuple[Decimal, Decimal]] = {}
        self.notifs: deque[bt.Order] = deque()
        self._by_cid: dict[str, Tracked] = {}
        self._by_ref: dict[int, Tracked] = {}
        self._by_alpaca: dict[str, Tracked] = {}
        self._events: deque[TradeUpdateRecord] = deque()
        self._reconcile_reasons: list[str] = []
        self._attached = False
        self._saved_strategy: dict[str, Any] = {}
        self._startup_report: ReconcileReport | None = None
        self._foreign_seen: dict[str, Decimal] = {}
        self._verify_in = 0
        #: resting stops known from reconciliation (placed or found), by symbol
        self._broker_stops: dict[str, OrderSnapshot] = {}
        self._mismatch_seen: dict[str, tuple[Decimal, Decimal]] = {}
        #: the shutdown has begun: no new entries or fallbacks
        self.closing = False
        self.stop_grace_s = rules.default_stop_grace(settings.bar_seconds) \
            if stop_grace_s is None else stop_grace_s
        self.stop_audit_s = stop_audit_s
        self._unprotected_since: dict[str, float] = {}
        self._stops_placed: dict[str, int] = {}  # broker-made stops per symbol (cid seq)
        self._next_stop_audit = self.clock.monotonic() + stop_audit_s
        #: positions to protect in this loop (an entry filled, or our stop was lost)
        self._due: dict[str, ProtectDue] = {}
        #: bar time per symbol of the step being delivered (the Strategy's next notification)
        self._step_bars: dict[str, datetime] = {}
        #: (kind, seconds) from the event's arrival to the stop's acceptance (benchmark)
        self.stop_latency: list[tuple[str, float]] = []
        #: places an entry fill's stop from its own thread (started when attached)
        self.protector: StopProtector | None = None
        #: sends entries, fallbacks and exits from worker threads (started when attached)
        self.sender: OrderSender | None = None
        self._main_thread = threading.current_thread()
        self._quarantined_later: deque[tuple[str, str, str]] = deque()

    def start(self) -> None:
        super().start()

    def stop(self) -> None:
        super().stop()

    def getcash(self) -> float:
        """Cash after every fill applied so far (Alpaca's cash at startup, then our fills)."""
        return self.cash

    def getvalue(self, datas: Any = None) -> float:
        """Cash plus positions marked at the last bar's close (as ``BackBroker`` does)."""
        value = self.cash
        for data, pos in self.positions.items():
            if datas is not None and data not in datas:
                continue
            if pos.size:
                value += pos.size * self._mark(data, pos)
        return value

    def _mark(self, data: Any, pos: bt.Position) -> float:
        if len(data):
            return float(data.close[0])
        last = self.store.last_close(data._name)
        return last if last is not None else pos.price

    def getposition(self, data: Any, clone: bool = False) -> bt.Position:
        """The position in ``data``'s symbol."""
        pos = self.positions[data]
        return pos.clone() if clone else pos

    def orderstatus(self, order: bt.Order) -> int:
        """Current status of ``order``."""
        return order.status

    def get_notification(self) -> bt.Order | None:
        """Next order notification (a clone, as ``BackBroker`` delivers them).

        A notification whose feed has no bar yet waits (the Strategy reads the current bar
        in ``notify_order``); the others keep their order. Orders adopted at startup are
        built ``simulated`` (no bar to read then) and Backtrader drops the notifications of
        simulated orders: their clones are delivered as normal orders.
        """
        for i, order in enumerate(self.notifs):
            if not len(order.data):
                continue
            del self.notifs[i]
            if order.p.simulated:
                params = copy.copy(order.p)
                params.simulated = False
                order.p = order.params = params
            return order
        return None

    def undelivered(self) -> list[bt.Order]:
        """Notifications that could not reach the Strategy (their feed never had a bar);
        taken out of the queue (the shutdown audits them)."""
        rest = list(self.notifs)
        self.notifs.clear()
        return rest

    def notify(self, order: bt.Order) -> None:
        """Queue a notification of ``order``'s current state."""
        self.notifs.append(order.clone())

    def buy(self, owner: Any, data: Any, size: float, price: float | None = None,
            plimit: float | None = None, exectype: int | None = None, valid: Any = None,
            tradeid: int = 0, oco: Any = None, trailamount: float | None = None,
            trailpercent: float | None = None, **kwargs: Any) -> bt.Order:
        """Create and send a buy order (``cid``/``purpose`` kwargs go to ``order.info``)."""
        return self._new_order(bt.BuyOrder, owner, data, size, price, plimit, exectype, valid,
                               tradeid, trailamount, trailpercent, kwargs)

    def sell(self, owner: Any, data: Any, size: float, price: float | None = None,
             plimit: float | None = None, exectype: int | None = None, valid: Any = None,
             tradeid: int = 0, oco: Any = None, trailamount: float | None = None,
             trailpercent: float | None = None, **kwargs: Any) -> bt.Order:
        """Create and send a sell order."""
        return self._new_order(bt.SellOrder, owner, data, size, price, plimit, exectype, valid,
                               tradeid, trailamount, trailpercent, kwargs)

    def _new_order(self, cls: type, owner: Any, data: Any, size: float, price: float | None,
                   plimit: float | None, exectype: int | None, valid: Any, tradeid: int,
                   trailamount: float | None, trailpercent: float | None,
                   info: dict[str, Any]) -> bt.Order:
        order = cls(owner=owner, data=data, size=size, price=price, pricelimit=plimit,
                    exectype=exectype, valid=valid, tradeid=tradeid,
                    trailamount=trailamount, trailpercent=trailpercent)
        order.addinfo(**info)
        order.addcomminfo(self.getcommissioninfo(data))
        return self.submit(order)

    def submit(self, order: bt.Order) -> bt.Order:
        """Submitted at once; then sent to Alpaca (or parked behind a stop's cancel)."""
        self._collect_sends(symbol=order.data._name)  # one request per symbol at a time
        order.submit(self)
        cid = str(order.info.get("cid") or self._fallback_cid(order))
        order.info["cid"] = cid
        purpose = str(order.info.get("purpose") or "")
        tr = Tracked(order, cid, order.data._name, purpose,
                     decision_time=self._bar_time(order.data))
        old = self._by_cid.get(cid)
        if old is not None and old.order.info.get("adopted") and old.order.alive():
            # a restart re-decided an order we adopted as a placeholder: this one takes over
            old.state = "done"
            old.order.status = bt.Order.Canceled
            self._by_ref.pop(old.order.ref, None)
        self._track(tr)
        self.notify(order)
        self._send(tr)
        return order

    def cancel(self, order: bt.Order) -> None:
        """Cancel ``order``; confirmed within ``cancel_confirm_s`` when possible."""
        tr = self._by_ref.get(order.ref)
        if tr is None or not order.alive():
            return
        if tr.cancel_on_worker:
            return  # its DELETE is out with the exit's chain (exit_chain.py)
        self._collect_sends(symbol=tr.symbol)  # its POST's answer first
        if not order.alive():
            return
        if tr.state in UNSENT:
            tr.state = "done"
            order.cancel()
            self.notify(order)
            self._audit("cancel", tr, "not_sent")
            self._withdraw_early(tr, "canceled before it was sent")
            return
        if tr.cancel_pending and tr.cancel_acked:
            return  # Alpaca has the DELETE: confirmed by the loop's polls, not sent again
        if tr.state == "ambiguous" or tr.alpaca_id is None:
            tr.cancel_requested = True  # done once the submission is resolved
            return
        self._cancel_sent(tr)

    def next(self) -> None:
        """Once per loop: adopt, apply trade updates, reconcile, resolve, release parked."""
        if not self._attached:
            self._attach()
        self._collect_sends()
        self.store.pump_events(0.0)  # fills that just arrived get their stop before the rest
        self._apply_events()
        self._take_jobs()  # after the fills are applied: a refused stop sells the position
        if self._reconcile_reasons:
            reasons, self._reconcile_reasons = self._reconcile_reasons, []
            try:
                self.reconcile_now(", ".join(reasons))
            except (UnknownStateError, RetryableError) as exc:
                logger.error("reconciliation failed (%s); retrying next loop", exc)
                self._reconcile_reasons.append("retry")
        self._resolve_ambiguous()
        self._release_parked()
        self._confirm_pending_cancels()
        if self._verify_in:
            self._verify_in -= 1
            if not self._verify_in:
                self._verify()
        self._protect_pending()
        self._step_bars = {}  # the Strategy sees this iteration's notifications with them
        self._check_stops()
        if self.clock.monotonic() >= self._next_stop_audit:
            self._audit_stops()
        self._publish_armed()

    def settle_for_shutdown(self) -> None:
        """Shutdown, before anything is canceled: apply the trade updates already received
        and read each working order of ours once (a fill may have happened unseen), so the
        Strategy is told before the final reconciliation."""
        if self.protector is not None:
            self.protector.close()  # from here on every stop goes out from the main thread
            self._take_jobs(wait=True)
        if self.sender is not None:
            self.sender.close()  # from here on orders go out from the main thread
            self._collect_sends()
        self._apply_events()
        self._release_parked_now()  # an exit of the last step still waiting for its stop
        for tr in list(self._by_cid.values()):
            if tr.state == "sent" and tr.order.alive() and not tr.cancel_pending:
                self._refresh(tr)
        # no bar comes any more: the Strategy is told with the bar it is on
        for symbol in self.settings.symbols:
            feed = self.store.feed(symbol)
            when = self._bar_time(feed) if feed is not None else None
            if when is not None:
                self._step_bars[symbol] = when
        self._protect_pending()

    def withdraw_unsent(self) -> None:
        """Shutdown, after the final reconciliation: an exit still parked behind its stop's
        cancel is not sent by this run; its early journal row is withdrawn (LOST, never
        sent), so the next run does not look for it at Alpaca."""
        for tr in list(self._by_cid.values()):
            if tr.state in UNSENT and tr.early_intent is not None:
                self._withdraw_early(tr, "still parked at the shutdown")

    def wait_for_market_entries(self, timeout: float) -> None:
        """``--once`` shutdown: give working MARKET entries/fallbacks up to ``timeout`` s to
        fill (read at Alpaca), so the Strategy protects the fill in this run rather than the
        next run's startup reconciliation."""
        self._collect_sends()
        deadline = self.clock.monotonic() + timeout
        while True:
            waiting = [t for t in self._by_cid.values()
                       if t.state == "sent" and t.order.alive() and t.order.isbuy()
                       and t.purpose in ("entry", "fallback")
                       and t.order.exectype == bt.Order.Market]
            if not waiting or self.clock.monotonic() >= deadline:
                return
            self._sleep(0.2)
            for tr in waiting:
                self._refresh(tr)

    def view(self) -> BrokerView:
        """A copy of positions, stops and working orders (dashboard, state file)."""
        positions: dict[str, dict[str, float]] = {}
        for symbol, (qty, avg) in sorted(self._pos_by_symbol.items()):
            if qty:
                data = self.store.feed(symbol)
                last = self.store.last_close(symbol)
                positions[symbol] = {"qty": float(qty), "avg_price": float(avg),
                                     "last": last if last is not None else float("nan")}
                if data is not None and last is not None:
                    positions[symbol]["unrealized_pnl"] = float(qty) * (last - float(avg))
        stops: dict[str, dict[str, Any]] = {}
        working: list[dict[str, Any]] = []
        for tr in self._by_cid.values():
            if not tr.order.alive():
                continue
            row = {"cid": tr.cid, "symbol": tr.symbol, "purpose": tr.purpose,
                   "side": "buy" if tr.order.isbuy() else "sell",
                   "type": tr.order.getordername().lower(), "state": tr.state,
                   "qty": abs(float(tr.order.executed.remsize)),
                   "price": tr.order.created.price, "alpaca_id": tr.alpaca_id}
            if is_stop_order(tr.order):
                stops[tr.symbol] = row
            else:
                working.append(row)
        for symbol, snap in self._broker_stops.items():
            if symbol not in stops:
                stops[symbol] = {"cid": snap.client_order_id, "symbol": symbol,
                                 "purpose": "stop", "side": "sell", "type": "stop",
                                 "state": "at broker", "qty": float(snap.remaining),
                                 "price": float(snap.stop_price or 0), "alpaca_id": snap.id}
        return BrokerView(self.cash, self.getvalue(), positions, stops, working,
                          [t.cid for t in self._by_cid.values() if t.state == "ambiguous"])
