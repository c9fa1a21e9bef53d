"""Both Alpaca WebSocket streams on the simulator's port.

- Market data stream (Alpaca "Real-time Stock Pricing Data" page; ``alpaca-spec/CONTRACT.md``
  section 8) at ``/v2/iex`` (also ``/v2/sip``, ``/v2/delayed_sip``, ``/v2/test``): frames are
  arrays of maps, MessagePack binary when the client sends ``Content-Type: application/msgpack``
  (alpaca-py does; bar ``t`` is then a msgpack Timestamp), JSON text otherwise. ``connected``
  first, ``auth`` within 10 s, ``subscribe``/``unsubscribe`` answered with the full
  subscription; bars (``b``), updated bars (``u``) and daily bars (``d``) are published, one
  frame per bar close holding every subscribed symbol's bar. Error codes 400-406 as Alpaca.
- Trading stream (Alpaca "Websocket Streaming" page; CONTRACT section 9) at ``/stream``: JSON,
  ``authenticate`` answered first, ``listen`` to ``trade_updates``.

One authenticated connection per key and stream (``max_connections``); another gets Alpaca's
connection-limit error and is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import msgpack
from aiohttp import WSMsgType, web

from brokers.alpaca_sim.bars import BarBook
from brokers.alpaca_sim.faults import Faults
from brokers.alpaca_sim.models import TradeEvent
from brokers.alpaca_sim.serialization import stream_bar, trade_event_json

logger = logging.getLogger(__name__)

#: Data-stream channels a client may subscribe to (the ack lists them all).
CHANNELS = ("trades", "quotes", "bars", "updatedBars", "dailyBars", "statuses", "lulds",
            "corrections", "cancelErrors")
DATA_PATHS = ("/v2/iex", "/v2/sip", "/v2/delayed_sip", "/v2/test", "/v1beta1/boats",
              "/v1beta1/overnight")
TRADING_PATH = "/stream"
#: Frames a data-stream client may leave unread before it is cut off (Alpaca's 407).
MAX_QUEUED_FRAMES = 10_000


class Conn:
    """One WebSocket client: its socket, send queue and subscriptions."""

    def __init__(self, kind: str, ws: web.WebSocketResponse, request: web.Request,
                 binary: bool) -> None:
        self.kind = kind
        self.ws = ws
        self.request = request
        self.binary = binary
        self.key: str | None = None
        self.subs: dict[str, set[str]] = {c: set() for c in CHANNELS}
        self.listening = False
        self.queue: StampedQueue = StampedQueue()
        self.writer: asyncio.Task[None] | None = None
        self.dropped = False

    def wants(self, channel: str, symbol: str) -> bool:
        """Is this connection subscribed to ``symbol`` on ``channel``?"""
        s = self.subs[channel]
        return symbol in s or "*" in s

    def encode(self, msgs: list[dict[str, Any]]) -> bytes | str:
        """Frame ``msgs`` the way this client asked for (msgpack or JSON)."""
        return msgpack.packb(msgs, datetime=False) if self.binary else json.dumps(msgs)


class StampedQueue(asyncio.Queue[tuple[bytes | str | None, int]]):
    """A connection's outgoing frames and the time each was queued at (``stamp``: that of
    the frame ``get`` returned last): the writer holds a frame back until the simulated
    network delay has passed, in order."""

    def __init__(self) -> None:
        super().__init__()
        self._stamps: deque[float] = deque()
        self.stamp = 0.0

    def _put(self, item: tuple[bytes | str | None, int]) -> None:
        self._stamps.append(time.monotonic())
        super()._put(item)

    def _get(self) -> tuple[bytes | str | None, int]:
        self.stamp = self._stamps.popleft()
        return super()._get()


class StreamHub:
    """All stream connections of one server; publishes bars and trade updates to them."""

    def __init__(self, book: BarBook, key: str, secret: str, faults: Faults,
                 max_connections: int = 1, delay_s: float = 0.0) -> None:
        self.book = book
        #: one-way network delay of every message (``ServerOptions.latency_ms`` / 2)
        self.delay_s = delay_s
        self._key, self._secret = key, secret
        self.faults = faults
        self.max_connections = max_connections
        #: Seconds a data-stream client has to authenticate (Alpaca: 10).
        self.auth_timeout = 10.0
        self.conns: list[Conn] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach to the server's event loop (publishing from other threads hops onto it)."""
        self._loop = loop
        self._loop_thread = threading.get_ident()

    # -- handlers -------------------------------------------------------------------------

    async def data_handler(self, request: web.Request) -> web.StreamResponse:
        """``GET /v2/{feed}``: the market-data stream."""
        ws = web.WebSocketResponse(compress=False, max_msg_size=8 * 1024 * 1024)
        if not ws.can_prepare(request).ok:
            return _not_websocket()
        await ws.prepare(request)
        binary = "msgpack" in request.headers.get("Content-Type", "")
        conn = self._open(Conn("data", ws, request, binary))
        self._send_control(conn, {"T": "success", "msg": "connected"})
        try:
            await self._data_loop(conn)
        finally:
            await self._close(conn)
        return ws

    async def trading_handler(self, request: web.Request) -> web.StreamResponse:
        """``GET /stream``: the trading stream (``trade_updates``)."""
        ws = web.WebSocketResponse(compress=False)
        if not ws.can_prepare(request).ok:
            return _not_websocket()
        await ws.prepare(request)
        conn = self._open(Conn("trading", ws, request, binary=True))
        try:
            await self._trading_loop(conn)
        finally:
            await self._close(conn)
        return ws

    async def _data_loop(self, conn: Conn) -> None:
        ws = conn.ws
        while not ws.closed:
            timeout = None if conn.key else self.auth_timeout
            try:
                msg = await ws.receive(timeout=timeout)
            except TimeoutError:
                self._send_control(conn, {"T": "error", "code": 404, "msg": "auth timeout"})
                await self._flush_and_close(conn)
                return
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED,
                            WSMsgType.ERROR):
                return
            try:
                req = (msgpack.unpackb(msg.data) if msg.type == WSMsgType.BINARY
                       else json.loads(msg.data))
            except (ValueError, msgpack.UnpackException, TypeError):
                req = None
            if not isinstance(req, dict):
                self._send_control(conn, {"T": "error", "code": 400, "msg": "invalid syntax"})
                continue
            await self._data_action(conn, req)

    async def _data_action(self, conn: Conn, req: dict[str, Any]) -> None:
        action = req.get("action")
        if action == "auth":
            if conn.key is not None:
                self._send_control(conn, {"T": "error", "code": 403,
                                          "msg": "already authenticated"})
            elif req.get("key") != self._key or req.get("secret") != self._secret:
                self._send_control(conn, {"T": "error", "code": 402, "msg": "auth failed"})
            elif self._count("data", self._key) >= self.max_connections:
                self._send_control(conn, {"T": "error", "code": 406,
                                          "msg": "connection limit exceeded"})
                await self._flush_and_close(conn)
            else:
                conn.key = self._key
                self._send_control(conn, {"T": "success", "msg": "authenticated"})
        elif action in ("subscribe", "unsubscribe"):
            if conn.key is None:
                self._send_control(conn, {"T": "error", "code": 401, "msg": "not authenticated"})
                return
            for channel in CHANNELS:
                syms = req.get(channel)
                if not isinstance(syms, list):
                    continue
                syms = [str(s).upper() if s != "*" else "*" for s in syms]
                if action == "subscribe":
                    conn.subs[channel].update(syms)
                else:
                    conn.subs[channel].difference_update(syms)
            # Alpaca mirrors trades into corrections and cancelErrors.
            conn.subs["corrections"] = set(conn.subs["trades"])
            conn.subs["cancelErrors"] = set(conn.subs["trades"])
            ack: dict[str, Any] = {"T": "subscription"}
            ack.update({c: sorted(conn.subs[c]) for c in CHANNELS})
            self._send_control(conn, ack)
        else:
            self._send_control(conn, {"T": "error", "code": 400, "msg": "invalid syntax"})

    async def _trading_loop(self, conn: Conn) -> None:
        ws = conn.ws
        async for msg in ws:
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                break
            try:
                req = json.loads(msg.data)
            except ValueError:
                req = None
            if not isinstance(req, dict):
                self._send_json(conn, {"stream": "error",
                                       "data": {"error_message": "invalid syntax"}})
                continue
            action = req.get("action")
            raw = req.get("data")
            data: dict[str, Any] = raw if isinstance(raw, dict) else {}
            if action in ("authenticate", "auth"):
                ok = data.get("key_id") == self._key and data.get("secret_key") == self._secret
                if not ok:
                    self._send_json(conn, _authorization("unauthorized", "authenticate"))
                elif conn.key is None and self._count("trading", self._key) >= self.max_connections:
                    self._send_json(conn, {"action": "error",
                                           "data": {"error_message": "connection limit exceeded"}})
                    await self._flush_and_close(conn)
                    return
                else:
                    conn.key = self._key
                    self._send_json(conn, _authorization("authorized", "authenticate"))
            elif action == "listen":
                if conn.key is None:
                    self._send_json(conn, _authorization("unauthorized", "listen"))
                    continue
                listed = data.get("streams")
                streams: list[Any] = listed if isinstance(listed, list) else []
                conn.listening = "trade_updates" in streams
                self._send_json(conn, {"stream": "listening", "data": {
                    "streams": ["trade_updates"] if conn.listening else []}})
            else:
                self._send_json(conn, {"stream": "error",
                                       "data": {"error_message": f"unknown action {action!r}"}})

    # -- publishing (any thread) --------------------------------------------------------------

    def publish_bars(self, t_ns: int, closing: list[tuple[str, int]]) -> None:
        """Bars that closed at ``t``: one frame per subscribed data connection."""
        self._call(self._publish_bars, t_ns, closing)

    def publish_trade_event(self, e: TradeEvent) -> None:
        """A ``trade_updates`` message to every listening trading connection."""
        self._call(self._publish_trade_event, e)

    def publish_updated_bar(self, symbol: str, bar: dict[str, float], t_ns: int) -> None:
        """A ``u`` (updated bar) message to ``updatedBars`` subscribers of ``symbol``."""
        self._call(self._publish_updated_bar, symbol, bar, t_ns)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        if self._loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    def _publish_bars(self, t_ns: int, closing: list[tuple[str, int]]) -> None:
        targets = [c for c in self.conns if c.kind == "data" and c.key
                   and (c.subs["bars"] or c.subs["dailyBars"])]
        if not targets:
            return
        book = self.book
        frames: dict[tuple[Any, ...], tuple[bytes | str, int] | None] = {}
        for conn in targets:
            # Connections with the same subscriptions share one encoded frame (fan-out).
            memo = (conn.binary, frozenset(conn.subs["bars"]), frozenset(conn.subs["dailyBars"]))
            if memo in frames:
                frame = frames[memo]
                if frame is not None:
                    conn.queue.put_nowait(frame)
                continue
            msgs: list[dict[str, Any]] = []
            for sym, i in closing:
                if conn.wants("bars", sym):
                    b = book.bars[sym].bars
                    msgs.append(stream_bar("b", sym, int(b.t[i]), float(b.o[i]), float(b.h[i]),
                                           float(b.l[i]), float(b.c[i]), float(b.v[i]),
                                           float(b.n[i]), float(b.vw[i]), conn.binary))
            for sym, i in closing:
                if conn.wants("dailyBars", sym):
                    d = book.running_daily(sym, i)
                    msgs.append(stream_bar("d", sym, int(d.t[0]), float(d.o[0]), float(d.h[0]),
                                           float(d.l[0]), float(d.c[0]), float(d.v[0]),
                                           float(d.n[0]), float(d.vw[0]), conn.binary))
            frames[memo] = (conn.encode(msgs), len(msgs)) if msgs else None
            if msgs:
                conn.queue.put_nowait(frames[memo])  # type: ignore[arg-type]
        for conn in targets:
            if conn.queue.qsize() > MAX_QUEUED_FRAMES and not conn.dropped:
                logger.warning("data-stream client too slow (%d frames queued): closing",
                               conn.queue.qsize())
                self._slow(conn)

    def _publish_updated_bar(self, symbol: str, bar: dict[str, float], t_ns: int) -> None:
        for conn in self.conns:
            if conn.kind == "data" and conn.key and conn.wants("updatedBars", symbol):
                msg = stream_bar("u", symbol, t_ns, bar["o"], bar["h"], bar["l"], bar["c"],
                                 bar["v"], bar["n"], bar["vw"], conn.binary)
                conn.queue.put_nowait((conn.encode([msg]), 1))

    def _publish_trade_event(self, e: TradeEvent) -> None:
        payload: bytes | None = None
        for conn in self.conns:
            if conn.kind == "trading" and conn.key and conn.listening:
                if payload is None:
                    payload = json.dumps(trade_event_json(e)).encode()
                conn.queue.put_nowait((payload, 1))

    # -- connection management ------------------------------------------------------------

    def _open(self, conn: Conn) -> Conn:
        self.conns.append(conn)
        conn.writer = asyncio.get_running_loop().create_task(self._writer(conn))
        return conn

    def _count(self, kind: str, key: str) -> int:
        return sum(1 for c in self.conns if c.kind == kind and c.key == key and not c.dropped)

    def _send_control(self, conn: Conn, msg: dict[str, Any]) -> None:
        conn.queue.put_nowait((conn.encode([msg]), 0))

    def _send_json(self, conn: Conn, msg: dict[str, Any]) -> None:
        conn.queue.put_nowait((json.dumps(msg).encode(), 0))

    async def _writer(self, conn: Conn) -> None:
        ws = conn.ws
        while True:
            payload, n = await conn.queue.get()
            try:
                if payload is None:
                    return
                if self.delay_s > 0:  # on the wire: it arrives delay_s after it was sent
                    await asyncio.sleep(max(0.0, conn.queue.stamp + self.delay_s
                                            - time.monotonic()))
                if conn.dropped or ws.closed:
                    continue
                if n and (self.faults.stream_silent(conn.kind)
                          or self.faults.take_skip(conn.kind)):
                    continue
                if isinstance(payload, bytes):
                    await ws.send_bytes(payload)
                else:
                    await ws.send_str(payload)
                if n and self.faults.count_stream_messages(conn.kind, n):
                    self.drop(conn)
            except (ConnectionError, RuntimeError) as exc:
                logger.debug("stream send failed: %s", exc)
                conn.dropped = True
            finally:
                conn.queue.task_done()

    def _slow(self, conn: Conn) -> None:
        while not conn.queue.empty():  # what it has not read is lost, as with Alpaca
            conn.queue.get_nowait()
            conn.queue.task_done()
        self._send_control(conn, {"T": "error", "code": 407, "msg": "slow client"})
        asyncio.get_running_loop().create_task(self._flush_and_close(conn))

    def drop(self, conn: Conn) -> None:
        """Cut ``conn`` abruptly (no close frame), as a network failure would."""
        if conn.dropped:
            return
        conn.dropped = True
        logger.info("dropping %s stream connection", conn.kind)
        transport = conn.request.transport
        if transport is not None:
            transport.abort()

    def drop_kind(self, kind: str) -> int:
        """Drop every connection of one stream kind; how many."""
        hit = [c for c in self.conns if c.kind == kind and not c.dropped]
        for c in hit:
            self.drop(c)
        return len(hit)

    def apply_due_drops(self) -> None:
        """Apply ``drop_stream(after=0)`` faults (on the loop thread)."""
        for kind in ("data", "trading"):
            if any(c.kind == kind for c in self.conns) and self.faults.drop_due(kind):
                self.drop_kind(kind)

    async def drain(self, limit_s: float = 10.0) -> None:
        """Wait until every queued message has been written to its socket."""
        waits = [c.queue.join() for c in self.conns if not c.dropped and not c.ws.closed]
        if waits:
            try:
                await asyncio.wait_for(asyncio.gather(*waits), limit_s)
            except TimeoutError:
                logger.warning("stream clients did not take their messages within %.0fs", limit_s)

    async def _flush_and_close(self, conn: Conn) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(conn.queue.join(), 5.0)
        await conn.ws.close()

    async def _close(self, conn: Conn) -> None:
        if conn in self.conns:
            self.conns.remove(conn)
        conn.queue.put_nowait((None, 0))
        if conn.writer is not None:
            try:
                await asyncio.wait_for(conn.writer, 5.0)
            except (TimeoutError, asyncio.CancelledError):
                conn.writer.cancel()
        if not conn.ws.closed and not conn.dropped:
            with contextlib.suppress(ConnectionError, RuntimeError, TimeoutError):
                await asyncio.wait_for(conn.ws.close(), 2.0)

    async def close_all(self, kinds: Iterable[str] = ("data", "trading")) -> None:
        """Close connections politely (close frame), e.g. at shutdown."""
        for conn in [c for c in self.conns if c.kind in kinds]:
            if not conn.ws.closed and not conn.dropped:
                with contextlib.suppress(ConnectionError, RuntimeError, TimeoutError):
                    await asyncio.wait_for(conn.ws.close(), 2.0)


def _authorization(status: str, action: str) -> dict[str, Any]:
    return {"stream": "authorization", "data": {"status": status, "action": action}}


def _not_websocket() -> web.Response:
    return web.json_response({"code": 40410000, "message": "endpoint expects a WebSocket"},
                             status=404)
