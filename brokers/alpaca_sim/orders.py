"""The venue's order registry: every order by id and client order id, and the open ones per
symbol (what the matching engine walks). No rules here: ``market.Market`` decides, this keeps."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable
from typing import Any

from brokers.alpaca_sim import errors
from brokers.alpaca_sim.models import Fill, SimOrder


class OrderRegistry:
    """Orders in submission order; ``working`` holds the open ones per symbol."""

    def __init__(self) -> None:
        self.orders: dict[str, SimOrder] = {}
        self.by_cid: dict[str, SimOrder] = {}
        self.working: dict[str, list[SimOrder]] = {}

    def add(self, o: SimOrder) -> None:
        """Register a new (or restored) order; an open one joins its symbol's working list."""
        self.orders[o.id] = o
        self.by_cid[o.client_order_id] = o
        if o.is_open:
            self.working.setdefault(o.symbol, []).append(o)

    def finish(self, o: SimOrder) -> None:
        """``o`` reached a terminal status: it stops working."""
        lst = self.working.get(o.symbol)
        if lst is not None:
            with contextlib.suppress(ValueError):
                lst.remove(o)
            if not lst:
                del self.working[o.symbol]

    def all_working(self) -> list[SimOrder]:
        """Every open order."""
        return [o for lst in self.working.values() for o in lst]

    def get(self, order_id: str) -> SimOrder:
        """The order with this id (404 if unknown)."""
        o = self.orders.get(order_id)
        if o is None:
            raise errors.not_found("order not found")
        return o

    def get_by_client_id(self, cid: str) -> SimOrder:
        """The order with this client order id (404 if unknown)."""
        o = self.by_cid.get(cid)
        if o is None:
            raise errors.not_found("order not found")
        return o

    def held_for_orders(self, symbol: str) -> float:
        """Shares of ``symbol`` committed to open sell orders."""
        return sum(o.remaining for o in self.working.get(symbol, ()) if o.side == "sell")

    def select(self, status: str = "open", limit: int = 50, after: int | None = None,
               until: int | None = None, direction: str = "desc", side: str | None = None,
               symbols: Iterable[str] | None = None) -> list[SimOrder]:
        """``GET /v2/orders`` selection, ordered by submission time."""
        wanted = {s.upper() for s in symbols} if symbols else None
        out = []
        for o in reversed(self.orders.values()):
            if status == "open" and not o.is_open:
                continue
            if status == "closed" and o.is_open:
                continue
            if after is not None and o.submitted_at <= after:
                continue
            if until is not None and o.submitted_at >= until:
                continue
            if side is not None and o.side != side:
                continue
            if wanted is not None and o.symbol not in wanted:
                continue
            out.append(o)
        out.sort(key=lambda o: o.submitted_at, reverse=direction != "asc")
        return out[:limit]

    def snapshot(self) -> list[dict[str, Any]]:
        """Every order as plain JSON."""
        return [dataclasses.asdict(o) for o in self.orders.values()]

    def restore(self, raw_orders: Iterable[dict[str, Any]]) -> None:
        """Replace the registry with ``snapshot``'s orders (``TypeError`` if malformed)."""
        self.orders, self.by_cid, self.working = {}, {}, {}
        for raw in raw_orders:
            fills = [Fill(**f) for f in raw.pop("fills", [])]
            self.add(SimOrder(**raw, fills=fills))
