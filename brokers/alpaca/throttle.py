"""Backoff with jitter and a token bucket that honours Alpaca's ``X-RateLimit-*`` headers.

Two throttles share the transport's ``Throttle`` interface (``acquire``/``observe``):
``TokenBucket`` (one per lane of the live path, with an urgent lane for protective stops) and
``RateLimiter`` (``data download``: evenly spread requests, back-off after failures, follows a
smaller ``X-RateLimit-Limit``).

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

from ratchet.common.errors import ConfigError

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

    def observe(self, status: int | None, headers: Mapping[str, str]) -> None:
        """The transport's hook after each response (``transport.Throttle``); a network
        failure (``status=None``) tells the bucket nothing."""
        if status is not None:
            self.update(headers, status)

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


def _header_float(headers: Mapping[str, str], name: str) -> float | None:
    value = headers.get(name)
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class RateLimiter:
    """Client-side pacing for Alpaca's per-minute request budget.

    A token bucket refilled at ``per_minute / 60`` tokens a second, holding up to a tenth of
    a minute's budget (so a long download is spread evenly instead of bursting the whole
    minute's budget and then stalling). ``acquire()`` runs before every HTTP request and
    waits when needed; ``observe()`` runs after every response (``status=None`` for a
    connection error) and pauses further requests until ``X-RateLimit-Reset`` when the
    server's budget is spent or a 429 arrives (at most ``max_wait`` seconds per pause), or
    for an exponential back-off after 5xx/connection errors. Clock and sleep are injectable
    so tests run without real waiting.
    """

    def __init__(
        self,
        per_minute: float = 200.0,
        backoff: float = 1.0,
        max_wait: float = 65.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if per_minute <= 0:
            raise ConfigError("--rate-limit must be a positive number of requests per minute")
        self.backoff = float(backoff)
        self.max_wait = float(max_wait)
        self._clock, self._wall, self._sleep = clock, wall, sleep
        self._set_rate(float(per_minute))
        self._tokens = self.capacity
        self._stamp = clock()
        self._not_before = 0.0
        self._failures = 0
        self.requests = 0
        self.throttled = 0
        self.errors = 0
        self.waited = 0.0

    def _set_rate(self, per_minute: float) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, per_minute / 10.0)

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def acquire(self) -> None:
        """Wait until a request may be sent (bucket token and any server-imposed pause)."""
        self._refill()
        wait = max(0.0, self._not_before - self._clock())
        if self._tokens < 1.0:
            wait = max(wait, (1.0 - self._tokens) / self.rate)
        if wait > 0:
            logger.debug("rate limiter: waiting %.2fs", wait)
            self._sleep(wait)
            self.waited += wait
            self._refill()
        self._tokens -= 1.0
        self.requests += 1

    def _until_reset(self, headers: Mapping[str, str]) -> float | None:
        reset = _header_float(headers, "X-RateLimit-Reset")
        if reset is None:
            return None
        return max(0.0, reset - self._wall())

    def _pause(self, seconds: float) -> None:
        self._not_before = max(self._not_before, self._clock() + min(seconds, self.max_wait))

    def observe(self, status: int | None, headers: Mapping[str, str]) -> None:
        """Learn from a response: the server's budget, 429s, server errors."""
        limit = _header_float(headers, "X-RateLimit-Limit")
        if limit and 0 < limit < self.per_minute:
            # The server's plan is smaller than what we were told: follow it.
            self._set_rate(limit)
            self._tokens = min(self._tokens, self.capacity)
        if status == 429:
            self.throttled += 1
            self._failures += 1
            until = self._until_reset(headers)
            self._pause(until if until is not None else self.backoff * 2 ** (self._failures - 1))
            logger.info("rate limited (429); pausing %.2fs",
                        max(0.0, self._not_before - self._clock()))
            return
        if status is None or status >= 500:
            self.errors += 1
            self._failures += 1
            self._pause(self.backoff * 2 ** (self._failures - 1))
            return
        self._failures = 0
        remaining = _header_float(headers, "X-RateLimit-Remaining")
        if remaining is not None and remaining <= 0:
            until = self._until_reset(headers)
            self._pause(until if until is not None else 60.0 / self.rate)
