"""Benchmark the loopback Alpaca server (brokers/alpaca_sim) through the real alpaca-py clients.

    .venv/bin/python benchmarks/bench_sim.py [--symbols 20] [--orders 400] [--seconds 12]

Measures, on loopback, against what a 20-symbol 1-minute session replayed at 60x needs
(20 bars per wall second, a handful of orders per second):

1. baseline: ``TradingClient.get_clock()`` calls per second (the cheapest round trip);
2. orders submitted and filled per second (``TradingClient.submit_order`` + the ``fill``
   arriving on ``TradingStream``);
3. bars per second delivered to ``StockDataStream`` when a test steps the clock as fast as
   it can (``SimServer.advance(minutes=1)`` in a loop);
4. bar fan-out latency at 60x: wall time from the moment replayed time reaches a bar's close
   to the moment the client's handler has the bar (p50, p99).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alpaca.data.live import StockDataStream
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, TimeInForce
from alpaca.trading.requests import MarketOrderRequest
from alpaca.trading.stream import TradingStream

from brokers.alpaca_sim.bars import BarBook
from brokers.alpaca_sim.testing import SimServer
from feeds.store import write_bars
from feeds.synthetic import random_walk_bars, trading_minutes

NEEDED_BARS_PER_S = 20.0  # 20 symbols x 1 bar per replayed minute, 60 replayed minutes/s
NEEDED_ORDERS_PER_S = 5.0  # "a handful": every symbol trading every few minutes


def make_store(root: Path, n_symbols: int) -> Path:
    """Synthetic 1-minute bars for ``n_symbols`` symbols over six October 2025 sessions."""
    minutes = trading_minutes("2025-10-01", "2025-10-08")
    for k in range(n_symbols):
        frame = random_walk_bars(minutes, seed=500 + k, start_price=20.0 + 7 * k)
        write_bars(root / "1Min" / f"S{k:02d}.parquet", frame)
    return root


def _run_stream(stream: Any) -> threading.Thread:
    t = threading.Thread(target=stream.run, daemon=True)
    t.start()
    return t


def _stop_stream(sim: SimServer, stream: Any, thread: threading.Thread, kind: str) -> None:
    stream.stop()
    sim.close_streams(kind)
    thread.join(10)


def _wait(pred: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not met")
        time.sleep(0.001)


def bench_baseline(sim: SimServer, n: int) -> float:
    """get_clock() round trips per second."""
    client = TradingClient(sim.key, sim.secret, paper=True, url_override=sim.base_url)
    client.get_clock()
    t0 = time.perf_counter()
    for _ in range(n):
        client.get_clock()
    return n / (time.perf_counter() - t0)


def bench_orders(sim: SimServer, n: int) -> tuple[float, float]:
    """(orders submitted per second, orders submitted and filled per second)."""
    client = TradingClient(sim.key, sim.secret, paper=True, url_override=sim.base_url)
    fills: list[float] = []

    async def on_update(u: Any) -> None:
        if u.event == "fill":
            fills.append(time.perf_counter())

    stream = TradingStream(sim.key, sim.secret, paper=True, url_override=sim.trading_stream_url)
    stream.subscribe_trade_updates(on_update)
    thread = _run_stream(stream)
    _wait(lambda: sim.call(lambda: any(c.listening for c in sim.app.hub.conns)))
    symbols = sim.book.symbols
    t0 = time.perf_counter()
    for i in range(n):
        client.submit_order(MarketOrderRequest(symbol=symbols[i % len(symbols)], qty=1,
                                               side=OrderSide.BUY,
                                               time_in_force=TimeInForce.DAY))
    t_submit = time.perf_counter() - t0
    _wait(lambda: len(fills) >= n)
    t_filled = max(fills) - t0
    _stop_stream(sim, stream, thread, "trading")
    return n / t_submit, n / t_filled


def bench_stepped(book: BarBook, minutes: int) -> float:
    """Bars per second delivered when the clock is stepped as fast as possible."""
    got: list[int] = []

    async def on_bar(bar: Any) -> None:
        got.append(1)

    with SimServer(book=book) as sim:
        stream = StockDataStream(sim.key, sim.secret, url_override=sim.data_stream_url)
        stream.subscribe_bars(on_bar, *book.symbols)
        thread = _run_stream(stream)
        _wait(lambda: sim.call(lambda: any(c.subs["bars"] for c in sim.app.hub.conns)))
        t0 = time.perf_counter()
        for _ in range(minutes):
            sim.advance(minutes=1)
        _wait(lambda: len(got) >= minutes * len(book.symbols))
        elapsed = time.perf_counter() - t0
        _stop_stream(sim, stream, thread, "data")
    return len(got) / elapsed


def bench_latency(book: BarBook, speed: float, seconds: float) -> np.ndarray:
    """Per-bar delay (s) from the bar's close in replayed time to the client handler."""
    delays: list[float] = []
    with SimServer(book=book, speed=speed) as sim:
        clock = sim.app.clock

        async def on_bar(bar: Any) -> None:
            close_ns = int(bar.timestamp.timestamp() * 1e9) + book.step_ns
            due = clock.wall_time_of(close_ns)
            if due is not None:
                delays.append(time.monotonic() - due)

        stream = StockDataStream(sim.key, sim.secret, url_override=sim.data_stream_url)
        stream.subscribe_bars(on_bar, *book.symbols)
        thread = _run_stream(stream)
        _wait(lambda: sim.call(lambda: any(c.subs["bars"] for c in sim.app.hub.conns)))
        delays.clear()
        time.sleep(seconds)
        _stop_stream(sim, stream, thread, "data")
    return np.asarray(delays)


def main(argv: list[str] | None = None) -> int:
    """Run every measurement and print figures and ratios."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", type=int, default=20)
    ap.add_argument("--orders", type=int, default=400)
    ap.add_argument("--minutes", type=int, default=300, help="stepped minutes to publish")
    ap.add_argument("--seconds", type=float, default=12.0, help="wall seconds at 60x")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # Streams cut at the end of each measurement make alpaca-py log reconnect warnings.
    logging.getLogger("alpaca").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        book = BarBook.load(make_store(Path(tmp), args.symbols))
    with SimServer(book=book, cash=1e9) as sim:
        base = bench_baseline(sim, 300)
        submitted, filled = bench_orders(sim, args.orders)
    stepped = bench_stepped(book, args.minutes)
    delays = bench_latency(book, 60.0, args.seconds) * 1000
    p50, p99, worst = (np.percentile(delays, 50), np.percentile(delays, 99), delays.max())
    print(f"alpaca-sim benchmark: {args.symbols} symbols of 1-minute bars, loopback")
    print(f"  baseline get_clock round trips     {base:9.0f} /s")
    print(f"  orders submitted                   {submitted:9.0f} /s  "
          f"({submitted / base:.2f} x baseline)")
    print(f"  orders submitted + filled (stream) {filled:9.0f} /s  "
          f"= {filled / NEEDED_ORDERS_PER_S:,.0f} x the {NEEDED_ORDERS_PER_S:g}/s a 60x session "
          "needs")
    print(f"  bars delivered, stepped flat out   {stepped:9.0f} /s  "
          f"= {stepped / NEEDED_BARS_PER_S:,.0f} x the {NEEDED_BARS_PER_S:g}/s of 20 symbols "
          "at 60x")
    print(f"  bar fan-out latency at 60x         p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
          f"max {worst:.2f} ms over {delays.size} bars "
          f"(budget per bar at 60x: 1000 ms; p99 uses {p99 / 10:.2f}% of it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
