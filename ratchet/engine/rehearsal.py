"""``cli.py paper --sim``: the loopback Alpaca started in this process, and its lockstep driver.

Each rehearsal is a new simulated account with throwaway keys (registered with the
redactor like real ones). With ``--sim-speed 0`` the replay moves one bar each time the
session is idle (``SimDriver``, the session's ``on_idle``) until the session close or
``--sim-minutes``.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from brokers.alpaca.credentials import Credentials
from ratchet.common.alpaca_config import AlpacaConfig
from ratchet.common.config import Settings
from ratchet.common.logs import REDACTOR

if TYPE_CHECKING:
    from brokers.alpaca.store import AlpacaStore
    from brokers.alpaca_sim.testing import SimServer


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


@dataclass(frozen=True)
class Rehearsal:
    """A started loopback Alpaca and what a session against it uses instead of the user's."""

    server: SimServer
    settings: Settings
    alpaca: AlpacaConfig
    credentials: Credentials
    #: the lockstep driver (``speed`` 0), the session's ``on_idle``; None: real-time replay
    driver: SimDriver | None
    max_steps: int | None


def start_rehearsal(data: Path, speed: float, start: str | None, minutes: float | None,
                    settings: Settings, alpaca: AlpacaConfig, every_symbol: bool,
                    clock_poll_set: bool, max_steps: int | None) -> Rehearsal:
    """Start the loopback on ``data`` and adapt the session to it: its URL and keys, every
    symbol it has (``every_symbol``), a request budget and clock poll (unless set) that fit a
    replay far faster than real time, and the stop after ``minutes`` replayed minutes (None:
    the session close)."""
    server = sim_server(data, speed, start, None if every_symbol else settings.symbols,
                        settings.cash).start()
    if every_symbol:
        settings = dataclasses.replace(settings, symbols=tuple(server.book.symbols))
    alpaca = alpaca.replace(base_url=server.base_url, requests_per_minute=60_000.0,
                            clock_poll=alpaca.clock_poll if clock_poll_set else 5.0)
    driver = None
    if speed == 0:
        until = server.now() + timedelta(minutes=minutes) if minutes else session_close(server)
        driver = SimDriver(server, settings.bar_seconds, until)
    elif minutes and max_steps is None:
        max_steps = max(1, int(minutes * 60 // settings.bar_seconds))
    credentials = Credentials(server.key, server.secret, "loopback simulator")
    return Rehearsal(server, settings, alpaca, credentials, driver, max_steps)
