"""A sweep killed with SIGKILL and started again recomputes and duplicates nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from analyzers import load_sweep
from tests.conftest import REPO, run_cli
from tests.sweep.conftest import SMALL, wait_for


def test_sigkill_then_same_command_resumes_without_recomputing(tmp_path: Path) -> None:
    out = tmp_path / "sweeps"
    args = ["sweep", *SMALL, "--grid", "fast=5,8", "--grid", "slow=20,30", "--workers", "1",
            "--min-trades", "1", "--objective", "total_return", "--out", str(out),
            "--no-progress"]
    env = {**os.environ, "SWEEPS_TEST_CELL_DELAY": "0.5"}
    proc = subprocess.Popen([sys.executable, str(REPO / "cli.py"), *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_for(lambda: any(out.glob("*/cells/*.parquet")), 120, "a finished cell")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its local cluster, mid-sweep
        proc.wait(30)
    [folder] = list(out.iterdir())
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
              for p in (folder / "cells").glob("*.parquet")}
    assert 1 <= len(before) < 4
    assert not (folder / "results.parquet").exists()

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    said = " ".join(again.stdout.split())  # rich wraps long lines
    assert f"{len(before)} backtests already done are reused" in said
    assert f"{4 - len(before)} backtests run, {len(before)} reused" in said
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
             for p in (folder / "cells").glob("*.parquet")}
    assert {k: after[k] for k in before} == before  # finished cells untouched
    res = load_sweep(folder).results
    assert len(res) == 4 and res["key"].is_unique
    assert sorted(map(tuple, res[["p_fast_period", "p_slow_period"]].to_numpy().tolist())) == \
        [(5, 20), (5, 30), (8, 20), (8, 30)]
    # A third run finds everything done and starts no cluster at all.
    third = run_cli(*args)
    assert third.returncode == 0 and "Every cell is already done" in " ".join(third.stdout.split())
    assert len(load_sweep(folder).results) == 4
