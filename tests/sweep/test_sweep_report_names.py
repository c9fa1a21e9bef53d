"""The sweep report names varied settings as show-config does, in the same units."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analyzers.sweep_report import build_sweep_report
from analyzers.sweepfolder import Sweep


def test_sweep_report_uses_public_names_and_units(tmp_path: Path) -> None:
    """Regression: after the public setting names (issue 15) the sweep report still headed
    its columns and heatmap axes with Settings fields ('fast_period', 'risk_per_trade_pct')
    and showed risk as the stored fraction (0.02 for 2%)."""
    res = pd.DataFrame({
        "key": list("abcd"), "phase": ["cell"] * 4, "window": [-1] * 4,
        "p_fast_period": [5, 5, 10, 10], "p_risk_per_trade_pct": [0.01, 0.02, 0.01, 0.02],
        "objective": [0.4, 0.1, -0.2, 0.3], "qualified": [True] * 4,
        "sharpe": [0.4, 0.1, -0.2, 0.3], "total_return": [0.05, 0.01, -0.02, 0.03],
        "max_drawdown": [-0.02] * 4, "trade_count": [20] * 4,
    })
    cfg = {"objective": "sharpe", "min_trades": 5, "space": ["fast=5,10", "risk_pct=1,2"],
           "symbols": ["ACME"], "search": "grid", "definition_hash": "x"}
    page = build_sweep_report(Sweep(tmp_path, cfg, res, None, None))
    top = page[page.index("Top cells"):]
    assert "fast_period" not in page and "risk_per_trade_pct" not in page
    assert "<th>fast</th>" in top.replace(' class="num"', "") or ">fast<" in top
    assert "risk_pct (%)" in top
    row = top[top.index("<td"):top.index("</tr>", top.index("<td"))]
    assert "<td>1</td><td>5</td><td>1</td>" in row, row  # best cell: fast 5, risk 1%
    from analyzers.sweep_report import setting_text

    assert setting_text("risk_per_trade_pct", 0.02) == "risk_pct=2%"
    assert setting_text("fast_period", 5) == "fast=5"


def test_report_of_a_folder_of_sweeps_is_its_newest_sweep(tmp_path: Path) -> None:
    """Regression: `cli.py report runs/sweeps` took the name-wise last child (sweep folders
    are named by hash) and then failed on it as a run folder ('stats.json is missing')."""
    import json
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    res = pd.DataFrame({"key": ["a"], "phase": ["cell"], "window": [-1], "p_fast_period": [5],
                        "objective": [0.4], "qualified": [True], "trade_count": [9]})
    for name, created in (("sweep-ffff", "2026-01-01T00:00:00+00:00"),
                          ("sweep-0000", "2026-02-01T00:00:00+00:00")):
        folder = tmp_path / "sweeps" / name
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps(
            {"kind": "sweep", "created_at": created, "objective": "sharpe", "min_trades": 5}))
        res.to_parquet(folder / "results.parquet")
    proc = subprocess.run([sys.executable, str(repo / "cli.py"), "report",
                           str(tmp_path / "sweeps")], capture_output=True, text=True,
                          timeout=120, cwd=repo)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("sweep-0000/report.html")  # the newer one
