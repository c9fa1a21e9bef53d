"""Shared test helpers: repo paths, bar files, the CLI as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent
BUNDLED_1MIN = REPO / "data" / "bars" / "1Min"


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


def run_cli(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None,
            timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run ``python cli.py ARGS`` and capture its output."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, str(REPO / "cli.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=full_env)


@pytest.fixture
def repo() -> Path:
    """The repository root."""
    return REPO
