"""What a request handler may use of the running simulator, as a Protocol.

The route modules (``rest_trading``, ``rest_data``, ``rest_control``) and ``httputil`` type the
server they are handed against ``SimContext``, never against ``server.SimApp``: the server
imports them, nothing imports the server back. ``server.SimApp`` is the one implementation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from brokers.alpaca_sim.bars import BarBook
from brokers.alpaca_sim.clock import ReplayClock
from brokers.alpaca_sim.faults import Faults
from brokers.alpaca_sim.market import Market


@dataclass(frozen=True)
class ServerOptions:
    """Server-level knobs (the market's are ``MarketOptions``)."""

    key: str = "test-key"
    secret: str = "test-secret"
    #: Requests per minute reported in ``X-RateLimit-Limit`` (Alpaca: 200).
    rate_limit: int = 200
    #: Answer 429 beyond ``rate_limit`` requests per wall-clock minute (off by default, so
    #: fast replays are not throttled; use the ``rate_limit`` fault for scripted 429s).
    enforce_rate_limit: bool = False
    #: Authenticated connections per key on each stream (Alpaca: 1).
    max_stream_connections: int = 1
    #: With speed > 0: jump over closed periods (nights, weekends) instead of waiting them out.
    skip_closed: bool = False
    #: Most bars one ``/v2/stocks/bars`` page holds, whatever ``limit`` asks (Alpaca: 10000;
    #: smaller values make clients follow ``next_page_token``).
    max_page_size: int = 10_000
    #: Keep account, orders, positions and the replay time in this JSON file (atomic writes
    #: after every change), and resume from it at start: a restarted server remembers, as
    #: Alpaca does. None: nothing is kept.
    state_path: Path | None = None
    #: Simulated network round trip in wall milliseconds: each REST request is handled half
    #: of it after it arrived and answered the other half later; each stream message is sent
    #: half of it after it was published (in order). 0: loopback speed. Real Alpaca from a
    #: home or cloud machine: ~10-80 ms.
    latency_ms: float = 0.0


class SimContext(Protocol):
    """The simulator as request handlers see it (``server.SimApp`` implements it)."""

    book: BarBook
    options: ServerOptions
    clock: ReplayClock
    market: Market
    faults: Faults

    @property
    def key(self) -> str:
        """The API key id clients must present."""
        ...

    def schedule(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` on the server loop right after the current request."""
        ...

    async def advance_to(self, t_ns: int) -> int:
        """Move replayed time to ``t_ns``; the market's time once everything is published."""
        ...

    def updated_bar(self, symbol: str, start_ns: int | None,
                    changes: dict[str, Any]) -> dict[str, float]:
        """Publish an updated bar; the bar sent."""
        ...
