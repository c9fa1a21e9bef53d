"""Market hours from Alpaca's clock and calendar, never from the local wall clock.

Implements our use of GET /v2/clock and GET /v2/calendar (docs.alpaca.markets/reference/
getclock, .../getcalendar): the calendar's ``open``/``close`` are New York wall times of the
regular session; the extended session runs 04:00-20:00 New York (Alpaca's docs, "Extended
hours trading").

Three questions, answered from different time sources on purpose:

* ``market_open(bar_time)``: does the bar lie inside the session, before its last bar? Pure
  calendar arithmetic on the bar's time (one of the checks behind the Strategy's
  ``market_open``; the store adds "is the bar fresh" and "is the market open NOW").
* ``open_at(now)``: is the market open at the broker's ``now``? The last answer of Alpaca's
  clock as long as ``now`` has not crossed its ``next_close``/``next_open`` (so a session
  boundary forces a new read, and nothing else does).
* ``is_open`` / ``next_open`` (what the run loop logs while the market is closed): the last
  answer of Alpaca's clock, refreshed by ``refresh()``.
"""

from __future__ import annotations

import time as _time
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from brokers.alpaca.client import ClockInfo, SessionDay

NEW_YORK = ZoneInfo("America/New_York")
EXTENDED_OPEN = time(4, 0)
EXTENDED_CLOSE = time(20, 0)


class MarketClock:
    """Alpaca's calendar (cached) and its clock (refreshed on demand).

    Args:
        calendar: callable(start, end) -> sessions (``AlpacaClient.get_calendar``).
        clock: callable() -> ClockInfo (``AlpacaClient.get_clock``).
        bar_seconds: bar length; a bar is tradeable when it ENDS inside the session.
        extended_hours: also accept bars ending in the extended session.
    """

    def __init__(self, calendar: Callable[[date, date], list[SessionDay]],
                 clock: Callable[[], ClockInfo], bar_seconds: int = 60,
                 extended_hours: bool = False,
                 monotonic: Callable[[], float] = _time.monotonic) -> None:
        self._calendar = calendar
        self._clock = clock
        self.bar_seconds = bar_seconds
        self.extended_hours = extended_hours
        self._monotonic = monotonic
        self._days: dict[date, SessionDay | None] = {}
        self.last: ClockInfo | None = None
        #: local monotonic seconds when ``last`` was read (to age it; never a time of day)
        self.read_at: float | None = None

    # ----------------------------------------------------------------- calendar

    def _load(self, around: date) -> None:
        start, end = around - timedelta(days=7), around + timedelta(days=14)
        sessions = self._calendar(start, end)
        day = start
        while day <= end:
            self._days.setdefault(day, None)
            day += timedelta(days=1)
        for s in sessions:
            self._days[s.date] = s

    def trading_day(self, day: date) -> SessionDay | None:
        """The trading session of ``day`` (New York date), or None on a holiday/weekend."""
        if day not in self._days:
            self._load(day)
        return self._days.get(day)

    def session_bounds(self, day: date,
                       extended: bool | None = None) -> tuple[datetime, datetime] | None:
        """(open, close) of ``day`` as aware UTC datetimes; extended session if asked."""
        s = self.trading_day(day)
        if s is None:
            return None
        ext = self.extended_hours if extended is None else extended
        if ext:
            start = datetime.combine(day, EXTENDED_OPEN, NEW_YORK)
            end = datetime.combine(day, EXTENDED_CLOSE, NEW_YORK)
        else:
            start = s.open.replace(tzinfo=NEW_YORK) if s.open.tzinfo is None else s.open
            end = s.close.replace(tzinfo=NEW_YORK) if s.close.tzinfo is None else s.close
        return start, end

    def market_open(self, bar_time: datetime) -> bool:
        """Was the market open when the bar starting at ``bar_time`` closed?

        True when the bar lies inside the session and ends before the close (an order decided
        on the last bar would only work the next session).
        """
        local = bar_time.astimezone(NEW_YORK)
        bounds = self.session_bounds(local.date())
        if bounds is None:
            return False
        start, end = bounds
        bar_end = bar_time + timedelta(seconds=self.bar_seconds)
        return start <= bar_time and bar_end < end

    def in_session(self, bar_time: datetime) -> bool:
        """Does the bar starting at ``bar_time`` belong to the (regular or extended) session?"""
        local = bar_time.astimezone(NEW_YORK)
        bounds = self.session_bounds(local.date())
        if bounds is None:
            return False
        start, end = bounds
        return start <= bar_time < end

    def session(self, bar_time: datetime) -> str:
        """The Strategy's ``session`` param: ``regular``, ``extended`` or ``closed``."""
        local = bar_time.astimezone(NEW_YORK)
        regular = self.session_bounds(local.date(), extended=False)
        if regular is None:
            return "closed"
        if regular[0] <= bar_time < regular[1]:
            return "regular"
        ext = self.session_bounds(local.date(), extended=True)
        if ext is not None and ext[0] <= bar_time < ext[1]:
            return "extended"
        return "closed"

    def regular_session(self, when: datetime) -> bool:
        """Is ``when`` inside the regular session (for ``extended_hours`` order flags)?"""
        bounds = self.session_bounds(when.astimezone(NEW_YORK).date(), extended=False)
        return bounds is not None and bounds[0] <= when < bounds[1]

    # ----------------------------------------------------------------- the clock

    def refresh(self) -> ClockInfo:
        """Ask Alpaca's clock now."""
        info = self._clock()
        self.last, self.read_at = info, self._monotonic()
        return info

    def open_at(self, now: datetime) -> bool | None:
        """Is the market open at ``now`` (broker time), by the last clock answer?

        None when that answer no longer covers ``now`` (a ``next_close``/``next_open`` lies
        between them, or there is no answer yet): read the clock again.
        """
        c = self.last
        if c is None:
            return None
        boundary = c.next_close if c.is_open else c.next_open
        if now >= boundary:
            return None
        return c.is_open

    @property
    def is_open(self) -> bool:
        """Alpaca's last answer (False before the first ``refresh``)."""
        return bool(self.last and self.last.is_open)

    def describe_wait(self) -> str:
        """'market closed; opens 2025-10-06 09:30 EDT (in 15h 20m)' from the last clock."""
        if self.last is None:
            return "market clock unknown"
        if self.last.is_open:
            return f"market open until {_ny(self.last.next_close)}"
        delta = self.last.next_open - self.last.timestamp
        hours, rem = divmod(int(delta.total_seconds()), 3600)
        return (f"market closed; opens {_ny(self.last.next_open)} "
                f"(in {hours}h {rem // 60:02d}m, broker time {_ny(self.last.timestamp)})")


def _ny(when: datetime) -> str:
    return when.astimezone(NEW_YORK).strftime("%Y-%m-%d %H:%M %Z")
