"""One parser for the ``--start``/``--end`` values of every command.

Two conventions are in use, and each command keeps the one it has always had:

``UTC_DAYS`` (``backtest``, ``train``)
    A bare date ``YYYY-MM-DD`` is a UTC day: ``--start`` is its 00:00 UTC, ``--end`` its last
    microsecond (an inclusive bound, for ``t <= end`` filters). A time without an offset is
    UTC.

``NY_DAYS`` (``data download``)
    A bare date is a New York trading day: ``--start`` is its New York midnight, ``--end`` the
    next New York midnight (an exclusive bound, for ``[start, end)`` requests), so the whole
    day is included across DST changes. A time without an offset is New York time.

Under both, a value with an offset (``2025-10-01T13:30Z``, ``...+02:00``) is that instant,
``now`` is the current instant and ``today`` is today's date in the convention's zone. The
result is always a UTC ``pd.Timestamp``. A value that is not a date or time is a
``ConfigError`` whose text is the convention's ``fix`` (naming the option and the value).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd

from common.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DateConvention:
    """How a command reads dates: the zone of bare dates and naive times, the kind of bound
    a bare ``--end`` date gives, and the one-line fix of a bad value."""

    zone: str
    #: a bare --end date: True -> the day's last microsecond; False -> the next midnight
    end_inclusive: bool
    #: ``str.format`` template with ``{option}`` and ``{text!r}``
    fix: str


UTC_DAYS = DateConvention(
    "UTC", end_inclusive=True, fix="bad date {text!r}: use YYYY-MM-DD or an ISO timestamp")
NY_DAYS = DateConvention(
    "America/New_York", end_inclusive=False,
    fix="{option} {text!r} is not a date or time: use YYYY-MM-DD (a New York date) or "
        "ISO 8601 such as 2025-10-01T09:30 or 2025-10-01T13:30Z")


def _midnight(day: pd.Timestamp, zone: str) -> pd.Timestamp:
    """00:00 of ``day``'s calendar date in ``zone``, as UTC."""
    return pd.Timestamp(day.date()).tz_localize(zone).tz_convert("UTC")


def parse_when(text: str, convention: DateConvention, *, end: bool = False,
               option: str = "--start", now: pd.Timestamp | None = None) -> pd.Timestamp:
    """``text`` (a ``--start`` or, with ``end=True``, an ``--end`` value) as a UTC timestamp
    under ``convention`` (see the module docstring). ``now`` defaults to the current time."""
    value = text.strip()
    fix = convention.fix.format(option=option, text=text)
    current = now if now is not None else pd.Timestamp.now(tz="UTC")
    if value.lower() == "now":
        return current.tz_convert("UTC")
    if value.lower() == "today":
        value = current.tz_convert(convention.zone).strftime("%Y-%m-%d")
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError, OverflowError):
        raise ConfigError(fix) from None
    if pd.isna(ts):
        raise ConfigError(fix)
    if ":" not in value and ts.tzinfo is None and ts == ts.normalize():
        # a bare date (no time of day): a whole day in the convention's zone
        if not end:
            return _midnight(ts, convention.zone)
        after = _midnight(ts + pd.Timedelta(days=1), convention.zone)
        return after - pd.Timedelta(microseconds=1) if convention.end_inclusive else after
    if ts.tzinfo is None:
        ts = ts.tz_localize(convention.zone, nonexistent="shift_forward", ambiguous=False)
    return ts.tz_convert("UTC")
