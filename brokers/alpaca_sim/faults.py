"""Faults a test scripts into the simulated Alpaca.

Each fault reproduces a failure real Alpaca clients meet (``alpaca-spec/CONTRACT.md`` sections
2, 6, 8, 9): HTTP 429 with rate-limit headers, 500/504, an order accepted whose response is
lost, a duplicate ``client_order_id``, insufficient buying power, an order accepted and then
rejected, partial fills, a stream dropped after N messages, a silent stream.

Use from a test (``sim.faults``) or over HTTP (``POST /_sim/faults`` with
``{"fault": "<method name>", ...keyword arguments}``; ``DELETE /_sim/faults`` clears). All
methods are thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Stream names accepted by the stream faults.
STREAMS = ("data", "trading")


@dataclass
class HttpFault:
    """Answer matching requests with ``status`` (or drop the connection when it is None).

    ``after_handler``: the request is processed first (an order *is* created) and only its
    response is lost. ``times`` counts down; -1 means until cleared.
    """

    status: int | None
    method: str | None = None
    path: str | None = None
    times: int = 1
    after_handler: bool = False
    message: str | None = None

    def matches(self, method: str, path: str) -> bool:
        """Does this fault apply to ``method path``?"""
        if self.method is not None and self.method.upper() != method.upper():
            return False
        if self.path is None:
            return True
        if self.path.endswith("*"):
            return path.startswith(self.path[:-1])
        return path == self.path


@dataclass
class StreamFault:
    """Drop the stream after ``drop_after`` more data messages; mute it until ``silent_until``
    (monotonic seconds; ``inf`` = until cleared)."""

    drop_after: int | None = None
    silent_until: float = 0.0
    #: data frames still to swallow while staying connected (frames lost in a short silence)
    skip_frames: int = 0


class Faults:
    """The scripted faults of one server."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._http: list[HttpFault] = []
        self._orders: list[str] = []
        self._streams: dict[str, StreamFault] = {s: StreamFault() for s in STREAMS}
        self._participation_set = False
        self._participation: float | None = None
        #: Called (from the caller's thread) after every change; the server hooks it.
        self.listener: Callable[[], None] | None = None

    # -- HTTP -----------------------------------------------------------------------------

    def http_error(self, status: int, *, method: str | None = None, path: str | None = None,
                   times: int = 1, message: str | None = None) -> None:
        """Answer the next ``times`` matching requests with ``status`` and Alpaca's error body
        (429 also carries ``X-RateLimit-*`` headers with ``Remaining: 0``). The request is
        not processed."""
        self._add_http(HttpFault(status, method, path, times, False, message))

    def rate_limit(self, *, times: int = 1, method: str | None = None,
                   path: str | None = None) -> None:
        """HTTP 429 ``rate limit exceeded`` for the next ``times`` matching requests."""
        self.http_error(429, method=method, path=path, times=times)

    def server_error(self, status: int = 500, *, times: int = 1, method: str | None = None,
                     path: str | None = None) -> None:
        """HTTP 500 (or 502/503/504) for the next ``times`` matching requests."""
        self.http_error(status, method=method, path=path, times=times)

    def lose_response(self, *, method: str = "POST", path: str = "/v2/orders", times: int = 1,
                      status: int | None = None) -> None:
        """Process the next matching request (the order is accepted) and lose its response:
        drop the connection (``status=None``) or answer ``status`` instead (e.g. 504, which
        alpaca-py retries, so the retry meets ``client_order_id must be unique``)."""
        self._add_http(HttpFault(status, method, path, times, True, None))

    def take_http(self, method: str, path: str, after_handler: bool) -> HttpFault | None:
        """The first matching fault of that phase, consumed once."""
        with self._lock:
            for f in self._http:
                if f.after_handler == after_handler and f.matches(method, path):
                    if f.times > 0:
                        f.times -= 1
                        if f.times == 0:
                            self._http.remove(f)
                    return f
        return None

    # -- orders ---------------------------------------------------------------------------

    def insufficient_buying_power(self, times: int = 1) -> None:
        """Refuse the next ``times`` order submissions with 403 ``insufficient buying power``."""
        self._add_orders("insufficient_buying_power", times)

    def duplicate_client_order_id(self, times: int = 1) -> None:
        """Refuse the next ``times`` order submissions with 422
        ``client_order_id must be unique`` (nothing is created)."""
        self._add_orders("duplicate_client_order_id", times)

    def reject_orders(self, times: int = 1) -> None:
        """Accept the next ``times`` orders (200, ``new``), then reject them: status
        ``rejected`` and a ``rejected`` trade update."""
        self._add_orders("reject", times)

    def take_order_fault(self) -> str | None:
        """The next order-submission fault, consumed."""
        with self._lock:
            return self._orders.pop(0) if self._orders else None

    def partial_fills(self, participation: float | None) -> None:
        """Cap every fill at ``participation x bar volume`` (None: no cap; the rest of the
        order fills on later bars)."""
        if participation is not None and participation <= 0:
            raise ValueError("participation must be > 0")
        with self._lock:
            self._participation_set = True
            self._participation = participation
        self._changed()

    def participation(self) -> tuple[bool, float | None]:
        """(was it set by a fault, value)."""
        with self._lock:
            return self._participation_set, self._participation

    # -- streams --------------------------------------------------------------------------

    def drop_stream(self, stream: str, after: int = 0) -> None:
        """Drop the ``stream`` (``data`` or ``trading``) connection abruptly (no close frame)
        after ``after`` more data messages; 0 drops the open connections now."""
        self._stream(stream).drop_after = max(0, int(after))
        self._changed()

    def silence_stream(self, stream: str, seconds: float | None = None) -> None:
        """Keep ``stream`` connected but deliver no data messages for ``seconds`` of wall
        time (None: until cleared). Control replies (auth, subscriptions) still flow."""
        f = self._stream(stream)
        f.silent_until = float("inf") if seconds is None else time.monotonic() + seconds
        self._changed()

    def skip_frames(self, stream: str, frames: int = 1) -> None:
        """Swallow the next ``frames`` data frames of ``stream`` while staying connected (a
        short silence in a stepped replay: those bars are simply never sent)."""
        if frames < 0:
            raise ValueError("frames must be >= 0")
        self._stream(stream).skip_frames = int(frames)
        self._changed()

    def take_skip(self, stream: str) -> bool:
        """Is this data frame to be swallowed (consumes one)?"""
        with self._lock:
            f = self._streams[stream]
            if f.skip_frames <= 0:
                return False
            f.skip_frames -= 1
            return True

    def stream_silent(self, stream: str) -> bool:
        """Is ``stream`` muted now?"""
        return time.monotonic() < self._streams[stream].silent_until

    def count_stream_messages(self, stream: str, n: int) -> bool:
        """Record ``n`` data messages sent on ``stream``; True when the drop is due now."""
        with self._lock:
            f = self._streams[stream]
            if f.drop_after is None:
                return False
            f.drop_after -= n
            if f.drop_after <= 0:
                f.drop_after = None
                return True
            return False

    def drop_due(self, stream: str) -> bool:
        """A drop with no messages left to wait for (``after=0``), consumed."""
        with self._lock:
            f = self._streams[stream]
            if f.drop_after == 0:
                f.drop_after = None
                return True
            return False

    # -- all ------------------------------------------------------------------------------

    def clear(self) -> None:
        """Remove every fault (partial fills go back to the server's setting)."""
        with self._lock:
            self._http.clear()
            self._orders.clear()
            self._streams = {s: StreamFault() for s in STREAMS}
            self._participation_set = False
            self._participation = None
        self._changed()

    def apply(self, spec: dict[str, Any]) -> None:
        """Apply one fault from JSON: ``{"fault": "rate_limit", "times": 2}``."""
        spec = dict(spec)
        name = spec.pop("fault", None)
        allowed = {"http_error", "rate_limit", "server_error", "lose_response",
                   "insufficient_buying_power", "duplicate_client_order_id", "reject_orders",
                   "partial_fills", "drop_stream", "silence_stream", "skip_frames", "clear"}
        if name not in allowed:
            raise ValueError(f"unknown fault {name!r}; one of {', '.join(sorted(allowed))}")
        getattr(self, name)(**spec)

    def describe(self) -> dict[str, Any]:
        """The pending faults, as JSON."""
        with self._lock:
            return {
                "http": [vars(f).copy() for f in self._http],
                "orders": list(self._orders),
                "streams": {k: {"drop_after": v.drop_after,
                                "silent": time.monotonic() < v.silent_until,
                                "skip_frames": v.skip_frames}
                            for k, v in self._streams.items()},
                "participation": self._participation,
            }

    def _add_http(self, f: HttpFault) -> None:
        if f.status is not None and not 400 <= f.status <= 599:
            raise ValueError("status must be an HTTP error (400-599)")
        with self._lock:
            self._http.append(f)
        self._changed()

    def _add_orders(self, kind: str, times: int) -> None:
        with self._lock:
            self._orders.extend([kind] * int(times))
        self._changed()

    def _stream(self, stream: str) -> StreamFault:
        if stream not in STREAMS:
            raise ValueError(f"stream must be one of {', '.join(STREAMS)}")
        return self._streams[stream]

    def _changed(self) -> None:
        if self.listener is not None:
            self.listener()
