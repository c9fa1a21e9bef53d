"""``SimServer``: the loopback Alpaca in a background thread, for tests and scripts.

    from brokers.alpaca_sim.testing import SimServer
    with SimServer(Path("data/bars")) as sim:
        client = TradingClient(sim.key, sim.secret, paper=True, url_override=sim.base_url)
        sim.advance(minutes=1)

The server runs on its own asyncio loop in a daemon thread, on a free loopback port, and
stops cleanly on exit. Implements what ``alpaca-spec/CONTRACT.md`` lists (trading REST v2,
market-data REST v2, both WebSocket streams).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from brokers.alpaca_sim.bars import BarBook
from brokers.alpaca_sim.calendar import ns_to_utc, to_ns
from brokers.alpaca_sim.faults import Faults
from brokers.alpaca_sim.market import Market, MarketOptions
from brokers.alpaca_sim.server import ServerOptions, SimApp, parse_start

T = TypeVar("T")
_NS = 1_000_000_000
_SERVER_KEYS = {f for f in ServerOptions.__dataclass_fields__ if f not in ("key", "secret")}


class SimServer:
    """A simulated Alpaca on ``127.0.0.1`` (see docs/alpaca-sim.md).

    Args:
        data_dir: bar-store root (``<dir>/1Min/<SYM>.parquet``, optional ``<dir>/1Day``) or
            one intraday interval folder.
        key, secret: the API key pair clients must use (test-only defaults).
        start: replayed start time (default: the regular open of the 3rd session with bars,
            leaving two sessions of history for indicator warm-up).
        speed: 0 = stepped by :meth:`advance`; N > 0 = N times real time.
        cash: starting cash of the (cash) account.
        port: 0 picks a free port.
        book: an already loaded ``BarBook`` (tests share one to save loading time).
        symbols: load only these symbols.
        **options: ``MarketOptions`` fields (``volume_participation``,
            ``fill_grace_seconds``, ``check_stop_price``, ``penny_increments``,
            ``spread_bps``, ``seed``, ``gtc_days``) and ``ServerOptions`` fields
            (``rate_limit``, ``enforce_rate_limit``, ``max_stream_connections``,
            ``skip_closed``, ``max_page_size``).
    """

    def __init__(self, data_dir: Path | str | None = None, key: str = "test-key",
                 secret: str = "test-secret", start: datetime | str | None = None,
                 speed: float = 0.0, cash: float = 100_000.0, port: int = 0, *,
                 book: BarBook | None = None, symbols: Iterable[str] | None = None,
                 **options: Any) -> None:
        if book is None:
            if data_dir is None:
                raise ValueError("SimServer needs data_dir or book")
            book = BarBook.load(Path(data_dir), symbols)
        server_kw = {k: options.pop(k) for k in list(options) if k in _SERVER_KEYS}
        unknown = set(options) - set(MarketOptions.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown SimServer option(s): {', '.join(sorted(unknown))}")
        self.book = book
        self.app = SimApp(book, parse_start(start, book), speed, cash, MarketOptions(**options),
                          ServerOptions(key=key, secret=secret, **server_kw))
        self._port_wanted = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> SimServer:
        """Start the server thread; returns once the port is listening."""
        if self._thread is not None:
            return self
        ready: Future[int] = Future()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            try:
                port = self._loop.run_until_complete(self.app.start("127.0.0.1",
                                                                    self._port_wanted))
            except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
                ready.set_exception(exc)
                return
            ready.set_result(port)
            self._loop.run_forever()
            self._loop.run_until_complete(self.app.stop())
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="alpaca-sim", daemon=True)
        self._thread.start()
        self.port = ready.result(timeout=30)
        return self

    def stop(self) -> None:
        """Stop the server and join its thread."""
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=15)
        self._thread = None

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses ------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """Trading and market-data REST root (``url_override`` for both REST clients)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def data_stream_url(self) -> str:
        """``url_override`` for ``StockDataStream``."""
        return f"ws://127.0.0.1:{self.port}/v2/iex"

    @property
    def trading_stream_url(self) -> str:
        """``url_override`` for ``TradingStream``."""
        return f"ws://127.0.0.1:{self.port}/stream"

    @property
    def key(self) -> str:
        """API key id."""
        return self.app.options.key

    @property
    def secret(self) -> str:
        """API secret."""
        return self.app.options.secret

    # -- state ----------------------------------------------------------------------------

    @property
    def market(self) -> Market:
        """Orders, positions and cash (read under ``sim.market.lock`` while time runs)."""
        return self.app.market

    @property
    def faults(self) -> Faults:
        """Scriptable faults (see ``brokers.alpaca_sim.faults.Faults``)."""
        return self.app.faults

    def now(self) -> datetime:
        """Replayed time (aware UTC)."""
        return ns_to_utc(self.app.clock.now_ns())

    def advance(self, *, minutes: float = 0, seconds: float = 0, hours: float = 0,
                days: float = 0, to: datetime | None = None, timeout: float = 60.0) -> datetime:
        """Move replayed time forward (by a duration, or ``to`` a time). When it returns,
        every bar that closed in that span has been published to stream subscribers and every
        fill it caused has been applied and its trade_update sent. With speed > 0 this jumps
        the running clock forward."""
        if to is not None:
            target = to_ns(to)
        else:
            delta = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
            target = self.app.clock.now_ns() + int(delta.total_seconds() * _NS)
        if target < self.app.clock.now_ns():
            raise ValueError("the replay clock cannot go backwards")
        now = self.run(self.app.advance_to(target), timeout)
        return ns_to_utc(now)

    def next_open(self) -> datetime:
        """The next regular-session open after now (replayed time)."""
        t = self.book.calendar.next_open(self.app.clock.now_ns())
        if t is None:
            raise ValueError("no session after the replay time")
        return ns_to_utc(t)

    def send_updated_bar(self, symbol: str, start: datetime | None = None,
                         **changes: float) -> dict[str, float]:
        """Publish an updated bar (``u``) for ``symbol``'s last closed bar (or the closed bar
        starting at ``start``) with ``changes`` (``v=...``, ``c=...``) applied."""
        start_ns = to_ns(start) if start is not None else None
        return self.call(lambda: self.app.updated_bar(symbol.upper(), start_ns, changes))

    def close_streams(self, stream: str | None = None) -> int:
        """Cut every stream connection (or those of ``data``/``trading``) so clients that
        were told to stop return at once; how many were cut."""
        kinds = ("data", "trading") if stream is None else (stream,)
        return self.call(lambda: sum(self.app.hub.drop_kind(k) for k in kinds))

    def stream_connections(self, stream: str) -> int:
        """Authenticated connections on ``data`` or ``trading``."""
        return self.call(lambda: sum(1 for c in self.app.hub.conns
                                     if c.kind == stream and c.key and not c.dropped))

    # -- threading helpers ------------------------------------------------------------------

    def run(self, coro: Any, timeout: float = 60.0) -> Any:
        """Run a coroutine on the server loop and wait for its result."""
        if self._loop is None:
            raise RuntimeError("SimServer is not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def call(self, fn: Callable[[], T], timeout: float = 30.0) -> T:
        """Run ``fn`` on the server loop and wait for its result."""

        async def wrapper() -> T:
            return fn()

        return self.run(wrapper(), timeout)
