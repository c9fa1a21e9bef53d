"""The matching engine and cash account behind the simulated Alpaca (no HTTP here).

Implements the order semantics of Alpaca's Trading API "Orders" page (types market, limit,
stop, stop_limit, trailing_stop; time in force day, gtc, ioc, fok; extended hours; replace;
cancel) and "Positions"/"Account" pages, with fills decided the way Backtrader's ``BackBroker``
decides them, so a replay trades like a backtest:

- An order may trade on the first bar that **starts at or after** its submission (minus the
  optional ``fill_grace_seconds``), and on later bars while it stays open.
- At a bar's **start** (its open is then the current price): market orders fill at the open;
  a buy limit fills at the open if ``open <= limit`` (sell: ``open >= limit``); a sell stop
  fills at the open if ``open <= stop`` (buy: ``open >= stop``); trailing stops likewise.
- At a bar's **end** (its high and low are then known): a buy limit fills at the limit if
  ``low <= limit`` (sell: ``high >= limit``); a sell stop fills at the stop if
  ``low <= stop`` (buy: ``high >= stop``). Together: buy limit at ``min(open, limit)``, sell
  stop at ``min(open, stop)``, exactly ``BackBroker``'s prices.
- stop_limit: triggered like a stop, then a limit (``BackBroker``'s intrabar cases);
  trailing_stop: the stop trails the high-water mark (sell) or low-water mark (buy), updated
  with each bar's open and then its high (low) after the trigger check.
- Partial fills: at most ``volume_participation x bar volume`` per order per bar (whole
  shares for whole-share orders); the rest waits for later bars. One execution per bar.
- Regular-hours orders trade on regular-session bars only; ``extended_hours`` limit orders
  also on pre-market and after-hours bars. Stops never trigger outside regular hours.
- ``day`` orders expire at the close of their session (extended-hours day orders at the end
  of after-hours); ``ioc`` fills what it can on its first bar and cancels the rest; ``fok``
  fills completely on its first bar or is canceled.

The account is a **cash account**: buying power = cash - cost reserved by open buy orders
(limit price for limit/stop-limit, stop price for stops, last trade for market and trailing
orders, the notional for notional orders); sells need shares not already held by other open
sell orders (no shorting). All state changes happen under ``Market.lock``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from brokers.alpaca_sim import errors
from brokers.alpaca_sim.bars import KIND_EXTENDED, KIND_REGULAR, BarBook
from brokers.alpaca_sim.calendar import CLOSE, OPEN, PRE_OPEN, ny_date, ny_midnight_ns
from brokers.alpaca_sim.models import (
    EPS,
    Fill,
    OrderRequest,
    ReplaceRequest,
    SimOrder,
    SimPosition,
    TradeEvent,
)
from brokers.alpaca_sim.serialization import num, order_json

logger = logging.getLogger(__name__)

_NS = 1_000_000_000
#: version of ``Market.snapshot``'s layout
STATE_SCHEMA = 1
_DAY_NS = 86_400 * _NS


@dataclass(frozen=True)
class MarketOptions:
    """Knobs of the simulated venue (all documented in docs/alpaca-sim.md)."""

    #: Cap on each order's fill per bar as a fraction of the bar's volume (None: no cap).
    volume_participation: float | None = None
    #: An order that arrives while bar k is running may trade on bar k (its open if the bar
    #: already opened and the order is marketable there, else intrabar at its close), as the
    #: backtest assumes for an order sent at bar k-1's close. False: strictly from the first
    #: bar that starts at or after the submission (plus ``fill_grace_seconds``).
    fill_current_bar: bool = True
    #: With ``fill_current_bar=False``: an order submitted up to this many replayed seconds
    #: after a bar started may still trade at that bar's open (must be below the interval).
    fill_grace_seconds: float = 0.0
    #: Refuse stops on the wrong side of the last trade, as Alpaca does (422).
    check_stop_price: bool = True
    #: Refuse sub-penny limit/stop prices (>= $1: 2 decimals, < $1: 4), as Alpaca does (422).
    penny_increments: bool = True
    #: Half of this (in basis points) is put on either side of the last trade in quotes.
    spread_bps: float = 0.0
    #: Seed of the order-id generator: None (default) = random UUIDs, never reused (also
    #: not after a restart, as Alpaca); an int makes ids reproducible run to run.
    seed: int | None = None
    #: Calendar days until a gtc order expires.
    gtc_days: int = 90


@dataclass(frozen=True)
class AccountState:
    """The account's money at one instant."""

    cash: float
    long_market_value: float
    equity: float
    buying_power: float
    last_equity: float


