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

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from ratchet.common.errors import ConfigError


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


def _read(value: str, fix: str) -> datetime:
    """ISO 8601 by the standard library (no pandas import on the backtest's start-up path);
    other spellings pandas understands (``2025/10/01``, ``Oct 1 2025``) as a fallback."""
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        pass
    import pandas as pd

    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError, OverflowError):
        raise ConfigError(fix) from None
    if pd.isna(ts):
        raise ConfigError(fix)
    return ts.to_pydatetime()


def _localize(naive: datetime, zone: str) -> datetime:
    """``naive`` as wall time in ``zone``: a time skipped by a DST change moves forward to
    the change, a repeated one is read as standard time (pandas' ``nonexistent=
    "shift_forward", ambiguous=False``)."""
    tz = ZoneInfo(zone)
    first, second = naive.replace(tzinfo=tz, fold=0), naive.replace(tzinfo=tz, fold=1)
    if first.utcoffset() == second.utcoffset():
        return first  # the usual case: one reading
    import pandas as pd  # a DST edge: let pandas apply the documented rule

    return pd.Timestamp(naive).tz_localize(zone, nonexistent="shift_forward",
                                           ambiguous=False).to_pydatetime()


def _midnight(day: datetime, zone: str) -> datetime:
    """00:00 of ``day``'s calendar date in ``zone``, as UTC (midnight is never a DST edge in
    the zones we use)."""
    return datetime.combine(day.date(), time(), tzinfo=ZoneInfo(zone)).astimezone(UTC)


def parse_when(text: str, convention: DateConvention, *, end: bool = False,
               option: str = "--start", now: datetime | None = None) -> datetime:
    """``text`` (a ``--start`` or, with ``end=True``, an ``--end`` value) as an aware UTC
    datetime under ``convention`` (see the module docstring). ``now`` defaults to the
    current time."""
    value = text.strip()
    fix = convention.fix.format(option=option, text=text)
    current = now if now is not None else datetime.now(UTC)
    if value.lower() == "now":
        return current.astimezone(UTC)
    if value.lower() == "today":
        value = current.astimezone(ZoneInfo(convention.zone)).strftime("%Y-%m-%d")
    if not value:
        raise ConfigError(fix)
    when = _read(value, fix)
    if ":" not in value and when.tzinfo is None and when.time() == time():
        # a bare date (no time of day): a whole day in the convention's zone
        if not end:
            return _midnight(when, convention.zone)
        after = _midnight(when + timedelta(days=1), convention.zone)
        return after - timedelta(microseconds=1) if convention.end_inclusive else after
    if when.tzinfo is None:
        when = _localize(when, convention.zone)
    return when.astimezone(UTC)
