"""What a bar store holds: ranges, bar counts and gaps beyond normal market closures.

The calendar is the real NYSE one (``exchange_calendars``' ``XNYS``: holidays, early closes,
special closures), never a hand-written holiday list. For each dataset
(``<root>/<interval>/<SYMBOL>``) we compare the bars present with the bars expected in
regular sessions between the dataset's first and last bar:

- intraday intervals: every bar start inside regular hours (09:30-16:00 New York, early
  closes respected), bucketed on the clock as Alpaca does (hourly bars at 09:00, 10:00...);
  bars outside regular hours (pre/post market, weekend) are counted as ``outside``;
- ``1Day``: one bar per session, stamped at New York midnight (in UTC).

Missing expected bars are grouped into gaps (runs of consecutive expected bars). Closures
are never gaps because the calendar does not expect bars then.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import exchange_calendars as xcals
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from feeds.store import discover, read_columns
from ratchet.common.errors import DataError

logger = logging.getLogger(__name__)

NY = "America/New_York"
CALENDAR = "XNYS"
_NS_PER_MIN = 60_000_000_000
_INTERVAL_RE = re.compile(r"^(\d+)(Min|Hour|Day|Week|Month)$")

#: interval name -> bar length in minutes (intraday) ; ``1Day`` is handled by sessions.
INTERVAL_MINUTES: dict[str, int] = {"1Min": 1, "5Min": 5, "15Min": 15, "1Hour": 60, "1Day": 1440}


def is_interval_name(name: str) -> bool:
    """True for folder names that look like an Alpaca interval (``1Min``, ``1Day``...)."""
    return bool(_INTERVAL_RE.match(name))


def ny_midnight(day: pd.Timestamp | str) -> pd.Timestamp:
    """New York midnight of a calendar date, in UTC (how Alpaca stamps daily bars)."""
    ts = pd.Timestamp(day)
    if ts.tzinfo is not None:
        ts = ts.tz_convert(NY).tz_localize(None)
    return ts.normalize().tz_localize(NY).tz_convert("UTC")


@functools.lru_cache(maxsize=4)
def _calendar(first_year: int) -> xcals.ExchangeCalendar:
    # One calendar object per start year: building one takes ~0.2 s, so cache it.
    return xcals.get_calendar(CALENDAR, start=f"{first_year}-01-01")


def sessions(start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """NYSE sessions whose date lies in [start, end] (New York dates), with UTC open/close.

    Index: session date (naive). Columns ``open``, ``close`` (UTC). Dates outside the
    calendar's range (``exchange_calendars`` covers 1885 to about a year ahead) are dropped.
    """
    d0 = pd.Timestamp(start)
    d1 = pd.Timestamp(end)
    if d0.tzinfo is not None:
        d0 = d0.tz_convert(NY).tz_localize(None)
    if d1.tzinfo is not None:
        d1 = d1.tz_convert(NY).tz_localize(None)
    d0, d1 = d0.normalize(), d1.normalize()
    cal = _calendar(min(d0.year, 2000))
    d0 = max(d0, cal.first_session)
    d1 = min(d1, cal.last_session)
    if d0 > d1:
        return pd.DataFrame({"open": pd.DatetimeIndex([], tz="UTC"),
                             "close": pd.DatetimeIndex([], tz="UTC")})
    sched = cal.schedule.loc[d0:d1, ["open", "close"]]
    return sched


def expected_starts(sched: pd.DataFrame, interval: str) -> np.ndarray:
    """Sorted int64 ns bar starts expected in the regular hours of ``sched``'s sessions."""
    if sched.empty:
        return np.empty(0, dtype=np.int64)
    if interval == "1Day":
        days = pd.DatetimeIndex(sched.index).tz_localize(NY).tz_convert("UTC")
        return np.asarray(days.as_unit("ns").asi8, dtype=np.int64)
    minutes = INTERVAL_MINUTES[interval]
    opens = np.asarray(pd.DatetimeIndex(sched["open"]).as_unit("ns").asi8, dtype=np.int64)
    closes = np.asarray(pd.DatetimeIndex(sched["close"]).as_unit("ns").asi8, dtype=np.int64)
    counts = (closes - opens) // _NS_PER_MIN
    total = int(counts.sum())
    # Every regular-hours minute, built without a Python loop over sessions.
    offsets = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    every_minute = np.repeat(opens, counts) + offsets * _NS_PER_MIN
    if minutes == 1:
        return every_minute
    step = minutes * _NS_PER_MIN
    # Bars are bucketed on the clock (New York offsets are whole hours, so UTC flooring agrees).
    return np.unique(every_minute - every_minute % step)


