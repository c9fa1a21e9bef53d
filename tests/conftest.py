"""Shared test helpers: repo paths, bar files, the bundled bar book, the CLI as a subprocess,
polling."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import pandas as pd
import pytest

if TYPE_CHECKING:
    from brokers.alpaca_sim.bars import BarBook

REPO = Path(__file__).resolve().parent.parent
BUNDLED_1MIN = REPO / "data" / "bars" / "1Min"

T = TypeVar("T")


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto`` (the README's test command): two workers per CPU, at most 8.

    Most tests wait on subprocesses, servers and sockets rather than compute: with one worker
    per CPU the suite used ~1.1 of 2 cores (188 s); with two per CPU 126 s on the same machine.
    ``PYTEST_XDIST_AUTO_NUM_WORKERS`` still wins, as in xdist itself.
    """
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # xdist's own hook reads it
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(2, min(8, 2 * cpus))


def minute_index(n: int, start: str = "2025-10-01 13:30") -> pd.DatetimeIndex:
    """``n`` consecutive 1-minute bar starts (UTC)."""
    return pd.date_range(pd.Timestamp(start, tz="UTC"), periods=n, freq="1min")


def flat_bars(n: int = 60, price: float = 100.0, half_range: float = 0.5,
              volume: float = 10_000.0, start: str = "2025-10-01 13:30") -> pd.DataFrame:
    """Bars with a constant close and a constant range: ATR is exactly ``2 * half_range``."""
    idx = minute_index(n, start)
    return pd.DataFrame({
        "timestamp": idx,
        "open": np.full(n, price),
        "high": np.full(n, price + half_range),
        "low": np.full(n, price - half_range),
        "close": np.full(n, price),
        "volume": np.full(n, volume),
    })


def run_cli(*args: str | Path, cwd: Path = REPO, env: dict[str, str] | None = None,
            timeout: float = 240, isolated: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``python cli.py ARGS`` and capture its output (text).

    ``env`` is added to this process's environment; ``isolated`` first drops the caller's
    ``RATCHET_*`` settings, so only ``env`` sets them.
    """
    base = {k: v for k, v in os.environ.items() if not (isolated and k.startswith("RATCHET_"))}
    full_env = {**base, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg", **(env or {})}
    return subprocess.run([sys.executable, str(REPO / "cli.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=full_env)


def wait_for(pred: Callable[[], T], timeout: float = 10.0, what: str = "condition", *,
             interval: float = 0.02, strict: bool = True) -> T:
    """Poll ``pred`` until it is truthy and return its value. On timeout: fail the test
    naming ``what`` (``strict``), or return the last (falsy) value."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            if strict:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            return value
        time.sleep(interval)


@pytest.fixture(scope="session")
def book() -> BarBook:
    """The bundled sample bars (every symbol, minute and daily), loaded once per worker."""
    from brokers.alpaca_sim.bars import BarBook

    return BarBook.load(REPO / "data" / "bars")


@pytest.fixture
def repo() -> Path:
    """The repository root."""
    return REPO
