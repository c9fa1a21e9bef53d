"""What ``data download`` fetches: pure planning, no I/O (unit-tested without a server).

Given what each symbol's dataset already covers (``StoredDataset``, read by
``feeds.parts.inspect_dataset``) and the requested range, ``make_plan`` works out the missing
windows: the range minus the stored coverage, cut at New York midnights into windows of
``Timeframe.window_days`` (a week of minute bars ... a decade of daily bars), dropping windows
without an NYSE session, then grouping the symbols that miss the same window into one request
(``Chunk``) of at most ``MAX_SYMBOLS_PER_REQUEST`` symbols, oldest window first.

Time ranges are half-open ``[start, end)`` pairs of int64 nanoseconds UTC (``Range``).
``complete_before`` is the cut-off of bars that are final (complete and past the free plan's
15-minute delay): only those count as covered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from feeds.coverage import NY, ny_midnight, sessions
from ratchet.common.errors import ConfigError

#: Alpaca's free-plan delay for SIP data; bars younger than this are fetched again next run.
RECENT_DELAY = pd.Timedelta(minutes=15)
#: Symbols per request: Alpaca's page limit applies across symbols, so this only saves requests.
MAX_SYMBOLS_PER_REQUEST = 50


@dataclass(frozen=True)
class Timeframe:
    """One supported bar interval: its store name, Alpaca's unit, bar length, window size."""

    name: str
    amount: int
    unit: str
    bar: pd.Timedelta
    window_days: int

    def to_alpaca(self) -> Any:
        """alpaca-py ``TimeFrame`` for this interval."""
        from alpaca.data.timeframe import TimeFrame, TimeFrameUnit

        return TimeFrame(self.amount, TimeFrameUnit(self.unit))


#: Supported intervals (the store's names). Window sizes keep one request near one page
#: (10,000 bars) for a single symbol even with extended hours (up to 960 minute bars a day).
TIMEFRAMES: dict[str, Timeframe] = {
    "1Min": Timeframe("1Min", 1, "Min", pd.Timedelta(minutes=1), 7),
    "5Min": Timeframe("5Min", 5, "Min", pd.Timedelta(minutes=5), 35),
    "15Min": Timeframe("15Min", 15, "Min", pd.Timedelta(minutes=15), 100),
    "1Hour": Timeframe("1Hour", 1, "Hour", pd.Timedelta(hours=1), 366),
    "1Day": Timeframe("1Day", 1, "Day", pd.Timedelta(days=1), 3660),
}


# --------------------------------------------------------------------------- ranges

Range = tuple[int, int]  # [start, end) in int64 ns UTC


def to_ns(ts: pd.Timestamp) -> int:
    return int(pd.Timestamp(ts).as_unit("ns").value)


def from_ns(ns: int) -> pd.Timestamp:
    return pd.Timestamp(int(ns), tz="UTC")


