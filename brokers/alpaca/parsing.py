"""Pure tables and converters between Alpaca (alpaca-py models) and Backtrader.

Implements the vocabulary of these Alpaca docs:

* Orders, "Order Lifecycle" and the ``status`` values (docs.alpaca.markets/docs/orders-at-alpaca)
* Trading stream ``trade_updates`` events (docs.alpaca.markets/docs/websocket-streaming)
* Time in force (docs.alpaca.markets/docs/orders-at-alpaca#time-in-force)
* Market-data bars, REST and stream (docs.alpaca.markets/docs/real-time-stock-pricing-data)

Every mapping is a table (one unit test per row, ``tests/paper/test_parsing.py``). Nothing
here does I/O. Quantities and prices are ``Decimal`` (exact for the journal and
reconciliation); they become ``float`` only at the Backtrader boundary.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

import backtrader as bt
from alpaca.trading.enums import OrderSide, OrderStatus, OrderType, TimeInForce, TradeEvent

# ---------------------------------------------------------------------------------------------
# Order status -> Backtrader life cycle


class Life(StrEnum):
    """Where an Alpaca order is in Backtrader's life cycle (fills are applied separately)."""

    SUBMITTED = "submitted"  # received by Alpaca, not yet working
    WORKING = "working"  # working at the venue: Accepted, or Partial once something filled
    FILLED = "filled"  # Completed
    CANCELED = "canceled"  # Canceled (a remainder may exist after partial fills)
    EXPIRED = "expired"  # Expired
    REJECTED = "rejected"  # Rejected
    REPLACED = "replaced"  # this order was replaced by a new one: Canceled for Backtrader


@dataclass(frozen=True)
class StatusRule:
    """How one Alpaca ``OrderStatus`` maps onto Backtrader.

    ``terminal``: no further fills or status changes can happen. ``open``: Alpaca lists it
    under ``status=open`` (it may still fill). ``note`` says why, for the docs table.
    """

    life: Life
    terminal: bool
    open: bool
    note: str


#: Every alpaca-py ``OrderStatus`` (18 values). ``tests/paper/test_parsing.py`` checks the
#: table is exhaustive and tests each row.
ORDER_STATUS: Mapping[OrderStatus, StatusRule] = {
    OrderStatus.PENDING_NEW: StatusRule(
        Life.SUBMITTED, False, True, "received by Alpaca, not yet routed"),
    OrderStatus.PENDING_REVIEW: StatusRule(
        Life.SUBMITTED, False, True, "under review by Alpaca; not working yet"),
    OrderStatus.ACCEPTED: StatusRule(
        Life.WORKING, False, True, "accepted, not yet routed (e.g. outside market hours)"),
    OrderStatus.NEW: StatusRule(Life.WORKING, False, True, "working at the venue"),
    OrderStatus.ACCEPTED_FOR_BIDDING: StatusRule(
        Life.WORKING, False, True, "accepted for bidding (auction); working"),
    OrderStatus.HELD: StatusRule(
        Life.WORKING, False, True, "held until a trigger (bracket/oto leg); working"),
    OrderStatus.PARTIALLY_FILLED: StatusRule(
        Life.WORKING, False, True, "working with a partial fill: Backtrader Partial"),
    OrderStatus.PENDING_CANCEL: StatusRule(
        Life.WORKING, False, True, "cancel requested; may still fill (the cancel race)"),
    OrderStatus.PENDING_REPLACE: StatusRule(
        Life.WORKING, False, True, "replace requested; may still fill"),
    OrderStatus.STOPPED: StatusRule(
        Life.WORKING, False, True, "a trade is guaranteed at a stated price; fill follows"),
    OrderStatus.SUSPENDED: StatusRule(
        Life.WORKING, False, True, "suspended, not eligible for trading; still open"),
    OrderStatus.CALCULATED: StatusRule(
        Life.WORKING, False, True, "done for the day, settlement pending; fills may follow"),
    OrderStatus.DONE_FOR_DAY: StatusRule(
        Life.WORKING, False, True, "no more fills today; resumes next session"),
    OrderStatus.FILLED: StatusRule(Life.FILLED, True, False, "completely filled"),
    OrderStatus.CANCELED: StatusRule(
        Life.CANCELED, True, False, "canceled; a remainder is unfilled (partial fills count)"),
    OrderStatus.EXPIRED: StatusRule(Life.EXPIRED, True, False, "time in force ran out"),
    OrderStatus.REPLACED: StatusRule(
        Life.REPLACED, True, False, "replaced by a new order (PATCH): the old one is Canceled"),
    OrderStatus.REJECTED: StatusRule(Life.REJECTED, True, False, "rejected by the venue"),
}

