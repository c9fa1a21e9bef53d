"""The matching engine of the simulated Alpaca: replayed time, sessions, and fills.

Fills are decided the way Backtrader's ``BackBroker`` decides them, so a replay trades like a
backtest (the prices: ``fills``):

- An order may trade on the first bar that **starts at or after** its submission (minus the
  optional ``fill_grace_seconds``), and on later bars while it stays open.
- Partial fills: at most ``volume_participation x bar volume`` per order per bar (whole
  shares for whole-share orders); the rest waits for later bars. One execution per bar.
- Regular-hours orders trade on regular-session bars only; ``extended_hours`` limit orders
  also on pre-market and after-hours bars. Stops never trigger outside regular hours.
- ``day`` orders expire at the close of their session (extended-hours day orders at the end
  of after-hours); ``ioc`` fills what it can on its first bar and cancels the rest; ``fok``
  fills completely on its first bar or is canceled.

``market.Market`` (the venue's order and position API) builds on ``MatchingEngine``. All state
changes happen under ``lock``.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from brokers.alpaca_sim import fills
from brokers.alpaca_sim.account import Account, AccountState, reserve
from brokers.alpaca_sim.bars import KIND_EXTENDED, KIND_REGULAR, BarBook
from brokers.alpaca_sim.calendar import CLOSE, OPEN, PRE_OPEN
from brokers.alpaca_sim.models import EPS, Fill, SimOrder, SimPosition, TradeEvent
from brokers.alpaca_sim.orders import OrderRegistry
from brokers.alpaca_sim.serialization import order_json

logger = logging.getLogger(__name__)

_NS = 1_000_000_000


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


class MatchingEngine:
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
        self.account = Account(cash)
        self._orders = OrderRegistry()
        self._pending: list[tuple[SimOrder, int]] = []
        self._rng = random.Random(self.options.seed) if self.options.seed is not None else None
        #: bumped on every change to orders, positions or cash (persistence watches it)
        self.version = 0
        #: The last 10,000 trade events (newest last), for assertions; read under ``lock``.
        self.event_log: deque[TradeEvent] = deque(maxlen=10_000)

    # -- the account and the orders (attributes callers have always read) ---------------

    @property
    def cash(self) -> float:
        """Cash in the account."""
        return self.account.cash

    @property
    def last_equity(self) -> float:
        """Equity at the previous session's close."""
        return self.account.last_equity

    @property
    def positions(self) -> dict[str, SimPosition]:
        """Open positions by symbol."""
        return self.account.positions

    @property
    def orders(self) -> dict[str, SimOrder]:
        """Every order by id, in submission order."""
        return self._orders.orders

    @property
    def _working(self) -> dict[str, list[SimOrder]]:
        return self._orders.working

    # -- time ---------------------------------------------------------------------------

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
                self.account.last_equity = self.account.close_equity
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
                self.account.close_equity = self.account_state().equity

    # -- valuation ----------------------------------------------------------------------

    def price(self, symbol: str) -> float | None:
        """Last trade price of ``symbol`` at the market's time."""
        found = self.book.price_at(symbol, self._now)
        return found[0] if found else None

    def account_state(self) -> AccountState:
        """Cash, market value, equity and buying power now."""
        with self.lock:
            reserved = [reserve(o, self.price) for o in self._all_working()]
            return self.account.state(self.price, reserved)

    # -- internals: lifecycle -----------------------------------------------------------

    def _uuid(self) -> str:
        if self._rng is None:
            return str(uuid.uuid4())
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _tradable_now(self, o: SimOrder, t: int) -> bool:
        phase = self.book.calendar.phase(t)
        return phase == "regular" or (o.extended_hours and phase in ("pre", "post"))

    def _set_status(self, o: SimOrder, status: str) -> None:
        o.status = status
        o.updated_at = self._now

    def _finish(self, o: SimOrder) -> None:
        self._orders.finish(o)

    def _cancel(self, o: SimOrder) -> None:
        o.canceled_at = self._now
        self._set_status(o, "canceled")
        self._finish(o)
        self._emit("canceled", o)

    def _all_working(self) -> list[SimOrder]:
        return self._orders.all_working()

    def _reserve(self, o: SimOrder | None) -> float:
        return reserve(o, self.price)

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

    # -- internals: matching ------------------------------------------------------------

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
        if o.type == "trailing_stop":
            if o.hwm is None:
                o.hwm = op
            if fills.crosses_stop(buy, op, o.trail_stop()):
                px = op
            else:
                o.hwm = fills.water_mark(buy, o.hwm, op)
        else:
            px, o.triggered = fills.open_price(o.type, buy, op, o.limit_price, o.stop_price,
                                               o.triggered)
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
            if o.type == "trailing_stop":
                px = fills.stop_intrabar(buy, op, hi, lo, o.trail_stop())
                if px is None and o.hwm is not None:
                    o.hwm = fills.water_mark(buy, o.hwm, lo if buy else hi)
            else:
                px, o.triggered = fills.close_price(o.type, buy, op, hi, lo, cl, o.limit_price,
                                                    o.stop_price, o.triggered)
            if px is not None:
                self._execute(o, i, px)

    def _execute(self, o: SimOrder, i: int, px: float) -> None:
        sb = self.book.bars[o.symbol]
        if o.qty is None:  # notional order: sized at its first fill
            o.qty = math.floor((o.notional or 0.0) / px * 1e9) / 1e9
        want = o.remaining
        whole = abs(o.qty - round(o.qty)) <= EPS
        if self.volume_participation is not None:
            cap = fills.participation_cap(float(sb.bars.v[i]), self.volume_participation, whole)
            if o.time_in_force == "fok" and cap < want - EPS:
                return
            want = min(want, cap)
        if want <= EPS:
            return
        acct = self.account
        if o.side == "buy":
            cost = want * px
            if cost > acct.cash + 1e-6:
                if o.filled_qty <= EPS:
                    o.failed_at = self._now
                    self._set_status(o, "rejected")
                    self._finish(o)
                    self._emit("rejected", o)
                else:
                    self._cancel(o)
                logger.info("order %s: not enough cash at fill (%.2f > %.2f)",
                            o.client_order_id, cost, acct.cash)
                return
            pos_qty = acct.buy(o.symbol, want, px)
        else:
            want = min(want, acct.held(o.symbol))
            if want <= EPS:
                self._cancel(o)
                return
            pos_qty = acct.sell(o.symbol, want, px)
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
