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

import functools
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ratchet.common.nytime import ny_dates

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


#: NYSE sessions 2000 to about a year after it was written, from exchange-calendars
#: (``python -m feeds.sessions`` rewrites it; a test compares it with the calendar). Reading
#: it takes numpy alone: the backtest needs neither exchange-calendars nor pandas, ~0.9 s of
#: CPU per run. Bars outside its range are classified with the calendar itself.
TABLE = Path(__file__).with_name("nyse_sessions.npz")
_TABLE_COLUMNS = ("day", "open", "close", "ext_open", "ext_close")


@functools.lru_cache(maxsize=1)
def _table() -> dict[str, np.ndarray] | None:
    try:
        with np.load(TABLE) as z:
            return {k: z[k] for k in _TABLE_COLUMNS}
    except (OSError, KeyError, ValueError):
        logger.warning("%s missing or unreadable: sessions come from exchange-calendars", TABLE)
        return None


def calendar_schedule(first_day: int, last_day: int) -> dict[str, np.ndarray]:
    """NYSE sessions whose New York date (days since 1970-01-01) lies in [first, last], from
    exchange-calendars: ``day``, and UTC epoch ns of ``open``, ``close``, ``ext_open`` and
    ``ext_close`` (04:00 and 20:00 New York)."""
    import pandas as pd

    from feeds.coverage import NY, sessions

    sched = sessions(pd.Timestamp(first_day, unit="D"), pd.Timestamp(last_day, unit="D"))
    sdays = pd.DatetimeIndex(sched.index)
    ext_open = (sdays + pd.Timedelta(hours=EXTENDED_OPEN_H)).tz_localize(NY).tz_convert("UTC")
    ext_close = (sdays + pd.Timedelta(hours=EXTENDED_CLOSE_H)).tz_localize(NY).tz_convert("UTC")
    ns = lambda x: np.asarray(x.to_numpy("datetime64[ns]").view(np.int64))  # noqa: E731 - local
    return {
        "day": np.asarray(sdays.as_unit("ns").asi8 // (86_400 * _NS_PER_S), dtype=np.int64),
        "open": ns(sched["open"]), "close": ns(sched["close"]),
        "ext_open": ns(ext_open), "ext_close": ns(ext_close),
    }


def write_table(path: Path = TABLE, first: str = "2000-01-01") -> Path:
    """Write the bundled session table from exchange-calendars (all the sessions it knows
    from ``first`` on)."""
    import pandas as pd

    from feeds.coverage import _calendar

    last = _calendar(2000).last_session
    day = lambda t: int(pd.Timestamp(t).value // (86_400 * _NS_PER_S))  # noqa: E731 - local
    sched = calendar_schedule(day(first), day(last))
    np.savez_compressed(path, **sched)  # type: ignore[arg-type] # numpy's stub matches **kwds to allow_pickle
    return path


def schedule(first_day: int, last_day: int) -> dict[str, np.ndarray]:
    """Sessions with New York dates in [first_day, last_day]: the bundled table when it
    covers the range, else exchange-calendars."""
    tbl = _table()
    if tbl is not None and tbl["day"].shape[0] and tbl["day"][0] <= first_day \
            and last_day <= tbl["day"][-1]:
        lo, hi = np.searchsorted(tbl["day"], [first_day, last_day + 1])
        return {k: v[lo:hi] for k, v in tbl.items()}
    return calendar_schedule(first_day, last_day)


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
    day = ny_dates(ts)
    sched = schedule(int(day.min()), int(day.max()))
    sdays = sched["day"]
    if sdays.shape[0] == 0:
        return np.full(n, CLOSED, dtype=np.int8)
    pos = np.searchsorted(sdays, day)
    safe = np.minimum(pos, sdays.shape[0] - 1)
    has = sdays[safe] == day
    o, c = sched["open"][safe], sched["close"][safe]
    xo, xc = sched["ext_open"][safe], sched["ext_close"][safe]
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


if __name__ == "__main__":
    print(f"wrote {write_table()}")
