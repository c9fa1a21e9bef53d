"""Fixtures for the paper-trading tests: the loopback Alpaca and a lockstep session runner.

Every test talks to ``brokers.alpaca_sim`` through the real alpaca-py client. The API keys
are SENTINEL values: ``test_leaks.py`` asserts they never appear in logs, audit, state or
output.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from brokers.alpaca.credentials import Credentials
from brokers.alpaca_sim.bars import BarBook
from brokers.alpaca_sim.testing import SimServer
from ratchet.common.alpaca_config import AlpacaConfig
from ratchet.common.config import Settings
from ratchet.common.logs import REDACTOR
from ratchet.engine.paper import run_paper
from ratchet.engine.paper_run import PaperResult, PaperRun, SessionHooks
from tests.conftest import wait_for

REPO = Path(__file__).resolve().parents[2]
BARS = REPO / "data" / "bars"
SYMBOLS = ("ACME", "BOLT", "CRUX")
SENTINEL_KEY = "SENTINELKEYID7F3A91"
SENTINEL_SECRET = "SENTINEL-SECRET-c0ffee-8d2b"
#: the bundled bars' 3rd session opens here: two sessions of warm-up before it
REPLAY_START = datetime(2025, 10, 3, 13, 30, tzinfo=UTC)


class PostCounter:
    """Counts order submissions (POST /v2/orders) and replacements that reach the market."""

    def __init__(self, sim: SimServer) -> None:
        self.posts: Counter[str] = Counter()
        self.patches: Counter[str] = Counter()
        market = sim.market
        submit, replace = market.submit, market.replace

        def counted_submit(req: Any) -> Any:
            self.posts[str(req.client_order_id)] += 1
            return submit(req)

        def counted_replace(order_id: str, req: Any) -> Any:
            self.patches[str(getattr(req, "client_order_id", ""))] += 1
            return replace(order_id, req)

        market.submit = counted_submit  # type: ignore[method-assign]
        market.replace = counted_replace  # type: ignore[method-assign]

    def duplicates(self) -> dict[str, int]:
        """Client order ids that reached the market more than once."""
        return {c: n for c, n in self.posts.items() if n > 1}


@pytest.fixture
def sim(book: BarBook) -> Iterator[SimServer]:
    """A stepped loopback Alpaca with SENTINEL keys, started at ``REPLAY_START``."""
    server = SimServer(book=book, key=SENTINEL_KEY, secret=SENTINEL_SECRET,
                       start=REPLAY_START, rate_limit=10**6)  # replays outrun 200/min
    server.start()
    server.posts = PostCounter(server)  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def creds() -> Credentials:
    """The sentinel key pair, registered with the redactor."""
    return Credentials(SENTINEL_KEY, SENTINEL_SECRET, "test").register(REDACTOR)


class Lockstep:
    """Advances the stepped sim one bar each time the session is idle (the ``--sim`` driver),
    calling ``hooks[n]`` right before the n-th advance."""

    def __init__(self, sim: SimServer, minutes: int,
                 hooks: dict[int, Callable[[], None]] | None = None,
                 patience: float = 8.0, bar_minutes: int = 1) -> None:
        self.sim = sim
        self.patience = patience
        self.bar_minutes = bar_minutes
        self.minutes = minutes
        self.hooks = hooks or {}
        self.advances = 0
        self.store: Any = None
        self._steps = -1
        self._at = 0.0

    def __call__(self) -> None:
        store = self.store
        if store is None:
            return
        now = time.monotonic()
        if store.status.steps == self._steps and now - self._at < self.patience:
            return  # the last bar has not reached the Strategy yet (e.g. a reconnect)
        if self.advances * self.bar_minutes >= self.minutes:
            store.request_stop()
            return
        hook = self.hooks.get(self.advances)
        if hook is not None:
            hook()
        self._steps, self._at = store.status.steps, now
        self.advances += 1
        self.sim.advance(minutes=self.bar_minutes)


def session(sim: SimServer, creds: Credentials, root: Path, minutes: int, live: bool = True,
            symbols: tuple[str, ...] = SYMBOLS, hooks: dict[int, Callable[[], None]] | None = None,
            **extra: Any) -> PaperResult:
    """Run ``run_paper`` in this process against ``sim`` for ``minutes`` replayed minutes.

    ``extra``: ``settings``, ``alerts``, ``PaperRun``, ``AlpacaConfig`` or ``SessionHooks``
    fields by name."""
    settings = extra.pop("settings", None) or Settings(symbols=symbols)
    driver = Lockstep(sim, minutes, hooks, bar_minutes=max(1, settings.bar_seconds // 60))
    also = extra.pop("on_store", None)

    def on_store(store: Any) -> None:
        driver.store = store
        if also is not None:
            also(store)

    run, hooks_ = paper_run(sim, creds, root, settings, live=live, on_store=on_store, **extra)
    return run_paper(run, hooks=hooks_, on_idle=lambda _store: driver(),
                     alerts=extra.get("alerts"))


def paper_run(sim: SimServer, creds: Credentials, root: Path, settings: Settings,
              **extra: Any) -> tuple[PaperRun, SessionHooks]:
    """(run, hooks) of a test session against ``sim`` in ``root``: files under
    ``root``, lockstep-friendly timings, ``extra`` routed to ``PaperRun``, ``AlpacaConfig``
    or ``SessionHooks`` by field name (``alerts`` is the caller's)."""
    extra.pop("alerts", None)
    cfg = {"base_url": sim.base_url, "data_stream_url": sim.data_stream_url,
           "trading_stream_url": sim.trading_stream_url, "warmup_days": 5, "clock_poll": 1.0,
           "stream_silence": 30.0, "requests_per_minute": 60_000.0}
    run: dict[str, Any] = {"state_dir": root / "state", "log_dir": root / "logs",
                           "out": root / "runs"}
    hook: dict[str, Any] = {"install_signals": False}
    for name, value in extra.items():
        target = cfg if name in ALPACA_FIELDS else run if name in RUN_FIELDS else \
            hook if name in HOOK_FIELDS else None
        if target is None:
            raise TypeError(f"session(): unknown option {name!r}")
        target[name] = value
    return (PaperRun(settings=settings, credentials=creds, alpaca=AlpacaConfig(**cfg), **run),
            SessionHooks(**hook))


ALPACA_FIELDS = frozenset(f.name for f in dataclasses.fields(AlpacaConfig))
RUN_FIELDS = frozenset(f.name for f in dataclasses.fields(PaperRun))
HOOK_FIELDS = frozenset(f.name for f in dataclasses.fields(SessionHooks))


def decisions(audit: pd.DataFrame, since: datetime | None = None) -> list[tuple[Any, ...]]:
    """(bar time, symbol, action, reason, qty) of every Strategy decision in an audit trail."""
    rows = audit[audit["kind"] == "decision"]
    out = []
    for r in rows.itertuples():
        when = pd.Timestamp(r.time)
        if since is not None and when < pd.Timestamp(since):
            continue
        qty = None if pd.isna(r.qty) or r.qty == "" else round(float(r.qty), 6)
        out.append((when.isoformat(), r.symbol, r.action, str(r.reason), qty))
    return out


#: ``wait_for`` that returns the falsy value on timeout instead of failing (callers assert)
wait_until = functools.partial(wait_for, strict=False)


