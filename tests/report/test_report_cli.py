"""``python cli.py report`` end to end, on run folders written by the real backtest CLI."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from analyzers import load_run
from analyzers.report import format_stat
from tests.report.conftest import images, run_cli, text_of


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    """DataError's contract: exit code 3 and one line on stderr, no traceback."""
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    for needle in needles:
        assert needle in err, err


def test_one_run_writes_self_contained_page_into_run_folder(real_runs: list[Path]) -> None:
    run_dir = real_runs[0]
    proc = run_cli("report", run_dir)
    assert proc.returncode == 0, proc.stderr
    out = run_dir / "report.html"
    assert proc.stdout.strip().splitlines()[-1] == str(out)
    page = out.read_text(encoding="utf-8")
    run = load_run(run_dir)
    text = text_of(page)

    # Self-contained: every image is an embedded PNG, nothing is fetched from anywhere.
    pngs = images(page)
    assert len(pngs) >= 7  # equity, drawdown, daily, trade returns, trades, 2 close-ups
    assert all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "<link" not in page and "<script" not in page

    # Header: run id, mode, symbols, period in New York time, key settings.
    assert run.name in text and "backtest" in text
    assert "ACME, BOLT" in text
    assert "2025-10-01 09:30 → 2025-10-10 15:59" in text
    assert "MA 10/30 crossover" in text and "2% risk per trade" in text
    for section in ("Equity vs buy-and-hold", "Drawdown", "Monthly returns", "Daily returns",
                    "Exit reasons", "Trades on price", "Best trade", "Worst trade",
                    "All statistics", "Settings"):
        assert section in text, section

    # Stats come from stats.json, formatted.
    for key in ("total_return", "sharpe", "max_drawdown", "win_rate", "end_value"):
        assert format_stat(key, run.stats[key]) in text, key
    assert f"Trade list ({len(run.trades)})" in text
    for sym, qty in (run.stats.get("open_positions") or {}).items():
        assert f"Still open at the end (not a closed round trip; its panel shows the price " \
            f"and the stop): {sym} {qty:,.4g} shares" in text

    # Exit-reason rows carry the counts and P&L of trades.parquet.
    for reason, group in run.trades.groupby("exit_reason"):
        n, pnl = len(group), group["pnl"].sum()
        row = re.search(rf"{reason}</td><td>(\d+) <small>.*?<td class=\"\w*\">([-+])\$([\d,.]+)",
                        page)
        assert row, reason
        assert int(row.group(1)) == n
        assert float(row.group(3).replace(",", "")) == pytest.approx(abs(pnl), abs=0.01)
        assert row.group(2) == ("-" if pnl < 0 else "+")


def test_several_runs_are_compared_side_by_side(real_runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "sub" / "compare.html"
    proc = run_cli("report", *real_runs, "--output", out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(out)
    page = out.read_text(encoding="utf-8")
    text = text_of(page)
    runs = [load_run(p) for p in real_runs]

    assert "Comparison of 2 runs" in text
    assert 'href="#compare"' in page
    for run in runs:
        assert f'<section class="run" id="{run.name}">' in page
        assert format_stat("total_return", run.stats["total_return"]) in text
    assert runs[0].stats["trade_count"] != runs[1].stats["trade_count"]
    # The settings that differ between the two runs are listed with both values.
    differ = page[page.index("Settings that differ"):]
    differ = text_of(differ[: differ.index("</table>")])
    assert "fast 10 5" in differ and "slow 30 20" in differ  # public setting names
    assert "risk_pct" not in differ
    # One comparison chart plus each run's own charts.
    assert len(images(page)) >= 1 + 2 * 7


def test_output_folder_stands_for_its_newest_run(real_runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    proc = run_cli("report", real_runs[0].parent, "-o", out)
    assert proc.returncode == 0, proc.stderr
    newest = max(real_runs, key=lambda p: p.name)
    assert f'id="{newest.name}"' in out.read_text(encoding="utf-8")


def test_missing_run_folder_is_a_one_line_error(tmp_path: Path) -> None:
    missing = tmp_path / "runs" / "20250101-000000-backtest"
    proc = run_cli("report", missing)
    assert_one_line_error(proc, str(missing), "does not exist")


@pytest.mark.parametrize("victim", ["equity.parquet", "stats.json", "trades.parquet"])
def test_broken_file_is_a_one_line_error_naming_it(real_runs: list[Path], tmp_path: Path,
                                                   victim: str) -> None:
    broken = tmp_path / real_runs[0].name
    shutil.copytree(real_runs[0], broken, ignore=shutil.ignore_patterns("report.html"))
    (broken / victim).write_bytes(b"this is not what it should be")
    proc = run_cli("report", broken)
    assert_one_line_error(proc, str(broken / victim))
    assert not (broken / "report.html").exists()


def test_deleted_file_is_a_one_line_error_naming_it(real_runs: list[Path],
                                                    tmp_path: Path) -> None:
    broken = tmp_path / real_runs[0].name
    shutil.copytree(real_runs[0], broken)
    (broken / "prices.parquet").unlink()
    assert_one_line_error(run_cli("report", broken), str(broken / "prices.parquet"), "missing")


def test_missing_column_is_a_one_line_error_naming_file_and_column(
        real_runs: list[Path], tmp_path: Path) -> None:
    broken = tmp_path / real_runs[0].name
    shutil.copytree(real_runs[0], broken)
    prices = pd.read_parquet(broken / "prices.parquet").drop(columns=["stop"])
    prices.to_parquet(broken / "prices.parquet")
    assert_one_line_error(run_cli("report", broken), str(broken / "prices.parquet"), "stop")


def test_wrongly_typed_content_is_a_one_line_error(make_run: Callable[..., Path]) -> None:
    run_dir = make_run()
    trades = pd.read_parquet(run_dir / "trades.parquet")
    trades["pnl"] = "lots"
    trades.to_parquet(run_dir / "trades.parquet")
    assert_one_line_error(run_cli("report", run_dir), str(run_dir), "cannot build the report")


def test_empty_run_renders_and_says_no_trades(real_empty_run: Path) -> None:
    proc = run_cli("report", real_empty_run)
    assert proc.returncode == 0, proc.stderr
    page = (real_empty_run / "report.html").read_text(encoding="utf-8")
    text = text_of(page)
    assert "No trades in this run" in text
    assert "No trades : nothing exited" in text
    assert "Trade list" not in text and "Best trade" not in text
    # Still shows what there is: equity, drawdown, daily returns and the price.
    assert len(images(page)) == 4
    assert "1Day bars" in text and "2025-10-01 → 2025-10-10" in text
    assert re.search(r"Win rate</div><div class=\"value \">—</div>", page)
