"""NYSE sessions for the replay: regular hours, extended hours, clock and calendar answers.

Implements the session rules behind Alpaca's ``GET /v2/clock`` and ``GET /v2/calendar``
(Trading API "Clock" and "Calendar" pages): regular session 09:30-16:00 New York time (early
closes at 13:00), pre-market from 04:00 and after-hours until 20:00 (four hours after an early
close). Sessions come from ``exchange_calendars`` (XNYS), so holidays and early closes match.
"""

from __future__ import annotations

import datetime as dt
import logging
import warnings
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import exchange_calendars as xcals
import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

NY = ZoneInfo("America/New_York")
_NS = 1_000_000_000
_HOUR_NS = 3600 * _NS

#: What happens at a session boundary (used by the market's event loop).
PRE_OPEN, OPEN, CLOSE, POST_CLOSE = "pre_open", "open", "close", "post_close"


@dataclass(frozen=True)
class CalendarDay:
    """One trading session, times in UTC nanoseconds."""

    date: date
    ext_open: int
    open: int
    close: int
    ext_close: int
    settlement_date: dt.date  # (the field `date` above shadows the name in this class)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ns_to_utc(t_ns: int) -> datetime:
    """UTC nanoseconds -> aware UTC datetime (microsecond precision, exact)."""
    return _EPOCH + timedelta(microseconds=int(t_ns) // 1000)


def ns_to_ny(t_ns: int) -> datetime:
    """UTC nanoseconds -> aware New York datetime (microsecond precision)."""
    return ns_to_utc(t_ns).astimezone(NY)


def to_ns(when: datetime) -> int:
    """An aware datetime (naive = UTC) -> UTC nanoseconds."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = when - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * _NS + delta.microseconds * 1000


def ny_midnight_ns(d: date) -> int:
    """New York midnight of ``d`` in UTC nanoseconds (how Alpaca stamps daily bars)."""
    return int(pd.Timestamp(d).tz_localize(NY).value)


def ny_date(t_ns: int) -> date:
    """The New York calendar date of an instant."""
    return ns_to_ny(t_ns).date()


class MarketCalendar:
    """XNYS sessions as sorted numpy arrays (UTC ns), from a little before ``first`` to about a
    year after ``last`` (so the clock keeps working after the data ends)."""

    def __init__(self, first: date, last: date) -> None:
        cal = _xnys(first, last)
        sessions = cal.sessions
        naive = pd.DatetimeIndex(sessions).tz_localize(None)
        self.dates: list[date] = [d.date() for d in naive]
        self.open = _ns(pd.DatetimeIndex(cal.opens.loc[sessions]))
        self.close = _ns(pd.DatetimeIndex(cal.closes.loc[sessions]))
        local4 = (naive + pd.Timedelta(hours=4)).tz_localize(NY).tz_convert("UTC")
        local20 = (naive + pd.Timedelta(hours=20)).tz_localize(NY).tz_convert("UTC")
        self.ext_open = _ns(local4)
        self.ext_close = np.minimum(_ns(local20), self.close + 4 * _HOUR_NS)
        self._date_index = {d: i for i, d in enumerate(self.dates)}
        self._dates64 = np.array(self.dates, dtype="datetime64[D]")
        kinds = [PRE_OPEN, OPEN, CLOSE, POST_CLOSE]
        times = np.concatenate([self.ext_open, self.open, self.close, self.ext_close])
        labels = np.repeat(np.arange(4), len(self.dates))
        self.events: dict[int, list[str]] = {}
        for t, k in zip(times.tolist(), labels.tolist(), strict=True):
            self.events.setdefault(int(t), []).append(kinds[k])
        self.event_times = np.unique(times)

    def __len__(self) -> int:
        return len(self.dates)

    def day(self, i: int) -> CalendarDay:
        """Session ``i`` as a ``CalendarDay``."""
        settle = self.dates[i + 1] if i + 1 < len(self.dates) else self.dates[i] + timedelta(days=1)
        return CalendarDay(self.dates[i], int(self.ext_open[i]), int(self.open[i]),
                           int(self.close[i]), int(self.ext_close[i]), settle)

    def index_of_date(self, d: date) -> int:
        """Index of the session on date ``d``, or -1 if ``d`` is not a session."""
        return self._date_index.get(d, -1)

    def session_containing(self, t_ns: int, extended: bool = True) -> int:
        """Index of the session whose (extended or regular) hours contain ``t``, else -1."""
        i = int(np.searchsorted(self.ext_open, t_ns, side="right")) - 1
        if i < 0:
            return -1
        if extended:
            return i if self.ext_open[i] <= t_ns < self.ext_close[i] else -1
        return i if self.open[i] <= t_ns < self.close[i] else -1

    def is_open(self, t_ns: int) -> bool:
        """True during a regular session."""
        return self.session_containing(t_ns, extended=False) >= 0

    def phase(self, t_ns: int) -> str:
        """``regular``, ``pre``, ``post`` or ``closed``."""
        i = self.session_containing(t_ns, extended=True)
        if i < 0:
            return "closed"
        if t_ns < self.open[i]:
            return "pre"
        return "regular" if t_ns < self.close[i] else "post"

    def next_open(self, t_ns: int) -> int | None:
        """The first regular open strictly after ``t``."""
        i = int(np.searchsorted(self.open, t_ns, side="right"))
        return int(self.open[i]) if i < len(self.open) else None

    def next_close(self, t_ns: int) -> int | None:
        """The first regular close strictly after ``t``."""
        i = int(np.searchsorted(self.close, t_ns, side="right"))
        return int(self.close[i]) if i < len(self.close) else None

    def trading_session(self, t_ns: int, extended: bool) -> int:
        """The session an order placed at ``t`` belongs to: the first whose (regular or
        extended) end is after ``t``; -1 past the calendar's end."""
        ends = self.ext_close if extended else self.close
        i = int(np.searchsorted(ends, t_ns, side="right"))
        return i if i < len(ends) else -1

    def range_indices(self, start: date, end: date) -> range:
        """Indices of the sessions with ``start <= date <= end``."""
        lo = int(np.searchsorted(self._dates64, np.datetime64(start, "D"), side="left"))
        hi = int(np.searchsorted(self._dates64, np.datetime64(end, "D"), side="right"))
        return range(lo, hi)


def _ns(idx: pd.DatetimeIndex) -> np.ndarray:
    """UTC nanoseconds of an index (pandas 3 may hold other units)."""
    return np.asarray(idx.as_unit("ns").asi8, dtype=np.int64)


def _xnys(first: date, last: date) -> xcals.ExchangeCalendar:
    start = pd.Timestamp(first) - pd.Timedelta(days=10)
    end = pd.Timestamp(last) + pd.Timedelta(days=400)
    with warnings.catch_warnings():
        # exchange_calendars uses pandas APIs that pandas 3 deprecates; not ours to fix.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        try:
            return xcals.get_calendar("XNYS", start=start, end=end)
        except (ValueError, xcals.errors.DateOutOfBounds) as exc:
            logger.warning("calendar range %s..%s not available (%s); using the default range",
                           start.date(), end.date(), exc)
            return xcals.get_calendar("XNYS")
