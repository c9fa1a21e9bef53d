"""The aiohttp application: trading REST, market-data REST and both streams on one port.

Cross-cutting rules of Alpaca's APIs (``alpaca-spec/CONTRACT.md`` sections 1, 2, 6, 10):
``APCA-API-KEY-ID``/``APCA-API-SECRET-KEY`` (or HTTP Basic) on every REST call, 403
``{"message": "forbidden."}`` without them, 401 with the wrong pair; ``X-RateLimit-*``
headers on every response (200/min; enforced only when asked); JSON errors everywhere.

Also serves control endpoints for a server in another process, guarded by the same keys:
``GET /_sim/status``, ``POST /_sim/advance`` (``{"minutes": 1}`` or ``{"to": "<RFC-3339>"}``),
``GET|POST|DELETE /_sim/faults``, ``POST /_sim/updated_bar``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from brokers.alpaca_sim import errors, rest_control, rest_data, rest_trading
from brokers.alpaca_sim.bars import BarBook
from brokers.alpaca_sim.calendar import ns_to_utc, to_ns
from brokers.alpaca_sim.clock import ReplayClock
from brokers.alpaca_sim.context import ServerOptions
from brokers.alpaca_sim.faults import Faults
from brokers.alpaca_sim.httputil import (
    SIM,
    error_for_status,
    error_response,
    time_param,
)
from brokers.alpaca_sim.market import Market, MarketOptions
from brokers.alpaca_sim.serialization import ts
from brokers.alpaca_sim.streams import DATA_PATHS, TRADING_PATH, StreamHub
from ratchet.common.atomic import write_text_atomic

logger = logging.getLogger(__name__)

_NS = 1_000_000_000
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class SimStateError(ValueError):
    """The ``--state`` file cannot be read back (it is left where it is)."""


class SimApp:
    """Everything one simulated Alpaca holds: bars, clock, market, faults, streams."""

    def __init__(self, book: BarBook, start_ns: int, speed: float = 0.0,
                 cash: float = 100_000.0, market_options: MarketOptions | None = None,
                 options: ServerOptions | None = None) -> None:
        self.book = book
        self.options = options or ServerOptions()
        saved = _read_state(self.options.state_path)
        if saved is not None:
            start_ns = int(saved["processed_until"])
        self.clock = ReplayClock(start_ns, speed)
        self.market = Market(book, self.clock.now_ns, cash, market_options, start_ns)
        if saved is not None:
            try:
                self.market.restore(saved)
            except ValueError as exc:
                raise SimStateError(f"{self.options.state_path}: {exc}") from None
            logger.info("alpaca-sim state restored from %s: %d orders, %d positions, replay "
                        "time %s", self.options.state_path, len(self.market.orders),
                        len(self.market.positions), ns_to_utc(start_ns).isoformat())
        self._saved = (-1, -1)  # (market version, processed_until) last written
        self.faults = Faults()
        self.hub = StreamHub(book, self.key, self.options.secret, self.faults,
                             self.options.max_stream_connections,
                             delay_s=self.options.latency_ms / 2000.0)
        self.market.on_trade_event = self.hub.publish_trade_event
        self.market.on_bars_closed = self.hub.publish_bars
        self.faults.listener = self._faults_changed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._driver: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._window = (0, 0)  # (wall minute, requests in it)
        self.port = 0

    @property
    def key(self) -> str:
        """The API key id clients must present."""
        return self.options.key

    # -- lifecycle ------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        """The aiohttp application (routes + middleware)."""
        app = web.Application(middlewares=[self._middleware], client_max_size=4 * 1024 * 1024)
        app[SIM] = self
        app.add_routes(rest_trading.routes())
        app.add_routes(rest_data.routes())
        for path in DATA_PATHS:
            app.router.add_get(path, self.hub.data_handler)
        app.router.add_get(TRADING_PATH, self.hub.trading_handler)
        app.add_routes(rest_control.routes())
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (0 = a free port); the port bound."""
        self._loop = asyncio.get_running_loop()
        self.hub.bind(self._loop)
        self._runner = web.AppRunner(self.build_app(), access_log=None,
                                     handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else port
        if not self.clock.stepped:
            self._wake = asyncio.Event()
            self._driver = self._loop.create_task(self._drive())
        logger.info("alpaca-sim listening on %s:%d (replay %s, speed %g)", host, self.port,
                    ns_to_utc(self.clock.now_ns()).isoformat(), self.clock.speed)
        return self.port

    async def stop(self) -> None:
        """Close streams, stop the clock, release the port."""
        if self._driver is not None:
            self._driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._driver
        await self.hub.close_all()
        if self._runner is not None:
            await self._runner.cleanup()

    async def advance_to(self, t_ns: int) -> int:
        """Move replayed time to ``t`` and return when every bar that closed on the way has
        been published and every fill it caused applied and reported."""
        self.clock.set(max(t_ns, self.clock.now_ns()))
        self.market.sync()
        self.persist()
        if self._wake is not None:
            self._wake.set()  # the running clock jumped: recompute the next wake-up
        await self.hub.drain()
        return self.market.now_ns

    def schedule(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` on the server loop right after the current request."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(fn, *args)

    async def _drive(self) -> None:
        """Speed > 0: process each boundary when replayed time reaches it."""
        book, clock = self.book, self.clock
        while True:
            self.market.sync()
            self.persist()
            now = clock.now_ns()
            nxt = book.next_event_after(now)
            if self.options.skip_closed:
                target = self._skip_target(now)
                if target is not None:
                    logger.info("skipping closed hours to %s", ts(target))
                    clock.set(target)
                    continue
            delay = 0.5 if nxt is None else clock.wall_seconds_until(nxt) or 0.0
            assert self._wake is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()

    def persist(self) -> None:
        """Write the ``state_path`` file if anything changed since the last write."""
        path = self.options.state_path
        if path is None:
            return
        m = self.market
        key = (m.version, m.processed_until)
        if key == self._saved:
            return
        snap = m.snapshot()
        write_text_atomic(path, json.dumps(snap, separators=(",", ":")), mode=0o600)
        self._saved = key

    def _settle_and_persist(self) -> None:
        self.market.settle()
        self.persist()

    def _skip_target(self, now: int) -> int | None:
        cal = self.book.calendar
        if cal.phase(now) == "regular":
            return None
        i = int(np.searchsorted(self.book.bar_starts, now, side="right"))
        next_bar = int(self.book.bar_starts[i]) if i < self.book.bar_starts.shape[0] else None
        next_open = cal.next_open(now)
        cands = [t for t in (next_bar, next_open) if t is not None]
        if not cands:
            return None
        target = min(cands)
        return target if target - now > 60 * _NS else None

    def _faults_changed(self) -> None:
        is_set, value = self.faults.participation()
        self.market.volume_participation = (
            value if is_set else self.market.options.volume_participation)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.hub.apply_due_drops)

    def updated_bar(self, symbol: str, start_ns: int | None,
                    changes: dict[str, Any]) -> dict[str, float]:
        """Publish a ``u`` (updated bar) message for ``symbol``'s bar starting at ``start``
        (default: its last closed bar) with ``changes`` applied; the stored bar is unchanged."""
        if symbol not in self.book.bars:
            raise errors.not_found(f"no bars for {symbol}")
        now = self.market.now_ns
        if start_ns is None:
            i = self.book.last_closed(symbol, now)
        else:
            i = self.book.bar_starting_at(symbol, start_ns)
            if i >= 0 and int(self.book.bars[symbol].end[i]) > now:
                i = -1
        if i < 0:
            raise errors.not_found("no such closed bar")
        b = self.book.bars[symbol].bars
        bar = {"o": float(b.o[i]), "h": float(b.h[i]), "l": float(b.l[i]), "c": float(b.c[i]),
               "v": float(b.v[i]), "n": float(b.n[i]), "vw": float(b.vw[i])}
        for k, v in changes.items():
            if k not in bar:
                raise errors.validation(f"unknown bar field {k!r}; one of o h l c v n vw")
            bar[k] = float(v)
        self.hub.publish_updated_bar(symbol, bar, int(b.t[i]))
        return bar

    # -- middleware -----------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if _is_websocket(request):
            return await handler(request)  # streams authenticate in-band
        one_way = self.options.latency_ms / 2000.0
        if one_way > 0:
            await asyncio.sleep(one_way)  # the request's trip (``--latency``)
        resp = await self._answer(request, handler)
        if one_way > 0:
            await asyncio.sleep(one_way)  # the answer's trip: handled, not yet received
        return resp

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        limit_headers, over_limit = self._count_request()
        try:
            self._authenticate(request)
            control = request.path.startswith("/_sim/")
            if not control:
                fault = self.faults.take_http(request.method, request.path, after_handler=False)
                if fault is not None and fault.status is not None:
                    if fault.status == 429:
                        limit_headers["X-RateLimit-Remaining"] = "0"
                    raise error_for_status(fault.status, fault.message)
                if self.options.enforce_rate_limit and over_limit:
                    raise error_for_status(429)
            self.market.sync()
            resp = await handler(request)
            self.persist()  # before the answer: an order acknowledged is an order kept
            if not control:
                lost = self.faults.take_http(request.method, request.path, after_handler=True)
                if lost is not None:
                    if lost.status is None:
                        logger.info("fault: dropping the response to %s %s", request.method,
                                    request.path)
                        if request.transport is not None:
                            request.transport.abort()
                        raise web.HTTPServiceUnavailable()  # never written: the socket is gone
                    raise error_for_status(lost.status)
        except errors.ApiError as exc:
            resp = error_response(exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            resp = error_response(error_for_status(
                exc.status, "endpoint not found" if exc.status == 404 else exc.reason))
        except Exception:  # a bug here must still answer like Alpaca: JSON with a code
            logger.exception("alpaca-sim failed on %s %s", request.method, request.path)
            resp = error_response(error_for_status(500))
        self._after_request()
        resp.headers.update(limit_headers)
        return resp

    def _after_request(self) -> None:
        if self.market.has_pending:
            self.schedule(self._settle_and_persist)

    def _authenticate(self, request: web.Request) -> None:
        key = request.headers.get("APCA-API-KEY-ID")
        secret = request.headers.get("APCA-API-SECRET-KEY")
        auth = request.headers.get("Authorization", "")
        if key is None and secret is None and auth.startswith("Basic "):
            try:
                key, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                key = secret = ""
        if key is None and secret is None:
            raise errors.ApiError(403, None, "forbidden.")
        if not (hmac.compare_digest((key or "").encode(), self.options.key.encode())
                and hmac.compare_digest((secret or "").encode(), self.options.secret.encode())):
            raise errors.ApiError(401, errors.CODE_UNAUTHORIZED, "request is not authorized")

    def _count_request(self) -> tuple[dict[str, str], bool]:
        """Rate-limit headers for this request, and whether it is beyond the limit."""
        minute = int(time.time() // 60)
        win_minute, count = self._window
        count = count + 1 if win_minute == minute else 1
        self._window = (minute, count)
        limit = self.options.rate_limit
        return {"X-RateLimit-Limit": str(limit),
                "X-RateLimit-Remaining": str(max(0, limit - count)),
                "X-RateLimit-Reset": str((minute + 1) * 60)}, count > limit


_WS_PATHS = frozenset((*DATA_PATHS, TRADING_PATH))


def _is_websocket(request: web.Request) -> bool:
    """A WebSocket handshake on a stream path. Only these skip the REST authentication (the
    streams authenticate in-band): an ``Upgrade`` header on any other request changes
    nothing (issue 11: it used to bypass auth, faults and rate counting on every route)."""
    return (request.method == "GET" and request.path in _WS_PATHS
            and request.headers.get("Upgrade", "").lower() == "websocket"
            and "upgrade" in request.headers.get("Connection", "").lower())


def _read_state(path: Path | None) -> dict[str, Any] | None:
    """The saved ``--state`` (None when there is none yet). Raises ``SimStateError``."""
    if path is None or not path.exists():
        return None
    try:
        snap = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SimStateError(f"{path} is not a readable alpaca-sim state ({exc})") from None
    if not isinstance(snap, dict) or "processed_until" not in snap:
        raise SimStateError(f"{path} is not an alpaca-sim state file")
    return snap


def parse_start(value: datetime | str | None, book: BarBook) -> int:
    """``start`` (aware/naive-UTC datetime, RFC-3339 string, or None) -> UTC ns.

    Raises ValueError for a string that is not a time.
    """
    if value is None:
        return book.default_start()
    if isinstance(value, datetime):
        return to_ns(value)
    try:
        t = time_param(value, "start")
    except errors.ApiError as exc:
        raise ValueError(exc.message) from None
    return book.default_start() if t is None else t


__all__ = ["ServerOptions", "SimApp", "SimStateError", "parse_start"]
