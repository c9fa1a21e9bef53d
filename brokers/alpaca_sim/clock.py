"""The replay clock: stepped by a test, or running N times faster than real time.

Everything the server reports (``GET /v2/clock``, calendar, bar and order timestamps) is in
this replayed time, so a client that takes time from the broker and from the bars behaves the
same at any speed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

_NS = 1_000_000_000


class ReplayClock:
    """Replayed time in UTC nanoseconds.

    ``speed == 0``: stepped; time moves only through :meth:`set`. ``speed > 0``: replayed time
    runs ``speed`` times faster than the wall clock from the moment of construction; :meth:`set`
    jumps it (forward only).
    """

    def __init__(self, start_ns: int, speed: float = 0.0,
                 wall: Callable[[], float] = time.monotonic) -> None:
        if speed < 0:
            raise ValueError("speed must be >= 0 (0 = stepped)")
        self.speed = float(speed)
        self._wall = wall
        # One tuple, swapped atomically, so readers in other threads never see a torn state.
        self._anchor: tuple[int, float] = (int(start_ns), wall())

    @property
    def stepped(self) -> bool:
        """True when only :meth:`set` moves time."""
        return self.speed == 0.0

    def now_ns(self) -> int:
        """Replayed time now."""
        base, wall0 = self._anchor
        if self.speed == 0.0:
            return base
        return base + int((self._wall() - wall0) * self.speed * _NS)

    def set(self, t_ns: int) -> None:
        """Move replayed time to ``t`` (never backwards)."""
        now = self.now_ns()
        if t_ns < now:
            raise ValueError("the replay clock cannot go backwards")
        self._anchor = (int(t_ns), self._wall())

    def wall_time_of(self, t_ns: int) -> float | None:
        """The wall-clock reading (``wall()``, monotonic seconds) at which replayed time is
        ``t``; None when stepped."""
        if self.speed == 0.0:
            return None
        base, wall0 = self._anchor
        return wall0 + (t_ns - base) / _NS / self.speed

    def wall_seconds_until(self, t_ns: int) -> float | None:
        """Wall-clock seconds until replayed time reaches ``t``; None when stepped."""
        if self.speed == 0.0:
            return None
        return max(0.0, (t_ns - self.now_ns()) / _NS / self.speed)
