"""``AlpacaStore``: owns the REST client, both streams, the market clock and the bar steps.

Implements the plumbing around Alpaca's APIs (docs.alpaca.markets/docs/websocket-streaming,
.../real-time-stock-pricing-data, /v2/stocks/bars, /v2/clock): one market-data connection
for all symbols (Alpaca allows one per key), one ``trade_updates`` connection, REST history
for the warm-up and for every gap.

Threads: the streams run on one asyncio loop in one daemon thread (``streams.StreamHub``);
they only put messages on ``self.inbound`` (a ``queue.Queue``). Everything else, REST calls,
the journal, Backtrader, runs on the main thread inside Cerebro's loop: Cerebro calls
``get_notifications()`` once per iteration, before it polls the data feeds; the store then

1. drains the inbound queue (bars to the ``StepAssembler``, trade updates to the broker,
   stream transitions to the reconnect logic),
2. after a data-stream reconnect, backfills the gap from REST (DELAYED), then returns to LIVE,
3. hands at most ONE step (the bars of one bar time) to the feeds, after the broker has
   settled the fills that step implies, so each Strategy ``next()`` sees one bar time, as in
   a backtest,
4. when idle: saves the state file, flushes the Parquet bars, refreshes the market clock.

Time (``now``): the broker's time, never the local time of day. It is the larger of (a) the
last answer of Alpaca's clock advanced by the monotonic seconds since it was read times
``clock_rate`` (1 against Alpaca, whose clock runs in real time; 0 against a loopback
simulator, whose replayed time may run at any speed) and (b) the close of the newest bar seen
on the stream or from REST (a bar that has arrived has closed). The clock is re-read every
``clock_poll_s`` and whenever ``now`` crosses its ``next_open``/``next_close``.

New orders (``market_open``, the Strategy's ``market_open`` param) go out only for a bar that
is FRESH (it closed at most one bar interval + ``fresh_grace_s`` before ``now``: the newest
closed bar, also when it came from a backfill or a ``--once`` fetch) while the market is open
NOW (Alpaca's clock; the calendar's extended session for extended-hours orders). Bars replayed
after a restart or backfilled after an outage still update the indicators and the stop state.

The store is not a Backtrader ``Store`` subclass on purpose: ``bt.Store`` is a metaclass
singleton. Cerebro only needs ``start``, ``stop`` and ``get_notifications``.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from brokers.alpaca.bars import (
    BarRecorder,
    IntervalAggregator,
    LiveIndicators,
    Step,
    StepAssembler,
)
from brokers.alpaca.client import AlpacaClient
from brokers.alpaca.clock import MarketClock
from brokers.alpaca.credentials import Credentials
from brokers.alpaca.parsing import BarRecord
from brokers.alpaca.streams import (
    MarketDataProtocol,
    StreamHub,
    StreamSupervisor,
    TradeUpdatesProtocol,
)
from common.clock import SYSTEM_CLOCK, Clock
from common.config import Settings
from common.errors import BrokerError, DataError, RetryableError
from strategies.signals import Signal

logger = logging.getLogger(__name__)


@dataclass
class LatencyProbe:
    """Bar arrival (stream) -> order request (POST) times, for the benchmark."""

    samples: list[float] = field(default_factory=list)
    _step_arrived: float | None = None
    _step_source: str = ""
    _thread: threading.Thread | None = None

    def step(self, arrived: float, source: str) -> None:
        """A step was handed to the Strategy; ``arrived`` is when it became complete."""
        self._step_arrived, self._step_source = arrived, source
        self._thread = threading.current_thread()

    def order_sent(self, cid: str) -> None:
        """An order request is about to be sent (a stop sent by the helper thread on a fill
        event is not a bar's decision: not counted)."""
        if threading.current_thread() is not self._thread:
            return
        if self._step_arrived and self._step_source == "stream":
            self.samples.append(time.perf_counter() - self._step_arrived)


@dataclass
class StoreStatus:
    """What the dashboard shows about data and streams."""

    last_bar: datetime | None = None
    steps: int = 0
    backfilled: int = 0
    #: stream gaps detected (bars of a symbol skipped without a reconnect)
    gaps: int = 0
    dropped: int = 0
    state: str = "starting"
    streams: list[Any] = field(default_factory=list)
    clock: str = ""


class AlpacaStore:
    """The live side of a paper run (see the module docstring for the threads and loop).

    Args:
        client: the REST client (the only alpaca-py REST user).
        credentials: for the streams' in-band auth.
        settings: symbols, interval, extended hours, strategy id.
        signal: the Strategy's signal (``strategies.signals.make_signal``).
        data_stream_url / trading_stream_url: WebSocket URLs (verbatim).
        warmup_days: REST history to load before the first live bar (calendar days).
        grace: seconds a bar time waits for the symbols that have not sent their bar.
        silence_timeout: data-stream watchdog (seconds without bars while the market is open).
        max_steps: stop after this many steps (``--once``: 1); None = run until stopped.
        on_idle: called when no step is waiting (lockstep replays advance the clock there).
        clock_rate: how fast the broker's clock runs against the local monotonic clock
            (1.0: Alpaca; 0.0: a simulator, time from bar closes and clock reads only).
        fresh_grace_s: a bar may be traded on until one bar interval plus this many seconds
            after its close (broker time).
        audit: where refused new orders (stale bar, market closed) are recorded.
        clock: the local clock (``common.clock``; the streams get it too).
    """

    def __init__(
        self,
        client: AlpacaClient,
        credentials: Credentials,
        settings: Settings,
        signal: Signal,
        data_stream_url: str,
        trading_stream_url: str | None,
        warmup_days: float = 5.0,
        grace: float = 2.0,
        silence_timeout: float | None = None,
        clock_poll_s: float = 30.0,
        poll_s: float = 0.05,
        recorder: BarRecorder | None = None,
        max_steps: int | None = None,
        on_idle: Callable[[], None] | None = None,
        on_step_done: Callable[[], None] | None = None,
        latency: LatencyProbe | None = None,
        max_backfill: timedelta = timedelta(hours=8),
        clock_rate: float = 1.0,
        fresh_grace_s: float = 10.0,
        audit: Any = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.client = client
        #: the local clock (``common.clock``): ages the market clock's answer, timeouts
        self.local_clock = clock
        self.settings = settings
        self.signal = signal
        self.symbols = [s.upper() for s in settings.symbols]
        self.warmup_days = warmup_days
        self.poll_s = poll_s
        self.clock_poll_s = clock_poll_s
        self.recorder = recorder
        #: per symbol, the REST history the indicators were warmed up with (``connect``)
        self.warmup_bars: dict[str, list[BarRecord]] = {}
        self.max_steps = max_steps
        self.on_idle = on_idle
        self.on_step_done = on_step_done
        self.latency = latency or LatencyProbe()
        self.max_backfill = max_backfill
        self.clock_rate = clock_rate
        self.fresh_grace_s = fresh_grace_s
        self.audit = audit
        #: close of the newest bar seen (stream or REST): the broker's time is at least this
        self._newest_close: datetime | None = None
        self._gate_seen: set[tuple[datetime, str]] = set()
        self.clock = MarketClock(client.get_calendar, client.get_clock, settings.bar_seconds,
                                 settings.extended_hours, monotonic=clock.monotonic)
        self.assembler = StepAssembler(self.symbols, grace=grace)
        # the stream sends 1-minute bars only: coarser intervals are built here
        self.aggregator = IntervalAggregator(settings.bar_seconds) \
            if settings.bar_seconds > 60 else None
        self.indicators = {s: LiveIndicators(s, signal, settings.atr_period)
                           for s in self.symbols}
        self.inbound: queue.Queue[tuple[str, Any]] = queue.Queue()
        #: called on the stream thread with each trade update before it is queued
        self.trade_update_hook: Callable[[Any], Any] | None = None
        self.notifs: deque[tuple[str, tuple[Any, ...], dict[str, Any]]] = deque()
        self.status = StoreStatus()
        self.broker: Any = None
        self._feeds: dict[str, Any] = {}
        self._steps: deque[Step] = deque()
        self._needs_backfill = False
        #: per symbol, the newest 1-minute bar time seen on the stream (gap detection)
        self._stream_prev: dict[str, datetime] = {}
        #: bar times already completed from REST (each is asked for once)
        self._completed_at: deque[datetime] = deque(maxlen=256)
        self._stop_requested = False
        self.finished = False
        self._delivered_since_save = False
        self._last_clock = 0.0
        self._last_flush = 0.0
        self.flush_every_s = 2.0
        self._last_wait_log = 0.0
        self._was_open: bool | None = None
        self._save_state: Callable[[], None] | None = None
        self._last_bar_time: dict[str, datetime] = {}
        self._last_close: dict[str, float] = {}
        data_sup = StreamSupervisor(
            data_stream_url,
            MarketDataProtocol(credentials.key_id, credentials.secret_key, self.symbols),
            self._sink, silence_timeout=silence_timeout, watch=lambda: self.clock.is_open,
            clock=clock)
        sups = [data_sup]
        if trading_stream_url:
            sups.append(StreamSupervisor(
                trading_stream_url,
                TradeUpdatesProtocol(credentials.key_id, credentials.secret_key), self._sink,
                clock=clock))
        self.hub = StreamHub(sups)
        self._connected: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"AlpacaStore(symbols={self.symbols}, client={self.client!r})"

    # ================================================================ wiring

    def register(self, feed: Any) -> None:
        """A data feed for one symbol (called by ``AlpacaData``)."""
        self._feeds[feed.p.symbol.upper()] = feed

    def attach_broker(self, broker: Any) -> None:
        """The broker that receives trade updates and settles fills."""
        self.broker = broker
        broker_send = getattr(broker, "gateway", None)
        if broker_send is not None:
            self.client.on_submit = self.latency.order_sent

    def set_state_saver(self, saver: Callable[[], None]) -> None:
        """Called after each step (idle) and at shutdown to write portfolio_state.json."""
        self._save_state = saver

    def feed(self, symbol: str) -> Any:
        """The data feed of ``symbol`` (None if not traded)."""
        return self._feeds.get(symbol.upper())

    def last_close(self, symbol: str) -> float | None:
        """The newest close seen (warm-up included)."""
        return self._last_close.get(symbol.upper())

    def last_bar_time(self, symbol: str) -> datetime | None:
        """Start time of the newest bar seen for ``symbol`` (warm-up included)."""
        return self._last_bar_time.get(symbol.upper())

    def atr(self, symbol: str) -> float | None:
        """The newest ATR value of ``symbol``."""
        ind = self.indicators.get(symbol.upper())
        value = ind._atr if ind is not None else math.nan
        return None if math.isnan(value) else value

    def now(self) -> datetime:
        """The broker's time now (see the module docstring, "Time")."""
        candidates: list[datetime] = []
        last, read_at = self.clock.last, self.clock.read_at
        if last is not None:
            elapsed = 0.0 if read_at is None else max(0.0, self.local_clock.monotonic() - read_at)
            candidates.append(last.timestamp + timedelta(seconds=elapsed * self.clock_rate))
        if self._newest_close is not None:
            candidates.append(self._newest_close)
        if not candidates:  # before the first clock read (connect reads it first)
            return self.local_clock.now()
        return max(candidates)

    def broker_time(self) -> datetime:
        """The broker's notion of now (``now()``; written to the state file)."""
        return self.now()

    def _saw_close(self, bar_start: datetime, seconds: int) -> None:
        close = bar_start + timedelta(seconds=seconds)
        if self._newest_close is None or close > self._newest_close:
            self._newest_close = close

    def session(self, bar_time: datetime) -> str:
        """The Strategy's ``session`` param (``regular``/``extended``/``closed``)."""
        return self.clock.session(bar_time)

    def market_open(self, bar_time: datetime) -> bool:
        """The Strategy's ``market_open`` param: may a NEW order go out now for a decision on
        the bar starting at ``bar_time``? (``order_gate`` says why not.)"""
        ok, reason = self.order_gate(bar_time)
        if not ok:
            self._record_gate(bar_time, reason)
        return ok

    def order_gate(self, bar_time: datetime) -> tuple[bool, str]:
        """(allowed, reason): the bar lies in the session before its last bar (calendar), it
        is fresh (closed at most one interval + ``fresh_grace_s`` before ``now``), and the
        market is open now. Reasons: ``market_closed``, ``stale_bar``."""
        if not self.clock.market_open(bar_time):
            return False, "market_closed"
        secs = self.settings.bar_seconds
        now = self.now()
        age = (now - (bar_time + timedelta(seconds=secs))).total_seconds()
        if age > secs + self.fresh_grace_s:
            return False, "stale_bar"
        if not self.entries_open(extended=self.clock.session(bar_time) == "extended"):
            return False, "market_closed"
        return True, ""

    def entries_open(self, extended: bool = False) -> bool:
        """Is the market open NOW for a new entry? Alpaca's clock (read again only when
        ``now`` crossed its next open/close); for an extended-hours order, the calendar's
        extended session at ``now``. An unreadable clock counts as closed."""
        now = self.now()
        if extended:
            return bool(self.settings.extended_hours) and self.clock.in_session(now)
        is_open = self.clock.open_at(now)
        if is_open is None:
            try:
                self.clock.refresh()
            except (RetryableError, BrokerError) as exc:
                logger.warning("market clock unavailable (%s): no new entries", exc)
                return False
            self._last_clock = self.local_clock.monotonic()
            is_open = self.clock.open_at(self.now())
            if is_open is None:  # our bar-based now ran past the clock's answer: trust it
                is_open = self.clock.is_open
        return bool(is_open)

    def _record_gate(self, bar_time: datetime, reason: str) -> None:
        key = (bar_time, reason)
        if key in self._gate_seen:
            return  # once per bar time (several symbols may ask)
        self._gate_seen.add(key)
        if len(self._gate_seen) > 4096:
            self._gate_seen.clear()
        now = self.now()
        close = bar_time + timedelta(seconds=self.settings.bar_seconds)
        logger.info("no new orders on the bar of %s: %s (bar closed %s, broker time %s, %s)",
                    bar_time.isoformat(), reason, close.isoformat(), now.isoformat(),
                    self.clock.describe_wait())
        if self.audit is not None:
            self.audit.record(bar_time, "gate", "", "no_new_orders", reason,
                              bar_close=close.isoformat(), broker_time=now.isoformat())

    def request_stop(self) -> None:
        """Finish the current step, then end the run (signal handlers call this)."""
        self._stop_requested = True

    # ================================================================ startup

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

    # ================================================================ Cerebro store protocol

    def start(self, data: Any = None, broker: Any = None) -> None:
        """Cerebro calls this at run start (the real start is ``connect``)."""

    def stop(self) -> None:
        """Stop the streams, flush bars, save the state."""
        self.hub.stop()
        self._housekeeping(force=True)

    def put_notification(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """Queue a store notification for the Strategy's ``notify_store``."""
        self.notifs.append((msg, args, kwargs))

    def get_notifications(self) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
        """Cerebro's once-per-iteration hook: pump, then hand out at most one step."""
        self._cycle()
        out = list(self.notifs)
        self.notifs.clear()
        return out

    # ================================================================ the loop

    def _cycle(self) -> None:
        if self.finished:
            return
        if self._delivered_since_save:
            self._delivered_since_save = False
            self.pump_events(0.0)  # a fill that came during the step: its stop first
            if self._save_state is not None:
                self._save_state()
            if self.on_step_done is not None:
                self.on_step_done()
        if self._stop_requested or (self.max_steps is not None
                                    and self.status.steps >= self.max_steps):
            self._finish()
            return
        self.pump_events(0.0)
        self._maintain()
        if not self._steps:
            self._steps.extend(self._release())
        if not self._steps:
            self._housekeeping()
            if self.on_idle is not None:
                self.on_idle()
            self.pump_events(self.poll_s)
            self._maintain()  # a reconnect seen just now must backfill before any release
            self._steps.extend(self._release())
            if self._stop_requested:
                return  # stopped while idle: no new step; the next pass finishes the run
        if self._steps:
            self._deliver(self._steps.popleft())

    def _finish(self) -> None:
        self.finished = True
        for feed in self._feeds.values():
            feed.finish()

    def pump_events(self, timeout: float) -> int:
        """Move inbound stream messages to their owners; wait up to ``timeout`` for one."""
        n = 0
        try:
            item = self.inbound.get(timeout=timeout) if timeout > 0 else \
                self.inbound.get_nowait()
        except queue.Empty:
            return 0
        while True:
            self._route(*item)
            n += 1
            try:
                item = self.inbound.get_nowait()
            except queue.Empty:
                return n

    def _sink(self, kind: str, payload: Any) -> None:
        # called on the stream thread: hand over only (an entry fill's stop first: the
        # broker's helper thread places it without waiting for the main loop)
        if kind == "trade_update" and self.trade_update_hook is not None:
            try:
                self.trade_update_hook(payload)
            except Exception:  # the main loop still protects it
                logger.exception("trade update hook failed")
        self.inbound.put((kind, payload))

    def _route(self, kind: str, payload: Any) -> None:
        if kind == "bar":
            self._on_bar(*payload)
        elif kind == "trade_update":
            if self.broker is not None and hasattr(self.broker, "on_trade_update"):
                self.broker.on_trade_update(payload)
        elif kind == "connected":
            self._on_connected(*payload)
        elif kind == "disconnected":
            name, reason = payload
            if name == MarketDataProtocol.name:
                self.status.state = "disconnected"
                for feed in self._feeds.values():
                    feed.put_notification(feed.CONNBROKEN)
            self.put_notification("disconnected", name, reason)
        elif kind == "parse_error":
            name, text = payload
            logger.error("%s stream: %s", name, text)
            if name == TradeUpdatesProtocol.name:
                self._reconcile("unreadable trade update")

    def _on_bar(self, bar: BarRecord, arrived: float) -> None:
        self._saw_close(bar.ts, 60)  # the stream sends closed 1-minute bars
        if not self._keep(bar):
            return
        self._check_gap(bar)
        bars = [bar] if self.aggregator is None else self.aggregator.add(bar)
        for b in bars:
            if not self.assembler.add(b, arrived):
                self.status.dropped += 1
        if self.aggregator is not None and self.aggregator.backfill_due(bar.ts):
            self._needs_backfill = True  # the bucket cut by a reconnect is complete at REST

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

    def _on_connected(self, name: str, reconnect: bool) -> None:
        self._connected[name] = self._connected.get(name, 0) + 1
        if not reconnect:
            return
        logger.warning("%s stream reconnected", name)
        if name == MarketDataProtocol.name:
            self._needs_backfill = True
            if self.aggregator is not None:
                self.aggregator.reset()  # partial buckets come whole from REST
        self._reconcile(f"{name} reconnect")

    def _reconcile(self, reason: str) -> None:
        if self.broker is not None and hasattr(self.broker, "request_reconcile"):
            self.broker.request_reconcile(reason)

    def _maintain(self) -> None:
        now = self.local_clock.monotonic()
        if now - self._last_clock >= self.clock_poll_s:
            self._last_clock = now
            try:
                self.clock.refresh()
            except (RetryableError, BrokerError) as exc:
                logger.warning("market clock unavailable: %s", exc)
            self.status.clock = self.clock.describe_wait()
            is_open = self.clock.is_open
            if is_open != self._was_open or (not is_open and now - self._last_wait_log > 600):
                logger.info("%s", self.status.clock)
                self._last_wait_log = now
            self._was_open = is_open
        if self._needs_backfill:
            self._backfill()

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

    def _deliver(self, step: Step) -> None:
        if self.broker is not None and hasattr(self.broker, "settle"):
            self.broker.settle(step.bars)
        self.latency.step(step.arrived, step.source)
        for sym, bar in step.bars.items():
            signal, atr = self.indicators[sym].update(bar)
            self._last_bar_time[sym] = bar.ts
            self._last_close[sym] = bar.close
            feed = self._feeds.get(sym)
            if feed is not None:
                feed.deliver(bar, signal, atr, step.source)
            if self.recorder is not None:
                self.recorder.add(bar)
        self.status.steps += 1
        self.status.last_bar = step.ts
        self.status.state = "delayed" if step.source == "backfill" else "live"
        self._delivered_since_save = True

    def _housekeeping(self, force: bool = False) -> None:
        now = self.local_clock.monotonic()
        if not force and now - self._last_flush < self.flush_every_s:
            return
        self._last_flush = now
        if self.recorder is not None:
            try:
                self.recorder.flush()
            except Exception as exc:  # bars can be re-downloaded; never stop trading for it
                logger.error("could not write live bars: %s", exc)
        if force and self._save_state is not None:
            self._save_state()

    def stream_statuses(self) -> list[Any]:
        """Status of both streams (dashboard)."""
        return self.hub.statuses()
