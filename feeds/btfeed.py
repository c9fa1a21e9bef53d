"""A Backtrader data feed filled from numpy arrays in one step.

``bt.feeds.PandasData`` reads every value through ``DataFrame.iloc`` during preload, which
is the slowest part of a stock Backtrader backtest. ``ArrayData.preload`` instead writes each
line's whole buffer at once from the arrays read by ``feeds.store.read_arrays``. The feed also
carries two extra lines the Strategy reads, computed once per symbol in a vectorised pass:
``signal`` (+1 BUY, -1 SELL, 0, NaN in warm-up) and ``atr`` (Wilder's ATR), plus the
``session`` line (``feeds.sessions`` codes, precomputed from the NYSE calendar; all regular
when not given).
"""

from __future__ import annotations

import array
from typing import Any

import backtrader as bt
import numpy as np

from feeds.store import BarArrays
from ratchet.common.nytime import unique_inverse

# Backtrader stores datetimes as days since 0001-01-01 (proleptic ordinal, 1 = 0001-01-01).
_EPOCH_ORDINAL = 719163.0  # date(1970, 1, 1).toordinal()
_NS_PER_DAY = 86_400_000_000_000.0


def ns_to_bt(ts_ns: np.ndarray) -> np.ndarray:
    """UTC epoch nanoseconds -> Backtrader's float day numbers (``bt.date2num`` of UTC)."""
    return _EPOCH_ORDINAL + ts_ns.astype(np.float64) / _NS_PER_DAY


class ArrayData(bt.feeds.DataBase):
    """Preloaded bars (+ ``signal``, ``atr`` and ``session`` lines) from numpy arrays.

    Args (Backtrader params):
        bars: the ``BarArrays`` to feed.
        signal: per-bar signal array (same length) or None (all NaN).
        atr: per-bar ATR array (same length) or None (all NaN).
        session: per-bar ``feeds.sessions`` code (same length) or None (all regular).
    """

    lines: Any = ("signal", "atr", "session")  # Backtrader turns these into line objects
    params = (
        ("bars", None),
        ("signal", None),
        ("atr", None),
        ("session", None),
    )

    def __init__(self) -> None:
        super().__init__()
        bars: BarArrays | None = self.p.bars
        if bars is None:
            raise ValueError("ArrayData needs bars=BarArrays")
        n = len(bars)
        for name, extra in (("signal", self.p.signal), ("atr", self.p.atr),
                            ("session", self.p.session)):
            if extra is not None and len(extra) != n:
                raise ValueError(f"{name} has {len(extra)} values for {n} bars")
        self._n = n
        self._pos = 0

    def start(self) -> None:
        super().start()
        self._pos = 0

    def _columns(self) -> dict[str, np.ndarray]:
        bars: BarArrays = self.p.bars
        n = len(bars)
        nan = np.full(n, np.nan)
        return {
            "datetime": ns_to_bt(bars.ts),
            "open": bars.open,
            "high": bars.high,
            "low": bars.low,
            "close": bars.close,
            "volume": bars.volume,
            "openinterest": np.zeros(n),
            "signal": nan if self.p.signal is None else np.asarray(self.p.signal, np.float64),
            "atr": nan if self.p.atr is None else np.asarray(self.p.atr, np.float64),
            "session": np.ones(n) if self.p.session is None
            else np.asarray(self.p.session, np.float64),
        }

    def preload(self) -> None:
        """Fill every line buffer in one step, then rewind (what ``load()`` x N would do)."""
        cols = self._columns()
        if self.fromdate > float("-inf") or self.todate < float("inf"):
            dt = cols["datetime"]
            keep = (dt >= self.fromdate) & (dt <= self.todate)
            cols = {k: v[keep] for k, v in cols.items()}
        for name in self.lines.getlinealiases():
            line = getattr(self.lines, name)
            values = np.ascontiguousarray(cols.pop(name), dtype=np.float64)
            buf = array.array("d")
            buf.frombytes(values.data.cast("B"))  # one copy, no temporary bytes
            line.array = buf
            line.idx = len(values) - 1
            line.lencount = len(values)
            del values
        self._pos = self._n
        self._last()
        self.home()
        # The line buffers hold every value now: drop our references to the source arrays
        # so a caller that no longer needs them gets the memory back.
        self.p.bars = self.p.signal = self.p.atr = self.p.session = None
        # Fast paths below (advance, advance_peek, __len__) read these buffers directly.
        self._tick_nullify()  # tick_* stay None: the broker reads the bar itself
        self._dtbuf = self.lines.datetime
        self._bufs = [self.lines[i] for i in range(self.lines.size())]
        self._fast = True

    # Cerebro calls these three once per feed per step; Backtrader's versions go through
    # several layers of properties and tick bookkeeping that a preloaded bar feed never needs.
    _fast = False

    def __len__(self) -> int:
        if self._fast:
            return int(self._dtbuf.lencount)
        return int(super().__len__())

    def advance_peek(self) -> float:
        if not self._fast:
            return float(super().advance_peek())
        dt = self._dtbuf
        i = dt._idx + 1
        return dt.array[i] if i < len(dt.array) else float("inf")

    def advance(self, size: int = 1, datamaster: Any = None, ticks: bool = True) -> None:
        if not self._fast or datamaster is not None:
            super().advance(size, datamaster, ticks)
            return
        for buf in self._bufs:
            buf._idx += size
            buf.lencount += size

    def _load(self) -> bool:
        # Used only when preload is off (e.g. cerebro.run(preload=False)): one bar at a time.
        if self._pos >= self._n:
            return False
        i = self._pos
        bars: BarArrays = self.p.bars
        lines = self.lines
        lines.datetime[0] = float(ns_to_bt(bars.ts[i : i + 1])[0])
        lines.open[0] = float(bars.open[i])
        lines.high[0] = float(bars.high[i])
        lines.low[0] = float(bars.low[i])
        lines.close[0] = float(bars.close[i])
        lines.volume[0] = float(bars.volume[i])
        lines.openinterest[0] = 0.0
        sig, atr = self.p.signal, self.p.atr
        lines.signal[0] = float("nan") if sig is None else float(sig[i])
        lines.atr[0] = float("nan") if atr is None else float(atr[i])
        sess = self.p.session
        lines.session[0] = 1.0 if sess is None else float(sess[i])
        self._pos += 1
        return True


