"""``cli.py parity`` on rehearsals against the loopback Alpaca: a clean stepped rehearsal is
100% identical to the backtest of its bars; a restarted one with a dropped stream and a
partial fill names each cause."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from analyzers.parity import compare, run_settings
from analyzers.report import parity_section
from brokers.alpaca.credentials import Credentials
from brokers.alpaca_sim.testing import SimServer
from tests.paper.conftest import REPO, session


def _parity(run_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "cli.py", "parity", str(run_dir), *extra], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_clean_rehearsal_is_identical_and_faults_are_named(sim: SimServer, creds: Credentials,
                                                           tmp_path: Path) -> None:
    # 1. a clean stepped rehearsal (13:30-13:55): ends holding BOLT
    first = session(sim, creds, tmp_path, 25)
    assert first.run_dir is not None and first.positions
    bars = __import__("pandas").read_parquet(first.run_dir / "bars.parquet")
    assert bars["warmup"].any() and (~bars["warmup"]).sum() == first.steps * 3
    out = _parity(first.run_dir)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "100.0% identical" in out.stdout
    saved = json.loads((first.run_dir / "parity.json").read_text())
    assert saved["pct_identical"] == 100.0 and saved["first_difference"] is None
    assert saved["identical"] >= 2 and saved["totals"]["fills_compared"] >= 2
    assert saved["totals"]["slippage_dollars"] == 0.0  # the sim fills by the backtest's rules
    assert saved["pnl"]["difference"] == 0.0
    assert "Parity with the backtest" in parity_section(first.run_dir)
    other = compare(first.run_dir, run_settings(first.run_dir).replace(max_position_pct=0.05))
    # public names and units, as config.json says them (was the fraction 0.1 -> 0.05)
    assert other.settings_changed == {"max_position_pct": [10.0, 5.0]}
    assert set(other.causes) == {"setting changed"} and other.pct_identical < 100

    # 2. a restart on the same state (BOLT adopted), a data-stream outage while the market
    #    moves 4 minutes on (bars backfilled late), a volume cap that splits a fill
    def outage() -> None:
        sim.faults.drop_stream("data", after=0)
        sim.advance(minutes=4)

    # by replayed time (the bar about to be published), not by advance count: a slow
    # reconnect on a busy machine may cost the lockstep driver an extra advance
    plan: list[tuple[str, Any]] = [
        ("14:06", outage), ("14:20", lambda: sim.faults.partial_fills(0.002)),
        ("14:22", lambda: sim.faults.partial_fills(None))]

    def by_time() -> None:
        while plan and f"{sim.now():%H:%M}" >= plan[0][0]:
            plan.pop(0)[1]()

    second = session(sim, creds, tmp_path, 50, hooks=dict.fromkeys(range(60), by_time))
    assert second.backfilled > 0
    report = compare(second.run_dir)
    causes = {(d.time[11:16], d.symbol): d.cause for d in report.differences}
    assert causes[("14:08", "CRUX")] == "late bar"       # the backtest buys; live: stale bar
    assert causes[("14:17", "BOLT")] == "restart"        # live sells the adopted position
    assert causes[("14:20", "ACME")] == "partial fill"   # live sends the fallback remainder
    assert report.first_difference is not None
    assert report.first_difference.cause == "late bar"
    assert "backfilled after a stream outage" in report.first_difference.detail
    assert 0 < report.pct_identical < 100
    gate = _parity(second.run_dir, "--tolerance", "0")
    assert gate.returncode == 1 and "tolerance" in gate.stderr
    assert "cause: late bar" in gate.stdout
    assert report.passes(tolerance_pct=100 - report.pct_identical)
