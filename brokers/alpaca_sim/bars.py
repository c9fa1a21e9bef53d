"""Bars behind the server: Parquet bars loaded once into numpy arrays, indexed for replay.

Serves what Alpaca's Market Data API v2 ``GET /v2/stocks/bars`` computes (aggregation to
``NMin``, ``NHour``, ``1Day``, ``1Week``, ``NMonth``; daily bars stamped at New York midnight)
and what the replay needs per boundary (which bars close at a time, the price at a time).
A bar is *closed* once ``start + interval <= now``; nothing here ever returns a bar that has
not closed at the ``now`` it is given.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from brokers.alpaca_sim.calendar import NY, MarketCalendar
from feeds.store import discover, read_columns
from ratchet.common.errors import DataError

logger = logging.getLogger(__name__)

_NS = 1_000_000_000
_MIN_NS = 60 * _NS
#: Intraday interval folders the server can replay, finest first.
INTRADAY_INTERVALS: dict[str, int] = {
    "1Min": _MIN_NS, "5Min": 5 * _MIN_NS, "15Min": 15 * _MIN_NS, "30Min": 30 * _MIN_NS,
    "1Hour": 60 * _MIN_NS,
}
#: Session kind of a bar (by its start): outside any session, extended hours, regular hours.
KIND_CLOSED, KIND_EXTENDED, KIND_REGULAR = 0, 1, 2

_TF_RE = re.compile(r"^(\d+)(Min|T|Hour|H|Day|D|Week|W|Month|M)$")
_TF_UNITS = {"T": "Min", "H": "Hour", "D": "Day", "W": "Week", "M": "Month"}
_MONTHS_OK = {1, 2, 3, 4, 6, 12}


@dataclass(frozen=True)
class Timeframe:
    """A parsed Alpaca timeframe (``5Min``, ``1Hour``, ``1Day``, ``1Week``, ``3Month``)."""

    amount: int
    unit: str  # Min Hour Day Week Month

    @property
    def intraday_ns(self) -> int:
        """Bucket length for Min/Hour timeframes."""
        return self.amount * (_MIN_NS if self.unit == "Min" else 60 * _MIN_NS)


def parse_timeframe(text: str) -> Timeframe | None:
    """Alpaca's timeframe grammar; None when it is not valid."""
    m = _TF_RE.match(text.strip())
    if not m:
        return None
    amount, unit = int(m.group(1)), _TF_UNITS.get(m.group(2), m.group(2))
    ok = {
        "Min": 1 <= amount <= 59, "Hour": 1 <= amount <= 23, "Day": amount == 1,
        "Week": amount == 1, "Month": amount in _MONTHS_OK,
    }[unit]
    return Timeframe(amount, unit) if ok else None


@dataclass
class BarArraysSet:
    """Aggregated bars of one symbol: ``t`` (bar start, UTC ns) and the bar fields."""

    t: np.ndarray
    o: np.ndarray
    h: np.ndarray
    l: np.ndarray  # noqa: E741 - Alpaca's field name
    c: np.ndarray
    v: np.ndarray
    n: np.ndarray
    vw: np.ndarray

    def __len__(self) -> int:
        return int(self.t.shape[0])

    def take(self, sl: slice | np.ndarray) -> BarArraysSet:
        """A subset (slice or index array)."""
        return BarArraysSet(*(getattr(self, f)[sl] for f in _FIELDS))


_FIELDS = ("t", "o", "h", "l", "c", "v", "n", "vw")
_EMPTY_F = np.empty(0, dtype=np.float64)
EMPTY = BarArraysSet(np.empty(0, dtype=np.int64), *([_EMPTY_F] * 7))


@dataclass
class SymbolBars:
    """One symbol's intraday bars plus replay indexes."""

    symbol: str
    bars: BarArraysSet  # ``t`` = bar start
    end: np.ndarray  # bar end (start + interval), UTC ns
    kind: np.ndarray  # KIND_* by bar start
    day_first: np.ndarray  # index of the first bar of the same New York date


@dataclass
class DailyArrays:
    """One symbol's daily bars (stamped at New York midnight) and when each one closed."""

    bars: BarArraysSet
    closes_at: np.ndarray  # UTC ns at which the daily bar is final