class Market:
    """Orders, positions and cash, advanced boundary by boundary through the replayed bars.

    ``now`` is the replay clock. Listeners: ``on_trade_event(TradeEvent)`` for every order
    event, ``on_bars_closed(t_ns, [(symbol, bar_index)])`` whenever bars close.
    """

    def __init__(self, book: BarBook, now: Callable[[], int], cash: float = 100_000.0,
                 options: MarketOptions | None = None, start_ns: int | None = None) -> None:
        self.book = book
        self.options = options or MarketOptions()
        step_s = book.step_ns / _NS
        if not 0 <= self.options.fill_grace_seconds < step_s:
            raise ValueError(f"fill_grace_seconds must be in [0, {step_s:g})")
        self._clock_now = now
        self.lock = threading.RLock()
        self.volume_participation = self.options.volume_participation
        self.on_trade_event: Callable[[TradeEvent], None] | None = None
        self.on_bars_closed: Callable[[int, list[tuple[str, int]]], None] | None = None
        start = int(start_ns if start_ns is not None else now())
        self.created_at = start
        self.processed_until = start
        self._now = start
        self.cash = float(cash)
        self.last_equity = float(cash)
        self._close_equity = float(cash)
        self.positions: dict[str, SimPosition] = {}
        self.orders: dict[str, SimOrder] = {}
        self._by_cid: dict[str, SimOrder] = {}
        self._working: dict[str, list[SimOrder]] = {}
        self._pending: list[tuple[SimOrder, int]] = []
        self._rng = random.Random(self.options.seed) if self.options.seed is not None else None
        #: bumped on every change to orders, positions or cash (persistence watches it)
        self.version = 0
        #: The last 10,000 trade events (newest last), for assertions; read under ``lock``.
        self.event_log: deque[TradeEvent] = deque(maxlen=10_000)

    # -- time -----------------------------------------------------------------------------

    @property
    def has_pending(self) -> bool:
        """Orders wait for an immediate check (see :meth:`settle`)."""
        return bool(self._pending)

    @property
    def now_ns(self) -> int:
        """The time the market state is at."""
        return self._now

    def sync(self) -> None:
        """Bring the state up to the clock: process every boundary up to now."""
        with self.lock:
            t = self._clock_now()
            if t > self.processed_until or self._pending:
                self._step_until(t)

    def settle(self) -> None:
        """Run the fills that became due at submission (an order whose first bar has already
        opened trades at that open right after it is acknowledged)."""
        with self.lock:
            self._settle()

    def _step_until(self, t: int) -> None:
        self._settle()
        for boundary in self.book.events_between(self.processed_until, t).tolist():
            self._now = boundary
            self._boundary(boundary)
            self.processed_until = boundary
        self.processed_until = max(self.processed_until, t)
        self._now = self.processed_until

    def _settle(self) -> None:
        pending, self._pending = self._pending, []
        for o, i in pending:
            if o.is_open and o.status != "accepted":
                self._open_check(o, i)

    def _boundary(self, t: int) -> None:
        book = self.book
        for sym in list(self._working):
            i = book.bar_ending_at(sym, t)
            if i >= 0:
                self._close_phase(sym, i)
        closing = book.closing_at(t)
        if closing and self.on_bars_closed is not None:
            self.on_bars_closed(t, closing)
        kinds = book.calendar.events.get(t)
        if kinds:
            for kind in kinds:
                self._session_event(kind, t)
        for sym in list(self._working):
            i = book.bar_starting_at(sym, t)
            if i >= 0:
                self._open_phase(sym, i)

    def _session_event(self, kind: str, t: int) -> None:
        if kind in (PRE_OPEN, OPEN):
            if kind == PRE_OPEN:
                self.last_equity = self._close_equity
            for o in self._all_working():
                if o.status == "accepted" and self._tradable_now(o, t):
                    self._set_status(o, "new")
                    self._emit("new", o)
        else:  # CLOSE or POST_CLOSE: day orders of the session expire
            for o in self._all_working():
                if o.expires_at is not None and o.expires_at <= t:
                    o.expired_at = t
                    self._set_status(o, "expired")
                    self._finish(o)
                    self._emit("expired", o)
            if kind == CLOSE:
                self._close_equity = self.account_state().equity

    # -- orders ---------------------------------------------------------------------------

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
            changes = self._replace_fields(old, req)
            if not changes:
                raise errors.forbidden("order parameters are not changed")
            cid = req.client_order_id or self._uuid()
            self._check_cid(cid)
            new_req = OrderRequest(
                symbol=old.symbol, side=old.side, type=old.type,
                time_in_force=changes.get("time_in_force", old.time_in_force),
                qty=changes.get("qty", old.qty), notional=old.notional,
                limit_price=changes.get("limit_price", old.limit_price),
                stop_price=changes.get("stop_price", old.stop_price),
                trail_price=changes.get("trail_price", old.trail_price),
                trail_percent=changes.get("trail_percent", old.trail_percent),
                extended_hours=old.extended_hours, client_order_id=cid,
                position_intent=old.position_intent,
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
        o = self.orders.get(order_id)
        if o is None:
            raise errors.not_found("order not found")
        return o

    def get_order_by_client_id(self, cid: str) -> SimOrder:
        """The order with this client order id (404 if unknown)."""
        o = self._by_cid.get(cid)
        if o is None:
            raise errors.not_found("order not found")
        return o

    def list_orders(self, status: str = "open", limit: int = 50, after: int | None = None,
                    until: int | None = None, direction: str = "desc", side: str | None = None,
                    symbols: Iterable[str] | None = None) -> list[SimOrder]:
        """``GET /v2/orders`` selection, ordered by submission time."""
        with self.lock:
            self.sync()
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

    # -- positions ------------------------------------------------------------------------

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
        return sum(o.remaining for o in self._working.get(symbol, ()) if o.side == "sell")

    # -- valuation ------------------------------------------------------------------------

    def price(self, symbol: str) -> float | None:
        """Last trade price of ``symbol`` at the market's time."""
        found = self.book.price_at(symbol, self._now)
        return found[0] if found else None

    def lastday_price(self, symbol: str) -> float | None:
        """Close of the previous session (before today's New York date)."""
        today = ny_midnight_ns(ny_date(self._now))
        prev = self.book.final_daily(symbol, self._now, before=today)
        return float(prev.c[-1]) if len(prev) else self.price(symbol)

    def account_state(self) -> AccountState:
        """Cash, market value, equity and buying power now."""
        with self.lock:
            lmv = 0.0
            for sym, p in self.positions.items():
                px = self.price(sym)
                lmv += p.qty * (px if px is not None else p.avg_entry_price)
            reserved = sum(self._reserve(o) for o in self._all_working())
            bp = max(0.0, self.cash - reserved)
            return AccountState(self.cash, lmv, self.cash + lmv, bp, self.last_equity)

    # -- persistence (``alpaca-sim --state FILE``) --------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Account, orders and positions as plain JSON (``restore`` reads it back)."""
        with self.lock:
            return {
                "schema": STATE_SCHEMA, "now": self._now, "processed_until": self.processed_until,
                "created_at": self.created_at, "cash": self.cash,
                "last_equity": self.last_equity, "close_equity": self._close_equity,
                "positions": [dataclasses.asdict(p) for p in self.positions.values()],
                "orders": [dataclasses.asdict(o) for o in self.orders.values()],
            }

    def restore(self, snap: dict[str, Any]) -> None:
        """Load a ``snapshot`` (the replay clock must already be at or after its ``now``).

        Raises ValueError when ``snap`` is not a state this version wrote."""
        if not isinstance(snap, dict) or snap.get("schema") != STATE_SCHEMA:
            raise ValueError(f"not an alpaca-sim state (schema {STATE_SCHEMA})")
        with self.lock:
            try:
                self.cash = float(snap["cash"])
                self.last_equity = float(snap["last_equity"])
                self._close_equity = float(snap["close_equity"])
                self.created_at = int(snap["created_at"])
                self.processed_until = self._now = int(snap["processed_until"])
                self.positions = {p["symbol"]: SimPosition(**p) for p in snap["positions"]}
                self.orders, self._by_cid, self._working = {}, {}, {}
                for raw in snap["orders"]:
                    fills = [Fill(**f) for f in raw.pop("fills", [])]
                    o = SimOrder(**raw, fills=fills)
                    self.orders[o.id] = o
                    self._by_cid[o.client_order_id] = o
                    if o.is_open:
                        self._working.setdefault(o.symbol, []).append(o)
            except (KeyError, TypeError) as exc:
                raise ValueError(f"alpaca-sim state is incomplete ({exc})") from None
            self.version += 1

    # -- internals: validation --------------------------------------------------------------

    def _uuid(self) -> str:
        if self._rng is None:
            return str(uuid.uuid4())
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _check_cid(self, cid: str) -> None:
        if len(cid) > 128:
            raise errors.validation("client_order_id must be no more than 128 characters")
        if cid in self._by_cid:
            raise errors.validation("client_order_id must be unique")

    def _validate(self, r: OrderRequest, replacing: SimOrder | None = None) -> None:
        if r.symbol not in self.book.bars:
            raise errors.validation(f'asset "{r.symbol}" not found')
        if r.order_class not in ("simple", ""):
            raise errors.validation(
                f"order_class {r.order_class} is not supported by alpaca-sim (simple orders only)")
        if r.time_in_force in ("opg", "cls"):
            raise errors.validation(
                f"time_in_force {r.time_in_force} is not supported by alpaca-sim")
        if (r.qty is None) == (r.notional is None):
            raise errors.validation("qty or notional is required" if r.qty is None
                                    else "only one of qty or notional is accepted")
        if r.qty is not None and r.qty <= 0:
            raise errors.validation("qty must be > 0")
        if r.notional is not None:
            if r.notional <= 0:
                raise errors.validation("notional must be > 0")
            if r.type != "market" or r.time_in_force != "day":
                raise errors.validation("notional orders must be DAY market orders")
        fractional = r.qty is not None and abs(r.qty - round(r.qty)) > EPS
        if fractional and (r.time_in_force != "day" or r.type not in ("market", "limit")):
            raise errors.validation("fractional orders must be DAY market or limit orders")
        self._validate_prices(r)
        if r.extended_hours and (r.type != "limit" or r.time_in_force not in ("day", "gtc")):
            raise errors.validation("extended hours order must be DAY or GTC limit orders")
        if r.time_in_force in ("ioc", "fok") and r.type not in ("market", "limit"):
            raise errors.validation(f"{r.time_in_force} orders must be market or limit orders")
        if r.type == "trailing_stop" and r.time_in_force not in ("day", "gtc"):
            raise errors.validation("trailing stop orders must be DAY or GTC")
        if r.side == "sell":
            self._check_sell_qty(r, replacing)

    def _validate_prices(self, r: OrderRequest) -> None:
        need = {
            "market": (), "limit": ("limit_price",), "stop": ("stop_price",),
            "stop_limit": ("limit_price", "stop_price"), "trailing_stop": (),
        }[r.type]
        for name in ("limit_price", "stop_price"):
            v = getattr(r, name)
            if name in need and v is None:
                raise errors.validation(f"{name} is required for {r.type} orders")
            if name not in need and v is not None:
                raise errors.validation(f"{name} must not be given for {r.type} orders")
            if v is not None:
                if v <= 0:
                    raise errors.validation(f"{name} must be > 0")
                if self.options.penny_increments and not _penny_ok(v):
                    raise errors.unprocessable(
                        f"invalid {name} {num(v)}. sub-penny increment does not fulfill "
                        "minimum pricing criteria")
        trail = (r.trail_price is not None, r.trail_percent is not None)
        if r.type == "trailing_stop":
            if sum(trail) != 1:
                raise errors.validation("exactly one of trail_price or trail_percent is required")
            amount = r.trail_price if r.trail_price is not None else r.trail_percent
            if amount is None or amount <= 0:
                raise errors.validation("trail must be > 0")
        elif any(trail):
            raise errors.validation("trail_price and trail_percent are for trailing_stop orders")
        if self.options.check_stop_price and r.type in ("stop", "stop_limit") and r.stop_price:
            px = self.price(r.symbol)
            if px is not None:
                if r.side == "buy" and r.stop_price <= px:
                    raise errors.unprocessable("stop price must be greater than current price",
                                               market_price=num(px), stop_price=num(r.stop_price))
                if r.side == "sell" and r.stop_price >= px:
                    raise errors.unprocessable("stop price must be less than current price",
                                               market_price=num(px), stop_price=num(r.stop_price))

    def _check_sell_qty(self, r: OrderRequest, replacing: SimOrder | None) -> None:
        p = self.positions.get(r.symbol)
        have = p.qty if p else 0.0
        held = self.held_for_orders(r.symbol)
        if replacing is not None and replacing.side == "sell":
            held -= replacing.remaining
        available = max(0.0, have - held)
        want = r.qty if r.qty is not None else (r.notional or 0.0) / (self.price(r.symbol) or 1.0)
        if want > available + EPS:
            related = [o.id for o in self._working.get(r.symbol, ())
                       if o.side == "sell" and o is not replacing]
            raise errors.forbidden(
                f"insufficient qty available for order (requested: {num(want)}, "
                f"available: {num(available)})",
                available=num(available), existing_qty=num(have), held_for_orders=num(held),
                related_orders=related, symbol=r.symbol)

    def _replace_fields(self, old: SimOrder, r: ReplaceRequest) -> dict[str, float | str]:
        changes: dict[str, float | str] = {}
        if r.qty is not None and r.qty != old.qty:
            changes["qty"] = r.qty
        if r.time_in_force is not None and r.time_in_force != old.time_in_force:
            changes["time_in_force"] = r.time_in_force
        if r.limit_price is not None:
            if old.type not in ("limit", "stop_limit"):
                raise errors.validation(f"limit_price must not be given for {old.type} orders")
            if r.limit_price != old.limit_price:
                changes["limit_price"] = r.limit_price
        if r.stop_price is not None:
            if old.type not in ("stop", "stop_limit"):
                raise errors.validation(f"stop_price must not be given for {old.type} orders")
            if r.stop_price != old.stop_price:
                changes["stop_price"] = r.stop_price
        if r.trail is not None:
            if old.type != "trailing_stop":
                raise errors.validation("trail is only for trailing_stop orders")
            key = "trail_price" if old.trail_price is not None else "trail_percent"
            if r.trail != getattr(old, key):
                changes[key] = r.trail
        if r.client_order_id is not None and r.client_order_id != old.client_order_id:
            changes["client_order_id"] = r.client_order_id
        return changes

    def _check_funds(self, o: SimOrder, replacing: SimOrder | None = None) -> None:
        if o.side != "buy":
            return
        cost = self._reserve(o)
        state = self.account_state()
        bp = state.buying_power + (self._reserve(replacing) if replacing is not None else 0.0)
        if cost > bp + 1e-6:
            raise errors.forbidden("insufficient buying power", buying_power=num(round(bp, 2)),
                                   cost_basis=num(round(cost, 2)))

    # -- internals: lifecycle -----------------------------------------------------------------

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
        self.orders[o.id] = o
        self._by_cid[o.client_order_id] = o
        self._working.setdefault(o.symbol, []).append(o)
        if not self._tradable_now(o, self._now):
            o.status = "accepted"
            self._emit("accepted", o)
            return
        self._emit("new", o)
        sb = self.book.bars[o.symbol]
        i = int(np.searchsorted(sb.bars.t, o.eligible_from, side="left"))
        if i < len(sb.bars) and sb.bars.t[i] <= self.processed_until < sb.end[i]:
            self._pending.append((o, i))

    def _tradable_now(self, o: SimOrder, t: int) -> bool:
        phase = self.book.calendar.phase(t)
        return phase == "regular" or (o.extended_hours and phase in ("pre", "post"))

    def _set_status(self, o: SimOrder, status: str) -> None:
        o.status = status
        o.updated_at = self._now

    def _finish(self, o: SimOrder) -> None:
        lst = self._working.get(o.symbol)
        if lst is not None:
            with contextlib.suppress(ValueError):
                lst.remove(o)
            if not lst:
                del self._working[o.symbol]

    def _cancel(self, o: SimOrder) -> None:
        o.canceled_at = self._now
        self._set_status(o, "canceled")
        self._finish(o)
        self._emit("canceled", o)

    def _all_working(self) -> list[SimOrder]:
        return [o for lst in self._working.values() for o in lst]

    def _reserve(self, o: SimOrder) -> float:
        if o.side != "buy" or not o.is_open:
            return 0.0
        if o.qty is None:
            return max(0.0, (o.notional or 0.0) - o.filled_cost)
        if o.type in ("limit", "stop_limit"):
            ref = o.limit_price
        elif o.type == "stop":
            ref = o.stop_price
        else:
            ref = self.price(o.symbol)
        return o.remaining * (ref or 0.0)

    def _emit(self, event: str, o: SimOrder, fill: Fill | None = None,
              position_qty: float | None = None) -> None:
        e = TradeEvent(
            event=event, order=order_json(o), timestamp=self._now,
            execution_id=fill.execution_id if fill else None,
            price=fill.price if fill else None, qty=fill.qty if fill else None,
            position_qty=position_qty,
        )
        self.event_log.append(e)
        self.version += 1
        if self.on_trade_event is not None:
            self.on_trade_event(e)

    # -- internals: matching ------------------------------------------------------------------

    def _eligible(self, o: SimOrder, i: int, bar_start: int, kind: int) -> bool:
        if o.status == "accepted" or o.last_fill_bar == i or bar_start < o.eligible_from:
            return False
        if o.expires_at is not None and bar_start >= o.expires_at:
            return False
        return kind == KIND_REGULAR or (kind == KIND_EXTENDED and o.extended_hours)

    def _open_phase(self, sym: str, i: int) -> None:
        for o in list(self._working.get(sym, ())):
            self._open_check(o, i)

    def _open_check(self, o: SimOrder, i: int) -> None:
        sb = self.book.bars[o.symbol]
        if not self._eligible(o, i, int(sb.bars.t[i]), int(sb.kind[i])):
            return
        op = float(sb.bars.o[i])
        buy = o.side == "buy"
        px: float | None = None
        if o.type == "market":
            px = op
        elif o.type == "limit":
            px = op if _crosses_limit(buy, op, o.limit_price) else None
        elif o.type == "stop":
            px = op if _crosses_stop(buy, op, o.stop_price) else None
        elif o.type == "stop_limit":
            if not o.triggered and _crosses_stop(buy, op, o.stop_price):
                o.triggered = True
            if o.triggered and _crosses_limit(buy, op, o.limit_price):
                px = op
        elif o.type == "trailing_stop":
            if o.hwm is None:
                o.hwm = op
            if _crosses_stop(buy, op, o.trail_stop()):
                px = op
            else:
                o.hwm = max(o.hwm, op) if not buy else min(o.hwm, op)
        if px is not None:
            self._execute(o, i, px)
        if o.is_open and o.time_in_force in ("ioc", "fok"):
            self._cancel(o)

    def _close_phase(self, sym: str, i: int) -> None:
        sb = self.book.bars[sym]
        b = sb.bars
        start, kind = int(b.t[i]), int(sb.kind[i])
        op, hi, lo, cl = float(b.o[i]), float(b.h[i]), float(b.l[i]), float(b.c[i])
        for o in list(self._working.get(sym, ())):
            if o.type == "market" or not self._eligible(o, i, start, kind):
                continue
            buy = o.side == "buy"
            px: float | None = None
            if o.type == "limit":
                px = _limit_intrabar(buy, op, hi, lo, o.limit_price)
            elif o.type == "stop":
                px = _stop_intrabar(buy, op, hi, lo, o.stop_price)
            elif o.type == "stop_limit":
                px = self._stop_limit_intrabar(o, buy, op, hi, lo, cl)
            elif o.type == "trailing_stop":
                px = _stop_intrabar(buy, op, hi, lo, o.trail_stop())
                if px is None and o.hwm is not None:
                    o.hwm = max(o.hwm, hi) if not buy else min(o.hwm, lo)
            if px is not None:
                self._execute(o, i, px)

    def _stop_limit_intrabar(self, o: SimOrder, buy: bool, op: float, hi: float, lo: float,
                             cl: float) -> float | None:
        stop, limit = o.stop_price or 0.0, o.limit_price or 0.0
        if o.triggered:
            return _limit_intrabar(buy, op, hi, lo, limit)
        # BackBroker._try_exec_stoplimit: triggered during the bar, the fill price is known
        # only in the cases where the limit is reachable from the trigger price.
        if buy and hi >= stop:
            o.triggered = True
            if limit >= stop:
                return stop
            return limit if op > cl and limit >= cl else None
        if not buy and lo <= stop:
            o.triggered = True
            if limit <= stop:
                return stop
            return limit if op <= cl and limit <= cl else None
        return None

    def _execute(self, o: SimOrder, i: int, px: float) -> None:
        sb = self.book.bars[o.symbol]
        if o.qty is None:  # notional order: sized at its first fill
            o.qty = math.floor((o.notional or 0.0) / px * 1e9) / 1e9
        want = o.remaining
        whole = abs(o.qty - round(o.qty)) <= EPS
        if self.volume_participation is not None:
            cap = self.volume_participation * float(sb.bars.v[i])
            cap = math.floor(cap + EPS) if whole else math.floor(cap * 1e9) / 1e9
            if o.time_in_force == "fok" and cap < want - EPS:
                return
            want = min(want, cap)
        if want <= EPS:
            return
        if o.side == "buy":
            cost = want * px
            if cost > self.cash + 1e-6:
                if o.filled_qty <= EPS:
                    o.failed_at = self._now
                    self._set_status(o, "rejected")
                    self._finish(o)
                    self._emit("rejected", o)
                else:
                    self._cancel(o)
                logger.info("order %s: not enough cash at fill (%.2f > %.2f)",
                            o.client_order_id, cost, self.cash)
                return
            self.cash -= cost
            p = self.positions.get(o.symbol)
            if p is None:
                p = self.positions[o.symbol] = SimPosition(o.symbol, 0.0, 0.0)
            p.qty = round(p.qty + want, 9)
            p.cost_basis += cost
            pos_qty = p.qty
        else:
            p = self.positions.get(o.symbol)
            want = min(want, p.qty if p else 0.0)
            if p is None or want <= EPS:
                self._cancel(o)
                return
            p.cost_basis -= p.avg_entry_price * want
            p.qty = round(p.qty - want, 9)
            self.cash += want * px
            pos_qty = p.qty
            if p.qty <= EPS:
                del self.positions[o.symbol]
                pos_qty = 0.0
        o.filled_qty = round(o.filled_qty + want, 9)
        o.filled_cost += want * px
        o.last_fill_bar = i
        fill = Fill(self._uuid(), self._now, want, px)
        o.fills.append(fill)
        if o.remaining <= EPS:
            o.filled_at = self._now
            self._set_status(o, "filled")
            self._finish(o)
            self._emit("fill", o, fill, pos_qty)
        else:
            self._set_status(o, "partially_filled")
            self._emit("partial_fill", o, fill, pos_qty)


def _penny_ok(price: float) -> bool:
    decimals = 2 if price >= 1.0 else 4
    scaled = price * 10**decimals
    return abs(scaled - round(scaled)) < 1e-6


def _crosses_limit(buy: bool, price: float, limit: float | None) -> bool:
    return limit is not None and (price <= limit if buy else price >= limit)


def _crosses_stop(buy: bool, price: float, stop: float | None) -> bool:
    return stop is not None and (price >= stop if buy else price <= stop)


def _limit_intrabar(buy: bool, op: float, hi: float, lo: float,
                    limit: float | None) -> float | None:
    if limit is None:
        return None
    if buy:
        return min(op, limit) if lo <= limit else None
    return max(op, limit) if hi >= limit else None


def _stop_intrabar(buy: bool, op: float, hi: float, lo: float, stop: float | None) -> float | None:
    if stop is None:
        return None
    if buy:
        return max(op, stop) if hi >= stop else None
    return min(op, stop) if lo <= stop else None
