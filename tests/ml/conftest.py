"""Fixtures for the ML signal tests: seeded bar files, a small trained model, the CLI.

The model is trained once per session on three synthetic symbols over five sessions with few
trees, so the whole folder runs in well under a minute.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from feeds.store import write_bars
from feeds.synthetic import random_walk_bars, trading_minutes
from strategies.ml import (
    TrainedModel,
    build_dataset,
    fit_final,
    load_training_bars,
    save_model,
    walk_forward,
)
from tests.conftest import run_cli as shared_run_cli

REPO = Path(__file__).resolve().parents[2]
SYMBOLS = ("ACME", "BOLT", "CRUX")
HORIZON = 5
SMALL_PARAMS = {"max_iter": 25, "min_samples_leaf": 50}


def make_bars(seed: int, start: str = "2025-10-01", end: str = "2025-10-07") -> pd.DataFrame:
    """Seeded 1-minute regular-hours bars (a random walk with drifting regimes)."""
    return random_walk_bars(trading_minutes(start, end), seed=seed, start_price=50.0 + seed)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bar store folder ``<tmp>/1Min`` with three symbols of five sessions each."""
    root = tmp_path_factory.mktemp("bars") / "1Min"
    for k, sym in enumerate(SYMBOLS):
        write_bars(root / f"{sym}.parquet", make_bars(seed=11 + k))
    return root


@pytest.fixture(scope="session")
def frames(data_dir: Path) -> dict[str, pd.DataFrame]:
    """The bars of ``data_dir`` per symbol."""
    loaded, interval = load_training_bars(data_dir, None)
    assert interval == "1Min"
    return loaded


@pytest.fixture(scope="session")
def trained(frames: dict[str, pd.DataFrame]) -> TrainedModel:
    """A small model trained and validated on ``frames`` (3 folds, horizon 5)."""
    data = build_dataset(frames, HORIZON)
    validation = walk_forward(data, folds=3, gap=HORIZON, horizon=HORIZON, seed=3,
                              params=SMALL_PARAMS)
    return fit_final(data, frames, HORIZON, "1Min", seed=3, params=SMALL_PARAMS,
                     validation=validation)


@pytest.fixture(scope="session")
def model_file(trained: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``trained`` saved to a model file (read-only use: copy it before altering)."""
    return save_model(trained, tmp_path_factory.mktemp("model") / "model.rmodel")


@pytest.fixture
def run_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``tests.conftest.run_cli`` with wide output and none of the caller's RATCHET_ settings."""

    def run(*args: str, cwd: Path = REPO, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return shared_run_cli(*args, cwd=cwd, timeout=timeout, env={"COLUMNS": "160"},
                              isolated=True)

    return run
