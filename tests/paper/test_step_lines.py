"""``paper`` is never silent: one short line per bar step by default (issue 15)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_paper_prints_one_line_per_bar_step_in_80_columns(tmp_path: Path) -> None:
    """Regression: without -v or --dashboard, paper printed nothing while it ran, and its
    summary cut paths (`data/realtime-sim/…/portfolio_st…`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APCA_", "RATCHET_"))}
    env.update(COLUMNS="80", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, str(REPO / "cli.py"), "paper", "--sim",
                           "--sim-minutes", "3", "--symbols", "ACME,BOLT"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    steps = re.findall(r"^(\d{4}-\d\d-\d\d \d\d:\d\d)  2/2 symbols  \d+ working \(dry run\)  "
                       r"equity [\d,]+\.\d\d  \d+ open$", proc.stdout, re.M)
    assert len(steps) == 3, proc.stdout
    assert steps[0].endswith("09:30")  # New York time (the replay starts at the open)
    assert "Times are New York time." in proc.stdout
    assert not re.search(r"…(/|$)", proc.stdout, re.M)  # no cut value (a masked key is fine)
    assert all(len(ln) <= 80 for ln in proc.stdout.splitlines()
               if not ln.strip().startswith(("data/", "logs/", str(tmp_path))))
    state = next(tmp_path.glob("data/realtime-sim/*/portfolio_state.json"))
    assert str(state.relative_to(tmp_path)) in proc.stdout  # whole, never cut
    assert "Credentials(" not in proc.stdout