@dataclass(frozen=True)
class Gap:
    """A run of consecutive expected bars that are missing: [start, end)."""

    start: pd.Timestamp
    end: pd.Timestamp
    bars: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"start": self.start.isoformat(), "end": self.end.isoformat(), "bars": self.bars}


@dataclass
class DatasetInfo:
    """Coverage summary of one dataset (one symbol at one interval)."""

    symbol: str
    timeframe: str
    path: str
    parts: int = 0
    size_bytes: int = 0
    bars: int = 0
    first: pd.Timestamp | None = None
    last: pd.Timestamp | None = None
    sessions: int = 0
    expected: int | None = None
    present: int | None = None
    outside: int | None = None
    missing: int | None = None
    missing_sessions: int | None = None
    gap_count: int | None = None
    largest_gaps: list[Gap] = field(default_factory=list)
    feed: str | None = None
    source: str | None = None
    error: str | None = None

    @property
    def completeness(self) -> float | None:
        """Share of expected regular-session bars that are present (1.0 = none missing)."""
        if not self.expected:
            return None
        return (self.present or 0) / self.expected

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (timestamps as ISO strings)."""
        out = asdict(self)
        out["first"] = self.first.isoformat() if self.first is not None else None
        out["last"] = self.last.isoformat() if self.last is not None else None
        out["largest_gaps"] = [g.to_dict() for g in self.largest_gaps]
        out["completeness"] = self.completeness
        return out


def find_gaps(expected: np.ndarray, present: np.ndarray, step_ns: int) -> list[Gap]:
    """Runs of ``expected`` bar starts missing from ``present`` (both sorted int64 ns)."""
    if expected.size == 0:
        return []
    if present.size:
        idx = np.minimum(np.searchsorted(present, expected), present.size - 1)
        missing = present[idx] != expected
    else:
        missing = np.ones(expected.size, dtype=bool)
    if not missing.any():
        return []
    edges = np.diff(np.concatenate(([0], missing.astype(np.int8), [0])))
    starts = np.flatnonzero(edges == 1)
    stops = np.flatnonzero(edges == -1)
    return [
        Gap(
            pd.Timestamp(int(expected[a]), tz="UTC"),
            pd.Timestamp(int(expected[b - 1]) + step_ns, tz="UTC"),
            int(b - a),
        )
        for a, b in zip(starts, stops, strict=True)
    ]


def analyse(ts: np.ndarray, interval: str, top: int = 5) -> dict[str, Any]:
    """Counts and gaps of sorted bar starts ``ts`` (int64 ns) against the NYSE calendar."""
    out: dict[str, Any] = {"bars": int(ts.size)}
    if ts.size == 0 or interval not in INTERVAL_MINUTES:
        return out
    first = pd.Timestamp(int(ts[0]), tz="UTC")
    last = pd.Timestamp(int(ts[-1]), tz="UTC")
    sched = sessions(first, last)
    exp = expected_starts(sched, interval)
    # Only count expectations between the first and the last bar: a dataset that starts
    # mid-session is not missing the minutes before it begins.
    exp = exp[(exp >= ts[0]) & (exp <= ts[-1])]
    step = INTERVAL_MINUTES[interval] * _NS_PER_MIN if interval != "1Day" else 86_400 * 10**9
    gaps = find_gaps(exp, ts, step)
    missing = sum(g.bars for g in gaps)
    per_session = _missing_whole_sessions(sched, exp, ts, interval)
    out.update(
        sessions=int(len(sched)),
        expected=int(exp.size),
        present=int(exp.size - missing),
        outside=int(ts.size - (exp.size - missing)),
        missing=int(missing),
        missing_sessions=per_session,
        gap_count=len(gaps),
        largest_gaps=sorted(gaps, key=lambda g: (-g.bars, g.start))[:top],
    )
    return out


def _missing_whole_sessions(sched: pd.DataFrame, exp: np.ndarray, ts: np.ndarray,
                            interval: str) -> int:
    """Sessions (between first and last bar) that have no bar at all in regular hours."""
    if sched.empty or exp.size == 0:
        return 0
    if interval == "1Day":
        return int(exp.size - np.isin(exp, ts).sum())
    opens = np.asarray(pd.DatetimeIndex(sched["open"]).as_unit("ns").asi8, dtype=np.int64)
    closes = np.asarray(pd.DatetimeIndex(sched["close"]).as_unit("ns").asi8, dtype=np.int64)
    # Floor to the bucket so an hourly bar stamped 09:00 counts for a 09:30 open.
    step = INTERVAL_MINUTES[interval] * _NS_PER_MIN
    opens = opens - opens % step
    keep = (closes > exp[0]) & (opens <= exp[-1])
    opens, closes = opens[keep], closes[keep]
    lo = np.searchsorted(ts, opens, side="left")
    hi = np.searchsorted(ts, closes, side="left")
    return int(np.count_nonzero(hi == lo))


def _dataset_meta(path: Path) -> tuple[int, int, str | None, str | None]:
    """(parts, bytes, feed, source) from the files' Parquet metadata (cheap: no data read)."""
    files = sorted(p for p in path.glob("*.parquet") if not p.name.startswith(".")) \
        if path.is_dir() else [path]
    feeds: set[str] = set()
    sources: set[str] = set()
    size = 0
    for f in files:
        size += f.stat().st_size
        try:
            meta = pq.read_schema(f).metadata or {}
        except (OSError, pa.ArrowException):
            continue  # a corrupt part is reported by the data read below
        if b"ratchet.feed" in meta:
            feeds.add(meta[b"ratchet.feed"].decode())
        if b"ratchet.source" in meta:
            sources.add(meta[b"ratchet.source"].decode())
    return (len(files), size, ",".join(sorted(feeds)) or None, ",".join(sorted(sources)) or None)


