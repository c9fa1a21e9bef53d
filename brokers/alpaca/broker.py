"""``AlpacaBroker``: Backtrader's broker interface on Alpaca orders, positions and fills.

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
* An exit sell sent while the resting stop's cancel is still pending is parked and sent
  once the cancel is confirmed (Alpaca holds the stop's quantity until then); if the stop
  filled instead, the exit is not sent and is reported Canceled.
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
import math
import sqlite3
import sys
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import backtrader as bt
from alpaca.trading.enums import OrderSide, OrderType

from brokers.alpaca import parsing
from brokers.alpaca.client import CancelResult, OrderSpec
from brokers.alpaca.journal import Journal, JournalState
from brokers.alpaca.orders import OrderGateway, Outcome, SubmitResult
from brokers.alpaca.parsing import Life, OrderSnapshot, TradeUpdateRecord
from brokers.alpaca.ports import PositionOwner
from brokers.alpaca.protector import Armed, Job, StopProtector
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
from common.clock import SYSTEM_CLOCK, Clock
from common.errors import BrokerError, RetryableError, UnknownStateError
from feeds.btfeed import ns_to_bt
from strategies import rules

logger = logging.getLogger(__name__)

ZERO = Decimal(0)


def _dt_num(when: datetime) -> float:
    import numpy as np

    ns = int(when.astimezone(UTC).timestamp() * 1_000_000) * 1000
    return float(ns_to_bt(np.array([ns], dtype=np.int64))[0])


def _price(value: float | None) -> Decimal | None:
    if value is None or not math.isfinite(float(value)):
        return None
    return Decimal(str(round(float(value), 4)))


@dataclass
class Tracked:
    """One Backtrader order and what we know of its Alpaca twin."""

    order: bt.Order
    cid: str
    symbol: str
    purpose: str
    state: str = "new"  # new | parked | sent | ambiguous | done
    alpaca_id: str | None = None
    spec: OrderSpec | None = None
    applied: Decimal = ZERO  # cumulative qty already executed on the bt order
    base_filled: Decimal = ZERO  # fills before adoption (already in the position)
    cancel_pending: bool = False
    cancel_acked: bool = False  # Alpaca answered the DELETE (requested / already done)
    next_cancel: float = 0.0
    cancel_requested: bool = False
    waiting_on: str | None = None  # parked exit: cid of the stop being canceled
    replace_pending: str | None = None  # cid of an unresolved replacement
    events: int = 0
    events_at_step: int = 0
    next_resolve: float = 0.0
    resolve_backoff: float = 0.5
    decision_time: datetime | None = None
    cancel_backoff: float = 0.25  # seconds until the next poll of an unconfirmed cancel
    cancel_not_found: bool = False  # DELETE/GET said 404: ask by client order id


@dataclass
class ProtectDue:
    """A position that needs its stop placed, resized or re-placed now (see ``_protect``)."""

    handoff: rules.StopHandoff
    owner: Any
    kind: str  # "fill" (an entry filled) or "lost" (our stop was canceled by someone else)
    fill_price: float = math.nan  # the first fill's price (kind "fill")
    stop_price: float = math.nan  # the lost stop's price (kind "lost")
    arrived: float = 0.0  # perf_counter when the event arrived (latency figures)
    taken: float = 0.0  # perf_counter when the loop took the event up (latency figures)
    next_at: float = 0.0  # monotonic time of the next try (after a refused/unresolved one)
    backoff: float = 0.25


@dataclass
class BrokerView:
    """A copy of the broker's state for the dashboard and the state file."""

    cash: float
    value: float
    positions: dict[str, dict[str, float]]
    stops: dict[str, dict[str, Any]]
    working: list[dict[str, Any]]
    ambiguous: list[str] = field(default_factory=list)


