"""The store's history from REST: warm-up at ``connect``, backfill after a reconnect,
gaps on the stream, steps completed for symbols whose stream bar was lost.

A part of ``store.AlpacaStore`` (a mixin; the store owns the state it reads).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from brokers.alpaca.bars import BarRecorder, IntervalAggregator, LiveIndicators, Step, StepAssembler
from brokers.alpaca.client import AlpacaClient
from brokers.alpaca.clock import MarketClock
from brokers.alpaca.parsing import BarRecord
from brokers.alpaca.streams import StreamHub
from ratchet.common.clock import Clock
from ratchet.common.config import Settings
from ratchet.common.errors import BrokerError, DataError, RetryableError

logger = logging.getLogger(__name__)


class StoreHistory:
    """Warm-up, backfill and gap completion from REST."""

    client: AlpacaClient
    settings: Settings
    symbols: list[str]
    clock: MarketClock
    local_clock: Clock
    hub: StreamHub
    assembler: StepAssembler
    aggregator: IntervalAggregator | None
    indicators: dict[str, LiveIndicators]
    recorder: BarRecorder | None
    status: Any
    warmup_days: float
    warmup_bars: dict[str, list[BarRecord]]
    max_steps: int | None
    max_backfill: timedelta
    _feeds: dict[str, Any]
    _steps: deque[Step]
    _stream_prev: dict[str, datetime]
    _completed_at: deque[datetime]
    _connected: dict[str, int]
    _needs_backfill: bool
    _last_clock: float
    _last_bar_time: dict[str, datetime]
    _last_close: dict[str, float]

    if TYPE_CHECKING:  # the other parts of AlpacaStore
        def pump_events(self, timeout: float) -> int: ...
        def _saw_close(self, bar_start: datetime, seconds: int) -> None: ...

    def connect(self, last_delivered: dict[str, datetime] | None = None) -> None:
        """Clock, warm-up history and streams, before Cerebro runs.

        ``last_delivered``: per symbol, the last bar the Strategy processed in an earlier run
        (from the state file); newer bars are replayed as a backfill (DELAYED), older ones
        only warm up the indicators.
        """
        self.clock.refresh()
        self._last_clock = self.local_clock.monotonic()
        logger.info("%s", self.clock.describe_wait())
        self.hub.start()
        now = self.clock.last.timestamp if self.clock.last else self.local_clock.now()
        start = now - timedelta(days=self.warmup_days)
        end = self._complete_before(now)
        history = self.client.get_bars(self.symbols, start, end, self.settings.bar_interval)
        empty = [s for s in self.symbols
                 if not any(b.ts <= end and self._keep(b) for b in history.get(s, []))]
        if empty:
            # A typo (APPL) or a delisted symbol would otherwise sit in warm-up all day.
            raise DataError(
                f"no bars for {', '.join(empty)} from Alpaca ({self.client.data_url}) in the "
                f"{self.warmup_days:g} days before {end:%Y-%m-%d %H:%M} UTC: check the "
                f"symbol{'s' if len(empty) > 1 else ''} (or give more --warmup-days)")
        last_delivered = last_delivered or {}
        if self.recorder is not None:
            self.recorder.clean_partials()
        completed = 0
        for sym in self.symbols:
            bars = [b for b in history.get(sym, []) if b.ts <= end and self._keep(b)]
            since = self.recorder.recorded_since(sym) if self.recorder is not None else None
            if since is not None:  # bars a killed run never wrote, and those it missed
                completed += self.recorder.complete(bars, since)  # type: ignore[union-attr]
            cut = seen = last_delivered.get(sym)
            if cut is not None and now - cut > self.max_backfill:
                cut = None  # too old to act on: warm up only
            warm = [b for b in bars if cut is None or b.ts <= cut]
            replay = [b for b in bars if cut is not None and b.ts > cut]
            if self.max_steps == 1:  # --once: decide on the latest closed bar, if it is new
                fresh = bool(bars) and (seen is None or bars[-1].ts > seen)
                replay, warm = (bars[-1:], bars[:-1]) if fresh else ([], bars)
            if bars:
                self._saw_close(bars[-1].ts, self.settings.bar_seconds)
            self.indicators[sym].warm(warm)
            self.warmup_bars[sym] = warm  # the run folder keeps them (cli.py parity)
            if warm:
                self._last_bar_time[sym] = warm[-1].ts
                self._last_close[sym] = warm[-1].close
            self.assembler.seed(sym, warm[-1].ts if warm else cut)
            for bar in replay:
                self.assembler.add(bar, time.perf_counter(), source="backfill")
            logger.info("%s: %d warm-up bars%s", sym, len(warm),
                        f", {len(replay)} to replay" if replay else "")
        if completed:
            logger.warning("recorded bars completed from REST after the restart: %d bar(s)",
                           completed)
            self.recorder.flush()  # type: ignore[union-attr]
        self._steps.extend(self.assembler.release(upto=end))
        self.status.state = "delayed" if self._steps else "live"
        if self.max_steps == 1 and not self._steps:
            logger.info("--once: no new closed bar since the last run; nothing to decide")
            self.max_steps = 0

    def wait_connected(self, timeout: float = 15.0) -> bool:
        """Wait until every stream has connected once (False on timeout)."""
        deadline = self.local_clock.monotonic() + timeout
        wanted = {s.protocol.name for s in self.hub.supervisors}
        while self.local_clock.monotonic() < deadline:
            self.pump_events(0.05)
            if wanted <= set(self._connected):
                return True
        return False

    def _complete_before(self, now: datetime) -> datetime:
        # only bars that have closed: start + interval <= now
        secs = self.settings.bar_seconds
        floor = datetime.fromtimestamp(int(now.timestamp()) // secs * secs, UTC)
        return floor - timedelta(microseconds=1)

    def _keep(self, bar: BarRecord) -> bool:
        if self.settings.bar_interval == "1Day":
            return True
        return self.clock.in_session(bar.ts)

    def _check_gap(self, bar: BarRecord) -> None:
        """A stream bar that skips session minutes of its symbol (a short silence, shorter
        than the watchdog, or dropped frames) triggers a REST backfill at once: without a
        reconnect those bars would be lost for good (issue 11)."""
        sym = bar.symbol
        prev = self._stream_prev.get(sym) or self.assembler.last_ts.get(sym)
        if prev is None or bar.ts <= prev:
            self._stream_prev[sym] = max(bar.ts, prev) if prev else bar.ts
            return
        self._stream_prev[sym] = bar.ts
        t, steps = prev + timedelta(minutes=1), 0
        while t < bar.ts and steps < 1440:
            if self.clock.in_session(t):
                # info: a thin symbol may simply not have traded (REST then has nothing)
                logger.info("%s: stream bar %s follows %s: asking REST for the bars between",
                            sym, bar.ts.isoformat(), prev.isoformat())
                self.status.gaps += 1
                self._needs_backfill = True
                if self.aggregator is not None:
                    self.aggregator.reset()  # its bucket lost minutes: REST has it whole
                return
            t += timedelta(minutes=1)
            steps += 1

    def _release(self) -> list[Step]:
        """``assembler.release()``, after asking REST for the bars of symbols a step would
        otherwise close without (their stream bar was lost): one request per bar time."""
        missing = self.assembler.incomplete_due()
        todo = [(ts, syms) for ts, syms in missing if ts not in self._completed_at]
        if todo:
            for ts, _ in todo:
                self._completed_at.append(ts)
            start = min(ts for ts, _ in todo)
            end = max(ts for ts, _ in todo) + timedelta(seconds=self.settings.bar_seconds - 1)
            wanted = sorted({s for _, syms in todo for s in syms})
            try:
                history = self.client.get_bars(wanted, start, end, self.settings.bar_interval)
            except (RetryableError, BrokerError) as exc:
                logger.warning("could not complete step(s) from REST: %s", exc)
                history = {}
            added = 0
            for bars in history.values():
                for bar in bars:
                    if self._keep(bar) and any(bar.ts == ts for ts, _ in todo) \
                            and self.assembler.add(bar, time.perf_counter(), "backfill"):
                        added += 1
            if added:
                logger.warning("completed %d bar(s) of %s from REST (missed on the stream)",
                               added, ",".join(wanted))
                self.status.backfilled += added
        return self.assembler.release()

    def _backfill(self) -> None:
        """Fetch (last delivered, now] from REST after a data-stream reconnect."""
        try:
            clock = self.clock.refresh()
        except (RetryableError, BrokerError) as exc:
            logger.warning("backfill postponed: clock unavailable (%s)", exc)
            return
        self._needs_backfill = False
        known = [t for t in self.assembler.last_ts.values() if t is not None]
        if not known:
            return
        start = min(known) + timedelta(seconds=1)
        end = self._complete_before(clock.timestamp)
        if end <= start:
            return
        for feed in self._feeds.values():
            feed.put_notification(feed.DELAYED)
        self.status.state = "backfilling"
        try:
            history = self.client.get_bars(self.symbols, start, end, self.settings.bar_interval)
        except (RetryableError, BrokerError) as exc:
            logger.error("backfill failed (%s); retrying", exc)
            self._needs_backfill = True
            return
        added = 0
        for bars in history.values():
            if bars:
                self._saw_close(bars[-1].ts, self.settings.bar_seconds)
            for bar in bars:
                if self._keep(bar) and self.assembler.add(bar, time.perf_counter(), "backfill"):
                    added += 1
        self.status.backfilled += added
        logger.log(logging.WARNING if added else logging.INFO, "backfilled %d bars for %s .. %s",
                   added, start.isoformat(), end.isoformat())
        self._steps.extend(self.assembler.release(upto=end))
