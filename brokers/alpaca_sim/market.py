"""The simulated Alpaca venue behind the REST routes (no HTTP here): orders and positions.

Implements the order semantics of Alpaca's Trading API "Orders" page (types market, limit,
stop, stop_limit, trailing_stop; time in force day, gtc, ioc, fok; extended hours; replace;
cancel) and "Positions"/"Account" pages. The parts, each its own module:

- ``validation``: what Alpaca refuses, one function per rule;
- ``engine``: replayed time, sessions, and when an order trades (``MatchingEngine``);
- ``fills``: fill prices, pure functions (``BackBroker``'s prices);
- ``account``: the cash account (cash, positions, buying power);
- ``orders``: the order registry.

All state changes happen under ``Market.lock``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from brokers.alpaca_sim import errors, validation
from brokers.alpaca_sim.account import AccountState
from brokers.alpaca_sim.calendar import ny_date, ny_midnight_ns
from brokers.alpaca_sim.engine import MarketOptions, MatchingEngine
from brokers.alpaca_sim.models import EPS, OrderRequest, ReplaceRequest, SimOrder, SimPosition

logger = logging.getLogger(__name__)

_NS = 1_000_000_000
#: version of ``Market.snapshot``'s layout
STATE_SCHEMA = 1
_DAY_NS = 86_400 * _NS
#: Order fields a ``PATCH`` may change (``validation.replace_changes``); the rest carry over.
_REPLACEABLE = ("time_in_force", "qty", "limit_price", "stop_price", "trail_price",
                "trail_percent")


class Market(MatchingEngine):
    """The venue's API: submit, replace and cancel orders, read and close positions, save and
    restore state. Replayed time, sessions and fills: ``MatchingEngine``."""

    # -- orders -------------------------------------------------------------------------

    def submit(self, req: OrderRequest) -> SimOrder:
        """Validate and accept an order (raises ``ApiError`` the way Alpaca refuses)."""
        with self.lock:
            self.sync()
            self._validate(req)
            cid = req.client_order_id or self._uuid()
            self._check_cid(cid)
            o = self._make_order(req, cid)
            self._check_funds(o)
            self._accept(o)
            return o

    def replace(self, order_id: str, req: ReplaceRequest) -> SimOrder:
        """``PATCH /v2/orders/{id}``: a new order replaces an open one."""
        with self.lock:
            self.sync()
            old = self.get_order(order_id)
            if not old.is_open:
                raise errors.unprocessable(f'order is already in "{old.status}" state')
            if old.status not in ("new", "accepted"):
                raise errors.unprocessable(
                    f'order is not replaceable in "{old.status}" state (replace before it fills)')
            changes = validation.replace_changes(old, req)
            if not changes:
                raise errors.forbidden("order parameters are not changed")
            cid = req.client_order_id or self._uuid()
            self._check_cid(cid)
            kept: dict[str, Any] = {k: changes.get(k, getattr(old, k)) for k in _REPLACEABLE}
            new_req = OrderRequest(
                symbol=old.symbol, side=old.side, type=old.type, notional=old.notional,
                extended_hours=old.extended_hours, client_order_id=cid,
                position_intent=old.position_intent, **kept,
            )
            self._validate(new_req, replacing=old)
            new = self._make_order(new_req, cid)
            if old.type == "trailing_stop":
                new.hwm = old.hwm
            self._check_funds(new, replacing=old)
            old.replaced_by = new.id
            old.replaced_at = self._now
            new.replaces = old.id
            self._set_status(old, "replaced")
            self._finish(old)
            self._emit("replaced", old)
            self._accept(new)
            return new

    def cancel(self, order_id: str) -> SimOrder:
        """``DELETE /v2/orders/{id}``: cancel an open order (422 if it is already done)."""
        with self.lock:
            self.sync()
            o = self.get_order(order_id)
            if not o.is_open:
                raise errors.unprocessable(f'order is already in "{o.status}" state')
            self._cancel(o)
            return o

    def cancel_all(self) -> list[SimOrder]:
        """``DELETE /v2/orders``: cancel every open order; the canceled orders."""
        with self.lock:
            self.sync()
            done = list(self._all_working())
            for o in done:
                self._cancel(o)
            return done

    def reject(self, order_id: str, reason: str = "order rejected by the simulator") -> SimOrder:
        """Reject an accepted, unfilled order (scripted by the ``reject_orders`` fault)."""
        with self.lock:
            o = self.get_order(order_id)
            if o.is_open and o.filled_qty <= EPS:
                o.failed_at = self._now
                self._set_status(o, "rejected")
                self._finish(o)
                self._emit("rejected", o)
                logger.info("order %s rejected: %s", o.client_order_id, reason)
            return o

    def get_order(self, order_id: str) -> SimOrder:
        """The order with this id (404 if unknown)."""
        return self._orders.get(order_id)

    def get_order_by_client_id(self, cid: str) -> SimOrder:
        """The order with this client order id (404 if unknown)."""
        return self._orders.get_by_client_id(cid)

    def list_orders(self, status: str = "open", limit: int = 50, after: int | None = None,
                    until: int | None = None, direction: str = "desc", side: str | None = None,
                    symbols: Iterable[str] | None = None) -> list[SimOrder]:
        """``GET /v2/orders`` selection, ordered by submission time."""
        with self.lock:
            self.sync()
            return self._orders.select(status, limit, after, until, direction, side, symbols)

    # -- positions ----------------------------------------------------------------------

    def get_position(self, symbol: str) -> SimPosition:
        """The open position in ``symbol`` (404 if none)."""
        p = self.positions.get(symbol.upper())
        if p is None:
            raise errors.not_found("position does not exist")
        return p

    def close_position(self, symbol: str, qty: float | None = None,
                       percentage: float | None = None) -> SimOrder:
        """``DELETE /v2/positions/{symbol}``: a market order that sells the position (or part)."""
        with self.lock:
            self.sync()
            p = self.get_position(symbol)
            if qty is not None and percentage is not None:
                raise errors.validation("only one of qty or percentage is accepted")
            if percentage is not None:
                if not 0 < percentage <= 100:
                    raise errors.validation("percentage must be in (0, 100]")
                qty = p.qty if percentage >= 100 else (
                    math.floor(p.qty * percentage / 100 * 1e9) / 1e9)
            if qty is None:
                qty = p.qty
            if qty <= 0:
                raise errors.validation("qty must be > 0")
            req = OrderRequest(symbol=p.symbol, side="sell", type="market", time_in_force="day",
                               qty=qty, position_intent="sell_to_close")
            return self.submit(req)

    def close_all(self, cancel_orders: bool) -> list[tuple[str, int, SimOrder | errors.ApiError]]:
        """``DELETE /v2/positions``: (symbol, status, order or error) per position."""
        with self.lock:
            self.sync()
            if cancel_orders:
                self.cancel_all()
            out: list[tuple[str, int, SimOrder | errors.ApiError]] = []
            for sym in sorted(self.positions):
                try:
                    out.append((sym, 200, self.close_position(sym)))
                except errors.ApiError as exc:
                    out.append((sym, exc.status, exc))
            return out

    def held_for_orders(self, symbol: str) -> float:
        """Shares of ``symbol`` committed to open sell orders."""
        return self._orders.held_for_orders(symbol)

    # -- valuation ----------------------------------------------------------------------

    def lastday_price(self, symbol: str) -> float | None:
        """Close of the previous session (before today's New York date)."""
        today = ny_midnight_ns(ny_date(self._now))
        prev = self.book.final_daily(symbol, self._now, before=today)
        return float(prev.c[-1]) if len(prev) else self.price(symbol)

    # -- persistence (``alpaca-sim --state FILE``) --------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Account, orders and positions as plain JSON (``restore`` reads it back)."""
        with self.lock:
            acct = self.account.snapshot()
            return {
                "schema": STATE_SCHEMA, "now": self._now, "processed_until": self.processed_until,
                "created_at": self.created_at, "cash": acct["cash"],
                "last_equity": acct["last_equity"], "close_equity": acct["close_equity"],
                "positions": acct["positions"], "orders": self._orders.snapshot(),
            }

    def restore(self, snap: dict[str, Any]) -> None:
        """Load a ``snapshot`` (the replay clock must already be at or after its ``now``).

        Raises ValueError when ``snap`` is not a state this version wrote."""
        if not isinstance(snap, dict) or snap.get("schema") != STATE_SCHEMA:
            raise ValueError(f"not an alpaca-sim state (schema {STATE_SCHEMA})")
        with self.lock:
            try:
                self.account.restore(snap)
                self.created_at = int(snap["created_at"])
                self.processed_until = self._now = int(snap["processed_until"])
                self._orders.restore(snap["orders"])
            except (KeyError, TypeError) as exc:
                raise ValueError(f"alpaca-sim state is incomplete ({exc})") from None
            self.version += 1

    # -- internals: validation ----------------------------------------------------------

    def _check_cid(self, cid: str) -> None:
        validation.check_client_order_id(cid, self._orders.by_cid)

    def _validate(self, r: OrderRequest, replacing: SimOrder | None = None) -> None:
        opts = self.options
        validation.validate_request(r, self.book.bars, penny_increments=opts.penny_increments,
                                    check_stop_price=opts.check_stop_price,
                                    last_price=self.price)
        if r.side == "sell":
            held = self.held_for_orders(r.symbol)
            if replacing is not None and replacing.side == "sell":
                held -= replacing.remaining
            related = [o.id for o in self._working.get(r.symbol, ())
                       if o.side == "sell" and o is not replacing]
            validation.check_sell_qty(r, self.account.held(r.symbol), held,
                                      self.price(r.symbol) if r.qty is None else None, related)

    def _check_funds(self, o: SimOrder, replacing: SimOrder | None = None) -> None:
        if o.side != "buy":
            return
        bp = self.account_state().buying_power + self._reserve(replacing)
        validation.check_buying_power(self._reserve(o), bp)

    # -- internals: lifecycle -----------------------------------------------------------

    def _make_order(self, r: OrderRequest, cid: str) -> SimOrder:
        now = self._now
        cal = self.book.calendar
        if r.time_in_force == "gtc":
            i = cal.trading_session(now + self.options.gtc_days * _DAY_NS, extended=False)
        else:
            i = cal.trading_session(now, extended=r.extended_hours)
        ends = cal.ext_close if r.extended_hours and r.time_in_force != "gtc" else cal.close
        expires = int(ends[i]) if i >= 0 else None
        intent = r.position_intent or ("buy_to_open" if r.side == "buy" else "sell_to_close")
        o = SimOrder(
            id=self._uuid(), client_order_id=cid, symbol=r.symbol, side=r.side, type=r.type,
            time_in_force=r.time_in_force, qty=r.qty, notional=r.notional,
            limit_price=r.limit_price, stop_price=r.stop_price, trail_price=r.trail_price,
            trail_percent=r.trail_percent, extended_hours=r.extended_hours, status="new",
            created_at=now, updated_at=now, submitted_at=now,
            eligible_from=self._eligible_from(now),
            expires_at=expires, position_intent=intent,
        )
        if o.type == "trailing_stop":
            o.hwm = self.price(o.symbol)
        return o

    def _eligible_from(self, now: int) -> int:
        if self.options.fill_current_bar:
            # the bar running at ``now`` (started after now - interval) is the first one
            return now - self.book.step_ns + 1
        return now - int(self.options.fill_grace_seconds * _NS)

    def _accept(self, o: SimOrder) -> None:
        self._orders.add(o)
        if not self._tradable_now(o, self._now):
            o.status = "accepted"
            self._emit("accepted", o)
            return
        self._emit("new", o)
        sb = self.book.bars[o.symbol]
        i = int(np.searchsorted(sb.bars.t, o.eligible_from, side="left"))
        if i < len(sb.bars) and sb.bars.t[i] <= self.processed_until < sb.end[i]:
            self._pending.append((o, i))


__all__ = ["STATE_SCHEMA", "AccountState", "Market", "MarketOptions"]