def dataset_info(path: Path, timeframe: str, symbol: str, top: int = 5) -> DatasetInfo:
    """Coverage summary of one dataset; a broken dataset yields ``error`` instead of raising."""
    info = DatasetInfo(symbol=symbol, timeframe=timeframe, path=str(path))
    info.parts, info.size_bytes, info.feed, info.source = _dataset_meta(path)
    try:
        ts = read_columns(path)["timestamp"]
    except DataError as exc:
        info.error = str(exc)
        return info
    stats = analyse(ts, timeframe, top)
    info.bars = stats["bars"]
    if ts.size:
        info.first = pd.Timestamp(int(ts[0]), tz="UTC")
        info.last = pd.Timestamp(int(ts[-1]), tz="UTC")
    for key in ("sessions", "expected", "present", "outside", "missing", "missing_sessions",
                "gap_count", "largest_gaps"):
        if key in stats:
            setattr(info, key, stats[key])
    return info


def find_datasets(root: Path) -> list[tuple[str, str, Path]]:
    """(timeframe, symbol, path) for every dataset under ``root``.

    ``root`` may be a store root (``data/bars`` with interval folders), one interval folder
    (``data/bars/1Min``) or one dataset (``data/bars/1Min/ACME.parquet`` or its part folder).
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root} does not exist: pass the bar store folder (default data/bars)")
    if root.is_file() or (root.is_dir() and is_interval_name(root.parent.name)
                          and not is_interval_name(root.name)):
        return [(root.parent.name, root.name.removesuffix(".parquet").upper(), root)]
    if is_interval_name(root.name):
        return [(root.name, sym, p) for sym, p in discover(root).items()]
    found: list[tuple[str, str, Path]] = []
    for sub in sorted(root.iterdir()):
        if sub.is_dir() and is_interval_name(sub.name):
            found.extend((sub.name, sym, p) for sym, p in discover(sub).items())
    if not found:
        raise DataError(
            f"no bar datasets under {root}: expected {root}/<interval>/<SYMBOL>.parquet "
            "(fill it with `cli.py data download` or `cli.py data import`)"
        )
    return found


def scan(root: Path, symbols: list[str] | None = None, timeframes: list[str] | None = None,
         top: int = 5) -> list[DatasetInfo]:
    """Coverage summaries of every dataset under ``root`` (optionally filtered)."""
    wanted_s = {s.upper() for s in symbols} if symbols else None
    wanted_t = set(timeframes) if timeframes else None
    out = []
    for tf, sym, path in find_datasets(root):
        if (wanted_s and sym not in wanted_s) or (wanted_t and tf not in wanted_t):
            continue
        logger.debug("scanning %s %s (%s)", sym, tf, path)
        out.append(dataset_info(path, tf, sym, top))
    return out


def to_json(infos: list[DatasetInfo]) -> str:
    """The ``--json`` output: a list of dataset summaries."""
    return json.dumps([i.to_dict() for i in infos], indent=2)
