"""Fixtures for the loopback Alpaca server: a shared bar book, a stepped server per test, the
real alpaca-py clients pointed at it, and helpers to run its streams in threads."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from alpaca.data.historical import StockHistoricalDataClient
from alpaca.trading.client import TradingClient

from brokers.alpaca_sim.bars import BarArraysSet, BarBook
from brokers.alpaca_sim.clock import ReplayClock
from brokers.alpaca_sim.market import Market, MarketOptions
from brokers.alpaca_sim.testing import SimServer
from tests.conftest import wait_for

REPO = Path(__file__).resolve().parents[2]
BARS = REPO / "data" / "bars"
#: The bundled data's default start: regular open of its 3rd session (Fri 2025-10-03).
DEFAULT_START = datetime(2025, 10, 3, 13, 30, tzinfo=UTC)


@pytest.fixture
def sim(book: BarBook) -> Iterator[SimServer]:
    """A stepped server at the default start, on a free port."""
    with SimServer(book=book) as server:
        yield server


@pytest.fixture
def trading(sim: SimServer) -> TradingClient:
    """alpaca-py's TradingClient with only url_override changed (no retry sleeps)."""
    client = TradingClient(sim.key, sim.secret, paper=True, url_override=sim.base_url)
    client._retry_wait = 0  # a 429/504 retry costs 3 s otherwise
    return client


@pytest.fixture
def data_client(sim: SimServer) -> StockHistoricalDataClient:
    """alpaca-py's StockHistoricalDataClient with only url_override changed."""
    client = StockHistoricalDataClient(sim.key, sim.secret, url_override=sim.base_url)
    client._retry_wait = 0
    return client


@contextlib.contextmanager
def running_stream(sim: SimServer, stream: Any, kind: str,
                   ready: Callable[[], bool] | None = None) -> Iterator[Any]:
    """Run an alpaca-py stream (``run()`` blocks) in a thread; stop it on exit.

    Waits until the server sees the stream authenticated (and ``ready`` holds). On exit it
    asks the client to stop and cuts the socket so the client returns at once.
    """
    before = sim.stream_connections(kind)
    thread = threading.Thread(target=stream.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: sim.stream_connections(kind) > before)
        if ready is not None:
            wait_for(ready)
        yield stream
    finally:
        with contextlib.suppress(Exception):
            stream.stop()
        sim.close_streams(kind)
        thread.join(10)
        assert not thread.is_alive(), "stream thread did not stop"


def subscribed(sim: SimServer, channel: str, symbol: str) -> bool:
    """Has a data-stream client subscribed ``symbol`` on ``channel``?"""
    return sim.call(lambda: any(symbol in c.subs[channel] for c in sim.app.hub.conns
                                if c.kind == "data"))


# -- hand-made bars for the matching-engine tests ----------------------------------------------

Row = tuple[str, float, float, float, float, float]  # New York time, o, h, l, c, v


def make_book(rows: dict[str, list[Row]], day: str = "2025-10-06") -> BarBook:
    """A BarBook from explicit 1-minute bars (``"09:31"`` New York times on ``day``)."""
    data = {}
    for sym, bars in rows.items():
        t = pd.DatetimeIndex([pd.Timestamp(f"{day} {r[0]}", tz="America/New_York")
                              for r in bars]).tz_convert("UTC")
        arr = np.array([r[1:] for r in bars], dtype=np.float64)
        n = len(bars)
        ts = np.asarray(t.as_unit("ns").asi8, dtype=np.int64)
        data[sym] = BarArraysSet(ts, arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3], arr[:, 4],
                                 np.full(n, 10.0), arr[:, 3])
    return BarBook(data, 60_000_000_000, source="test")


def ny(day: str, hhmm: str) -> int:
    """UTC nanoseconds of a New York wall time."""
    return int(pd.Timestamp(f"{day} {hhmm}", tz="America/New_York").value)


class Desk:
    """A Market on a stepped clock, with its trade events collected."""

    def __init__(self, book: BarBook, start: int, cash: float = 100_000.0,
                 **options: Any) -> None:
        # the matching-engine tests pin BackBroker's "first bar after the submission" rule;
        # the server's default (an order may fill on the bar it arrived in) has its own tests
        options.setdefault("fill_current_bar", False)
        self.clock = ReplayClock(start)
        self.market = Market(book, self.clock.now_ns, cash, MarketOptions(**options), start)
        self.events: list[Any] = []
        self.market.on_trade_event = self.events.append

    def at(self, t_ns: int) -> Desk:
        """Advance to ``t`` (and settle immediate fills)."""
        self.clock.set(t_ns)
        self.market.sync()
        self.market.settle()
        return self

    def kinds(self, order_id: str | None = None) -> list[str]:
        """Event names so far (of one order)."""
        return [e.event for e in self.events if order_id is None or e.order["id"] == order_id]