def _agg(b: BarArraysSet, keys: np.ndarray) -> BarArraysSet:
    """Aggregate consecutive rows with equal ``keys`` (non-decreasing) into one bar each."""
    if len(b) == 0:
        return EMPTY
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    lasts = np.r_[starts[1:], keys.shape[0]] - 1
    v = np.add.reduceat(b.v, starts)
    pv = np.add.reduceat(b.vw * b.v, starts)
    c = b.c[lasts]
    with np.errstate(invalid="ignore", divide="ignore"):
        vw = np.where(v > 0, pv / np.where(v > 0, v, 1.0), c)
    return BarArraysSet(
        keys[starts].astype(np.int64), b.o[starts], np.maximum.reduceat(b.h, starts),
        np.minimum.reduceat(b.l, starts), c, v, np.add.reduceat(b.n, starts), vw,
    )


def _ny_midnights(t: np.ndarray) -> np.ndarray:
    """UTC ns of the New York midnight of each instant's New York date."""
    idx = pd.DatetimeIndex(t.astype("datetime64[ns]")).tz_localize("UTC").tz_convert(NY)
    return np.asarray(idx.normalize().as_unit("ns").asi8, dtype=np.int64)


def _read(path: Path, symbol: str) -> BarArraysSet:
    cols = read_columns(path)
    c = cols["close"]
    n = cols.get("trade_count")
    vw = cols.get("vwap")
    n = np.zeros_like(c) if n is None else np.nan_to_num(n, nan=0.0)
    vw = c.copy() if vw is None else np.where(np.isnan(vw), c, vw)
    return BarArraysSet(cols["timestamp"], cols["open"], cols["high"], cols["low"], c,
                        cols["volume"], n, vw)


