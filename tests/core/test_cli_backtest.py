"""`python cli.py backtest` as a user runs it: a subprocess, real files, exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from analyzers import latest_run, load_run
from feeds.store import write_bars
from tests.conftest import BUNDLED_1MIN, flat_bars, run_cli


def _assert_one_line_error(proc, *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_backtest_on_bundled_data_writes_a_run_folder(tmp_path: Path) -> None:
    proc = run_cli("backtest", "--symbols", "ACME,BOLT", "--start", "2025-10-06",
                   "--end", "2025-10-10", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "Backtest summary" in proc.stdout and "Total return" in proc.stdout
    run = load_run(latest_run(tmp_path))
    assert run.config["symbols"] == ["ACME", "BOLT"]
    assert run.equity.timestamp.min().isoformat().startswith("2025-10-06")
    assert run.equity.timestamp.max().isoformat().startswith("2025-10-10")
    assert len(run.trades) > 0 and set(run.trades.exit_reason) <= {"signal", "stop", "trail"}
    stats = json.loads((run.path / "stats.json").read_text())
    for key in ("total_return", "cagr", "sharpe", "sortino", "max_drawdown",
                "max_drawdown_duration_days", "win_rate", "profit_factor", "exposure",
                "trade_count"):
        assert key in stats
    assert f"Run folder:\n  {run.path}\n" in proc.stdout  # the path whole, on its own line


def test_flags_reach_the_strategy(tmp_path: Path) -> None:
    proc = run_cli("backtest", "--symbols", "ACME", "--end", "2025-10-03", "--risk", "1",
                   "--max-positions", "1", "--market-orders", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    run = load_run(latest_run(tmp_path))
    s = run.config["settings"]
    assert s["risk_pct"] == 1 and s["max_positions"] == 1  # public names and units
    assert s["limit_orders"] is False
    assert set(run.orders[run.orders.purpose == "entry"].type) == {"market"}


def test_config_file_and_interval_resampling(tmp_path: Path) -> None:
    cfg = tmp_path / "r.toml"
    cfg.write_text("fast_period = 5\nslow_period = 20\n")
    proc = run_cli("backtest", "--symbols", "ACME", "--interval", "5Min", "--config", str(cfg),
                   "--out", str(tmp_path / "runs"))
    assert proc.returncode == 0, proc.stderr
    run = load_run(latest_run(tmp_path / "runs"))
    assert run.config["settings"]["fast"] == 5
    steps = run.equity.timestamp.diff().dropna().dt.total_seconds()
    assert steps.min() == 300


def test_broken_parquet_file(tmp_path: Path) -> None:
    shutil.copy(BUNDLED_1MIN / "ACME.parquet", tmp_path / "ACME.parquet")
    (tmp_path / "BAD.parquet").write_bytes(b"not parquet at all")
    proc = run_cli("backtest", "--data", str(tmp_path), "--out", str(tmp_path / "runs"))
    _assert_one_line_error(proc, "BAD.parquet", "not a readable Parquet file")
    assert proc.returncode == 3
    assert not (tmp_path / "runs").exists()  # nothing half-written


def test_missing_column(tmp_path: Path) -> None:
    flat_bars(50).drop(columns=["close"]).to_parquet(tmp_path / "X.parquet")
    proc = run_cli("backtest", "--data", str(tmp_path))
    _assert_one_line_error(proc, "X.parquet", "missing column(s) close")


def test_bad_row_and_drop_bad_rows(tmp_path: Path) -> None:
    f = flat_bars(80)
    f.loc[12, "high"] = 1.0
    f.to_parquet(tmp_path / "X.parquet")
    proc = run_cli("backtest", "--data", str(tmp_path), "--out", str(tmp_path / "r"))
    _assert_one_line_error(proc, "X.parquet: row 12", "high < low")
    ok = run_cli("backtest", "--data", str(tmp_path), "--drop-bad-rows", "--out",
                 str(tmp_path / "r"))
    assert ok.returncode == 0, ok.stderr
    assert "dropping row 12" in ok.stderr


def test_unknown_symbol() -> None:
    proc = run_cli("backtest", "--symbols", "ACME,NOPE")
    _assert_one_line_error(proc, "no bars for NOPE", "available symbols are ACME")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--start", "2025-10-20", "--end", "2025-10-01"], "is after --end"),
        (["--start", "last tuesday"], "bad date 'last tuesday'"),
        (["--risk-pct", "50"], "risk_pct: 50 must be in (0, 20]"),
        (["--fast", "40"], "need 0 < fast < slow"),
        (["--signal", "ml"], "--model"),
    ],
)
def test_bad_options_are_one_line_errors(args: list[str], needle: str) -> None:
    _assert_one_line_error(run_cli("backtest", *args), needle)


def test_unknown_flag_is_a_usage_error() -> None:
    proc = run_cli("backtest", "--rsik", "2")
    assert proc.returncode == 2 and "No such option '--rsik'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_existing_runs_are_never_overwritten(tmp_path: Path) -> None:
    data = tmp_path / "d"
    write_bars(data / "X.parquet", flat_bars(50))
    for _ in range(2):
        proc = run_cli("backtest", "--data", str(data), "--out", str(tmp_path / "r"))
        assert proc.returncode == 0
    assert len(list((tmp_path / "r").iterdir())) == 2


def test_daily_folder_trades_at_its_own_interval(tmp_path: Path) -> None:
    proc = run_cli("backtest", "--data", "data/bars/1Day", "--symbols", "ACME", "--start",
                   "2024-01-01", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    run = load_run(latest_run(tmp_path))
    assert run.config["interval"] == "1Day"
    assert (run.equity.timestamp.dt.hour.isin([4, 5])).all()  # New York midnight in UTC