_LIFE_TO_BT: Mapping[Life, int] = {
    Life.SUBMITTED: bt.Order.Submitted,
    Life.WORKING: bt.Order.Accepted,
    Life.FILLED: bt.Order.Completed,
    Life.CANCELED: bt.Order.Canceled,
    Life.EXPIRED: bt.Order.Expired,
    Life.REJECTED: bt.Order.Rejected,
    Life.REPLACED: bt.Order.Canceled,
}


def status_rule(status: OrderStatus | str) -> StatusRule:
    """The table row for ``status`` (a ``ValueError`` names an unknown status)."""
    try:
        return ORDER_STATUS[OrderStatus(status)]
    except ValueError:
        raise ValueError(f"unknown Alpaca order status {status!r}") from None


def bt_status(status: OrderStatus | str, filled_qty: Decimal = Decimal(0)) -> int:
    """The Backtrader status for an Alpaca order status and its cumulative filled qty.

    A working order with something filled is ``Partial``; everything else follows the table.
    """
    life = status_rule(status).life
    if life is Life.WORKING and filled_qty > 0:
        return bt.Order.Partial
    return _LIFE_TO_BT[life]


# ---------------------------------------------------------------------------------------------
# trade_updates events


class EventKind(StrEnum):
    """What a ``trade_updates`` event asks the broker to do."""

    STATUS = "status"  # apply the embedded order's status
    FILL = "fill"  # apply the fill (execution id / cumulative delta), then the status
    CANCEL_REJECTED = "cancel_rejected"  # our cancel failed: the order lives on (or filled)
    REPLACE_REJECTED = "replace_rejected"  # our replace failed: the old order lives on


#: Every event of alpaca-py's ``TradeEvent`` plus the ones Alpaca's docs list that the SDK
#: enum lacks (it accepts any string).
TRADE_EVENTS: Mapping[str, EventKind] = {
    TradeEvent.NEW.value: EventKind.STATUS,
    TradeEvent.ACCEPTED.value: EventKind.STATUS,
    TradeEvent.PENDING_NEW.value: EventKind.STATUS,
    TradeEvent.FILL.value: EventKind.FILL,
    TradeEvent.PARTIAL_FILL.value: EventKind.FILL,
    TradeEvent.CANCELED.value: EventKind.STATUS,
    TradeEvent.EXPIRED.value: EventKind.STATUS,
    TradeEvent.REJECTED.value: EventKind.STATUS,
    TradeEvent.REPLACED.value: EventKind.STATUS,
    TradeEvent.PENDING_CANCEL.value: EventKind.STATUS,
    TradeEvent.PENDING_REPLACE.value: EventKind.STATUS,
    TradeEvent.RESTATED.value: EventKind.STATUS,
    "done_for_day": EventKind.STATUS,
    "stopped": EventKind.STATUS,
    "calculated": EventKind.STATUS,
    "suspended": EventKind.STATUS,
    "held": EventKind.STATUS,
    "order_cancel_rejected": EventKind.CANCEL_REJECTED,
    "order_replace_rejected": EventKind.REPLACE_REJECTED,
}


#: Alpaca's answers refusing a SELL stop because it is already at or through the current
#: price (the venue compares with the last trade; the Strategy with the decision bar's close).
#: Such a refusal must not leave the position naked: the broker sells at market at once.
STOP_THROUGH_MARKET_REFUSALS: tuple[str, ...] = (
    "stop price must be less than current price",
)


def stop_through_market_refusal(reason: str) -> bool:
    """Is ``reason`` (a refusal's text) a sell stop refused as through the market?"""
    text = reason.lower()
    return any(row in text for row in STOP_THROUGH_MARKET_REFUSALS)


def event_kind(event: str) -> EventKind:
    """The kind of a ``trade_updates`` event; unknown events are treated as status updates."""
    return TRADE_EVENTS.get(str(event), EventKind.STATUS)


