"""``cli.py train`` and ``backtest --signal ml`` as real subprocesses."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from strategies.ml import load_model
from tests.ml.conftest import SYMBOLS

Run = Callable[..., subprocess.CompletedProcess[str]]


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture(scope="module")
def trained_file(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> tuple[Path, str]:
    """Train through the CLI once for this module: (model path, stdout)."""
    import os
    import sys

    from tests.ml.conftest import REPO

    out = tmp_path_factory.mktemp("cli") / "m.rmodel"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RATCHET_")}
    proc = subprocess.run(
        [sys.executable, str(REPO / "cli.py"), "train", "--data", str(data_dir), "--symbols",
         "ACME,BOLT", "--horizon", "5", "--folds", "2", "--max-iter", "20", "--out", str(out),
         "--seed", "4"],
        capture_output=True, text=True, timeout=180, env={**env, "COLUMNS": "160"}, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


def test_train_writes_a_model_and_reports(trained_file: tuple[Path, str]) -> None:
    path, stdout = trained_file
    model = load_model(path)
    assert model.horizon == 5
    assert set(model.metadata["training"]["symbols"]) == {"ACME", "BOLT"}
    assert model.metadata["training"]["seed"] == 4
    assert len(model.metadata["validation"]["per_fold"]) == 2
    assert len(model.metadata["validation"]["backtest"]) == 2
    for needle in ("Walk-forward validation", "AUC", "Backtest of the signal", "Model saved to",
                   "little or no reliable edge"):
        assert needle in stdout, stdout


def test_backtest_with_the_trained_model(trained_file: tuple[Path, str], data_dir: Path,
                                         tmp_path: Path, run_cli: Run) -> None:
    path, _ = trained_file
    proc = run_cli("backtest", "--data", str(data_dir), "--symbols", ",".join(SYMBOLS),
                   "--signal", "ml", "--model", str(path), "--ml-enter", "0.52",
                   "--ml-exit", "0.48", "--out", str(tmp_path / "runs"), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "signal ml" in proc.stdout
    # the model saw these bars: the run warns that it is in-sample
    assert "in-sample" in proc.stderr
    # ...in New York time like every other time the CLI shows (was '13:30:00+00:00' reprs)
    warning = next(ln for ln in proc.stderr.splitlines() if "in-sample" in ln)
    assert "(New York time)" in warning and "+00:00" not in warning, warning


@pytest.mark.parametrize("content", [b"", b"garbage" * 100, None])
def test_backtest_with_a_bad_model_is_one_line(content: bytes | None, tmp_path: Path,
                                               data_dir: Path, run_cli: Run) -> None:
    bad = tmp_path / "bad.file"
    if content is not None:
        bad.write_bytes(content)
    proc = run_cli("backtest", "--data", str(data_dir), "--signal", "ml", "--model", str(bad),
                   "--out", str(tmp_path / "runs"), "--no-progress")
    line = _one_line_error(proc)
    assert str(bad) in line and "cli.py train" in line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_train_rejects_a_gap_shorter_than_the_horizon(data_dir: Path, tmp_path: Path,
                                                      run_cli: Run) -> None:
    proc = run_cli("train", "--data", str(data_dir), "--horizon", "10", "--gap", "3",
                   "--out", str(tmp_path / "m.rmodel"))
    assert "--gap 3 is shorter than --horizon 10" in _one_line_error(proc)
    assert not (tmp_path / "m.rmodel").exists()


def test_train_unknown_symbol(data_dir: Path, tmp_path: Path, run_cli: Run) -> None:
    proc = run_cli("train", "--data", str(data_dir), "--symbols", "NOPE",
                   "--out", str(tmp_path / "m.rmodel"))
    assert "NOPE" in _one_line_error(proc)


def test_train_tables_fit_80_columns_without_folding_a_value() -> None:
    """Regression: the walk-forward table took 83 columns, so an 80-column terminal folded
    values mid-number ('17,49' over '0', '0.51' over '3')."""
    import io

    import pandas as pd
    from rich.console import Console

    from ratchet.commands.train import FoldBacktest, backtest_table, validation_table
    from strategies.ml import Fold, FoldResult, Validation

    t0, t1 = pd.Timestamp("2025-10-06 18:55", tz="UTC"), pd.Timestamp("2025-10-10 17:49",
                                                                        tz="UTC")
    m = {"rows": 8970, "base_rate": 0.485, "accuracy": 0.504, "auc": 0.513,
         "buy_share": 0.492, "buy_hit_rate": 0.491}
    folds = [FoldResult(Fold(i, 1, 2, 3), None, 17490, t0, t1, m) for i in (1, 2)]
    stats = {"trade_count": 1544, "win_rate": 0.325, "total_return": -0.0018,
             "max_drawdown": -0.0444, "sharpe": -6.37}
    for table in (validation_table(Validation(folds, m, 15, 0.55, 0.45)),
                  backtest_table([FoldBacktest(1, t0, t1, stats, -0.0403)])):
        buf = io.StringIO()
        Console(file=buf, width=80).print(table)
        lines = [ln.rstrip() for ln in buf.getvalue().splitlines()]
        assert all(len(ln) <= 80 for ln in lines)
        rows = [ln for ln in lines if ln.strip()[:1].isdigit()]
        assert rows and all("10-06 18:55" not in ln for ln in rows)  # New York time shown
        assert any("17,490" in ln or " 1544 " in ln for ln in rows), lines
        assert not [ln for ln in lines if ln.strip() and ln.strip() in ("0", "3", "1")], lines
