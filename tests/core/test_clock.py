"""``ratchet.common.clock``: the injectable local clock (issue 14, point 4)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from ratchet.common.clock import SYSTEM_CLOCK, FastForwardClock, ManualClock


def test_system_clock_is_the_real_one() -> None:
    before = time.monotonic()
    assert before <= SYSTEM_CLOCK.monotonic() <= time.monotonic()
    assert abs((SYSTEM_CLOCK.now() - datetime.now(UTC)).total_seconds()) < 1.0
    assert SYSTEM_CLOCK.now().tzinfo is not None


def test_fast_forward_jumps_without_sleeping() -> None:
    clock = FastForwardClock()
    t0, w0 = clock.monotonic(), clock.now()
    clock.advance(30.0)
    assert clock.monotonic() - t0 >= 30.0
    assert clock.now() - w0 >= timedelta(seconds=30)
    assert clock.monotonic() - t0 < 31.0  # and real time still runs under it


def test_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock(start=5.0, wall=datetime(2025, 10, 3, 13, 30, tzinfo=UTC))
    assert clock.monotonic() == 5.0
    clock.sleep(2.5)  # returns at once, time moved
    clock.advance(0.5)
    assert clock.monotonic() == 8.0
    assert clock.now() == datetime(2025, 10, 3, 13, 30, 3, tzinfo=UTC)