def make_feed(bars: BarArrays, signal: np.ndarray | None = None, atr: np.ndarray | None = None,
              session: np.ndarray | None = None, **kwargs: Any) -> ArrayData:
    """An ``ArrayData`` named after the symbol, in UTC."""
    return ArrayData(bars=bars, signal=signal, atr=atr, session=session, name=bars.symbol,  # type: ignore[call-arg] # Backtrader params
                     **kwargs)


class ArrayCerebro(bt.Cerebro):
    """``Cerebro`` whose vectorised run loop knows its steps in advance when every feed is a
    preloaded ``ArrayData``.

    Backtrader's ``_runonce`` asks every feed for its next bar time on every step
    (``advance_peek``), takes the minimum and advances the feeds that have it. With
    preloaded arrays that schedule is known before the run: the steps are the sorted union
    of the feeds' bar times and a feed advances on the steps that hold one of its bars. The
    loop below walks that schedule and bumps the line buffers directly; everything else per
    step (broker, notifications, the strategies, writers) is Backtrader's code, in its order.
    Timers, cheat-on-open, other feeds or bar times that are not strictly increasing take
    Backtrader's own loop.
    """

    def _schedule(self, datas: list[Any]) -> tuple[np.ndarray, list[list[Any]]] | None:
        """(step times, per step the line buffers of the feeds that advance), or None when
        the fast loop does not apply."""
        if (self._timers or self._timerscheat or self.p.cheat_on_open
                or not all(isinstance(d, ArrayData) and d._fast for d in datas)):
            return None
        times = []
        for d in datas:
            buf = d._dtbuf
            dt = np.frombuffer(buf.array, dtype=np.float64)[buf._idx + 1:]
            if dt.shape[0] > 1 and not bool(np.all(dt[1:] > dt[:-1])):
                return None
            times.append(dt)
        steps = unique_inverse(np.concatenate(times))[0] if times else np.empty(0)
        # feed k advances on steps searchsorted(steps, its times): a bitmask per step
        # names the feeds; equal masks share one list of buffers (usually every feed).
        masks = np.zeros((steps.shape[0], (len(datas) + 7) // 8), dtype=np.uint8)
        for k, dt in enumerate(times):
            masks[np.searchsorted(steps, dt), k // 8] |= np.uint8(1 << (k % 8))
        groups: dict[bytes, list[Any]] = {}
        advancing = []
        for row in masks:
            key = row.tobytes()
            bufs = groups.get(key)
            if bufs is None:
                bits = np.unpackbits(row, bitorder="little")[: len(datas)]
                bufs = groups[key] = [buf for k in np.flatnonzero(bits).tolist()
                                      for buf in datas[k]._bufs]
            advancing.append(bufs)
        return steps, advancing

    def _runonce(self, runstrats: list[Any]) -> None:
        datas = sorted(self.datas, key=lambda x: (x._timeframe, x._compression))
        plan = self._schedule(datas)  # the feeds are preloaded and homed here
        if plan is None:
            super()._runonce(runstrats)
            return
        for strat in runstrats:
            strat._once()
            strat.reset()
        steps, advancing = plan
        for dt0, bufs in zip(steps.tolist(), advancing, strict=True):
            for buf in bufs:  # ArrayData.advance of each feed with a bar at dt0
                buf._idx += 1
                buf.lencount += 1
            self._brokernotify()
            if self._event_stop:
                return
            for strat in runstrats:
                strat._oncepost(dt0)
                if self._event_stop:
                    return
            self._next_writers(runstrats)
