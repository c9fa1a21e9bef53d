"""Plain records of the simulated account: orders, positions, fills and trade events.

Field names follow Alpaca's Order, Position and trade-update objects (Trading API "Orders",
"Positions" and "Websocket Streaming" pages) so serialization is a straight mapping.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

#: Statuses after which an order never changes again.
TERMINAL_STATUSES = frozenset({"filled", "canceled", "expired", "rejected", "replaced"})
#: Statuses that count as ``open`` for ``GET /v2/orders?status=open``.
OPEN_STATUSES = frozenset({
    "new", "partially_filled", "accepted", "pending_new", "held", "pending_cancel",
    "pending_replace", "accepted_for_bidding", "stopped", "suspended", "calculated",
    "done_for_day",
})
ORDER_TYPES = ("market", "limit", "stop", "stop_limit", "trailing_stop")
TIME_IN_FORCE = ("day", "gtc", "opg", "cls", "ioc", "fok")
SIDES = ("buy", "sell")
EPS = 1e-9

_NAMESPACE = uuid.UUID("6f0c7a52-5d0e-4c55-9a0c-1c5a2b7d9e10")


def asset_id(symbol: str) -> str:
    """A stable asset UUID per symbol (the same in every run)."""
    return str(uuid.uuid5(_NAMESPACE, f"asset:{symbol}"))


def account_id(key: str) -> str:
    """A stable account UUID per API key."""
    return str(uuid.uuid5(_NAMESPACE, f"account:{key}"))


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """A validated-for-types ``POST /v2/orders`` body (business rules are checked later)."""

    symbol: str
    side: str
    type: str
    time_in_force: str
    qty: float | None = None
    notional: float | None = None
    limit_price: float | None = None
    stop_price: float | None = None
    trail_price: float | None = None
    trail_percent: float | None = None
    extended_hours: bool = False
    client_order_id: str | None = None
    order_class: str = "simple"
    position_intent: str | None = None


@dataclass(frozen=True, slots=True)
class ReplaceRequest:
    """A ``PATCH /v2/orders/{id}`` body: only the fields given."""

    qty: float | None = None
    time_in_force: str | None = None
    limit_price: float | None = None
    stop_price: float | None = None
    trail: float | None = None
    client_order_id: str | None = None


@dataclass(slots=True)
class Fill:
    """One execution of an order."""

    execution_id: str
    t: int
    qty: float
    price: float


@dataclass(slots=True)
class SimOrder:
    """An order as the simulated venue keeps it. Times are UTC nanoseconds."""

    id: str
    client_order_id: str
    symbol: str
    side: str
    type: str
    time_in_force: str
    qty: float | None
    notional: float | None
    limit_price: float | None
    stop_price: float | None
    trail_price: float | None
    trail_percent: float | None
    extended_hours: bool
    status: str
    created_at: int
    eligible_from: int  # first bar start this order may trade on
    expires_at: int | None
    position_intent: str
    hwm: float | None = None
    updated_at: int = 0
    submitted_at: int = 0
    filled_at: int | None = None
    expired_at: int | None = None
    canceled_at: int | None = None
    failed_at: int | None = None
    replaced_at: int | None = None
    replaced_by: str | None = None
    replaces: str | None = None
    filled_qty: float = 0.0
    filled_cost: float = 0.0
    triggered: bool = False
    last_fill_bar: int = -1
    fills: list[Fill] = field(default_factory=list)

    @property
    def is_open(self) -> bool:
        """Not in a terminal status."""
        return self.status not in TERMINAL_STATUSES

    @property
    def filled_avg_price(self) -> float | None:
        """Volume-weighted price of the executions so far."""
        return self.filled_cost / self.filled_qty if self.filled_qty > EPS else None

    @property
    def remaining(self) -> float:
        """Quantity still to fill (for notional orders: unknown until the first fill)."""
        if self.qty is None:
            return float("inf")
        return max(0.0, self.qty - self.filled_qty)

    def trail_stop(self) -> float | None:
        """The current stop of a trailing-stop order, from its water mark."""
        if self.hwm is None:
            return None
        if self.trail_price is not None:
            off = self.trail_price
        else:
            off = self.hwm * (self.trail_percent or 0.0) / 100.0
        return self.hwm - off if self.side == "sell" else self.hwm + off


@dataclass(slots=True)
class SimPosition:
    """A long position (cash account: no shorts)."""

    symbol: str
    qty: float
    cost_basis: float

    @property
    def avg_entry_price(self) -> float:
        """Cost basis per share."""
        return self.cost_basis / self.qty if self.qty > EPS else 0.0


@dataclass(frozen=True, slots=True)
class TradeEvent:
    """One ``trade_updates`` message; ``order`` is the order's JSON at the event."""

    event: str
    order: dict[str, Any]
    timestamp: int
    execution_id: str | None = None
    price: float | None = None
    qty: float | None = None
    position_qty: float | None = None