def resolve_layout(data_dir: Path) -> tuple[Path, int, Path | None]:
    """(intraday folder, interval ns, daily folder or None) for ``--data``.

    ``data_dir`` is either a bar-store root (``<dir>/1Min/...``, ``<dir>/1Day/...``) or one
    interval folder of it.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data folder {data_dir} does not exist: check --data "
                        "(expected a bar-store root such as data/bars)")
    for name, step in INTRADAY_INTERVALS.items():
        if (data_dir / name).is_dir() and discover(data_dir / name):
            daily = data_dir / "1Day"
            return data_dir / name, step, daily if daily.is_dir() else None
    found = discover(data_dir)
    if not found:
        raise DataError(f"no intraday bars in {data_dir}: expected "
                        f"{data_dir}/1Min/<SYMBOL>.parquet (or 5Min/15Min/30Min/1Hour); "
                        "fix --data")
    if data_dir.name == "1Day":
        raise DataError(f"{data_dir} holds daily bars; the server replays intraday bars: point "
                        "--data at the bar-store root (e.g. data/bars)")
    named = INTRADAY_INTERVALS.get(data_dir.name)
    if named is None:
        ts = read_columns(next(iter(found.values())))["timestamp"]
        d = np.diff(ts)
        d = d[d > 0]
        if d.size == 0:
            raise DataError(f"cannot infer the bar interval of {data_dir}: name the folder 1Min, "
                            "5Min, 15Min, 30Min or 1Hour")
        named = int(d.min())
    daily = data_dir.parent / "1Day"
    return data_dir, named, daily if daily.is_dir() else None


class BarBook:
    """All bars of a replay, loaded once. Read-only after construction (safe across threads)."""

    def __init__(self, intraday: dict[str, BarArraysSet], step_ns: int,
                 daily_files: dict[str, BarArraysSet] | None = None, source: str = "") -> None:
        if not intraday:
            raise DataError(f"no bars to replay in {source or 'the data folder'}")
        self.step_ns = int(step_ns)
        self.source = source
        self.symbols: list[str] = sorted(intraday)
        firsts = [int(b.t[0]) for b in intraday.values() if len(b)]
        lasts = [int(b.t[-1]) for b in intraday.values() if len(b)]
        if not firsts:
            raise DataError(f"the bar files in {source or 'the data folder'} hold no rows")
        d_lo, d_hi = min(firsts), max(lasts)
        for b in (daily_files or {}).values():
            if len(b):
                d_lo, d_hi = min(d_lo, int(b.t[0])), max(d_hi, int(b.t[-1]))
        self.calendar = MarketCalendar(pd.Timestamp(d_lo, tz="UTC").date(),
                                       pd.Timestamp(d_hi, tz="UTC").date())
        self.bars: dict[str, SymbolBars] = {}
        self.daily: dict[str, DailyArrays] = {}
        for sym in self.symbols:
            self.bars[sym] = self._index(sym, intraday[sym])
            self.daily[sym] = self._daily(sym, (daily_files or {}).get(sym))
        self._build_replay_index()

    # -- construction -------------------------------------------------------------------

    @classmethod
    def load(cls, data_dir: Path, symbols: Iterable[str] | None = None) -> BarBook:
        """Load ``data_dir`` (a bar-store root or an intraday interval folder)."""
        intraday_dir, step, daily_dir = resolve_layout(Path(data_dir))
        found = discover(intraday_dir)
        if symbols is not None:
            wanted = [s.upper() for s in symbols]
            missing = [s for s in wanted if s not in found]
            if missing:
                raise DataError(f"no bars for {', '.join(missing)} in {intraday_dir}: available "
                                f"symbols are {', '.join(sorted(found))}")
            found = {s: found[s] for s in wanted}
        intraday = {s: _read(p, s) for s, p in found.items()}
        daily: dict[str, BarArraysSet] = {}
        if daily_dir is not None:
            dfound = discover(daily_dir)
            daily = {s: _read(p, s) for s, p in dfound.items() if s in intraday}
        logger.info("loaded %d symbols from %s (%d bars)", len(intraday), intraday_dir,
                    sum(len(b) for b in intraday.values()))
        return cls(intraday, step, daily, str(intraday_dir))

    def _index(self, sym: str, b: BarArraysSet) -> SymbolBars:
        cal = self.calendar
        t = b.t
        i = np.searchsorted(cal.ext_open, t, side="right") - 1
        ok = i >= 0
        ic = np.clip(i, 0, None)
        ext = ok & (t < cal.ext_close[ic])
        reg = ext & (t >= cal.open[ic]) & (t < cal.close[ic])
        kind = np.where(reg, KIND_REGULAR,
                        np.where(ext, KIND_EXTENDED, KIND_CLOSED)).astype(np.int8)
        dk = _ny_midnights(t) if len(t) else t
        newday = np.r_[True, dk[1:] != dk[:-1]] if len(t) else np.empty(0, dtype=bool)
        starts = np.flatnonzero(newday)
        day_first = starts[np.cumsum(newday) - 1] if len(t) else np.empty(0, dtype=np.int64)
        return SymbolBars(sym, b, t + self.step_ns, kind, day_first)

    def _daily(self, sym: str, from_file: BarArraysSet | None) -> DailyArrays:
        sb = self.bars[sym]
        keys = _ny_midnights(sb.bars.t) if len(sb.bars) else sb.bars.t
        mine = _agg(sb.bars, keys)
        last_end = sb.end[np.r_[np.flatnonzero(np.diff(keys)), len(keys) - 1]] if len(keys) else (
            np.empty(0, dtype=np.int64))
        if from_file is not None and len(from_file):
            fkeys = _ny_midnights(from_file.t)
            extra = ~np.isin(fkeys, mine.t)
            merged = BarArraysSet(*(np.concatenate([getattr(from_file, f)[extra], getattr(mine, f)])
                                    for f in _FIELDS))
            merged.t[: int(extra.sum())] = fkeys[extra]
            order = np.argsort(merged.t, kind="stable")
            merged = merged.take(order)
            ends = np.concatenate([np.full(int(extra.sum()), -1, dtype=np.int64), last_end])[order]
        else:
            merged, ends = mine, last_end
        return DailyArrays(merged, self._daily_close_times(merged.t, ends))

    def _daily_close_times(self, t: np.ndarray, data_ends: np.ndarray) -> np.ndarray:
        """A daily bar is final at its session's close (or its last bar's end, if later)."""
        cal = self.calendar
        out = np.empty(t.shape[0], dtype=np.int64)
        for k, (tk, de) in enumerate(zip(t.tolist(), data_ends.tolist(), strict=True)):
            d = pd.Timestamp(tk, tz="UTC").tz_convert(NY).date()
            i = cal.index_of_date(d)
            close = int(cal.close[i]) if i >= 0 else tk + 86_400 * _NS
            out[k] = max(close, de)
        return out

    def _build_replay_index(self) -> None:
        ends = [self.bars[s].end for s in self.symbols]
        starts = [self.bars[s].bars.t for s in self.symbols]
        all_end = np.concatenate(ends)
        sym_id = np.concatenate([np.full(e.shape[0], k, dtype=np.int32)
                                 for k, e in enumerate(ends)])
        idx = np.concatenate([np.arange(e.shape[0], dtype=np.int64) for e in ends])
        order = np.argsort(all_end, kind="stable")
        self._close_t = all_end[order]
        self._close_sym = sym_id[order]
        self._close_idx = idx[order]
        self._close_u, self._close_off = np.unique(self._close_t, return_index=True)
        self._close_off = np.r_[self._close_off, self._close_t.shape[0]]
        self.bar_starts = np.unique(np.concatenate(starts))
        self.event_times = np.unique(np.concatenate([self.bar_starts, all_end,
                                                     self.calendar.event_times]))

    # -- replay queries -----------------------------------------------------------------

    def default_start(self, session_number: int = 3) -> int:
        """Regular open of the ``session_number``-th session with bars (the last if fewer)."""
        days = np.unique(_ny_midnights(np.unique(np.concatenate(
            [self.bars[s].bars.t for s in self.symbols]))))
        pick = days[min(session_number, len(days)) - 1]
        d = pd.Timestamp(int(pick), tz="UTC").tz_convert(NY).date()
        i = self.calendar.index_of_date(d)
        return int(self.calendar.open[i]) if i >= 0 else int(pick)

    def next_event_after(self, t_ns: int) -> int | None:
        """The first bar start/end or session boundary strictly after ``t``."""
        i = int(np.searchsorted(self.event_times, t_ns, side="right"))
        return int(self.event_times[i]) if i < self.event_times.shape[0] else None

    def events_between(self, t0: int, t1: int) -> np.ndarray:
        """Event times in ``(t0, t1]``."""
        lo = int(np.searchsorted(self.event_times, t0, side="right"))
        hi = int(np.searchsorted(self.event_times, t1, side="right"))
        return self.event_times[lo:hi]

    def closing_at(self, t_ns: int) -> list[tuple[str, int]]:
        """(symbol, bar index) of every bar whose end is exactly ``t``."""
        k = int(np.searchsorted(self._close_u, t_ns))
        if k >= self._close_u.shape[0] or self._close_u[k] != t_ns:
            return []
        lo, hi = int(self._close_off[k]), int(self._close_off[k + 1])
        syms = self.symbols
        return [(syms[s], int(i)) for s, i in zip(self._close_sym[lo:hi].tolist(),
                                                  self._close_idx[lo:hi].tolist(), strict=True)]

    def bar_starting_at(self, sym: str, t_ns: int) -> int:
        """Index of ``sym``'s bar starting exactly at ``t``, else -1."""
        t = self.bars[sym].bars.t
        i = int(np.searchsorted(t, t_ns))
        return i if i < t.shape[0] and t[i] == t_ns else -1

    def bar_ending_at(self, sym: str, t_ns: int) -> int:
        """Index of ``sym``'s bar ending exactly at ``t``, else -1."""
        e = self.bars[sym].end
        i = int(np.searchsorted(e, t_ns))
        return i if i < e.shape[0] and e[i] == t_ns else -1

    def last_closed(self, sym: str, t_ns: int) -> int:
        """Index of ``sym``'s last bar with ``end <= t``, else -1."""
        return int(np.searchsorted(self.bars[sym].end, t_ns, side="right")) - 1

    def price_at(self, sym: str, t_ns: int) -> tuple[float, int] | None:
        """(last trade price, its time) at ``t``: the open of a bar in progress, else the close
        of the last closed bar, else the last final daily close; None before any data."""
        sb = self.bars[sym]
        i = int(np.searchsorted(sb.bars.t, t_ns, side="right")) - 1
        if i >= 0:
            if sb.end[i] > t_ns:
                return float(sb.bars.o[i]), int(sb.bars.t[i])
            return float(sb.bars.c[i]), int(sb.end[i]) - 1000
        da = self.daily[sym]
        j = int(np.searchsorted(da.closes_at, t_ns, side="right")) - 1
        if j >= 0 and len(da.bars):
            return float(da.bars.c[j]), int(da.closes_at[j]) - 1000
        return None

    def running_daily(self, sym: str, i: int) -> BarArraysSet:
        """The day's bar so far, from the day's first bar up to bar ``i`` (inclusive)."""
        sb = self.bars[sym]
        lo = int(sb.day_first[i])
        part = sb.bars.take(slice(lo, i + 1))
        agg = _agg(part, np.zeros(i + 1 - lo, dtype=np.int64))
        agg.t[:] = _ny_midnights(sb.bars.t[i:i + 1])
        return agg

    def final_daily(self, sym: str, t_ns: int, before: int | None = None) -> BarArraysSet:
        """Daily bars of ``sym`` final at ``t`` (optionally only those stamped before
        ``before``)."""
        da = self.daily[sym]
        n = int(np.searchsorted(da.closes_at, t_ns, side="right"))
        # closes_at is monotonic because daily bars are sorted and sessions close in order.
        out = da.bars.take(slice(0, n))
        if before is not None:
            out = out.take(slice(0, int(np.searchsorted(out.t, before))))
        return out

    # -- aggregation for GET /v2/stocks/bars ----------------------------------------------

    def aggregate(self, sym: str, tf: Timeframe, start: int, end: int, now: int) -> BarArraysSet:
        """Closed bars of ``sym`` in timeframe ``tf`` with ``start <= t <= end`` at ``now``."""
        if sym not in self.bars:
            return EMPTY
        if tf.unit in ("Min", "Hour"):
            return self._intraday(sym, tf.intraday_ns, start, end, now)
        daily = self.final_daily(sym, now)
        if tf.unit == "Day":
            lo = int(np.searchsorted(daily.t, start, side="left"))
            hi = int(np.searchsorted(daily.t, end, side="right"))
            return daily.take(slice(lo, hi))
        return self._calendar_buckets(daily, tf, start, end, now)

    def _intraday(self, sym: str, d: int, start: int, end: int, now: int) -> BarArraysSet:
        if d % self.step_ns:
            raise ValueError(f"timeframe is finer than the replayed "
                             f"{self.step_ns // _MIN_NS}Min bars")
        sb = self.bars[sym]
        k_min = -(-start // d) * d
        k_max = min((end // d) * d, ((now - d) // d) * d)
        if k_max < k_min:
            return EMPTY
        t = sb.bars.t
        lo = int(np.searchsorted(t, k_min, side="left"))
        hi = int(np.searchsorted(t, k_max + d, side="left"))
        part = sb.bars.take(slice(lo, hi))
        if d == self.step_ns and not (part.t % d).any():
            return part
        return _agg(part, (part.t // d) * d)

    def _calendar_buckets(self, daily: BarArraysSet, tf: Timeframe, start: int, end: int,
                          now: int) -> BarArraysSet:
        if not len(daily):
            return EMPTY
        cal = self.calendar
        keys = _period_keys(daily.t, tf)
        agg = _agg(daily, keys)
        firsts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        agg.t = daily.t[firsts]
        cal_keys = _period_keys(_ny_midnights(cal.close), tf)
        # A week/month bar is final when the calendar's last session of that period closes.
        last_session = np.searchsorted(cal_keys, keys[firsts], side="right") - 1
        known = (last_session >= 0) & (last_session < len(cal) - 1)
        complete_at = np.where(known, cal.close[np.clip(last_session, 0, None)],
                               np.iinfo(np.int64).max)
        mask = (agg.t >= start) & (agg.t <= end) & (complete_at <= now)
        return agg.take(mask)


def _period_keys(t: np.ndarray, tf: Timeframe) -> np.ndarray:
    """Week (Monday) or N-month bucket number of each New York date."""
    dates = pd.DatetimeIndex(t.astype("datetime64[ns]")).tz_localize("UTC").tz_convert(NY)
    if tf.unit == "Week":
        days = (dates.normalize().tz_localize(None) - pd.Timestamp("1970-01-05")).days.to_numpy()
        return (days // 7).astype(np.int64)
    months = (dates.year.to_numpy() * 12 + dates.month.to_numpy() - 1).astype(np.int64)
    return months // tf.amount

