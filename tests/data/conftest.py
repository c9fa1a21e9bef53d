"""Fixtures for ``cli.py data``: the CLI as a subprocess, small bar stores and CSV files, and
the loopback Alpaca server replaying the bundled October 2025 minute bars."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from brokers.alpaca_sim.testing import SimServer

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "data" / "bars"
SYMBOLS = ("ACME", "BOLT", "CRUX", "DYNA", "ECHO", "FLUX")
KEY = "test-key-data"
#: A distinctive secret: no test output may ever contain it.
SECRET = "s3cr3t-NEVER-PRINT-ME"
#: After the bundled bars end, so the replayed history is complete.
SIM_END = datetime(2025, 11, 1, tzinfo=UTC)


def run_data(*args: str, env: dict[str, str] | None = None, keys: bool = True,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python cli.py data ARGS`` from the repo root; Alpaca keys from ``env`` only."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("APCA_", "ALPACA_", "RATCHET_"))}
    if keys:
        base.update({"APCA_API_KEY_ID": KEY, "APCA_API_SECRET_KEY": SECRET})
    base.update({"PYTHONUNBUFFERED": "1", "COLUMNS": "200"})
    base.update(env or {})
    proc = subprocess.run([sys.executable, "cli.py", "data", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env=base)
    assert SECRET not in proc.stdout + proc.stderr, "the API secret leaked into the output"
    return proc


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The single ``error: ...`` line of a failed run (no traceback)."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def source_bars(symbol: str) -> pd.DataFrame:
    """The bundled bars the server replays (the truth a download must reproduce)."""
    from feeds.store import read_bars

    return read_bars(BUNDLED / "1Min" / f"{symbol}.parquet")


@pytest.fixture(scope="module")
def data_sim() -> Iterator[SimServer]:
    """The loopback Alpaca server on the bundled bars, its clock after their end."""
    with SimServer(BUNDLED, key=KEY, secret=SECRET, start=None, speed=0.0) as sim:
        sim.advance(to=SIM_END)
        yield sim


@pytest.fixture
def sim_clean(data_sim: SimServer) -> Iterator[SimServer]:
    """The shared server with no scripted faults before and after the test."""
    data_sim.faults.clear()
    yield data_sim
    data_sim.faults.clear()


def write_csv(path: Path, text: str) -> Path:
    """Write a small CSV file (dedented lines) and return its path."""
    lines = [ln.strip() for ln in text.strip().splitlines()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