# ---------------------------------------------------------------------------------------------
# Side, order type, time in force

SIDES: Mapping[int, OrderSide] = {bt.Order.Buy: OrderSide.BUY, bt.Order.Sell: OrderSide.SELL}
SIDES_BACK: Mapping[OrderSide, int] = {v: k for k, v in SIDES.items()}

#: Backtrader exec type -> Alpaca order type. ``Close`` and ``Historical`` have no Alpaca
#: equivalent and are refused.
ORDER_TYPES: Mapping[int, OrderType] = {
    bt.Order.Market: OrderType.MARKET,
    bt.Order.Limit: OrderType.LIMIT,
    bt.Order.Stop: OrderType.STOP,
    bt.Order.StopLimit: OrderType.STOP_LIMIT,
    bt.Order.StopTrail: OrderType.TRAILING_STOP,
}
ORDER_TYPES_BACK: Mapping[OrderType, int] = {v: k for k, v in ORDER_TYPES.items()}


@dataclass(frozen=True)
class TifRule:
    """How one Alpaca time in force relates to Backtrader's ``valid``; ``used`` by us."""

    bt_valid: str
    used: bool
    note: str


#: Every alpaca-py ``TimeInForce``.
TIME_IN_FORCE: Mapping[TimeInForce, TifRule] = {
    TimeInForce.DAY: TifRule(
        "Order.DAY", True, "entries, fallbacks and exits: the session only"),
    TimeInForce.GTC: TifRule(
        "None (no expiry)", True, "resting protective stops: must survive overnight"),
    TimeInForce.OPG: TifRule("no equivalent", False, "market/limit on open: not used"),
    TimeInForce.CLS: TifRule("no equivalent", False, "market/limit on close: not used"),
    TimeInForce.IOC: TifRule("no equivalent", False, "immediate or cancel: not used"),
    TimeInForce.FOK: TifRule("no equivalent", False, "fill or kill: not used"),
}


def choose_time_in_force(exectype: int, purpose: str) -> TimeInForce:
    """GTC for the resting protective stop, DAY for everything else."""
    if exectype in (bt.Order.Stop, bt.Order.StopLimit, bt.Order.StopTrail) or purpose == "stop":
        return TimeInForce.GTC
    return TimeInForce.DAY


# ---------------------------------------------------------------------------------------------
# Records


def to_decimal(value: Any) -> Decimal | None:
    """``Decimal`` from a JSON string/number (``None``, ``""`` and NaN give ``None``)."""
    if value is None or value == "":
        return None
    if isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return Decimal(repr(value))
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"not a number: {value!r}") from None


def _utc(when: datetime | None) -> datetime | None:
    if when is None:
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _enum_value(value: Any) -> str:
    return str(getattr(value, "value", value) or "")


@dataclass(frozen=True)
class OrderSnapshot:
    """One Alpaca order as we need it (from REST or from a trade update)."""

    id: str
    client_order_id: str
    symbol: str
    side: str
    type: str
    qty: Decimal
    filled_qty: Decimal
    filled_avg_price: Decimal | None
    limit_price: Decimal | None
    stop_price: Decimal | None
    status: str
    time_in_force: str
    extended_hours: bool
    created_at: datetime | None = None
    updated_at: datetime | None = None
    replaced_by: str | None = None
    replaces: str | None = None

    @property
    def rule(self) -> StatusRule:
        """The status table row."""
        return status_rule(self.status)

    @property
    def terminal(self) -> bool:
        """No more fills or status changes can come."""
        return self.rule.terminal

    @property
    def bt_status(self) -> int:
        """The Backtrader status this snapshot stands for."""
        return bt_status(self.status, self.filled_qty)

    @property
    def remaining(self) -> Decimal:
        """Unfilled quantity."""
        return max(Decimal(0), self.qty - self.filled_qty)


