"""The replay clock and the bar book: stepped vs N x real time, skipping closed hours, the
default start, and how ``--data`` is resolved."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alpaca.trading.client import TradingClient

from brokers.alpaca_sim.bars import BarBook, resolve_layout
from brokers.alpaca_sim.clock import ReplayClock
from brokers.alpaca_sim.testing import SimServer
from ratchet.common.errors import DataError
from tests.sim.conftest import BARS, DEFAULT_START, wait_for


def test_stepped_clock_moves_only_when_told() -> None:
    clock = ReplayClock(1_000, speed=0)
    assert clock.now_ns() == 1_000 and clock.wall_seconds_until(5_000) is None
    clock.set(2_000)
    assert clock.now_ns() == 2_000
    with pytest.raises(ValueError):
        clock.set(1_500)


def test_running_clock_is_speed_times_wall_time() -> None:
    wall = [100.0]
    clock = ReplayClock(0, speed=60, wall=lambda: wall[0])
    wall[0] += 2.0
    assert clock.now_ns() == 120 * 10**9
    assert clock.wall_seconds_until(180 * 10**9) == pytest.approx(1.0)
    clock.set(600 * 10**9)  # a jump keeps the speed from the new point
    wall[0] += 1.0
    assert clock.now_ns() == 660 * 10**9


def test_default_start_leaves_two_sessions_of_history(book: BarBook) -> None:
    assert book.default_start() == int(DEFAULT_START.timestamp() * 10**9)
    with SimServer(book=book) as sim:
        assert sim.now() == DEFAULT_START
    with SimServer(book=book, start="2025-10-06T13:30:00Z") as sim:
        assert sim.now() == datetime(2025, 10, 6, 13, 30, tzinfo=UTC)


def test_speed_replays_n_times_faster_in_replayed_time(book: BarBook) -> None:
    with SimServer(book=book, speed=120) as sim:
        client = TradingClient(sim.key, sim.secret, paper=True, url_override=sim.base_url)
        w0 = time.monotonic()
        t0 = client.get_clock().timestamp
        time.sleep(0.5)
        t1 = client.get_clock().timestamp
        wall = time.monotonic() - w0  # a loaded machine makes the requests slow
        assert timedelta(seconds=50) <= t1 - t0 <= timedelta(seconds=120 * wall + 1)
        sim.advance(hours=1)  # a jump while running
        assert client.get_clock().timestamp - t1 >= timedelta(hours=1)


def test_skip_closed_jumps_nights(book: BarBook) -> None:
    start = datetime(2025, 10, 3, 19, 59, tzinfo=UTC)  # 15:59 New York, Friday
    with SimServer(book=book, speed=600, start=start, skip_closed=True) as sim:
        wait_for(lambda: sim.now() >= datetime(2025, 10, 6, 13, 30, tzinfo=UTC), timeout=10)
        assert sim.now() < datetime(2025, 10, 6, 14, 30, tzinfo=UTC)


def test_data_layouts(tmp_path: Path) -> None:
    assert resolve_layout(BARS)[0] == BARS / "1Min"
    folder, step, daily = resolve_layout(BARS / "1Min")
    assert (folder, step, daily) == (BARS / "1Min", 60 * 10**9, BARS / "1Day")
    with pytest.raises(DataError, match="does not exist"):
        resolve_layout(tmp_path / "missing")
    with pytest.raises(DataError, match="no intraday bars"):
        resolve_layout(tmp_path)
    with pytest.raises(DataError, match="daily bars"):
        resolve_layout(BARS / "1Day")
    with pytest.raises(DataError, match="NOPE"):
        BarBook.load(BARS, ["ACME", "NOPE"])
