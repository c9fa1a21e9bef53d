"""``cli.py paper --sim``: the loopback Alpaca started in this process, and its lockstep driver.

Each rehearsal is a new simulated account with throwaway keys (registered with the
redactor like real ones). With ``--sim-speed 0`` the replay moves one bar each time the
session is idle (``SimDriver``, the session's ``on_idle``) until the session close or
``--sim-minutes``.
"""

from __future__ import annotations

import logging
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from common.logs import REDACTOR

if TYPE_CHECKING:
    from brokers.alpaca.store import AlpacaStore
    from brokers.alpaca_sim.testing import SimServer

logger = logging.getLogger(__name__)


class SimDriver:
    """Lockstep replay for ``--sim --sim-speed 0``: one bar per idle loop."""

    def __init__(self, sim: SimServer, bar_seconds: int, until: datetime | None) -> None:
        self.sim = sim
        self.bar = bar_seconds
        self.until = until
        self._steps = -1
        self._at = 0.0

    def __call__(self, store: AlpacaStore) -> None:
        now = time.monotonic()
        if store.status.steps == self._steps and now - self._at < 2.0:
            return  # the last advance's bars are not through yet
        if self.until is not None and self.sim.now() >= self.until:
            store.request_stop()
            return
        self._steps, self._at = store.status.steps, now
        self.sim.advance(seconds=self.bar)


def sim_server(data: Path, speed: float, start: str | None,
               symbols: tuple[str, ...] | None, cash: float) -> SimServer:
    """A loopback Alpaca (not started) replaying ``data`` with fresh throwaway keys."""
    from brokers.alpaca_sim.testing import SimServer

    key, secret = f"SIM{secrets.token_hex(8)}", f"SIM{secrets.token_hex(16)}"
    REDACTOR.add(key, secret)
    # the rehearsal outruns real time: the loopback reports a budget that fits the replay
    return SimServer(data, key=key, secret=secret, start=start, speed=speed, cash=cash,
                     symbols=symbols, rate_limit=10**6)


def session_close(sim: SimServer) -> datetime | None:
    """The close of the replay's current session (None: unknown, run until stopped)."""
    try:
        now = sim.now()
        clock = sim.app.book.calendar
        close = clock.next_close(int(now.timestamp() * 1e9)) if hasattr(clock, "next_close") \
            else None
        if close is not None:
            return datetime.fromtimestamp(close / 1e9, UTC)
    except Exception:  # noqa: BLE001 - a rehearsal without a known close runs until stopped
        return None
    return None