class AlpacaBroker(bt.BrokerBase):
    """Backtrader broker for Alpaca (live paper/real trading through ``OrderGateway``).

    Construct with keyword arguments (Backtrader's params machinery passes them through):
    ``store`` (AlpacaStore), ``gateway`` (OrderGateway), ``journal`` (Journal), ``settings``
    (Settings), ``audit`` (Audit or None), ``owner`` (callable returning the running
    Strategy as a ``ports.PositionOwner``, None if it does not implement it),
    ``cancel_confirm_s``, ``fence_s``, ``stop_grace_s`` (None: one bar + 15 s) and
    ``stop_audit_s`` (seconds), ``clock`` (``common.clock.Clock``).
    """

    params = ()

    def __init__(self, store: Any = None, gateway: OrderGateway | None = None,
                 journal: Journal | None = None, settings: Any = None, audit: Any = None,
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
        self._main_thread = threading.current_thread()
        self._quarantined_later: deque[tuple[str, str, str]] = deque()

    # ================================================================ Backtrader interface

    def start(self) -> None:
        super().start()

    def stop(self) -> None:
        super().stop()

    def getcash(self) -> float:
        """Cash after every fill applied so far (Alpaca's cash at startup, then our fills)."""
        return self.cash

    get_cash = getcash

    def getvalue(self, datas: Any = None) -> float:
        """Cash plus positions marked at the last bar's close (as ``BackBroker`` does)."""
        value = self.cash
        for data, pos in self.positions.items():
            if datas is not None and data not in datas:
                continue
            if pos.size:
                value += pos.size * self._mark(data, pos)
        return value

    get_value = getvalue

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
        if tr.state in ("new", "parked"):
            tr.state = "done"
            order.cancel()
            self.notify(order)
            self._audit("cancel", tr, "not_sent")
            return
        if tr.state == "ambiguous" or tr.alpaca_id is None:
            tr.cancel_requested = True  # done once the submission is resolved
            return
        self._cancel_sent(tr)

    def next(self) -> None:
        """Once per loop: adopt, apply trade updates, reconcile, resolve, release parked."""
        if not self._attached:
            self._attach()
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

    # ================================================================ Strategy extension

    def replace_stop_order(self, order: bt.Order, price: float, cid: str,
                           size: float | None = None) -> bt.Order:
        """Move the resting stop to ``price`` (and ``size``) with one PATCH; returns the order
        to track from now on (the same one when nothing could be replaced)."""
        tr = self._by_ref.get(order.ref)
        if tr is None or not order.alive():
            return order
        if tr.state != "sent" or tr.alpaca_id is None or tr.cancel_pending or tr.replace_pending:
            logger.info("%s: stop %s not replaceable now (%s)", tr.symbol, tr.cid, tr.state)
            return order
        remaining = Decimal(str(abs(size))) if size is not None else \
            Decimal(str(abs(order.executed.remsize)))
        qty = remaining if size is not None else None
        stop_price = _price(price)
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

    def settle_for_shutdown(self) -> None:
        """Shutdown, before anything is canceled: apply the trade updates already received
        and read each working order of ours once (a fill may have happened unseen), so the
        Strategy is told before the final reconciliation."""
        if self.protector is not None:
            self.protector.close()  # from here on every stop goes out from the main thread
            self._take_jobs(wait=True)
        self._apply_events()
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

    def wait_for_market_entries(self, timeout: float) -> None:
        """``--once`` shutdown: give working MARKET entries/fallbacks up to ``timeout`` s to
        fill (read at Alpaca), so the Strategy protects the fill in this run rather than the
        next run's startup reconciliation."""
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

    # ================================================================ startup

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
            journal_open = self.journal.open_orders()
            lookups: dict[str, OrderSnapshot | None] = {}
            for jo in journal_open:
                if jo.cid in open_cids:
                    continue
                if jo.alpaca_id and not jo.unresolved:
                    lookups[jo.cid] = client.get_order(jo.alpaca_id)
                else:
                    lookups[jo.cid] = client.get_order_by_client_id(jo.cid, attempts=2)
            positions = client.get_positions()
            if _same_positions(before, positions):
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
            # the stop helper thread's journal write: broker state is the main thread's
            self._quarantined_later.append((cid, alpaca_id, taken_by))
            return
        stale = self._by_alpaca.get(alpaca_id)
        if stale is not None and stale.cid == cid:
            del self._by_alpaca[alpaca_id]
        if self.audit is not None:
            self.audit.record(self._now(), "journal", "", "quarantine", "alpaca_id_reused",
                              client_order_id=cid,
                              detail=f"alpaca_id={alpaca_id} now_of={taken_by}")

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
        # a position without a live stop is handled by ``_check_stops`` (after its grace)

    def _has_live_stop(self, symbol: str, exclude: Tracked | None = None) -> bool:
        if any(t.symbol == symbol and t.order.alive() and is_stop_order(t.order)
               and t.state != "done" and t is not exclude for t in self._by_cid.values()):
            return True
        known = self._broker_stops.get(symbol)
        return known is not None and not known.terminal

    def _exit_working(self, symbol: str) -> bool:
        return any(t.symbol == symbol and t.order.alive() and t.order.issell()
                   and not is_stop_order(t.order) and t.state != "done"
                   for t in self._by_cid.values())

    def _notifications_pending(self, symbol: str) -> bool:
        # the Strategy has not seen everything yet (it reacts to fills and cancels on its
        # next bar): placing a stop now would race with its own
        if any(o.data._name == symbol for o in self.notifs):
            return True
        owner = self._owner()
        return owner is not None and owner.notifications_pending(symbol)

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

    # ---------------------------------------------------------------- the helper thread

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
        while self._quarantined_later:
            self._journal_quarantined(*self._quarantined_later.popleft())
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

    # ================================================================ sending

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
        if order.issell() and self._claim(tr.symbol):
            if is_stop_order(order) and self._has_live_stop(tr.symbol, exclude=tr):
                # the helper thread placed the stop of a fill meanwhile: a second one would
                # sell short; the Strategy adopts that one (``StopHandoff.placed``)
                self._reject(tr, "the stop placed at the fill covers the position",
                             margin=False)
                return
            if not is_stop_order(order):
                # an exit: the stop placed meanwhile goes first (the exit waits for it)
                for t in list(self._by_cid.values()):
                    if t.symbol == tr.symbol and t is not tr and is_stop_order(t.order) \
                            and t.order.alive() and t.state == "sent":
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
        result = self.gateway.submit(spec, tr.purpose, tr.decision_time)
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
            limit = _price(order.created.price)
        elif otype is OrderType.STOP:
            stop = _price(order.created.price)
        elif otype is OrderType.STOP_LIMIT:
            stop, limit = _price(order.created.price), _price(order.created.pricelimit)
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

    def _clip_to_position(self, tr: Tracked) -> bool:
        # Long-only: a sell never exceeds what is held (a stop that filled first made it 0).
        order = tr.order
        pos = self.positions[order.data].size
        others = sum(abs(t.order.executed.remsize) for t in self._by_cid.values()
                     if t is not tr and t.symbol == tr.symbol and t.order.alive()
                     and t.order.issell() and not is_stop_order(t.order)
                     and t.state in ("sent", "ambiguous"))
        available = max(0.0, pos - others)
        want = abs(order.executed.remsize or order.size)
        if available <= 0:
            tr.state = "done"
            order.cancel()
            self.notify(order)
            self._audit("cancel", tr, "no position left to sell (the stop filled first)")
            logger.info("%s: exit %s not sent: no position left", tr.symbol, tr.cid)
            return False
        if want > available + 1e-9:
            logger.warning("%s: exit %s clipped from %s to %s (position)", tr.symbol, tr.cid,
                           want, available)
            order.size = -available
            order.created.size = -available
            order.executed.remsize = -available
        return True

    # ================================================================ cancel / replace

    def _cancel_sent(self, tr: Tracked) -> None:
        tr.cancel_pending = True
        tr.cancel_backoff = 0.25
        if not self._send_cancel(tr):
            return
        self._confirm_cancel(tr, self.cancel_confirm_s)

    def _send_cancel(self, tr: Tracked) -> bool:
        # DELETE is idempotent: re-sent until Alpaca answers it (then confirmed by status)
        assert tr.alpaca_id is not None
        try:
            result = self.gateway.cancel(tr.alpaca_id)
        except (RetryableError, BrokerError) as exc:
            logger.warning("%s: cancel of %s failed (%s); retrying", tr.symbol, tr.cid, exc)
            self._cancel_later(tr)
            return False
        tr.cancel_acked = True
        if result is CancelResult.NOT_FOUND:
            logger.error("%s: cancel of %s: Alpaca does not know order id %s; looking it up "
                         "by client order id", tr.symbol, tr.cid, tr.alpaca_id)
            tr.cancel_not_found = True
        return True

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
        except Exception as exc:  # a failed read changes nothing
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

    def _confirm_pending_cancels(self) -> None:
        now = self.clock.monotonic()
        for tr in list(self._by_cid.values()):
            if not tr.cancel_pending:
                continue
            if not tr.order.alive():
                tr.cancel_pending = False
            elif now >= tr.next_cancel and (tr.cancel_acked or self._send_cancel(tr)):
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

    def _replaced(self, old: Tracked, snap: OrderSnapshot, size: float,
                  price: float) -> bt.Order:
        order = old.order
        new = bt.SellOrder(owner=order.owner, data=order.data, size=size,
                           price=float(snap.stop_price or _price(price) or price),
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

    def _refresh(self, tr: Tracked) -> None:
        snap = self._read_order(tr)
        if snap is not None:
            self._apply_snapshot(snap, source="refresh")

    def _read_order(self, tr: Tracked) -> OrderSnapshot | None:
        try:
            if tr.alpaca_id:
                return self.gateway.client.get_order(tr.alpaca_id)
            return self.gateway.client.get_order_by_client_id(tr.cid, attempts=1)
        except Exception as exc:  # a failed read changes nothing
            logger.info("read of %s failed: %s", tr.cid, exc)
            return None

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
                         stop_price=_price(level))
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

    # ================================================================ events and fills

    def on_trade_update(self, update: TradeUpdateRecord) -> None:
        """Queue one ``trade_updates`` event (applied in ``next``, in arrival order)."""
        self._events.append(update)
        tr = self._by_cid.get(update.order.client_order_id)
        if tr is not None:
            tr.events += 1
            self._protect_at_arrival(update, tr)

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

    def _apply_events(self) -> None:
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
            assert row is not None
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
        order.execute(_dt_num(when), size, px, closed, closedvalue, closedcomm, opened,
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
            order.execute(_dt_num(datetime.fromisoformat(f["ts"])), size, price, closed,
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
        except Exception as exc:
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

    # ================================================================ fill fence

    def settle(self, bars: dict[str, Any]) -> None:
        """Before a step reaches the Strategy: make sure fills its bars imply have arrived.

        For every working order the bar would have executed (Backtrader's fill rules), wait up
        to ``fence_s`` for a trade update, then read the order. In real time fills come long
        before the bar closes; this only matters when both arrive at once (replays).
        """
        self._step_bars = {sym: bar.ts for sym, bar in bars.items() if hasattr(bar, "ts")}
        self.store.pump_events(0.0)  # fills that just arrived get their stop before the rest
        self._apply_events()
        if self.fence_s is None:
            self._protect_pending()
            return
        due = [tr for tr in self._by_cid.values()
               if tr.state == "sent" and tr.order.alive() and tr.symbol in bars
               and tr.events == tr.events_at_step and _would_fill(tr.order, bars[tr.symbol])]
        if due:
            deadline = self.clock.monotonic() + self.fence_s
            while self.clock.monotonic() < deadline and any(t.events == t.events_at_step
                                                       for t in due):
                self.store.pump_events(0.005)
            self._apply_events()
            for tr in due:
                if tr.events == tr.events_at_step and tr.order.alive():
                    self._refresh(tr)
        for tr in self._by_cid.values():
            tr.events_at_step = tr.events
        self._protect_pending()

    # ================================================================ background work

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

    def _attach(self) -> None:
        owner = self._owner()
        # A failed read is NOT "no open orders": positions would be adopted without the stops
        # that rest at Alpaca (and get a second one). Like startup: raise, do not trade.
        open_orders = self.gateway.client.get_open_orders()  # UnknownStateError
        self._attached = True
        if self.protector is None and hasattr(self.store, "trade_update_hook"):
            self.protector = StopProtector(self.gateway, self._thread_bar_time)
            self.protector.start()
            # the bar step holds the GIL; the stream and helper threads need it back after
            # every read, fsync and socket call: 5 ms each by default, 1 ms from here on
            sys.setswitchinterval(min(sys.getswitchinterval(), 0.001))
            self.store.trade_update_hook = self.protector.on_event
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

    # ================================================================ bookkeeping

    def _track(self, tr: Tracked) -> None:
        self._by_cid[tr.cid] = tr
        self._by_ref[tr.order.ref] = tr

    def _index_alpaca(self, tr: Tracked, alpaca_id: str) -> None:
        tr.alpaca_id = alpaca_id
        self._by_alpaca[alpaca_id] = tr

    def _ambiguous_in(self, symbol: str, exclude: Tracked | None = None) -> bool:
        return any(t.symbol == symbol and t.state == "ambiguous" and t is not exclude
                   for t in self._by_cid.values())

    def _set_position(self, symbol: str, qty: Decimal, avg: Decimal) -> None:
        self._pos_by_symbol[symbol] = (qty, avg)
        data = self.store.feed(symbol)
        if data is None:
            return
        pos = self.positions[data]
        if Decimal(str(pos.size)) != qty or (qty and abs(pos.price - float(avg)) > 1e-9):
            pos.set(float(qty), float(avg))

    def _bump_symbol(self, symbol: str, qty: Decimal, price: Decimal) -> None:
        old_qty, old_avg = self._pos_by_symbol.get(symbol, (ZERO, ZERO))
        new_qty = old_qty + qty
        avg = old_avg if qty < 0 or new_qty == 0 else \
            (old_qty * old_avg + qty * price) / new_qty
        self._pos_by_symbol[symbol] = (new_qty, avg if new_qty else ZERO)
        self.cash -= float(qty * price)

    def _bar_time(self, data: Any) -> datetime | None:
        if data is not None and len(data):
            return data.datetime.datetime(0).replace(tzinfo=UTC)
        return self.store.last_bar_time(data._name) if data is not None else None

    def _now(self) -> datetime:
        return self.store.broker_time()

    def _audit(self, action: str, tr: Tracked, reason: str) -> None:
        if self.audit is None:
            return
        self.audit.record(tr.decision_time or self._now(), "broker", tr.symbol, action,
                          reason, qty=abs(float(tr.order.size)), client_order_id=tr.cid)

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


def is_stop_order(order: bt.Order) -> bool:
    """A sell stop (the protective order)."""
    return order.issell() and order.exectype in (bt.Order.Stop, bt.Order.StopLimit,
                                                 bt.Order.StopTrail)


def _same_positions(a: list[Any], b: list[Any]) -> bool:
    return sorted((p.symbol, p.qty) for p in a) == sorted((p.symbol, p.qty) for p in b)


def _would_fill(order: bt.Order, bar: Any) -> bool:
    """Would Backtrader's fill rules execute ``order`` on ``bar``?"""
    price = order.created.price
    if order.exectype == bt.Order.Market:
        return True
    if order.exectype == bt.Order.Limit:
        return bar.low <= price if order.isbuy() else bar.high >= price
    if order.exectype in (bt.Order.Stop, bt.Order.StopLimit):
        return bar.high >= price if order.isbuy() else bar.low <= price
    return False
