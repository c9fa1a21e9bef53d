"""The live broker's order tracking: what it knows of each order, and the shared base.

``Tracked`` pairs one Backtrader order with its Alpaca twin (client order id, Alpaca id, what
was applied, cancel/replace state); ``BrokerCore`` holds the broker's state (orders by client
order id / ref / Alpaca id, positions, cash) and the small lookups every part uses. The parts
of ``AlpacaBroker`` (``sending``, ``cancels``, ``fills``, ``protection``, ``reconciler``) are
mixins on ``BrokerCore``; ``broker.AlpacaBroker`` joins them behind Backtrader's interface.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import defaultdict, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import backtrader as bt

from brokers.alpaca.client import OrderSpec
from brokers.alpaca.exit_chain import ExitChain
from brokers.alpaca.journal import Journal
from brokers.alpaca.orders import OrderGateway, SubmitResult
from brokers.alpaca.parsing import OrderSnapshot, TradeUpdateRecord
from brokers.alpaca.ports import PositionOwner
from brokers.alpaca.protector import StopProtector
from brokers.alpaca.reconcile import ReconcileReport
from brokers.alpaca.sender import OrderSender
from feeds.btfeed import ns_to_bt
from ratchet.common.clock import Clock
from strategies import rules

logger = logging.getLogger(__name__)

ZERO = Decimal(0)


def bt_date_num(when: datetime) -> float:
    import numpy as np

    ns = int(when.astimezone(UTC).timestamp() * 1_000_000) * 1000
    return float(ns_to_bt(np.array([ns], dtype=np.int64))[0])


def order_price(value: float | None) -> Decimal | None:
    if value is None or not math.isfinite(float(value)):
        return None
    return Decimal(str(round(float(value), 4)))


#: states of a tracked order not POSTed yet (an exit parked behind its stop's cancel may
#: already have its journal row: ``sending.Sending._journal_early``)
UNSENT = frozenset({"new", "parked"})


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
    # an exit's intent being journaled on a worker while its stop is canceled (sending.py)
    early_intent: Future[dict[str, Any]] | None = None
    # an exit whose stop's cancel and POST run on a sender worker (``exit_chain.py``)
    chain: ExitChain | None = None
    cancel_on_worker: bool = False  # a stop whose DELETE is out with its exit's chain
    replace_pending: str | None = None  # cid of an unresolved replacement
    events: int = 0
    # events that end or fill it (not new/accepted): the fill fence waits for one of them
    outcomes: int = 0
    outcomes_at_step: int = 0
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


class BrokerCore(bt.BrokerBase):
    """State and lookups shared by the parts of ``AlpacaBroker`` (set in its ``__init__``)."""

    store: Any
    gateway: OrderGateway
    journal: Journal
    settings: Any
    audit: Any
    clock: Clock
    closing: bool
    cash: float
    startingcash: float
    cancel_confirm_s: float
    fence_s: float | None
    stop_grace_s: float
    stop_audit_s: float
    positions: defaultdict[Any, bt.Position]
    notifs: deque[bt.Order]
    protector: StopProtector | None
    sender: OrderSender | None
    stop_latency: list[tuple[str, float]]
    _owner: Callable[[], PositionOwner | None]
    _sleep: Callable[[float], None]
    _pos_by_symbol: dict[str, tuple[Decimal, Decimal]]
    _by_cid: dict[str, Tracked]
    _by_ref: dict[int, Tracked]
    _by_alpaca: dict[str, Tracked]
    _events: deque[TradeUpdateRecord]
    _reconcile_reasons: list[str]
    _attached: bool
    _saved_strategy: dict[str, Any]
    _startup_report: ReconcileReport | None
    _foreign_seen: dict[str, Decimal]
    _verify_in: int
    _broker_stops: dict[str, OrderSnapshot]
    _mismatch_seen: dict[str, tuple[Decimal, Decimal]]
    _unprotected_since: dict[str, float]
    _stops_placed: dict[str, int]
    _next_stop_audit: float
    _due: dict[str, ProtectDue]
    _step_bars: dict[str, datetime]
    _main_thread: threading.Thread
    _quarantined_later: deque[tuple[str, str, str]]

    # ------------------------------------------------ the seams: implemented by the parts
    # (declared for the type checker only; AlpacaBroker's bases implement them)
    if TYPE_CHECKING:
        def _adopt_order(self, owner: PositionOwner | None, snap: OrderSnapshot) -> bt.Order: ...
        def _apply_events(self) -> None: ...
        def _apply_snapshot(self, snap: OrderSnapshot, source: str,
                            event: TradeUpdateRecord | None = None) -> None: ...
        def _attach(self) -> None: ...
        def _audit_quarantined_later(self) -> None: ...
        def _audit_stops(self) -> None: ...
        def _cancel_by_cid(self, cid: str, why: str) -> None: ...
        def _cancel_sent(self, tr: Tracked) -> None: ...
        def _chain_exit(self, tr: Tracked, stops: list[Tracked]) -> bool: ...
        def _chain_taken(self, tr: Tracked) -> bool: ...
        def _check_stops(self) -> None: ...
        def _cid_time(self, symbol: str) -> datetime: ...
        def _claim(self, symbol: str) -> bool: ...
        def _collect_sends(self, cid: str | None = None, symbol: str | None = None) -> None: ...
        def _confirm_pending_cancels(self) -> None: ...
        def _exit_at_once(self, symbol: str, owner: Any, reason: str, handoff: Any) -> None: ...
        def _fallback_cid(self, order: bt.Order) -> str: ...
        def _hand_over_stop(self, symbol: str, result: SubmitResult) -> None: ...
        def _journal_quarantined(self, cid: str, alpaca_id: str, taken_by: str) -> None: ...
        def _mark_due(self, tr: Tracked, kind: str, price: float,
                      event: TradeUpdateRecord | None) -> None: ...
        def _new_order(self, cls: type, owner: Any, data: Any, size: float, price: float | None,
                       plimit: float | None, exectype: int | None, valid: Any, tradeid: int,
                       trailamount: float | None, trailpercent: float | None,
                       info: dict[str, Any]) -> bt.Order: ...
        def _place_missing_stop(self, symbol: str, qty: Decimal) -> SubmitResult: ...
        def _protect_at_arrival(self, ev: TradeUpdateRecord, tr: Tracked) -> None: ...
        def _protect_pending(self) -> None: ...
        def _publish_armed(self) -> None: ...
        def _release_parked(self) -> None: ...
        def _release_parked_now(self) -> None: ...
        def _replay_journal_fills(self, tr: Tracked) -> None: ...
        def _repoint(self, tr: Tracked, new_alpaca_id: str) -> None: ...
        def _resolve_ambiguous(self) -> None: ...
        def _resolved(self, tr: Tracked, result: SubmitResult) -> None: ...
        def _send(self, tr: Tracked) -> None: ...
        def _stop_cancel_pending(self, symbol: str) -> Tracked | None: ...
        def _take_jobs(self, wait: bool = False, symbols: list[str] | None = None) -> int: ...
        def _verify(self) -> None: ...
        def cancel(self, order: bt.Order) -> None: ...
        def notify(self, order: bt.Order) -> None: ...
        def reconcile_now(self, reason: str,
                          saved_positions: dict[str, Decimal] | None = None) -> ReconcileReport: ...
        def replace_stop_order(self, order: bt.Order, price: float, cid: str,
                               size: float | None = None) -> bt.Order: ...

    # ------------------------------------------------ lookups

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

    def _refresh(self, tr: Tracked) -> None:
        snap = self._read_order(tr)
        if snap is not None:
            self._apply_snapshot(snap, source="refresh")

    def _read_order(self, tr: Tracked) -> OrderSnapshot | None:
        try:
            if tr.alpaca_id:
                return self.gateway.client.get_order(tr.alpaca_id)
            return self.gateway.client.get_order_by_client_id(tr.cid, attempts=1)
        except Exception as exc:  # noqa: BLE001 - a failed read changes nothing
            logger.info("read of %s failed: %s", tr.cid, exc)
            return None


def is_stop_order(order: bt.Order) -> bool:
    """A sell stop (the protective order)."""
    return order.issell() and order.exectype in (bt.Order.Stop, bt.Order.StopLimit,
                                                 bt.Order.StopTrail)


def same_positions(a: list[Any], b: list[Any]) -> bool:
    return sorted((p.symbol, p.qty) for p in a) == sorted((p.symbol, p.qty) for p in b)


def would_fill(order: bt.Order, bar: Any) -> bool:
    """Would Backtrader's fill rules execute ``order`` on ``bar``?"""
    price = order.created.price
    if order.exectype == bt.Order.Market:
        return True
    if order.exectype == bt.Order.Limit:
        return bar.low <= price if order.isbuy() else bar.high >= price
    if order.exectype in (bt.Order.Stop, bt.Order.StopLimit):
        return bar.high >= price if order.isbuy() else bar.low <= price
    return False
