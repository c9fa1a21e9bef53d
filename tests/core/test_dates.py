"""``ratchet.common.dates.parse_when``: the one ``--start``/``--end`` parser, one row per case and
convention (``UTC_DAYS`` for backtest/train, ``NY_DAYS`` for data download)."""

from __future__ import annotations

import pandas as pd
import pytest

from ratchet.common.dates import NY_DAYS, UTC_DAYS, parse_when
from ratchet.common.errors import ConfigError

NOW = pd.Timestamp("2025-10-01 22:30", tz="UTC")  # 18:30 New York, 2 October is not yet here
UTC = "UTC"


@pytest.mark.parametrize(("text", "end", "want"), [
    ("2025-10-01", False, "2025-10-01 00:00"),  # a bare date is a UTC day
    ("2025-10-01", True, "2025-10-01 23:59:59.999999"),  # an --end date: inclusive, whole day
    ("2025-10-01T09:30", False, "2025-10-01 09:30"),  # naive times are UTC
    ("2025-10-01 09:30", True, "2025-10-01 09:30"),  # a time as --end is that instant
    ("2025-10-01T09:30-04:00", False, "2025-10-01 13:30"),  # an offset wins
    ("2025-10-01T00:00Z", True, "2025-10-01 00:00"),
    ("now", True, "2025-10-01 22:30"),
    ("today", False, "2025-10-01 00:00"),
    ("today", True, "2025-10-01 23:59:59.999999"),
    ("  2025-03-09 ", False, "2025-03-09 00:00"),  # spaces are trimmed
])
def test_utc_days(text: str, end: bool, want: str) -> None:
    assert parse_when(text, UTC_DAYS, end=end, now=NOW) == pd.Timestamp(want, tz=UTC)


@pytest.mark.parametrize(("text", "end", "want"), [
    ("2025-10-01", False, "2025-10-01 04:00"),  # New York midnight (EDT)
    ("2025-10-01", True, "2025-10-02 04:00"),  # an --end date: the next midnight, exclusive
    ("2025-11-02", True, "2025-11-03 05:00"),  # the DST change day is 25 hours long
    ("2025-12-01", False, "2025-12-01 05:00"),  # EST
    ("2025-10-01T09:30", False, "2025-10-01 13:30"),  # naive times are New York time
    ("2025-03-09T02:30", False, "2025-03-09 07:00"),  # a skipped hour moves forward (03:00)
    ("2025-10-01T13:30Z", True, "2025-10-01 13:30"),  # an offset wins
    ("now", False, "2025-10-01 22:30"),
    ("today", False, "2025-10-01 04:00"),  # today in New York (18:30 there)
    ("today", True, "2025-10-02 04:00"),
])
def test_new_york_days(text: str, end: bool, want: str) -> None:
    assert parse_when(text, NY_DAYS, end=end, now=NOW) == pd.Timestamp(want, tz=UTC)


def test_today_is_the_conventions_date() -> None:
    """At 01:00 UTC it is still yesterday in New York: each convention's own date."""
    late = pd.Timestamp("2025-10-02 01:00", tz=UTC)
    assert parse_when("today", UTC_DAYS, now=late) == pd.Timestamp("2025-10-02", tz=UTC)
    assert parse_when("today", NY_DAYS, now=late) == pd.Timestamp("2025-10-01 04:00", tz=UTC)


@pytest.mark.parametrize("text", ["last tuesday", "2025-13-01", "", "yesterday-ish"])
def test_bad_values_name_the_value_and_the_fix(text: str) -> None:
    with pytest.raises(ConfigError) as utc:
        parse_when(text, UTC_DAYS, now=NOW)
    assert str(utc.value) == f"bad date {text!r}: use YYYY-MM-DD or an ISO timestamp"
    with pytest.raises(ConfigError) as ny:
        parse_when(text, NY_DAYS, end=True, option="--end", now=NOW)
    assert str(ny.value).startswith(f"--end {text!r} is not a date or time: use YYYY-MM-DD")


def test_each_command_keeps_its_convention() -> None:
    """backtest and train read UTC days (inclusive --end), data download New York days."""
    from ratchet.commands.backtest import _parse_when
    from ratchet.commands.data import parse_range
    from ratchet.commands.train import _when

    assert _parse_when("2025-10-01") == pd.Timestamp("2025-10-01", tz=UTC).to_pydatetime()
    assert _parse_when("2025-10-01", end=True) == pd.Timestamp(
        "2025-10-01 23:59:59.999999", tz=UTC).to_pydatetime()
    assert _parse_when(None) is None and _when(None) is None
    assert _when("2025-10-01T09:30") == pd.Timestamp("2025-10-01 09:30", tz=UTC)
    assert _when("2025-10-01", end=True) == pd.Timestamp("2025-10-01 23:59:59.999999", tz=UTC)
    now = pd.Timestamp("2025-12-01", tz=UTC)
    assert parse_range("2025-10-01", "2025-10-01", now) == (
        pd.Timestamp("2025-10-01 04:00", tz=UTC), pd.Timestamp("2025-10-02 04:00", tz=UTC))
