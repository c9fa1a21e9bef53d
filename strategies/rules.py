"""The trading rules of SPEC.md as plain, typed functions: no Backtrader, no I/O.

ATR, position sizing with its caps, the fixed + trailing stop that only ratchets up, the
entry guards, the limit-order timeout and the deterministic client order ids. The Strategy
(``strategies/ratchet.py``) wires these together; each has its own unit tests.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

import numpy as np


class Purpose(StrEnum):
    """Why an order exists; part of its client order id."""

    ENTRY = "entry"
    FALLBACK = "fallback"
    STOP = "stop"
    EXIT = "exit"


class Reason(StrEnum):
    """Reasons recorded in the audit trail (SPEC's words)."""

    INSUFFICIENT_DATA = "insufficient_data"
    SIGNAL = "signal"
    SIZE_ZERO = "size_zero"
    DUPLICATE_ORDER = "duplicate_order"
    MAX_POSITIONS = "max_positions"
    POSITION_OPEN = "position_open"
    NO_POSITION = "no_position"
    MARKET_CLOSED = "market_closed"
    STOP = "stop"
    TRAIL = "trail"
    LIMIT_TIMEOUT = "limit_timeout"
    FALLBACK = "fallback"
    RATCHET = "ratchet"
    ORDER_REJECTED = "order_rejected"


# ---------------------------------------------------------------------------------------------
# ATR


def true_range(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    """True range per bar; NaN on the first bar (it needs the previous close)."""
    n = high.shape[0]
    tr = np.full(n, np.nan)
    if n > 1:
        prev = close[:-1]
        tr[1:] = np.maximum(high[1:], prev) - np.minimum(low[1:], prev)
    return tr


def atr_wilder(
    high: np.ndarray, low: np.ndarray, close: np.ndarray, period: int = 14
) -> np.ndarray:
    """Wilder's Average True Range, as ``bt.indicators.ATR`` computes it.

    Seeded with the arithmetic mean of the first ``period`` true ranges, then
    ``atr = prev * (1 - 1/period) + tr * (1/period)``. The first value is at index ``period``.
    """
    tr = true_range(high, low, close)
    n = tr.shape[0]
    out = np.full(n, np.nan)
    if n <= period:
        return out
    prev = atr_seed(tr[1 : period + 1].tolist(), period)
    out[period] = prev
    vals = tr.tolist()
    res = out.tolist()
    step = atr_next  # the one recurrence, shared with the live feed (brokers/alpaca/bars.py)
    for i in range(period + 1, n):
        prev = step(prev, vals[i], period)
        res[i] = prev
    return np.asarray(res, dtype=np.float64)


def atr_seed(true_ranges: list[float], period: int) -> float:
    """Wilder's first ATR: the exact mean (``math.fsum``) of the first ``period`` true ranges."""
    return math.fsum(true_ranges) / period


def atr_next(prev_atr: float, tr: float, period: int) -> float:
    """One step of Wilder's recurrence: ``prev * (1 - 1/period) + tr * (1/period)``.

    Both the backtest (``atr_wilder``) and the live feed (``LiveIndicators``) call this, so
    their ATRs are bit-identical over the same bars.
    """
    alpha = 1.0 / period
    return prev_atr * (1.0 - alpha) + tr * alpha


# ---------------------------------------------------------------------------------------------
# Sizing


@dataclass(frozen=True)
class SizeDecision:
    """Result of sizing one entry: ``shares`` (0 means no order) and what bound it."""

    shares: float
    binding: str  # "risk", "max_position_pct", "cash", "size_zero", "bad_input"
    risk_shares: float
    stop_distance: float


def position_size(
    equity: float,
    cash: float,
    price: float,
    atr: float,
    risk_per_trade_pct: float = 0.02,
    atr_stop_multiplier: float = 2.0,
    max_position_pct: float = 0.10,
    fractional: bool = False,
) -> SizeDecision:
    """SPEC sizing: floor(risk budget / stop distance), capped by max position % and cash.

    ``risk budget = equity * risk_per_trade_pct``; ``stop distance = atr_stop_multiplier *
    ATR``. The result never exceeds ``max_position_pct * equity / price`` nor ``cash /
    price`` (no leverage). Fewer than one share (or a bad input) gives 0 shares.
    """
    bad = (
        not all(math.isfinite(x) for x in (equity, cash, price, atr))
        or price <= 0
        or atr <= 0
        or equity <= 0
    )
    if bad:
        return SizeDecision(0.0, "bad_input", 0.0, float("nan"))
    stop_distance = atr_stop_multiplier * atr
    risk_shares = (equity * risk_per_trade_pct) / stop_distance
    cap_pos = (max_position_pct * equity) / price
    cap_cash = max(cash, 0.0) / price
    shares, binding = risk_shares, "risk"
    if cap_pos < shares:
        shares, binding = cap_pos, "max_position_pct"
    if cap_cash < shares:
        shares, binding = cap_cash, "cash"
    if not fractional:
        shares = float(math.floor(shares + 1e-9))
        # floor(x + eps) may round up past a cap by eps: step back if so
        if shares * price > min(max_position_pct * equity, max(cash, 0.0)) + 1e-6:
            shares -= 1.0
    else:
        shares = math.floor(shares * 1e6) / 1e6
    if shares < 1.0 and not fractional or shares <= 0:
        return SizeDecision(0.0, "size_zero", risk_shares, stop_distance)
    return SizeDecision(shares, binding, risk_shares, stop_distance)


def affordable_qty(cash: float, price: float, commission: float = 0.0,
                   fractional: bool = False) -> float:
    """Most shares ``cash`` buys at ``price`` with the commission (a fraction of value)."""
    if not (math.isfinite(cash) and math.isfinite(price)) or price <= 0 or cash <= 0:
        return 0.0
    unit = price * (1.0 + max(commission, 0.0))
    qty = cash / unit
    if fractional:
        return math.floor(qty * 1e6) / 1e6
    shares = float(math.floor(qty + 1e-9))
    if shares * unit > cash + 1e-6:  # floor(x + eps) stepped past the cash by eps
        shares -= 1.0
    return max(shares, 0.0)


# ---------------------------------------------------------------------------------------------
# Stops


@dataclass(frozen=True)
class StopState:
    """The protective stop of one open position. Immutable: ``advance`` returns a new one."""

    fill_price: float
    fixed_stop: float
    trail_pct: float
    highest_high: float
    level: float

    @property
    def trail_stop(self) -> float:
        """Trailing stop from the highest high since entry."""
        return self.highest_high * (1.0 - self.trail_pct)

    @property
    def binding(self) -> str:
        """``stop`` when the fixed stop is the effective one, ``trail`` otherwise."""
        return "stop" if self.fixed_stop >= self.trail_stop else "trail"

    def advance(self, bar_high: float) -> StopState:
        """The stop after a bar with high ``bar_high``: it ratchets up, never down."""
        hh = max(self.highest_high, bar_high) if math.isfinite(bar_high) else self.highest_high
        level = max(self.level, self.fixed_stop, hh * (1.0 - self.trail_pct))
        return StopState(self.fill_price, self.fixed_stop, self.trail_pct, hh, level)


def initial_stop(
    fill_price: float, atr_at_entry: float, atr_stop_multiplier: float, trail_pct: float
) -> StopState:
    """Stop right after the entry fills (before any new high).

    fixed = fill - k * ATR at entry; trailing = fill * (1 - trail_pct) until a new high.
    Without a usable ATR the fixed stop is left out and the trailing stop alone protects.
    """
    if math.isfinite(atr_at_entry) and atr_at_entry > 0:
        fixed = fill_price - atr_stop_multiplier * atr_at_entry
    else:
        fixed = -math.inf  # no ATR known (e.g. a position adopted at startup): trail only
    hh = fill_price
    level = max(fixed, hh * (1.0 - trail_pct))
    return StopState(fill_price, fixed, trail_pct, hh, level)


def stop_exit_reason(stop: StopState) -> str:
    """Exit reason for a stop fill: which of the two stops was binding."""
    return stop.binding


def stop_through_market(level: float, price: float) -> bool:
    """A sell stop at ``level`` is already hit at ``price`` (at or below it): Alpaca refuses
    such a stop, so the position is sold at market instead of protected by an order."""
    return level >= price


@dataclass
class StopHandoff:
    """The protective stop of one position, as the Strategy hands it to a live broker.

    The Strategy makes one at the entry decision and attaches it to every order of that
    position (``order.info["handoff"]``: entry, fallback, stop). A live broker that learns of
    a fill or a lost stop before the Strategy does (Backtrader notifies the Strategy only with
    its next bar) protects the position at once with the Strategy's own rule
    (``initial_state``: fixed stop from the fill price and the decision bar's ATR, trailing
    from the fill price; ``round_price``) and the client order id the Strategy would use
    (``stop_cid``), and records the order in ``placed``. The Strategy then adopts that order
    instead of sending a second stop. Plain data, no Backtrader: ``placed`` is whatever order
    object the broker made.
    """

    symbol: str
    strategy_id: str
    atr: float  # the decision bar's ATR (NaN: trailing stop only)
    atr_stop_multiplier: float
    trail_pct: float
    seq: int = 0  # the last stop number used for this position (either side bumps it)
    state: StopState | None = None  # the stop state once the first fill is protected
    placed: object | None = None  # the broker's stop order, until the Strategy adopts it

    def initial_state(self, fill_price: float) -> StopState:
        """The Strategy's stop right after the first fill (``initial_stop``)."""
        return initial_stop(fill_price, self.atr, self.atr_stop_multiplier, self.trail_pct)

    def level(self) -> float:
        """The current stop price as an order carries it (rounded down to the tick)."""
        if self.state is None:
            raise ValueError(f"{self.symbol}: no stop state yet")
        return round_price(self.state.level)

    def stop_cid(self, bar_time: datetime) -> str:
        """The next stop's client order id (numbering shared with the Strategy's own
        stops of this position; ``bar_time`` = the bar the Strategy sees the event with)."""
        self.seq += 1
        return client_order_id(self.strategy_id, self.symbol, bar_time, Purpose.STOP,
                               seq=self.seq)


def tick_size(price: float) -> float:
    """Alpaca's price increment: $0.01 at or above $1, $0.0001 below (sub-penny rule)."""
    return 0.01 if price >= 1.0 else 0.0001


def _floor_to_tick(price: float) -> float:
    if not math.isfinite(price):
        return price
    if price >= 1.0:
        return math.floor(price * 100 + 1e-7) / 100
    return math.floor(price * 10_000 + 1e-7) / 10_000


def round_price(price: float, tick: float = 0.01) -> float:
    """Round a (sell) stop price DOWN to Alpaca's tick: the stop never sits above the
    computed level, so it never fires earlier than the rule says. Cents at or above $1,
    4 decimals below. (``tick`` is kept for callers; the tick follows the price.)"""
    return _floor_to_tick(price)


def round_limit_buy(price: float) -> float:
    """Round a buy limit DOWN to Alpaca's tick (cents at or above $1, 4 decimals below):
    the limit never sits above the price it was computed from, so an entry never pays
    more than the decision bar's close."""
    return _floor_to_tick(price)


def round_limit_sell(price: float) -> float:
    """Round a sell limit (the extended-hours exit at the close) DOWN to Alpaca's tick:
    never asks more than the close, so the exit is not held back by rounding."""
    return _floor_to_tick(price)


# ---------------------------------------------------------------------------------------------
# Guards and order flow


@dataclass(frozen=True)
class EntryGuard:
    """Outcome of the entry guards: ``ok`` or the reason the entry is refused."""

    ok: bool
    reason: Reason | None = None


def check_entry(
    has_position: bool,
    has_working_order: bool,
    open_positions: int,
    working_entries: int,
    max_positions: int,
    market_open: bool = True,
) -> EntryGuard:
    """SPEC's guards, all checked before an entry, in this order."""
    if not market_open:
        return EntryGuard(False, Reason.MARKET_CLOSED)
    if has_position:
        return EntryGuard(False, Reason.POSITION_OPEN)
    if has_working_order:
        return EntryGuard(False, Reason.DUPLICATE_ORDER)
    if open_positions + working_entries >= max_positions:
        return EntryGuard(False, Reason.MAX_POSITIONS)
    return EntryGuard(True)


def limit_timed_out(
    placed_bar_start: datetime, now_bar_start: datetime, timeout_s: float, bar_seconds: int
) -> bool:
    """True once a limit entry has had its time: at least ``timeout_s`` and one full bar.

    Times are bar starts, so the limit placed at the close of bar t is first checked at the
    close of bar t+1: the limit always gets one bar to fill.
    """
    age = (now_bar_start - placed_bar_start).total_seconds()
    return age >= max(timeout_s, float(bar_seconds))


def remaining_qty(ordered: float, filled: float) -> float:
    """Unfilled remainder of an order (never negative)."""
    return max(0.0, float(ordered) - float(filled))


def client_order_id(
    strategy_id: str, symbol: str, bar_time: datetime, purpose: Purpose | str, seq: int = 0
) -> str:
    """Deterministic client order id: ``{strategy}-{SYMBOL}-{YYYYmmddTHHMMSS}-{purpose}[n]``.

    Built from the decision bar's start time (UTC), so a restart that repeats a decision
    repeats the id and the broker refuses the duplicate. ``seq`` (> 0) numbers the stop
    orders of one position (a stop may be re-placed on the bar it was placed). At most 128
    characters (Alpaca's limit).
    """
    if bar_time.tzinfo is None:
        bar_time = bar_time.replace(tzinfo=UTC)
    stamp = bar_time.astimezone(UTC).strftime("%Y%m%dT%H%M%S")
    suffix = str(seq) if seq else ""
    cid = f"{strategy_id}-{symbol.upper()}-{stamp}-{Purpose(purpose).value}{suffix}"
    if len(cid) > 128:
        raise ValueError(f"client order id too long ({len(cid)} > 128): {cid}")
    return cid


def parse_client_order_id(cid: str) -> tuple[str, str, datetime, Purpose] | None:
    """Inverse of ``client_order_id`` (every form of the grammar, see ``parse_order_id``):
    ``(strategy, symbol, bar time, purpose)``; None for ids we did not make."""
    parsed = parse_order_id(cid)
    if parsed is None:
        return None
    return parsed.strategy_id, parsed.symbol, parsed.bar_time, parsed.purpose


# ---------------------------------------------------------------------------------------------
# The client order id grammar (the Strategy's ids and the ones a live broker makes)
#
#   {strategy}-{SYMBOL}-{YYYYmmddTHHMMSS}-{purpose}[seq][r...]
#
# * purpose: ``entry``, ``fallback``, ``stop``, ``exit`` (``Purpose``);
# * seq: the Strategy numbers the stops of a position 1, 2, ...; a stop a live broker places
#   for a position found without one is numbered from ``BROKER_STOP_SEQ_BASE`` on
#   (``broker_stop_seq``); an order sent without an id is numbered with its Backtrader ref
#   (``unnamed_order_id``);
# * ``r``: a stop resized by a reconciliation (one PATCH needs a new id) gets an ``r`` per
#   resize (``resized_order_id``).

#: broker-made stops are numbered from here on (clear of the Strategy's own stop numbers)
BROKER_STOP_SEQ_BASE = 50
#: a resized id keeps this many characters of the old one before its ``r`` (Alpaca: 128 max)
RESIZED_ID_KEEP = 100

_PURPOSE_TAIL = re.compile(r"^(entry|fallback|stop|exit)(\d*)(r*)$")


@dataclass(frozen=True)
class OrderId:
    """A parsed client order id of ours (``parse_order_id``); ``str()`` builds it back."""

    strategy_id: str
    symbol: str
    bar_time: datetime
    purpose: Purpose
    seq: int = 0
    resized: int = 0  # trailing ``r``s: how many times a reconciliation resized the stop

    def __str__(self) -> str:
        return client_order_id(self.strategy_id, self.symbol, self.bar_time, self.purpose,
                               seq=self.seq) + "r" * self.resized


def parse_order_id(cid: str) -> OrderId | None:
    """Every part of a client order id of ours (the grammar above); None for other ids."""
    strategy_id, _, rest = cid.partition("-")
    parts = rest.rsplit("-", 2)
    if not strategy_id or len(parts) != 3:
        return None
    symbol, stamp, tail = parts
    m = _PURPOSE_TAIL.match(tail)
    if not symbol or m is None:
        return None
    try:
        when = datetime.strptime(stamp, "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    return OrderId(strategy_id, symbol, when, Purpose(m.group(1)),
                   int(m.group(2) or 0), len(m.group(3)))


def is_ours(cid: str, strategy_id: str) -> bool:
    """Client order ids we make start with ``{strategy_id}-``."""
    return cid.startswith(f"{strategy_id}-")


def purpose_of(cid: str) -> str:
    """The purpose an id of ours names ('' if none): parsed, else its last ``-`` part without
    the number and ``r`` suffixes (an id cut short by ``resized_order_id``)."""
    parsed = parse_order_id(cid)
    if parsed is None:
        tail = cid.rsplit("-", 1)[-1]
        return tail.rstrip("0123456789r") if tail else ""
    return parsed.purpose.value


def broker_stop_seq(saved_stop_seq: int, placed_before: int) -> int:
    """Number of a stop a live broker places for a position found without one:
    ``BROKER_STOP_SEQ_BASE`` past the Strategy's last saved stop number, plus the stops the
    broker already placed for the symbol in this run (a second one on the same bar)."""
    return saved_stop_seq + BROKER_STOP_SEQ_BASE + placed_before


def unnamed_order_id(strategy_id: str, symbol: str, bar_time: datetime, purpose: str,
                     is_buy: bool, ref: int) -> str:
    """The id of an order sent without one: from its decision bar (never a clock, so a restart
    rebuilds it), purpose ``entry`` for a buy and ``exit`` for a sell unless given, numbered
    with the order's Backtrader ``ref``."""
    purpose = purpose or (Purpose.ENTRY.value if is_buy else Purpose.EXIT.value)
    return client_order_id(strategy_id, symbol, bar_time, purpose, seq=ref)


def resized_order_id(cid: str) -> str:
    """The id of ``cid``'s stop resized by a reconciliation (PATCH): one more ``r``, the old id
    cut to ``RESIZED_ID_KEEP`` characters first so repeated resizes stay within 128."""
    return f"{cid[:RESIZED_ID_KEEP]}r"


# ---------------------------------------------------------------------------------------------
# The stop a live broker places itself (a position found without one)

#: the ATR assumed, as a fraction of the average price, when no ATR is known
FALLBACK_ATR_PCT = 0.01
#: a protective level at or above the market is placed at this fraction of the last price
BELOW_MARKET_FACTOR = 0.999


def fallback_atr(avg_price: float, atr: float | None) -> float:
    """The ATR a broker-made stop is computed with: the symbol's ATR, else (none known yet,
    e.g. right after a restart) ``FALLBACK_ATR_PCT`` of the average price."""
    if atr is None or not math.isfinite(atr):
        return avg_price * FALLBACK_ATR_PCT
    return atr


@dataclass(frozen=True)
class ProtectiveLevel:
    """The price of a stop a broker places for a naked position (``protective_stop_level``)."""

    price: float  # rounded down to the tick
    level: float  # the rule's level before the market check
    below_market: bool  # the level was at or above the market: placed just below it


def protective_stop_level(avg_price: float, atr: float | None, known_level: float | None,
                          last_price: float | None, atr_stop_multiplier: float,
                          trail_pct: float) -> ProtectiveLevel:
    """Where the stop of a position found without one goes.

    The Strategy's current (ratcheted) or saved level when there is one; else its initial
    stop from the average price and ``fallback_atr``. A level at or above the last price
    (Alpaca refuses such a sell stop) becomes ``BELOW_MARKET_FACTOR`` x the last price."""
    if known_level:
        level = float(known_level)
    else:
        level = initial_stop(avg_price, fallback_atr(avg_price, atr), atr_stop_multiplier,
                             trail_pct).level
    price = level
    below = last_price is not None and stop_through_market(level, last_price)
    if last_price is not None and below:
        price = last_price * BELOW_MARKET_FACTOR
    return ProtectiveLevel(round_price(price), level, below)


def stop_placeable(price: float, market: float | None) -> bool:
    """May a sell stop at ``price`` go out with the market at ``market`` (None: unknown)?
    Not when it is not a positive price, nor when it is already hit (``stop_through_market``:
    the position is then sold at market instead)."""
    if not math.isfinite(price) or price <= 0:
        return False
    return market is None or not stop_through_market(price, market)


def fill_stop_price(fill_price: float, atr: float, atr_stop_multiplier: float,
                    trail_pct: float) -> float | None:
    """The stop of an entry's first fill (``initial_stop``, rounded down to the tick), or None
    when it cannot be placed (``stop_placeable`` against the fill price)."""
    state = initial_stop(fill_price, atr, atr_stop_multiplier, trail_pct)
    price = round_price(state.level)
    return price if stop_placeable(price, fill_price) else None


def refused_stop_exit_reason(state: StopState | None) -> str:
    """Why a position is sold at market because its stop was refused as through the market:
    the binding stop (``stop``/``trail``), ``stop`` when no stop state is known."""
    return state.binding if state is not None else Reason.STOP.value


def sellable_qty(position: float, other_sells: float, wanted: float) -> float:
    """Long-only: how much of ``wanted`` a sell (an exit) may sell, the other working sells
    of the symbol (not its stop) counted: never more than is held (a stop that filled first
    leaves 0: the exit is not sent). ``wanted`` itself when it fits (within 1e-9)."""
    available = max(0.0, position - other_sells)
    return wanted if wanted <= available + 1e-9 else available


def default_stop_grace(bar_seconds: int) -> float:
    """How long a live position may be without a resting stop before the broker places one:
    one bar (the Strategy re-places a stop it lost on its next bar) plus 15 s."""
    return float(bar_seconds) + 15.0
