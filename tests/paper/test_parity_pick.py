"""`cli.py parity` picks what it can compare, and says so when it cannot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.report.conftest import RunSpec, write_run_folder

REPO = Path(__file__).resolve().parents[2]


def _parity(arg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "cli.py"), "parity", str(arg)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)


def test_runs_folder_means_the_newest_paper_run_and_others_are_named(tmp_path: Path) -> None:
    """Regression: `parity runs/` took the newest run of any kind, so a backtest made after
    the paper run was refused ('is a backtest'); a sweep folder or its stitched `oos/`
    failed with 'stats.json is missing' / 'bars.parquet ... before parity existed'."""
    runs = tmp_path / "runs"
    write_run_folder(runs / "20261130-100000-paper", RunSpec(mode="paper"))
    write_run_folder(runs / "20261130-110000-backtest", RunSpec())
    proc = _parity(runs)
    # the paper folder was chosen (this synthetic one has no bars.parquet to compare)
    assert proc.returncode == 3 and "20261130-100000-paper/bars.parquet" in proc.stderr, \
        proc.stderr
    oos = write_run_folder(tmp_path / "sw" / "oos", RunSpec(mode="walk-forward-oos"))
    proc = _parity(oos)
    assert proc.returncode == 3 and "is a walk-forward-oos run" in proc.stderr, proc.stderr
    (tmp_path / "sw" / "config.json").write_text('{"kind": "sweep"}')
    proc = _parity(tmp_path / "sw")
    assert proc.returncode == 3 and "is a sweep folder" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
