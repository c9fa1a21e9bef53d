"""``AlpacaStore``: owns the REST client, both streams, the market clock and the bar steps.

Implements the plumbing around Alpaca's APIs (docs.alpaca.markets/docs/websocket-streaming,
.../real-time-stock-pricing-data, /v2/stocks/bars, /v2/clock): one market-data connection
for all symbols (Alpaca allows one per key), one ``trade_updates`` connection, REST history
for the warm-up and for every gap.

Threads: the streams run on one asyncio loop in one daemon thread (``streams.StreamHub``);
they only put messages on ``self.inbound`` (a ``queue.Queue``). The broker's helper threads
send orders and fill-time stops (venue I/O and the journal only). Everything else runs on the
main thread in Cerebro's loop, which calls ``get_notifications()`` once per iteration:

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

Parts: ``history.StoreHistory`` (warm-up, backfill, gaps from REST) and ``gate.BrokerTime``
(the broker's time and the order gate) are mixins of ``AlpacaStore``; the local clock is
injected (``ratchet.common.clock``).

Not a Backtrader ``Store`` subclass on purpose (``bt.Store`` is a metaclass singleton).
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
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from analyzers.audit import Audit
from brokers.alpaca.bars import BarRecorder, IntervalAggregator, LiveIndicators, Step, StepAssembler
from brokers.alpaca.client import AlpacaClient
from brokers.alpaca.clock import MarketClock
from brokers.alpaca.credentials import Credentials
from brokers.alpaca.gate import BrokerTime
from brokers.alpaca.history import StoreHistory
from brokers.alpaca.parsing import BarRecord
from brokers.alpaca.sender import SENDER_THREAD_PREFIX
from brokers.alpaca.streams import (
    MarketDataProtocol,
    StreamHub,
    StreamStatus,
    StreamSupervisor,
    TradeUpdatesProtocol,
)
from brokers.alpaca.watch import OrderWatch
from ratchet.common.clock import SYSTEM_CLOCK, Clock
from ratchet.common.config import Settings
from ratchet.common.errors import BrokerError, RetryableError
from strategies.signals import Signal

if TYPE_CHECKING:
    from brokers.alpaca.data import AlpacaData

logger = logging.getLogger(__name__)

#: the longest the writes after a step wait for that step's fills (``_step_fills_settled``)
POST_STEP_HOLD_S = 0.1


@dataclass
class LatencyProbe:
    """Bar arrival (stream) -> order request (POST) times, for the benchmark."""

    samples: list[float] = field(default_factory=list)
    #: the client order id of each sample (benchmarks name the slowest orders)
    cids: list[str] = field(default_factory=list)
    _step_arrived: float | None = None
    _step_source: str = ""
    _thread: threading.Thread | None = None

    def step(self, arrived: float, source: str) -> None:
        """A step was handed to the Strategy; ``arrived`` is when it became complete."""
        self._step_arrived, self._step_source = arrived, source
        self._thread = threading.current_thread()

    def order_sent(self, cid: str) -> None:
        """An order request is about to be sent, by the step's thread or by the order
        sender's workers (``sender.py``: every job of a step is taken before the next step
        is delivered). A stop sent by the helper thread on a fill event is not a bar's
        decision: not counted."""
        thread = threading.current_thread()
        if thread is not self._thread and not thread.name.startswith(SENDER_THREAD_PREFIX):
            return
        if self._step_arrived and self._step_source == "stream":
            self.samples.append(time.perf_counter() - self._step_arrived)
            self.cids.append(cid)


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
    streams: list[StreamStatus] = field(default_factory=list)
    clock: str = ""


class AlpacaStore(StoreHistory, BrokerTime):
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
        clock: the local clock (``ratchet.common.clock``; the streams get it too).
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
        audit: Audit | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.client = client
        #: the local clock (``ratchet.common.clock``): ages the market clock's answer, timeouts
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
        self.assembler = StepAssembler(self.symbols, grace=grace, clock=clock.monotonic)
        # the stream sends 1-minute bars only: coarser intervals are built here
        self.aggregator = IntervalAggregator(settings.bar_seconds) \
            if settings.bar_seconds > 60 else None
        self.indicators = {s: LiveIndicators(s, signal, settings.atr_period)
                           for s in self.symbols}
        self.inbound: queue.Queue[tuple[str, Any]] = queue.Queue()
        #: called on the stream thread with each trade update before it is queued
        self.trade_update_hook: Callable[[Any], Any] | None = None
        #: set by the broker: an order of the last step may be filling right now
        self.fills_in_flight: Callable[[], bool] | None = None
        self.collect_sends: Callable[[], None] | None = None  # the broker's (sender.py)
        #: orders whose end the main thread waits for (a cancel's confirmation)
        self.order_watch = OrderWatch()
        self.notifs: deque[tuple[str, tuple[Any, ...], dict[str, Any]]] = deque()
        self.status = StoreStatus()
        self.broker: Any = None
        self._feeds: dict[str, AlpacaData] = {}
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
        self._last_delivered = 0.0  # monotonic time of the last step handed out
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

    def register(self, feed: AlpacaData) -> None:
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

    def feed(self, symbol: str) -> AlpacaData | None:
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

    def request_stop(self) -> None:
        """Finish the current step, then end the run (signal handlers call this)."""
        self._stop_requested = True

    # ================================================================ startup

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
        if self.collect_sends is not None:  # before a lockstep replay may move the clock
            self.collect_sends()
        if self._delivered_since_save and not self._step_fills_settled():
            self.pump_events(0.0)  # the writes below wait (bounded) for the step's fills
        elif self._delivered_since_save:
            self._delivered_since_save = False
            self.pump_events(0.0)  # a fill that came during the step: its stop first
            if self._save_state is not None:
                self._save_state()
            if self.on_step_done is not None:
                self.on_step_done()
            # bars recorded right after a step, when the next bar is furthest away (from the
            # idle loop a bar could wait for the Parquet rewrite: issue 11)
            self._housekeeping()
        if self._stop_requested or (self.max_steps is not None
                                    and self.status.steps >= self.max_steps):
            self._finish()
            return
        self.pump_events(0.0)
        self._maintain()
        if not self._steps:
            self._steps.extend(self._release())
        if not self._steps:
            if self.local_clock.monotonic() - self._last_delivered > 5 * self.flush_every_s:
                self._housekeeping()  # no step for a while (e.g. the close): bars left over
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
        if kind == "trade_update":
            self.order_watch.seen(payload)  # after the put: the update is in the queue

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
        self._last_delivered = self.local_clock.monotonic()

    def _step_fills_settled(self) -> bool:
        """The writes after a step (state file, bar recording: long GIL-holding JSON,
        pandas and Parquet calls) wait while an order the step sent may be filling, at most
        ``POST_STEP_HOLD_S`` from the step's delivery: at 60x such a fill arrived during
        them and its stop (server, stream and helper threads) waited for the GIL (issue 17).
        ``fills_in_flight``: the broker's predicate (None: nothing waits)."""
        busy = self.fills_in_flight
        if busy is None or self.local_clock.monotonic() - self._last_delivered \
                >= POST_STEP_HOLD_S:
            return True
        return not busy()

    def _housekeeping(self, force: bool = False) -> None:
        now = self.local_clock.monotonic()
        if not force and now - self._last_flush < self.flush_every_s:
            return
        self._last_flush = now
        if self.recorder is not None:
            try:
                self.recorder.flush()
            except Exception as exc:  # noqa: BLE001 - bars can be re-downloaded; never stop trading for it
                logger.error("could not write live bars: %s", exc)
        if force and self._save_state is not None:
            self._save_state()

    def stream_statuses(self) -> list[StreamStatus]:
        """Status of both streams (dashboard)."""
        return self.hub.statuses()
