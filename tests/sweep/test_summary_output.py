"""What `cli.py sweep` prints at the end: complete values in 80 columns, public units."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from rich.console import Console

from sweeps.space import build_space
from sweeps.summary import print_outcome


def _outcome(folder: Path, walk_forward: dict | None = None) -> SimpleNamespace:
    res = pd.DataFrame({
        "phase": ["cell", "cell"], "qualified": [True, True],
        "p_risk_per_trade_pct": [0.01, 0.02], "p_fast_period": [15, 4],
        "p_trail_stop_pct": [0.05459, 0.01436], "objective": [0.462, 0.31],
        "sharpe": [0.754, 0.446], "total_return": [0.1586, 0.0442],
        "max_drawdown": [-0.0461, -0.02], "trade_count": [173, 245],
    })
    return SimpleNamespace(results=res, computed=2, reused=0, seconds=1.0, dsr=0.5,
                           n_trials=2, walk_forward=walk_forward, oos_dir=folder / "oos",
                           folder=folder)


def _printed(outcome: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("COLUMNS", "80")
    buf = io.StringIO()
    space = build_space(["risk_pct=1,2", "fast=4,15", "trail_pct=1,6"], [], [])
    plan = SimpleNamespace(space=space, min_trades=5, objective="calmar")
    print_outcome(outcome, plan, Console(file=buf, width=80), top=10)
    return buf.getvalue()


def test_top_cells_fit_80_columns_without_cutting_a_value(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    """Regression: the sweep printed a rich table that cut headers and values to fit 80
    columns ('risk_p…', 'objecti…'), and split the sweep folder's path across lines."""
    folder = tmp_path / "runs" / "sweeps" / "sweep-2076ae8a35"  # longer than 80 columns
    text = _printed(_outcome(folder), monkeypatch)
    lines = text.splitlines()
    assert all(len(ln) <= 80 for ln in lines if str(folder) not in ln), text
    assert "…" not in text
    for value in ("risk_pct", "trail_pct", "objective", "5.459%", "1%", "0.462", "173"):
        assert value in text, value
    assert f"  {folder}" in lines  # the path whole, on a line of its own


def test_walk_forward_chosen_cells_in_public_units(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    """Regression: the walk-forward table named the chosen cell by its public name but
    showed the stored fraction ('risk_pct=0.02' for 2%)."""
    wf = {"objective": "calmar", "is_objective_mean": 0.3, "oos_objective": 0.1,
          "oos_stats": {"total_return": 0.01, "sharpe": 0.2, "max_drawdown": -0.03,
                        "trade_count": 12},
          "windows": [{"window": 0, "train_start": "2019-01-01", "train_end": "2020-01-01",
                       "test_start": "2020-01-01", "test_end": "2020-04-01",
                       "chosen": {"risk_per_trade_pct": 0.02, "fast_period": 4},
                       "is_objective": 0.3, "oos_objective": 0.1, "oos_total_return": 0.01,
                       "dsr": 0.4, "trials": 8}]}
    text = _printed(_outcome(tmp_path / "sw", wf), monkeypatch)
    assert "risk_pct=2%" in text and "fast=4" in text, text
    assert "risk_pct=0.02" not in text
