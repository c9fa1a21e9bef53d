"""The local clock as an injectable object (issue 14, point 4).

The live path measures durations (grace periods, backoff, timeouts, watchdogs) with a
monotonic clock and, where it needs a time of day before the broker has told it one, the
local UTC time. Components take a ``Clock`` (``SYSTEM_CLOCK`` by default) instead of calling
``time.monotonic()`` / ``datetime.now()`` themselves, so a test can move time forward instead
of sleeping through a grace period (``FastForwardClock``) or drive it by hand
(``ManualClock``). The broker's own time of day still comes from Alpaca's clock and the bars
(``brokers/alpaca/store.py``).
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Monotonic seconds, the local UTC time, and a sleep measured on the same clock."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never goes back."""
        ...

    def now(self) -> datetime:
        """The local time of day (UTC, aware)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic``, ``datetime.now(UTC)``, ``time.sleep``."""

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    def now(self) -> datetime:
        """``datetime.now(UTC)``."""
        return datetime.now(UTC)

    def sleep(self, seconds: float) -> None:
        """``time.sleep(seconds)``."""
        time.sleep(seconds)


#: the default of every component that takes a clock
SYSTEM_CLOCK: Clock = SystemClock()


class FastForwardClock(SystemClock):
    """Real time plus an offset a test moves forward (``advance``): loops that wait on real
    events (a socket, a queue) keep working, and a grace period passes without sleeping."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._offset = 0.0

    def advance(self, seconds: float) -> None:
        """Jump ``seconds`` ahead (thread-safe)."""
        with self._lock:
            self._offset += seconds

    def monotonic(self) -> float:
        """Real monotonic seconds plus the offset."""
        return time.monotonic() + self._offset

    def now(self) -> datetime:
        """Real UTC time plus the offset."""
        return datetime.now(UTC) + timedelta(seconds=self._offset)


class ManualClock:
    """Time that moves only when told to: ``advance``, or ``sleep`` (which returns at once)."""

    def __init__(self, start: float = 1000.0,
                 wall: datetime = datetime(2025, 1, 2, 15, 0, tzinfo=UTC)) -> None:
        self._lock = threading.Lock()
        self._t = start
        self._start = start
        self._wall = wall

    def advance(self, seconds: float) -> None:
        """Move time ``seconds`` forward."""
        with self._lock:
            self._t += seconds

    def monotonic(self) -> float:
        """The current time."""
        return self._t

    def now(self) -> datetime:
        """The start time of day plus the time advanced."""
        return self._wall + timedelta(seconds=self._t - self._start)

    def sleep(self, seconds: float) -> None:
        """Advance instead of waiting."""
        self.advance(max(0.0, seconds))
