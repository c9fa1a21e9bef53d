"""A sweep on a real multi-process Dask cluster, as a user runs one."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import psutil

from analyzers import latest_run, load_run, load_sweep
from ratchet.common.config import Settings
from sweeps.cell import CellTask, execute, load_bars
from tests.conftest import BUNDLED_1MIN, REPO, run_cli
from tests.sweep.conftest import SMALL, wait_for

STATS = ("total_return", "cagr", "sharpe", "sortino", "max_drawdown",
         "max_drawdown_duration_days", "win_rate", "profit_factor", "exposure", "avg_exposure",
         "trade_count", "start", "end", "start_value", "end_value", "bars", "trading_days",
         "open_positions")


def _worker_process(nanny_pid: int) -> psutil.Process:
    """The worker process a ``dask worker`` nanny runs (not its resource tracker)."""
    def find() -> psutil.Process | None:
        for child in psutil.Process(nanny_pid).children(recursive=True):
            cmd = " ".join(child.cmdline())
            if "spawn_main" in cmd or "forkserver" in cmd:
                return child
        return None

    wait_for(lambda: find() is not None, 60, "the worker process")
    proc = find()
    assert proc is not None
    return proc


def test_sweep_on_a_cluster_survives_a_killed_worker_and_cells_equal_backtest(
        tmp_path: Path, dask_cluster: dict) -> None:
    out = tmp_path / "sweeps"
    worker = _worker_process(dask_cluster["workers"][0].pid)
    proc = subprocess.Popen(
        [sys.executable, "cli.py", "sweep", "--scheduler", dask_cluster["address"], *SMALL,
         "--grid", "fast=5,8,10", "--grid", "slow=20,30", "--min-trades", "1",
         "--objective", "total_return", "--out", str(out),
         "--name", "s", "--no-progress"],
        cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    cells = out / "s" / "cells"
    # Kill a worker mid-sweep, once it has finished a cell (cells sleep 0.4 s each on the
    # workers, so it is busy with its next one).
    def worker_finished_a_cell() -> bool:
        for part in cells.glob("*.parquet"):
            with contextlib.suppress(Exception):  # a part being renamed into place
                if int(pd.read_parquet(part, columns=["pid"])["pid"].iloc[0]) == worker.pid:
                    return True
        return False

    wait_for(worker_finished_a_cell, 120, "a cell finished by the worker to kill")
    done_before_kill = len(list(cells.glob("*.parquet")))
    os.kill(worker.pid, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr + stdout
    assert done_before_kill < 6, "the kill came after the sweep: no mid-sweep failure tested"
    sweep = load_sweep(out / "s")
    res = sweep.results
    assert len(res) == 6 and res["key"].is_unique
    assert len(list(cells.glob("*.parquet"))) == 6
    assert worker.pid in set(res["pid"])  # the killed worker had taken part
    # Same final table as the cells run one by one in this process, on the same bars.
    datasets = load_bars(str(BUNDLED_1MIN), ("ACME", "BOLT"), "1Min",
                         int(pd.Timestamp("2025-10-07 23:59:59.999999",
                                                            tz="UTC").value), False)
    base = Settings(symbols=("ACME", "BOLT"))
    start_ns = int(pd.Timestamp("2025-10-06", tz="UTC").value)
    for row in res.to_dict("records"):
        params = json.loads(row["params"])
        local = execute(CellTask("k", "cell", -1, base.replace(**params), params, start_ns,
                                 None), datasets)
        assert json.loads(local["stats"]) == json.loads(row["stats"]), params
    # And a cell's stats equal `cli.py backtest` with those settings, exactly.
    best = sweep.top(1).iloc[0]
    p = json.loads(best["params"])
    bt = run_cli("backtest", *SMALL, "--fast", str(p["fast_period"]), "--slow",
                 str(p["slow_period"]), "--out", str(tmp_path / "runs"))
    assert bt.returncode == 0, bt.stderr
    run_stats = load_run(latest_run(tmp_path / "runs")).stats
    cell_stats = json.loads(best["stats"])
    for key in STATS:
        assert cell_stats[key] == run_stats[key], key
