"""Backoff with jitter and a token bucket that honours Alpaca's ``X-RateLimit-*`` headers.

Implements Alpaca's documented limits ("Usage limit", alpaca.markets/support/usage-limit-api-calls:
200 trading requests per minute per account; every response carries ``X-RateLimit-Limit``,
``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` in Unix seconds). alpaca-py ignores the
headers and waits a fixed 3 s on a 429; we keep one bucket per lane (trading, market data)
and wait for the announced reset instead.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass
class Backoff:
    """Exponential backoff with full jitter: attempt n waits ``U(base*2^n/2, base*2^n)``,
    capped at ``cap`` seconds. ``reset()`` after a success."""

    base: float = 0.5
    cap: float = 60.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next_delay(self) -> float:
        """The delay before the next attempt (and count the attempt)."""
        ceiling = min(self.cap, self.base * (2 ** self.attempt))
        self.attempt += 1
        return ceiling / 2 + self.rng.random() * ceiling / 2

    def reset(self) -> None:
        """Start again from the base delay."""
        self.attempt = 0


class TokenBucket:
    """A thread-safe token bucket for one request lane.

    ``acquire()`` blocks until a token is free. ``update(headers)`` folds in the server's view:
    when ``X-RateLimit-Remaining`` reaches 0 the bucket waits until ``X-RateLimit-Reset``.
    """

    def __init__(
        self,
        per_minute: float = 200.0,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        name: str = "trading",
        max_block: float = 60.0,
    ) -> None:
        self.rate = per_minute / 60.0
        self.max_block = max_block
        self.capacity = float(burst if burst is not None else max(1.0, per_minute / 4))
        self.tokens = self.capacity
        self._clock, self._wall, self._sleep = clock, wall, sleep
        self._last = clock()
        self._blocked_until = 0.0
        self._lock = threading.Lock()
        self.name = name
        self.waited = 0.0
        #: tokens ordinary requests leave for urgent ones (protective stops); 0: urgent
        #: requests borrow (the balance goes negative and ordinary ones wait it back)
        self.reserve = 0.0
        self._urgent = threading.local()
        self.urgent_sent = 0

    def _refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate)
        self._last = now

    @contextlib.contextmanager
    def urgent(self) -> Iterator[None]:
        """Requests made inside (on this thread) never wait: placing or repairing the stop of
        an open position must not queue behind entries, nor sit out a 429 window (issue 11).
        They still spend a token (the balance may go negative: ordinary requests then wait
        it back), so the lane's average rate is kept."""
        before = getattr(self._urgent, "on", False)
        self._urgent.on = True
        try:
            yield
        finally:
            self._urgent.on = before

    def acquire(self) -> float:
        """Take one token, sleeping as needed; returns the seconds waited."""
        if getattr(self._urgent, "on", False):
            with self._lock:
                self._refill(self._clock())
                self.tokens -= 1.0
                self.urgent_sent += 1
            return 0.0
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                self._refill(now)
                wait = max(0.0, self._blocked_until - now)
                if wait <= 0 and self.tokens >= 1.0 + self.reserve:
                    self.tokens -= 1.0
                    self.waited += waited
                    return waited
                if wait <= 0:
                    wait = (1.0 + self.reserve - self.tokens) / self.rate
            if waited == 0.0:
                logger.info("%s rate limit: waiting %.2fs", self.name, wait)
            self._sleep(wait)
            waited += wait

    def update(self, headers: Mapping[str, str], status: int | None = None) -> None:
        """Apply ``X-RateLimit-Remaining/Reset`` (and a 429) from a response."""
        lower = {k.lower(): v for k, v in headers.items()}
        remaining = lower.get("x-ratelimit-remaining")
        reset = lower.get("x-ratelimit-reset")
        with self._lock:
            now = self._clock()
            if remaining is not None:
                with contextlib.suppress(ValueError):
                    self.tokens = min(self.tokens, float(remaining))
            exhausted = status == 429 or (remaining is not None and remaining.strip() == "0")
            if exhausted:
                delay = 1.0
                if reset is not None:
                    with contextlib.suppress(ValueError):
                        delay = max(0.0, float(reset) - self._wall())
                # never trust a reset further away than one window
                self._blocked_until = max(self._blocked_until,
                                          now + min(delay, self.max_block))
