"""Fixtures for the report tests: run folders written by the real backtest.

``make_run`` runs the real backtest path (``run_backtest``: feed -> Strategy -> SimBroker ->
``analyzers.recorder`` -> run folder) on hand-shaped bars with a scripted signal, so each
trade of a ``RunSpec`` happens as asked and its exit reason comes from the Strategy's own stop
rule (``strategies.rules``), not from a copy of it: bars are flat (ATR exactly 1.0, the fixed
stop 2.0 below the fill); a ``stop`` exit is a bar whose low falls through that stop; a
``trail`` exit is a 10% step up (the trail then binds) and a fall back; a ``signal`` exit is
a scripted SELL. ``real_runs`` runs ``python cli.py backtest`` as a subprocess once per
session and yields its run folders.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from feeds.store import arrays_from_frame
from ratchet.common.config import Settings
from ratchet.engine.backtest import run_backtest
from tests.conftest import REPO
from tests.conftest import run_cli as shared_run_cli

#: (symbol, entry bar index, exit bar index, exit reason)
TradeSpec = tuple[str, int, int, str]
#: bars before bar 0 of a spec, so the ATR (14 bars) is warm when the first trade comes
WARM = 30


@dataclass(frozen=True)
class RunSpec:
    """What a run folder should contain: symbols, span, and the trades (bar indices)."""

    symbols: tuple[str, ...] = ("ACME", "BOLT")
    interval: str = "1Min"
    start: str = "2025-10-01"
    end: str = "2025-10-03"
    trades: tuple[TradeSpec, ...] = (
        ("ACME", 40, 150, "signal"),
        ("BOLT", 60, 200, "trail"),
        ("ACME", 400, 520, "stop"),
        ("ACME", 600, 700, "signal"),
    )
    mode: str = "backtest"
    cash: float = 100_000.0


def _index(spec: RunSpec) -> pd.DatetimeIndex:
    """Weekday sessions (holidays ignored): NY midnight for 1Day, else 09:30-16:00 minutes."""
    days = pd.bdate_range(spec.start, spec.end).tz_localize("America/New_York")
    if spec.interval == "1Day":
        return days.tz_convert("UTC")
    opens = days + pd.Timedelta(hours=9, minutes=30)
    minutes = pd.to_timedelta(np.arange(390), unit="min")
    return pd.DatetimeIndex([t + m for t in opens for m in minutes]).tz_convert("UTC")


def _shaped(spec: RunSpec) -> tuple[dict[str, pd.DataFrame], dict[str, dict[int, float]]]:
    """Flat bars per symbol shaped for its trades, and the scripted signal per symbol."""
    index = _index(spec)
    n = len(index)
    frames, scripts = {}, {}
    for k, sym in enumerate(spec.symbols):
        base = 100.0 + 20 * k
        level = np.full(n, base)
        low_at: dict[int, float] = {}
        script: dict[int, float] = {}
        for s, i, j, reason in spec.trades:
            if s != sym:
                continue
            i, j = i + WARM, j + WARM
            assert j < n, f"trade {s} {i}-{j} past the last bar ({n})"
            script[i] = 1.0
            if reason == "signal":
                script[j] = -1.0
            elif reason == "stop":
                low_at[j] = base - 5.0  # through the fixed stop (2 ATR below the fill)
            else:  # trail: step up so the trail binds, then fall back through it
                level[i + 2 : j + 1] = base * 1.1
                low_at[j] = base  # opens above the trail, trades through it: a winner
        low = level - 0.5
        for j, value in low_at.items():
            low[j] = value
        frames[sym] = pd.DataFrame({
            "timestamp": index, "open": level, "high": level + 0.5, "low": low,
            "close": level, "volume": np.full(n, 10_000.0)})
        scripts[sym] = script
    return frames, scripts


class ScriptedSignal:
    """BUY/SELL on chosen bars of each symbol (told apart by their first close)."""

    name = "scripted"
    warmup = 0

    def __init__(self, by_first_close: dict[float, dict[int, float]]) -> None:
        self.by_first_close = by_first_close

    def compute(self, bars: pd.DataFrame) -> pd.DataFrame:
        sig = np.zeros(len(bars))
        for i, v in self.by_first_close[float(bars["close"].iloc[0])].items():
            sig[i] = v
        return pd.DataFrame({"signal": sig}, index=bars.index)


def write_run_folder(path: Path, spec: RunSpec = RunSpec()) -> Path:
    """Run the real backtest for ``spec`` and leave its run folder at ``path``."""
    frames, scripts = _shaped(spec)
    datasets = {sym: arrays_from_frame(sym, f) for sym, f in frames.items()}
    signal = ScriptedSignal({float(frames[s]["close"].iloc[0]): scripts[s] for s in frames})
    settings = Settings(symbols=spec.symbols, bar_interval=spec.interval, cash=spec.cash,
                        use_limit_orders=False)
    work = path.parent / f".{path.name}.work"
    result = run_backtest(settings, datasets, out=work, signal=signal,
                          session=lambda _t: "regular")
    assert result.run_dir is not None
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(result.run_dir, path)
    shutil.rmtree(work)
    config = json.loads((path / "config.json").read_text())
    config.update(mode=spec.mode, run_id=path.name)
    (path / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    return path


IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def text_of(page: str) -> str:
    """The visible text of a page, whitespace collapsed (good enough for assertions)."""
    page = re.sub(r"<style>.*?</style>", " ", page, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))


def images(page: str) -> list[bytes]:
    """The decoded bytes of every embedded PNG of a page."""
    return [base64.b64decode(m) for m in IMG.findall(page)]


def run_cli(*args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """``tests.conftest.run_cli`` with the report tests' time limit."""
    return shared_run_cli(*args, cwd=cwd, timeout=120)


@pytest.fixture
def make_run(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_run(name, **RunSpec fields)`` writes a synthetic run folder."""

    def make(name: str = "20251124-120000-backtest", **fields: object) -> Path:
        return write_run_folder(tmp_path / "runs" / name, RunSpec(**fields))  # type: ignore[arg-type]

    return make


@pytest.fixture(scope="session")
def real_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two run folders written by the real backtest CLI (quick: two symbols, eight days).

    The second run uses faster moving averages (5/20 instead of 10/30), so the two differ in
    two settings and in their trades.
    """
    out = tmp_path_factory.mktemp("real_runs")
    base = ["backtest", "--out", out, "--symbols", "ACME,BOLT", "--start", "2025-10-01",
            "--end", "2025-10-10", "--no-progress"]
    for extra in ([], ["--fast", "5", "--slow", "20"]):
        proc = run_cli(*base, *extra)
        assert proc.returncode == 0, proc.stderr
    runs = sorted((p for p in out.iterdir() if (p / "config.json").exists()),
                  key=lambda p: json.loads((p / "config.json").read_text())["settings"]
                  ["fast"], reverse=True)
    assert len(runs) == 2, runs
    return runs


@pytest.fixture(scope="session")
def real_empty_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real backtest that cannot trade: 8 daily bars never warm up the 30-bar slow SMA."""
    out = tmp_path_factory.mktemp("real_empty")
    proc = run_cli("backtest", "--out", out, "--symbols", "ACME", "--start", "2025-10-01",
                   "--end", "2025-10-10", "--interval", "1Day", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (p for p in out.iterdir() if (p / "config.json").exists())
    assert pd.read_parquet(run_dir / "trades.parquet").empty
    return run_dir
