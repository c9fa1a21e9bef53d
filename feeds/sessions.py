"""Per-bar session codes from the NYSE calendar, computed once per symbol (vectorised).

One rule for backtest and paper (README, "Market hours in the backtest"):

* by default only regular-hours bars exist for the Strategy: bars outside the regular session
  (pre-market, after-hours, holidays, weekends) are dropped before the indicators are
  computed, as the paper path drops them from its history and its stream
  (``brokers.alpaca.store.AlpacaStore._keep``); with ``extended_hours`` the extended session
  (04:00-20:00 New York on trading days) is kept as well;
* a bar may produce a NEW order only if it ends before the close of its session (an order
  decided on the last bar would only work in the next session), as paper decides
  (``AlpacaStore.order_gate``: the calendar, then Alpaca's clock at the bar's close): a
  regular-hours bar before the regular close, an extended-hours bar before 20:00;
* fills: the backtest broker fills an order only on a regular-hours bar, except an
  extended-hours limit order, which may also fill on an extended-hours bar; stops sleep
  outside regular hours (``brokers.backtest.SimBroker``).

The code of a bar is ``CLOSED``, ``REGULAR`` or ``EXTENDED``, plus the flag ``LAST`` when the
bar ends at or after the close of its session (regular close, or 20:00 for extended hours).
Daily bars are ``REGULAR``. The backtest feed carries the codes as its ``session`` line, so
the Strategy and the broker read one number per bar instead of asking the calendar.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from feeds.coverage import NY, sessions

logger = logging.getLogger(__name__)

CLOSED = 0
REGULAR = 1
EXTENDED = 2
#: flag added to a code: no new order on this bar (it ends at or after its window's close)
LAST = 4
NAMES = {CLOSED: "closed", REGULAR: "regular", EXTENDED: "extended"}
#: Alpaca's extended session, New York wall time (docs: "Extended hours trading")
EXTENDED_OPEN_H, EXTENDED_CLOSE_H = 4, 20
_NS_PER_S = 1_000_000_000


def name_of(code: float) -> str:
    """``regular``/``extended``/``closed`` for a session code (a float line value)."""
    return NAMES[int(code) & 3]


def may_open(code: float) -> bool:
    """May a new order be sent for a decision on a bar with this code?"""
    c = int(code)
    return (c & 3) != CLOSED and not c & LAST


def session_codes(ts_ns: np.ndarray, bar_seconds: int, extended_hours: bool = False
                  ) -> np.ndarray:
    """Session code (int8) of every bar start in ``ts_ns`` (int64 UTC nanoseconds).

    ``extended_hours`` does not change the codes (which bars are kept is ``tradeable``'s
    business); it is accepted so callers state the mode they run in.

    ``bar_seconds >= 86400`` (daily bars): every bar is ``REGULAR``, never ``LAST``.
    """
    n = len(ts_ns)
    if bar_seconds >= 86_400 or n == 0:
        return np.full(n, REGULAR, dtype=np.int8)
    ts = np.asarray(ts_ns, dtype=np.int64)
    local = pd.DatetimeIndex(ts.view("datetime64[ns]")).tz_localize("UTC").tz_convert(NY)
    day = local.tz_localize(None).normalize()
    sched = sessions(day.min(), day.max())
    pos = sched.index.get_indexer(day)
    has = pos >= 0
    safe = np.where(has, pos, 0)
    opens = sched["open"].to_numpy("datetime64[ns]").view(np.int64)
    closes = sched["close"].to_numpy("datetime64[ns]").view(np.int64)
    sdays = pd.DatetimeIndex(sched.index)
    ext_open = (sdays + pd.Timedelta(hours=EXTENDED_OPEN_H)).tz_localize(NY).tz_convert("UTC")
    ext_close = (sdays + pd.Timedelta(hours=EXTENDED_CLOSE_H)).tz_localize(NY).tz_convert("UTC")
    eo = ext_open.to_numpy("datetime64[ns]").view(np.int64)
    ec = ext_close.to_numpy("datetime64[ns]").view(np.int64)
    if len(opens) == 0:
        return np.full(n, CLOSED, dtype=np.int8)
    o, c, xo, xc = opens[safe], closes[safe], eo[safe], ec[safe]
    regular = has & (ts >= o) & (ts < c)
    extended = has & ~regular & (ts >= xo) & (ts < xc)
    codes = np.where(regular, REGULAR, np.where(extended, EXTENDED, CLOSED)).astype(np.int8)
    # A regular-hours bar is the last one when it reaches the regular close (what comes next
    # is the extended session, where only extended-hours limits may go out: paper's clock
    # says closed); an extended-hours bar when it reaches 20:00.
    end = ts + bar_seconds * _NS_PER_S
    last = (regular & (end >= c)) | (extended & (end >= xc))
    codes[last] |= LAST
    return codes


def codes_from_callable(ts_ns: np.ndarray, session: Callable[[datetime], str]) -> np.ndarray:
    """Session codes from a ``session(bar_time) -> name`` callable (tests replaying a
    hand-made session); no ``LAST`` flag."""
    value = {v: k for k, v in NAMES.items()}
    out = np.empty(len(ts_ns), dtype=np.int8)
    for i, t in enumerate(np.asarray(ts_ns, dtype=np.int64).tolist()):
        when = datetime.fromtimestamp(t // _NS_PER_S, UTC)
        out[i] = value[session(when)]
    return out


def tradeable(codes: np.ndarray, extended_hours: bool) -> np.ndarray:
    """Mask of the bars the Strategy sees: regular hours, plus extended hours if enabled."""
    base = codes & 3
    return base != CLOSED if extended_hours else base == REGULAR
