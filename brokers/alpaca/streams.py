"""Supervised Alpaca WebSocket streams: market-data bars and ``trade_updates``.

Implements the two stream protocols of Alpaca's docs:

* Market data, "Real-time stock pricing data" (docs.alpaca.markets/docs/real-time-stock-
  pricing-data): ``wss://stream.data.alpaca.markets/v2/{iex,sip}``, MessagePack frames,
  ``connected`` -> ``auth`` -> ``subscribe {bars}``; one connection per key, so every symbol
  shares it.
* Trading stream, "WebSocket streaming" (docs.alpaca.markets/docs/websocket-streaming):
  ``wss://{paper-}api.alpaca.markets/stream``, JSON, ``authenticate`` -> ``listen
  trade_updates``.

Why we drive the sockets ourselves instead of running alpaca-py's ``StockDataStream`` /
``TradingStream`` in threads: the SDK reconnects inside ``_run_forever`` without telling the
caller, so nobody can backfill the bars or reconcile the orders missed meanwhile; its
reconnect loop cannot be observed, and stopping it races with its own loop. Here each
stream is one ``StreamSupervisor`` task that owns the whole life cycle and reports every
transition (``connected`` with ``reconnect=True``, ``disconnected``) to a sink, reconnects with
exponential backoff and full jitter (0.5 s -> 60 s), and runs a silence watchdog: a data
stream that is connected but delivers no bar for ``silence_timeout`` seconds while the
market is open is closed and reconnected. The payloads are still parsed with alpaca-py's own
models (``TradeUpdate``), so the wire contract stays the SDK's. Both supervisors run on ONE
asyncio loop in ONE daemon thread (``StreamHub``); the sink must be thread-safe (the store
uses a ``queue.Queue``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import msgpack
from alpaca.trading.models import TradeUpdate
from websockets.asyncio.client import ClientConnection, connect

from brokers.alpaca.parsing import BarRecord, bar_from_stream, trade_update_from_model
from brokers.alpaca.throttle import Backoff
from ratchet.common.clock import SYSTEM_CLOCK, Clock

logger = logging.getLogger(__name__)


class StreamState(StrEnum):
    """Life cycle of one supervised stream."""

    IDLE = "idle"
    CONNECTING = "connecting"
    LIVE = "live"
    BACKOFF = "backoff"
    STOPPED = "stopped"


class StreamAuthError(Exception):
    """The server refused our keys or subscription (reported, then retried with backoff)."""


@dataclass
class StreamStatus:
    """What the dashboard and the logs show about a stream."""

    name: str
    url: str
    state: StreamState = StreamState.IDLE
    connects: int = 0
    messages: int = 0
    last_message_wall: float | None = None
    last_error: str = ""
    silent_reconnects: int = 0


#: sink(kind, payload): kinds are "bar" (BarRecord, arrival perf_counter), "trade_update"
#: (TradeUpdateRecord), "connected" (name, reconnect: bool), "disconnected" (name, reason),
#: "parse_error" (name, text)
Sink = Callable[[str, Any], None]


class StreamProtocol:
    """The protocol-specific half of a stream: handshake and decoding."""

    name = "stream"
    #: HTTP headers of the WebSocket handshake
    headers: dict[str, str] = {}

    async def handshake(self, ws: ClientConnection) -> None:
        """Authenticate and subscribe on a fresh connection (raise on refusal)."""
        raise NotImplementedError

    def decode(self, frame: bytes | str, arrived: float, sink: Sink) -> int:
        """Deliver the messages in one frame to ``sink``; return how many were data."""
        raise NotImplementedError


class MarketDataProtocol(StreamProtocol):
    """Minute bars for a set of symbols over one MessagePack connection."""

    name = "market data"
    # alpaca-py's header: without it the server answers in JSON text frames
    headers = {"Content-Type": "application/msgpack"}

    def __init__(self, key_id: str, secret_key: str, symbols: list[str]) -> None:
        self._key, self._secret = key_id, secret_key
        self.symbols = sorted({s.upper() for s in symbols})

    def __repr__(self) -> str:
        return f"MarketDataProtocol(symbols={self.symbols})"

    async def _recv_control(self, ws: ClientConnection) -> dict[str, Any]:
        frame = await ws.recv()
        msgs = json.loads(frame) if isinstance(frame, str) else msgpack.unpackb(frame)
        if not isinstance(msgs, list) or not msgs or not isinstance(msgs[0], dict):
            raise StreamAuthError(f"unexpected control frame: {str(msgs)[:80]}")
        return msgs[0]

    async def handshake(self, ws: ClientConnection) -> None:
        first = await self._recv_control(ws)
        if first.get("T") != "success" or first.get("msg") != "connected":
            raise StreamAuthError(f"no 'connected' message: {first.get('msg')}")
        await ws.send(msgpack.packb({"action": "auth", "key": self._key,
                                     "secret": self._secret}))
        auth = await self._recv_control(ws)
        if auth.get("T") == "error":
            raise StreamAuthError(f"auth refused: {auth.get('code')} {auth.get('msg')}")
        if auth.get("T") != "success" or auth.get("msg") != "authenticated":
            raise StreamAuthError(f"not authenticated: {auth.get('msg')}")
        await ws.send(msgpack.packb({"action": "subscribe", "bars": self.symbols}))
        ack = await self._recv_control(ws)
        if ack.get("T") == "error":
            raise StreamAuthError(f"subscribe refused: {ack.get('code')} {ack.get('msg')}")
        if ack.get("T") == "subscription":
            missing = set(self.symbols) - set(ack.get("bars") or [])
            if missing and "*" not in (ack.get("bars") or []):
                raise StreamAuthError(f"subscription lacks {sorted(missing)}")

    def decode(self, frame: bytes | str, arrived: float, sink: Sink) -> int:
        msgs = json.loads(frame) if isinstance(frame, str) else msgpack.unpackb(frame,
                                                                                  timestamp=3)
        if isinstance(msgs, dict):
            msgs = [msgs]
        data = 0
        for msg in msgs:
            kind = msg.get("T") if isinstance(msg, dict) else None
            if kind == "b":
                try:
                    bar = bar_from_stream(msg)
                except (KeyError, TypeError, ValueError) as exc:
                    sink("parse_error", (self.name, f"bad bar: {exc}"))
                    continue
                sink("bar", (bar, arrived))
                data += 1
            elif kind == "error":
                logger.error("market data stream error %s: %s", msg.get("code"), msg.get("msg"))
            # subscription acks, trades, quotes...: not ours
        return data


class TradeUpdatesProtocol(StreamProtocol):
    """The account's ``trade_updates`` (order events) over one JSON connection."""

    name = "trade updates"

    def __init__(self, key_id: str, secret_key: str) -> None:
        self._key, self._secret = key_id, secret_key

    def __repr__(self) -> str:
        return "TradeUpdatesProtocol()"

    async def handshake(self, ws: ClientConnection) -> None:
        await ws.send(json.dumps({"action": "authenticate",
                                  "data": {"key_id": self._key, "secret_key": self._secret}}))
        reply = json.loads(await ws.recv())
        if (reply.get("data") or {}).get("status") != "authorized":
            raise StreamAuthError("trading stream refused the keys")
        await ws.send(json.dumps({"action": "listen", "data": {"streams": ["trade_updates"]}}))
        listening = json.loads(await ws.recv())
        streams = (listening.get("data") or {}).get("streams") or []
        if listening.get("stream") != "listening" or "trade_updates" not in streams:
            raise StreamAuthError(f"not listening to trade_updates: {str(listening)[:80]}")

    def decode(self, frame: bytes | str, arrived: float, sink: Sink) -> int:
        msg = json.loads(frame)
        if msg.get("stream") != "trade_updates":
            return 0
        try:
            update = trade_update_from_model(TradeUpdate(**msg.get("data", {})))
        except Exception as exc:  # noqa: BLE001 - one bad event must not stop the stream (alpaca-py #210)
            sink("parse_error", (self.name, f"bad trade update: {type(exc).__name__}"))
            return 0
        sink("trade_update", dataclasses.replace(update, arrived=arrived))
        return 1


