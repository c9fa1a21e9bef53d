"""Live bars: steps across symbols, the ``signal``/``atr`` lines, and the Parquet record.

Implements our side of Alpaca's minute bars ("Real-time stock pricing data", minute bar
``t`` = bar START, emitted just after the minute closes; REST GET /v2/stocks/bars for gaps).

* ``StepAssembler`` groups the bars of all symbols by bar time into one *step*, the unit a
  backtest advances by, so the Strategy sees each bar time once with every symbol that traded
  in it, as Backtrader's backtest does. A step is released when every symbol has its bar, or
  a later bar time has arrived, or ``grace`` seconds passed since its first bar (a symbol
  without trades in that minute has no bar). A bar at or before the last one delivered for
  its symbol is dropped: after a reconnect the REST backfill and the stream overlap and each
  bar must reach the Strategy exactly once.
* ``LiveIndicators`` computes, for each new bar, exactly the ``signal`` and ``atr`` values the
  backtest feed precomputes (``strategies.signals`` on a trailing window; Wilder's ATR
  continued with the same recurrence as ``strategies.rules.atr_wilder``, seeded by the
  warm-up history).
* ``BarRecorder`` appends the delivered bars to ``<root>/<interval>/<SYMBOL>/<date>.parquet``,
  the layout ``feeds.store`` reads, with the data feed (iex/sip) in the file metadata.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from brokers.alpaca.parsing import BarRecord
from feeds.store import append_bars
from strategies.rules import atr_next, atr_seed, atr_wilder
from strategies.signals import Signal

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    """The bars of one bar time, one per symbol that has a bar then.

    ``arrived``: ``perf_counter`` when the step became complete (latency probe);
    ``source``: ``stream`` or ``backfill``.
    """

    ts: datetime
    bars: dict[str, BarRecord]
    arrived: float
    source: str = "stream"


class StepAssembler:
    """Groups bars into steps; drops duplicates and bars older than what was delivered."""

    def __init__(self, symbols: Iterable[str], grace: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.symbols = sorted({s.upper() for s in symbols})
        self.grace = grace
        self._clock = clock
        self.last_ts: dict[str, datetime | None] = dict.fromkeys(self.symbols)
        self._pending: dict[datetime, dict[str, BarRecord]] = {}
        self._arrived: dict[datetime, float] = {}
        self._first_seen: dict[datetime, float] = {}
        self._source: dict[datetime, str] = {}
        self.dropped = 0

    def seed(self, symbol: str, last_ts: datetime | None) -> None:
        """Set the last bar time already delivered (or warmed up) for ``symbol``."""
        self.last_ts[symbol] = last_ts

    def add(self, bar: BarRecord, arrived: float | None = None, source: str = "stream") -> bool:
        """Queue ``bar``; False when it is a duplicate or older than what was delivered."""
        sym = bar.symbol
        if sym not in self.last_ts:
            return False
        last = self.last_ts[sym]
        if (last is not None and bar.ts <= last) or sym in self._pending.get(bar.ts, {}):
            self.dropped += 1
            return False
        self._pending.setdefault(bar.ts, {})[sym] = bar
        now = arrived if arrived is not None else time.perf_counter()
        self._arrived[bar.ts] = max(self._arrived.get(bar.ts, 0.0), now)
        self._first_seen.setdefault(bar.ts, self._clock())
        if source == "backfill" or bar.ts not in self._source:
            self._source[bar.ts] = source
        return True

    @property
    def pending(self) -> int:
        """Bar times waiting to be released."""
        return len(self._pending)

    def newest_pending(self) -> datetime | None:
        """The latest bar time waiting, if any."""
        return max(self._pending) if self._pending else None

    def incomplete_due(self) -> list[tuple[datetime, list[str]]]:
        """Bar times ``release()`` would hand out now without every symbol, with the symbols
        missing (a later bar time arrived, or the grace ran out)."""
        out: list[tuple[datetime, list[str]]] = []
        now = self._clock()
        for ts in sorted(self._pending):
            bars = self._pending[ts]
            if len(bars) == len(self.symbols):
                continue
            later = any(t > ts for t in self._pending)
            if not (later or now - self._first_seen[ts] >= self.grace):
                break
            out.append((ts, [s for s in self.symbols if s not in bars]))
        return out

    def release(self, upto: datetime | None = None) -> list[Step]:
        """Steps that are complete, oldest first.

        ``upto``: bar times at or before it are complete whatever is missing (they came from
        REST, which is authoritative: a symbol absent there had no trades then).
        """
        out: list[Step] = []
        now = self._clock()
        for ts in sorted(self._pending):
            bars = self._pending[ts]
            later = any(t > ts for t in self._pending)
            complete = len(bars) == len(self.symbols)
            timed_out = now - self._first_seen[ts] >= self.grace
            forced = upto is not None and ts <= upto
            if not (forced or complete or later or timed_out):
                break
            del self._pending[ts]
            self._first_seen.pop(ts, None)
            step = Step(ts, dict(sorted(bars.items())), self._arrived.pop(ts, 0.0),
                        self._source.pop(ts, "stream"))
            for sym in step.bars:
                self.last_ts[sym] = ts
            out.append(step)
        return out


class IntervalAggregator:
    """Interval bars (``5Min``, ``1Hour``...) from Alpaca's 1-minute stream bars.

    Buckets are aligned on the epoch (as Alpaca's REST bars are). A bucket is emitted when its
    last minute arrives, or when a minute of a later bucket does (its last minute had no
    trades). After ``reset()`` (a reconnect) the bucket in progress has lost minutes: it is
    skipped and ``backfill_due`` tells the store to fetch it whole from REST once it ends.
    """

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds
        self._open: dict[str, BarRecord] = {}
        self._value: dict[str, float] = {}
        self._emitted: dict[str, datetime] = {}
        self._resync: set[str] = set()
        self.skipped_until: datetime | None = None

    def reset(self) -> None:
        """Forget partial buckets; skip each symbol's bucket in progress."""
        self._resync = set(self._open) | set(self._emitted)
        self._open.clear()
        self._value.clear()

    def backfill_due(self, latest_minute: datetime) -> bool:
        """True once the skipped bucket has ended (then forgets it)."""
        if self.skipped_until is not None and latest_minute + timedelta(seconds=60) >= \
                self.skipped_until:
            self.skipped_until = None
            return True
        return False

    def add(self, bar: BarRecord) -> list[BarRecord]:
        """Fold one minute bar in; return the interval bars it completes."""
        out: list[BarRecord] = []
        sym = bar.symbol
        epoch = int(bar.ts.timestamp())
        start = datetime.fromtimestamp(epoch - epoch % self.seconds, bar.ts.tzinfo)
        last = self._emitted.get(sym)
        if last is not None and start <= last:
            return out  # a late minute of a bucket already emitted
        if sym in self._resync:
            if bar.ts != start:  # joined mid-bucket: minutes were lost, REST will have it
                end = start + timedelta(seconds=self.seconds)
                self.skipped_until = max(self.skipped_until or end, end)
                return out
            self._resync.discard(sym)
        cur = self._open.get(sym)
        if cur is not None and cur.ts != start:
            out.append(self._close(sym))
            cur = None
        vw = bar.vwap if math.isfinite(bar.vwap) else bar.close
        if cur is None:
            cur = BarRecord(sym, start, bar.open, bar.high, bar.low, bar.close,
                            bar.volume, _nz(bar.trade_count), math.nan)
            self._value[sym] = vw * bar.volume
        else:
            cur = BarRecord(sym, start, cur.open, max(cur.high, bar.high),
                            min(cur.low, bar.low), bar.close, cur.volume + bar.volume,
                            cur.trade_count + _nz(bar.trade_count), math.nan)
            self._value[sym] += vw * bar.volume
        self._open[sym] = cur
        if epoch + 60 >= int(start.timestamp()) + self.seconds:
            out.append(self._close(sym))
        return out

    def _close(self, symbol: str) -> BarRecord:
        cur = self._open.pop(symbol)
        value = self._value.pop(symbol, math.nan)
        vwap = value / cur.volume if cur.volume > 0 else math.nan
        self._emitted[symbol] = cur.ts
        return BarRecord(cur.symbol, cur.ts, cur.open, cur.high, cur.low, cur.close, cur.volume,
                         cur.trade_count, vwap)


def _nz(x: float) -> float:
    return 0.0 if not math.isfinite(x) else x


class LiveIndicators:
    """The ``signal`` and ``atr`` lines of one symbol, bar by bar, as the backtest computes.

    ``warm(history)`` first (oldest first); then ``update(bar)`` per new bar returns
    ``(signal, atr)``.
    """

    def __init__(self, symbol: str, signal: Signal, atr_period: int,
                 window: int | None = None) -> None:
        self.symbol = symbol
        self.signal = signal
        self.period = atr_period
        self.window = window or max(2 * int(signal.warmup), 120)
        self._bars: deque[BarRecord] = deque(maxlen=self.window)
        self._n = 0
        self._prev_close = math.nan
        self._seed: list[float] = []
        self._atr = math.nan

    @property
    def count(self) -> int:
        """Bars seen (warm-up included)."""
        return self._n

    @property
    def last(self) -> BarRecord | None:
        """The newest bar seen."""
        return self._bars[-1] if self._bars else None

    def warm(self, history: Iterable[BarRecord]) -> None:
        """Feed the warm-up history (bit-identical to ``atr_wilder`` over the same bars)."""
        bars = list(history)
        if not bars:
            return
        if self._n == 0 and len(bars) > self.period:
            high = np.array([b.high for b in bars])
            low = np.array([b.low for b in bars])
            close = np.array([b.close for b in bars])
            self._atr = float(atr_wilder(high, low, close, self.period)[-1])
            self._n = len(bars)
            self._prev_close = bars[-1].close
            self._bars.extend(bars[-self.window:])
            return
        for bar in bars:
            self._advance_atr(bar)
            self._bars.append(bar)

    def _advance_atr(self, bar: BarRecord) -> None:
        # strategies.rules.atr_wilder one bar at a time (the same seed and recurrence functions).
        if self._n > 0:
            prev = self._prev_close
            tr = max(bar.high, prev) - min(bar.low, prev)
            if self._n <= self.period:
                self._seed.append(tr)
                if self._n == self.period:
                    self._atr = atr_seed(self._seed, self.period)
                    self._seed = []
            else:
                self._atr = atr_next(self._atr, tr, self.period)
        self._prev_close = bar.close
        self._n += 1

    def update(self, bar: BarRecord) -> tuple[float, float]:
        """Add ``bar``; return its ``(signal, atr)``."""
        self._advance_atr(bar)
        self._bars.append(bar)
        if len(self._bars) < 2:
            return math.nan, self._atr
        compute_close = getattr(self.signal, "compute_close", None)
        if compute_close is not None:
            # the MA signal reads closes only: the same numpy arrays ``compute`` builds, bit
            # for bit, without a DataFrame and pd.to_datetime per bar (those cost ~2.5 ms per
            # symbol per step, half of bar arrival -> order at 60x; issue 11)
            close = np.fromiter((b.close for b in self._bars), np.float64, len(self._bars))
            return float(compute_close(close)[0][-1]), self._atr
        frame = pd.DataFrame({
            "timestamp": pd.to_datetime([b.ts for b in self._bars], utc=True),
            "open": [b.open for b in self._bars],
            "high": [b.high for b in self._bars],
            "low": [b.low for b in self._bars],
            "close": [b.close for b in self._bars],
            "volume": [b.volume for b in self._bars],
        })
        sig = float(self.signal.compute(frame)["signal"].iloc[-1])
        return sig, self._atr


@dataclass
class BarRecorder:
    """Writes delivered bars as Parquet parts, one part per symbol and UTC date."""

    root: Path
    interval: str
    feed: str
    _bars: dict[tuple[str, str], dict[datetime, BarRecord]] = field(default_factory=dict)
    _dirty: set[tuple[str, str]] = field(default_factory=set)

    def clean_partials(self) -> int:
        """Remove temp files a killed run left behind (``.live-<day>.parquet.*.tmp``)."""
        folder = self.root / self.interval
        removed = 0
        if folder.is_dir():
            for tmp in folder.glob("*/.live-*.tmp"):
                with contextlib.suppress(OSError):
                    tmp.unlink()
                    removed += 1
        if removed:
            logger.info("removed %d partial bar file(s) a killed run left in %s", removed,
                        folder)
        return removed

    def recorded_since(self, symbol: str) -> datetime | None:
        """The first bar of the newest recorded day of ``symbol`` (None: nothing recorded).
        A restart completes the recording from there (bars a killed run never wrote)."""
        folder = self.root / self.interval / symbol
        days = sorted(p.stem[len("live-"):] for p in folder.glob("live-*.parquet")) \
            if folder.is_dir() else []
        if not days:
            return None
        bars = self._bars.get((symbol, days[-1]))
        if bars is None:
            bars = self._bars[(symbol, days[-1])] = self._load(symbol, days[-1])
        return min(bars) if bars else None

    def complete(self, bars: Iterable[BarRecord], since: datetime) -> int:
        """Record the closed REST ``bars`` at or after ``since`` that are missing; returns
        how many were added."""
        added = 0
        for bar in bars:
            if bar.ts < since:
                continue
            key = (bar.symbol, bar.ts.strftime("%Y-%m-%d"))
            if key not in self._bars:
                self._bars[key] = self._load(*key)
            if bar.ts not in self._bars[key]:
                self._bars[key][bar.ts] = bar
                self._dirty.add(key)
                added += 1
        return added

    def add(self, bar: BarRecord) -> None:
        """Remember ``bar`` (written by ``flush``)."""
        key = (bar.symbol, bar.ts.strftime("%Y-%m-%d"))
        if key not in self._bars:
            self._bars[key] = self._load(*key)
        self._bars[key][bar.ts] = bar
        self._dirty.add(key)

    def _path(self, symbol: str, day: str) -> Path:
        return self.root / self.interval / symbol / f"live-{day}.parquet"

    def _load(self, symbol: str, day: str) -> dict[datetime, BarRecord]:
        # keep the bars of an earlier run of the same day (a restart) in the same part
        path = self._path(symbol, day)
        if not path.is_file():
            return {}
        try:
            frame = pd.read_parquet(path)
        except Exception:  # noqa: BLE001 - an unreadable part is rewritten from what we have
            logger.warning("cannot read %s; it will be rewritten", path)
            return {}
        out: dict[datetime, BarRecord] = {}
        for row in frame.itertuples(index=False):
            ts = pd.Timestamp(row.timestamp).to_pydatetime()
            out[ts] = BarRecord(symbol, ts, row.open, row.high, row.low, row.close, row.volume,
                                getattr(row, "trade_count", math.nan),
                                getattr(row, "vwap", math.nan))
        return out

    def flush(self) -> int:
        """Write every changed part atomically; returns the number of files written."""
        written = 0
        for symbol, day in sorted(self._dirty):
            bars = sorted(self._bars[(symbol, day)].values(), key=lambda b: b.ts)
            frame = pd.DataFrame({
                "timestamp": pd.to_datetime([b.ts for b in bars], utc=True),
                "open": [b.open for b in bars],
                "high": [b.high for b in bars],
                "low": [b.low for b in bars],
                "close": [b.close for b in bars],
                "volume": [b.volume for b in bars],
                "trade_count": [b.trade_count for b in bars],
                "vwap": [b.vwap for b in bars],
            })
            append_bars(self.root / self.interval / symbol, frame, f"live-{day}",
                        metadata={"feed": self.feed, "source": "alpaca-stream",
                                  "interval": self.interval})
            written += 1
        self._dirty.clear()
        return written
