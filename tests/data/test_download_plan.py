"""``feeds.download_plan``: what ``data download`` fetches, decided without any I/O (the
stored coverage is given as data; no file, no server)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from feeds.download_plan import (
    MAX_SYMBOLS_PER_REQUEST,
    TIMEFRAMES,
    StoredDataset,
    make_plan,
    merge_ranges,
    split_windows,
    subtract_ranges,
    to_ns,
)
from ratchet.common.errors import ConfigError

NY = "America/New_York"
MIN = TIMEFRAMES["1Min"]


def _t(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz=NY).tz_convert("UTC")


def _stored(*ranges: tuple[str, str], feed: str | None = None) -> StoredDataset:
    info = StoredDataset(Path("never-read"))  # the planner never touches the path
    info.coverage = [(to_ns(_t(a)), to_ns(_t(b))) for a, b in ranges]
    if feed:
        info.feeds.add(feed)
    return info


def _plan(stored: dict[str, StoredDataset], start: str = "2025-10-01",
          end: str = "2025-11-01", **kw: object) -> object:
    return make_plan(stored, MIN, _t(start), _t(end), feed="iex", adjustment="raw", **kw)


@pytest.mark.parametrize(("ranges", "merged"), [
    ([(5, 9), (1, 3), (3, 4)], [(1, 4), (5, 9)]),  # touching ranges join, sorted
    ([(1, 5), (2, 3)], [(1, 5)]),  # contained
    ([(4, 4), (6, 5)], []),  # empty and reversed ranges vanish
])
def test_merge_ranges(ranges: list[tuple[int, int]], merged: list[tuple[int, int]]) -> None:
    assert merge_ranges(ranges) == merged


@pytest.mark.parametrize(("have", "gaps"), [
    ([], [(0, 10)]),
    ([(0, 10)], []),
    ([(2, 4), (6, 8)], [(0, 2), (4, 6), (8, 10)]),
    ([(-5, 3), (9, 20)], [(3, 9)]),
])
def test_subtract_ranges(have: list[tuple[int, int]], gaps: list[tuple[int, int]]) -> None:
    assert subtract_ranges((0, 10), have) == gaps


def test_windows_are_cut_at_new_york_midnights_across_dst() -> None:
    windows = split_windows((to_ns(_t("2025-10-29 15:00")), to_ns(_t("2025-11-12"))), 7)
    edges = [pd.Timestamp(a, tz="UTC").tz_convert(NY) for a, _ in windows][1:]
    assert [str(e) for e in edges] == ["2025-11-05 00:00:00-05:00"]  # EST after 2 November
    assert windows[0][0] == to_ns(_t("2025-10-29 15:00")) and windows[-1][1] == to_ns(
        _t("2025-11-12"))


def test_empty_store_fetches_every_week_with_a_session_and_shares_requests() -> None:
    plan = _plan({"ACME": _stored(), "BOLT": _stored()})
    starts = [c.start.tz_convert(NY).strftime("%m-%d") for c in plan.chunks]  # type: ignore
    assert starts == ["10-01", "10-08", "10-15", "10-22", "10-29"]
    assert all(c.symbols == ("ACME", "BOLT") for c in plan.chunks)  # type: ignore
    assert plan.total == 10 and plan.up_to_date() == []  # type: ignore


def test_stored_coverage_is_not_fetched_again_and_full_ignores_it() -> None:
    plan = _plan({"ACME": _stored(("2025-10-01", "2025-10-29")), "BOLT": _stored()})
    by_symbol = {c.symbols: c.start.tz_convert(NY).strftime("%m-%d")  # type: ignore
                 for c in plan.chunks}  # type: ignore
    assert [c.symbols for c in plan.chunks][-1] == ("ACME", "BOLT")  # type: ignore
    assert by_symbol[("BOLT",)] == "10-22"
    assert len(plan.missing["ACME"]) == 1  # type: ignore
    full = _plan({"ACME": _stored(("2025-10-01", "2025-10-29"))}, full=True)
    assert len(full.missing["ACME"]) == 5  # type: ignore


def test_a_range_without_sessions_needs_nothing() -> None:
    plan = _plan({"ACME": _stored()}, start="2025-10-04", end="2025-10-06")  # a weekend
    assert plan.chunks == [] and plan.up_to_date() == ["ACME"]  # type: ignore


def test_many_symbols_are_split_into_requests_of_the_page_limit() -> None:
    syms = {f"S{i:03d}": _stored() for i in range(MAX_SYMBOLS_PER_REQUEST + 3)}
    plan = _plan(syms, start="2025-10-01", end="2025-10-02")
    assert [len(c.symbols) for c in plan.chunks] == [MAX_SYMBOLS_PER_REQUEST, 3]  # type: ignore


def test_another_feed_in_the_store_is_refused_naming_the_store() -> None:
    with pytest.raises(ConfigError, match=r"ACME 1Min in /bars was downloaded with feed=sip"):
        _plan({"ACME": _stored(feed="sip")}, where=Path("/bars"))