class StreamSupervisor:
    """Keeps one stream connected: backoff with jitter, silence watchdog, reports.

    Args:
        url: the WebSocket URL (verbatim, as alpaca-py's ``url_override``).
        protocol: handshake + decoding.
        sink: thread-safe callback for messages and transitions.
        silence_timeout: seconds without data (while ``watch()`` is true) before a forced
            reconnect; None disables the watchdog (the trading stream is legitimately quiet).
        watch: whether silence matters now (market open).
        clock: measures the silence and the stable connection (``ratchet.common.clock``).
    """

    def __init__(
        self,
        url: str,
        protocol: StreamProtocol,
        sink: Sink,
        backoff: Backoff | None = None,
        silence_timeout: float | None = None,
        watch: Callable[[], bool] = lambda: True,
        open_timeout: float = 10.0,
        stable_after: float = 30.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.url = url
        self.protocol = protocol
        self.sink = sink
        self.backoff = backoff or Backoff(base=0.5, cap=60.0)
        self.silence_timeout = silence_timeout
        self.watch = watch
        self.open_timeout = open_timeout
        self.stable_after = stable_after
        self.clock = clock
        self.status = StreamStatus(protocol.name, url)
        self._kick: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def force_reconnect(self) -> None:
        """Close the current connection and reconnect (thread-safe)."""
        if self._loop is not None and self._kick is not None:
            self._loop.call_soon_threadsafe(self._kick.set)

    async def run(self, stopping: asyncio.Event) -> None:
        """Connect, receive, reconnect until ``stopping`` is set."""
        self._loop = asyncio.get_running_loop()
        self._kick = asyncio.Event()
        while not stopping.is_set():
            self.status.state = StreamState.CONNECTING
            reason = await self._session(stopping)
            if stopping.is_set():
                break
            self.status.last_error = reason
            self.sink("disconnected", (self.protocol.name, reason))
            delay = self.backoff.next_delay()
            self.status.state = StreamState.BACKOFF
            logger.warning("%s stream down (%s); reconnecting in %.1fs", self.protocol.name,
                           reason, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=delay)
        self.status.state = StreamState.STOPPED

    async def _session(self, stopping: asyncio.Event) -> str:
        assert self._kick is not None  # noqa: S101 - narrows the type: set in start()
        self._kick.clear()
        try:
            async with connect(self.url, open_timeout=self.open_timeout, ping_interval=10,
                               ping_timeout=20, close_timeout=2, max_size=None,
                               proxy=None, compression=None,
                               additional_headers=self.protocol.headers) as ws:
                await asyncio.wait_for(self.protocol.handshake(ws), timeout=self.open_timeout)
                self.status.connects += 1
                self.status.state = StreamState.LIVE
                reconnect = self.status.connects > 1
                logger.info("%s stream %s (%s)", self.protocol.name,
                            "reconnected" if reconnect else "connected", self.url)
                self.sink("connected", (self.protocol.name, reconnect))
                return await self._receive(ws, stopping)
        except asyncio.CancelledError:
            raise
        except StreamAuthError as exc:
            return f"refused: {exc}"
        except Exception as exc:  # noqa: BLE001 - any failure ends this session; the loop reconnects
            return f"{type(exc).__name__}: {str(exc)[:120]}"

    async def _receive(self, ws: ClientConnection, stopping: asyncio.Event) -> str:
        assert self._kick is not None  # noqa: S101 - narrows the type: set in start()
        connected_at = self.clock.monotonic()
        last_data = connected_at
        tick = 1.0 if self.silence_timeout is None else max(0.05, min(1.0,
                                                                      self.silence_timeout / 4))
        while not stopping.is_set():
            if self._kick.is_set():
                return "reconnect requested"
            now = self.clock.monotonic()
            if self.backoff.attempt and now - connected_at > self.stable_after:
                self.backoff.reset()
            if (self.silence_timeout is not None and now - last_data > self.silence_timeout
                    and self.watch()):
                self.status.silent_reconnects += 1
                return f"silent for {now - last_data:.1f}s while the market is open"
            try:
                frame = await asyncio.wait_for(ws.recv(), timeout=tick)
            except TimeoutError:
                continue
            arrived = time.perf_counter()
            try:
                n = self.protocol.decode(frame, arrived, self.sink)
            except Exception as exc:  # noqa: BLE001 - a garbled frame: report, keep reading
                self.sink("parse_error", (self.protocol.name, f"{type(exc).__name__}"))
                continue
            self.status.messages += 1
            self.status.last_message_wall = self.clock.now().timestamp()
            if n:
                last_data = self.clock.monotonic()
                if self.backoff.attempt:
                    self.backoff.reset()
        return "stopped"


class StreamHub:
    """Runs supervisors on one asyncio loop in one daemon thread."""

    def __init__(self, supervisors: list[StreamSupervisor]) -> None:
        self.supervisors = supervisors
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()

    def start(self) -> None:
        """Start the thread and the supervisors."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._main, name="alpaca-streams", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=5)

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._run())
        finally:
            loop.close()

    async def _run(self) -> None:
        self._stopping = asyncio.Event()
        self._ready.set()
        tasks = [asyncio.create_task(s.run(self._stopping), name=s.protocol.name)
                 for s in self.supervisors]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for sup, res in zip(self.supervisors, results, strict=True):
            # BaseException, not Exception: a CancelledError must not pass silently
            if isinstance(res, BaseException):
                logger.error("%s supervisor ended: %r", sup.protocol.name, res)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every supervisor and join the thread."""
        if self._loop is not None and self._stopping is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("stream thread did not stop within %.1fs", timeout)
        self._thread = None

    def statuses(self) -> list[StreamStatus]:
        """Status of every stream."""
        return [s.status for s in self.supervisors]


def bars_only(kind: str, payload: Any) -> BarRecord | None:
    """Helper for tests: the bar of a ``bar`` sink call."""
    return payload[0] if kind == "bar" else None
