"""What a paper session is given and what it returns.

* ``PaperRun``: the user's choices for one session, frozen: ``Settings`` (the strategy),
  ``AlpacaConfig`` (endpoints, feed, timeouts, grace periods, rate limits), the credentials,
  the mode (dry run / ``--live``, ``--once``) and where files go. ``cli.py paper`` builds it
  from flags, ``--config`` and the environment.
* ``SessionHooks``: test and benchmark hooks (another Strategy class, the broker's fill
  fence, a look at the store). The command never passes one: the defaults are production.
* ``PaperResult``: what the session produced.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import backtrader as bt

from brokers.alpaca.credentials import Credentials
from ratchet.common.alpaca_config import AlpacaConfig
from ratchet.common.clock import SYSTEM_CLOCK, Clock
from ratchet.common.config import Settings
from ratchet.common.errors import ConfigError
from strategies.ratchet import RatchetStrategy

if TYPE_CHECKING:
    from brokers.alpaca.store import AlpacaStore
    from brokers.alpaca.streams import StreamStatus

DEFAULT_STATE_DIR = Path("data/realtime")
DEFAULT_LOG_DIR = Path("logs/realtime")


@dataclass(frozen=True)
class PaperRun:
    """One paper session's settings (the command builds it from flags)."""

    settings: Settings
    credentials: Credentials
    alpaca: AlpacaConfig = field(default_factory=AlpacaConfig)
    #: send orders (to the account at ``alpaca.base_url``); False: a dry run
    live: bool = False
    #: reconcile, decide on the latest closed bar, save, exit
    once: bool = False
    #: state file, journal and recorded bars (tied to one account)
    state_dir: Path = DEFAULT_STATE_DIR
    #: audit trail and debug log
    log_dir: Path = DEFAULT_LOG_DIR
    #: folder the run folder is written under (None: none written)
    out: Path | None = Path("runs")
    #: stop after this many bar steps (None: until stopped; ``once`` is one step)
    max_steps: int | None = None
    #: a missing, empty or corrupt journal is moved aside and rebuilt from Alpaca's orders
    rebuild_journal: bool = False


@dataclass(frozen=True)
class SessionHooks:
    """Test and benchmark hooks of a paper session; the defaults are what users run."""

    #: the Strategy class and extra params (tests script their own)
    strategy_cls: type[bt.Strategy] = RatchetStrategy
    strategy_kwargs: Mapping[str, object] = field(default_factory=dict)
    #: the live broker's fill fence in seconds (None: off)
    fence_s: float | None = 0.5
    #: called with the store once it exists (tests drive or inspect it)
    on_store: Callable[[AlpacaStore], None] | None = None
    #: install SIGINT/SIGTERM/SIGHUP handlers (only the main thread of a process may)
    install_signals: bool = True
    #: broker clock speed vs the local monotonic clock; None: 1 for Alpaca hosts, 0 for a
    #: loopback simulator (its replayed time may run at any speed: bar closes + clock reads)
    clock_rate: float | None = None
    #: the local clock of the store, streams and broker (``ratchet.common.clock``; tests
    #: fast-forward it)
    clock: Clock = SYSTEM_CLOCK


@dataclass
class PaperResult:
    """What a paper session produced."""

    mode: str
    run_dir: Path | None
    steps: int
    orders_sent: int
    start_value: float
    end_value: float
    positions: dict[str, dict[str, float]]
    stops: dict[str, dict[str, object]]
    latency: list[float]
    state_path: Path
    audit_path: Path
    reconcile: str = ""
    streams: list[StreamStatus] = field(default_factory=list)
    backfilled: int = 0
    #: False when the shutdown could not reconcile with the broker (state NOT verified)
    reconciled: bool = True
    #: (event kind, seconds) from a fill/cancel event's arrival to its stop's acceptance
    stop_latency: list[tuple[str, float]] = field(default_factory=list)


def check_paper_settings(settings: Settings) -> None:
    """Settings paper trading cannot honour: refused before anything starts."""
    if settings.bar_seconds >= 86_400:
        raise ConfigError(
            f"--interval {settings.bar_interval} is not supported for paper trading: "
            "Alpaca streams minute bars; use 1Min..1Hour (or backtest daily bars)")
    if settings.fractional_shares:
        raise ConfigError(
            "--fractional is not supported for paper trading: Alpaca takes fractional "
            "quantities only on DAY orders and the resting stop is GTC; drop --fractional")