def snapshot_from_order(order: Any) -> OrderSnapshot:
    """An ``OrderSnapshot`` from an alpaca-py ``Order`` model."""
    return OrderSnapshot(
        id=str(order.id),
        client_order_id=str(order.client_order_id),
        symbol=str(order.symbol or ""),
        side=_enum_value(order.side),
        type=_enum_value(order.type or order.order_type),
        qty=to_decimal(order.qty) or Decimal(0),
        filled_qty=to_decimal(order.filled_qty) or Decimal(0),
        filled_avg_price=to_decimal(order.filled_avg_price),
        limit_price=to_decimal(order.limit_price),
        stop_price=to_decimal(order.stop_price),
        status=_enum_value(order.status),
        time_in_force=_enum_value(order.time_in_force),
        extended_hours=bool(order.extended_hours),
        created_at=_utc(order.created_at),
        updated_at=_utc(order.updated_at),
        replaced_by=str(order.replaced_by) if order.replaced_by else None,
        replaces=str(order.replaces) if order.replaces else None,
    )


@dataclass(frozen=True)
class TradeUpdateRecord:
    """One ``trade_updates`` event: the event, the order after it, and the execution."""

    event: str
    order: OrderSnapshot
    timestamp: datetime
    execution_id: str | None = None
    qty: Decimal | None = None
    price: Decimal | None = None
    position_qty: Decimal | None = None
    #: ``perf_counter`` when the frame arrived on the stream (0: unknown)
    arrived: float = 0.0

    @property
    def kind(self) -> EventKind:
        """What the broker does with this event."""
        return event_kind(self.event)


def trade_update_from_model(update: Any) -> TradeUpdateRecord:
    """A ``TradeUpdateRecord`` from an alpaca-py ``TradeUpdate`` model."""
    return TradeUpdateRecord(
        event=_enum_value(update.event),
        order=snapshot_from_order(update.order),
        timestamp=_utc(update.timestamp) or datetime.now(UTC),
        execution_id=str(update.execution_id) if update.execution_id else None,
        qty=to_decimal(update.qty),
        price=to_decimal(update.price),
        position_qty=to_decimal(update.position_qty),
    )


@dataclass(frozen=True)
class PositionRecord:
    """One broker position (signed qty: negative is short)."""

    symbol: str
    qty: Decimal
    avg_entry_price: Decimal


def position_from_model(position: Any) -> PositionRecord:
    """A ``PositionRecord`` from an alpaca-py ``Position`` model."""
    qty = to_decimal(position.qty) or Decimal(0)
    if _enum_value(position.side) == "short" and qty > 0:
        qty = -qty
    return PositionRecord(str(position.symbol), qty,
                          to_decimal(position.avg_entry_price) or Decimal(0))


@dataclass(frozen=True)
class BarRecord:
    """One OHLCV bar; ``ts`` is the bar START (UTC), as Alpaca stamps it."""

    symbol: str
    ts: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float
    trade_count: float = math.nan
    vwap: float = math.nan

    def valid(self) -> bool:
        """Finite, positive prices with low <= open, close <= high."""
        prices = (self.open, self.high, self.low, self.close)
        if not all(math.isfinite(p) and p > 0 for p in prices):
            return False
        return self.low <= min(self.open, self.close) and max(self.open, self.close) <= self.high


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def bar_from_stream(msg: Mapping[str, Any]) -> BarRecord:
    """A ``BarRecord`` from a market-data stream ``b`` message (msgpack map).

    ``t`` is a msgpack Timestamp (alpaca-py's wire format) or, tolerated, a datetime or an
    RFC-3339 string.
    """
    t = msg["t"]
    if hasattr(t, "to_datetime"):
        ts = t.to_datetime()
    elif isinstance(t, datetime):
        ts = t
    else:
        ts = datetime.fromisoformat(str(t).replace("Z", "+00:00"))
    return BarRecord(
        symbol=str(msg["S"]),
        ts=_utc(ts) or ts,
        open=float(msg["o"]),
        high=float(msg["h"]),
        low=float(msg["l"]),
        close=float(msg["c"]),
        volume=float(msg["v"]),
        trade_count=_num(msg.get("n")),
        vwap=_num(msg.get("vw")),
    )


def bar_from_model(bar: Any) -> BarRecord:
    """A ``BarRecord`` from an alpaca-py ``Bar`` model (REST)."""
    return BarRecord(
        symbol=str(bar.symbol),
        ts=_utc(bar.timestamp) or bar.timestamp,
        open=float(bar.open),
        high=float(bar.high),
        low=float(bar.low),
        close=float(bar.close),
        volume=float(bar.volume),
        trade_count=_num(bar.trade_count),
        vwap=_num(bar.vwap),
    )