def merge_ranges(ranges: Sequence[Range]) -> list[Range]:
    """Sorted union of half-open ranges (touching ranges join)."""
    out: list[Range] = []
    for a, b in sorted(r for r in ranges if r[1] > r[0]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def subtract_ranges(want: Range, have: Sequence[Range]) -> list[Range]:
    """Parts of ``want`` not inside any of ``have`` (merged, sorted)."""
    out: list[Range] = []
    cursor, stop = want
    for a, b in merge_ranges(have):
        if b <= cursor:
            continue
        if a >= stop:
            break
        if a > cursor:
            out.append((cursor, a))
        cursor = max(cursor, b)
        if cursor >= stop:
            break
    if cursor < stop:
        out.append((cursor, stop))
    return out


def extent_end(last_ns: int, tf: Timeframe) -> int:
    if tf.name == "1Day":
        # The next New York midnight (DST days are 23 or 25 hours long).
        return to_ns(ny_midnight(from_ns(last_ns).tz_convert(NY) + pd.Timedelta(days=1)))
    return last_ns + ns_delta(tf.bar)


def ns_delta(delta: pd.Timedelta) -> int:
    return int(delta.value)


def has_session(a: int, b: int, tf: Timeframe) -> bool:
    """True if [a, b) can hold a bar: it overlaps an NYSE session day (any hour: pre/post
    market bars exist), or for daily bars, holds a session's New York midnight stamp."""
    start, end = from_ns(a), from_ns(b - 1)
    sched = sessions(start, end)
    if sched.empty:
        return False
    if tf.name != "1Day":
        return True
    stamps = pd.DatetimeIndex(sched.index).tz_localize(NY).tz_convert("UTC")
    return bool(((stamps >= start) & (stamps <= end)).any())


def regular_time_after(a: int, b: int, tf: Timeframe) -> bool:
    """True if [a, b) holds regular-session time (daily: a session's midnight stamp) that a
    bar could have filled: bars ending before it mean the source stopped early (its clock, a
    loopback replay, a delisting), not that the range is complete."""
    if b <= a:
        return False
    if tf.name == "1Day":
        return has_session(a, b, tf)
    sched = sessions(from_ns(a), from_ns(b - 1))
    if sched.empty:
        return False
    opens = sched["open"].array.as_unit("ns").asi8
    closes = sched["close"].array.as_unit("ns").asi8
    return bool(((np.maximum(opens, a) < np.minimum(closes, b))).any())


def split_windows(rng: Range, days: int) -> list[Range]:
    """Cut [a, b) at New York midnights every ``days`` days (aligned across symbols)."""
    a, b = rng
    out: list[Range] = []
    cursor = a
    while cursor < b:
        local_day = from_ns(cursor).tz_convert(NY).tz_localize(None).normalize()
        nxt = min(b, to_ns(ny_midnight(local_day + pd.Timedelta(days=days))))
        out.append((cursor, nxt))
        cursor = nxt
    return out


def complete_before(now: pd.Timestamp, tf: Timeframe) -> pd.Timestamp:
    """Bars starting before this instant are complete and past the free-plan delay."""
    settled = now - RECENT_DELAY
    if tf.name == "1Day":
        # Day d's bar is final once its extended session (until 20:00 New York) is over.
        day = (settled - pd.Timedelta(hours=20)).tz_convert(NY).tz_localize(None).normalize()
        return ny_midnight(day + pd.Timedelta(days=1))
    step = ns_delta(tf.bar)
    ns = to_ns(settled)
    return from_ns(ns - ns % step)


# --------------------------------------------------------------------------- planning


@dataclass
class StoredDataset:
    """What a dataset already holds, as far as downloading is concerned."""

    path: Path
    coverage: list[Range] = field(default_factory=list)
    feeds: set[str] = field(default_factory=set)
    adjustments: set[str] = field(default_factory=set)
    max_seq: int = 0
    parts: int = 0
    has_data: bool = False
    quarantined: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class Chunk:
    """One request: these symbols over [start, end)."""

    symbols: tuple[str, ...]
    start: pd.Timestamp
    end: pd.Timestamp


@dataclass
class DownloadPlan:
    """What to fetch: chunks in time order, plus what each symbol already had."""

    timeframe: Timeframe
    start: pd.Timestamp
    end: pd.Timestamp
    chunks: list[Chunk]
    stored: dict[str, StoredDataset]
    missing: dict[str, list[Range]]

    @property
    def total(self) -> int:
        """Symbol-windows to fetch (the progress bar's total)."""
        return sum(len(c.symbols) for c in self.chunks)

    def up_to_date(self) -> list[str]:
        """Symbols with nothing to fetch."""
        return [s for s, m in self.missing.items() if not m]


def make_plan(
    stored: dict[str, StoredDataset],
    tf: Timeframe,
    start: pd.Timestamp,
    end: pd.Timestamp,
    *,
    feed: str,
    adjustment: str,
    full: bool = False,
    window_days: int | None = None,
    where: Path | str = "the store",
) -> DownloadPlan:
    """Work out the missing windows of every symbol of ``stored`` (in its order) and group
    equal windows into requests. A symbol stored with another feed or adjustment is a
    ``ConfigError`` (a store never mixes them); ``where`` names the store in that message."""
    days = window_days or tf.window_days
    missing: dict[str, list[Range]] = {}
    by_window: dict[Range, list[str]] = {}
    for sym, info in stored.items():
        for what, have, want in (("feed", info.feeds, feed), ("adjustment", info.adjustments,
                                                              adjustment)):
            other = have - {want}
            if other:
                raise ConfigError(
                    f"{sym} {tf.name} in {where} was downloaded with {what}={','.join(other)}, "
                    f"not {want}: pass --{what} {','.join(other)} or use another --out folder"
                )
        covered = [] if full else info.coverage
        gaps = subtract_ranges((to_ns(start), to_ns(end)), covered)
        windows = [w for g in gaps for w in split_windows(g, days) if has_session(*w, tf)]
        missing[sym] = windows
        for w in windows:
            by_window.setdefault(w, []).append(sym)
    chunks: list[Chunk] = []
    for (a, b), syms in sorted(by_window.items()):
        for i in range(0, len(syms), MAX_SYMBOLS_PER_REQUEST):
            chunks.append(Chunk(tuple(syms[i:i + MAX_SYMBOLS_PER_REQUEST]), from_ns(a), from_ns(b)))
    return DownloadPlan(tf, start, end, chunks, dict(stored), missing)
