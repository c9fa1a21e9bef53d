"""Walk-forward: the test span never reaches the choice; windows; stitched OOS run folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analyzers import load_run, load_sweep
from feeds.store import read_bars, write_bars
from sweeps.plan import SweepRequest, build_plan
from sweeps.runner import Sweeper
from sweeps.store import ResultStore
from sweeps.walkforward import make_windows, parse_walk_forward
from tests.conftest import run_cli
from tests.sweep.conftest import write_tiny_bars


def _run(data: Path, out: Path, client: object) -> tuple[dict, pd.DataFrame]:
    req = SweepRequest(["fast=5,10"], ["slow=20:30:10"], [], objective="total_return",
                       min_trades=1, walk_forward="2D/1D", data=data, out=out)
    plan, config, _ = build_plan(req, None, {})
    store = ResultStore(plan.folder)
    store.open(config)
    outcome = Sweeper(client, plan, store).run()
    return outcome.walk_forward, outcome.results


def _perturb_after(src: Path, dst: Path, cut: pd.Timestamp) -> None:
    """Copy the bars, replacing every bar at or after ``cut`` by a different random walk."""
    rng = np.random.default_rng(99)
    for f in src.glob("*.parquet"):
        bars = read_bars(f)
        late = bars["timestamp"] >= cut
        factor = np.exp(np.cumsum(rng.normal(0, 0.004, int(late.sum()))))
        for c in ("open", "high", "low", "close"):
            bars.loc[late, c] = bars.loc[late, c] * factor
        bars["high"] = bars[["open", "high", "close"]].max(axis=1)
        bars["low"] = bars[["open", "low", "close"]].min(axis=1)
        write_bars(dst / f.name, bars)


def test_test_span_never_changes_the_choice(tmp_path: Path, local_client: object) -> None:
    """Perturbing the bars after window 0's training span leaves its choice and training
    results unchanged (a leak, e.g. signals computed over all bars, would change them), while
    its out-of-sample result does change."""
    data = write_tiny_bars(tmp_path / "a", "2025-10-06", "2025-10-09")  # Mon..Thu
    first = read_bars(data / "AAA.parquet")["timestamp"].iloc[0]
    cut = first + pd.DateOffset(days=2)  # window 0: train 2 days, then test 1 day
    other = tmp_path / "b" / "1Min"
    _perturb_after(data, other, cut)
    wf_a, res_a = _run(data, tmp_path / "sa", local_client)
    wf_b, res_b = _run(other, tmp_path / "sb", local_client)
    w0a, w0b = wf_a["windows"][0], wf_b["windows"][0]
    assert pd.Timestamp(w0a["train_end"]) == cut
    assert w0a["chosen"] == w0b["chosen"]
    assert w0a["is_objective"] == w0b["is_objective"]

    def train0(res: pd.DataFrame) -> dict:
        rows = res[(res.phase == "train") & (res.window == 0)]
        return {r["params"]: json.loads(r["stats"]) for r in rows.to_dict("records")}

    assert train0(res_a) == train0(res_b)
    assert w0a["oos_total_return"] != w0b["oos_total_return"]  # the perturbation mattered
    # The stitched out-of-sample run folder loads like any run and spans the test windows.
    sweep = load_sweep(tmp_path / "sa" / next(p.name for p in (tmp_path / "sa").iterdir()))
    oos = load_run(sweep.path / "oos")
    assert oos.equity.timestamp.min() >= pd.Timestamp(w0a["test_start"])
    assert len(wf_a["windows"]) == 2 and sweep.walk_forward["oos_stats"] == oos.stats
    assert oos.stats["start_value"] == 100_000.0
    assert oos.equity["timestamp"].is_monotonic_increasing
    # config.json start/end as trading days, like a backtest's (were raw UTC ISO stamps,
    # '2025-12-31T05:00:00.000000001+00:00', in the report's "settings that differ")
    first_day = oos.equity["timestamp"].min().tz_convert("America/New_York").strftime("%Y-%m-%d")
    assert oos.config["start"] == first_day and len(oos.config["end"]) == 10
    # `cli.py report SWEEP_DIR`: heatmaps, top cells, in-sample vs out-of-sample.
    proc = run_cli("report", str(sweep.path))
    assert proc.returncode == 0, proc.stderr
    page = (sweep.path / "report.html").read_text()
    assert "Objective over pairs of settings" in page and page.count("data:image/png") >= 2
    assert "in-sample vs out-of-sample" in page and "Top cells" in page


@pytest.mark.parametrize("anchored", [False, True])
def test_windows_roll_or_anchor(anchored: bool) -> None:
    train, test = parse_walk_forward("12M/3M")
    first = pd.Timestamp("2020-01-01", tz="UTC").value
    last = pd.Timestamp("2021-12-31", tz="UTC").value
    ws = make_windows(first, last, train, test, anchored)
    assert len(ws) == 4  # tests start 2021-01, -04, -07, -10
    for a, b in zip(ws, ws[1:], strict=False):
        assert a.test_end == b.test_start and a.train_end == a.test_start
    assert all(w.train_start == first for w in ws) == anchored
    assert ws[-1].test_end == last + 1


def test_optuna_search_keeps_its_budget_and_resumes_from_the_store(
        tmp_path: Path, local_client: object) -> None:
    data = write_tiny_bars(tmp_path / "a", "2025-10-06", "2025-10-07")
    req = SweepRequest([], ["fast=3:8", "slow=15:30"], ["slow>=3*fast"], search="optuna",
                       trials=5, seed=7, objective="total_return", min_trades=1, data=data,
                       out=tmp_path / "s")
    plan, config, _ = build_plan(req, None, {})
    store = ResultStore(plan.folder)
    assert store.open(config) is False
    first = Sweeper(local_client, plan, store).run()
    res = first.results
    assert first.computed == 5 and len(res) == 5 and res["key"].is_unique
    assert (res.p_slow_period >= 3 * res.p_fast_period).all()
    assert res.p_fast_period.between(3, 8).all() and res.p_slow_period.between(15, 30).all()
    assert first.best is not None and first.best["objective"] == res.objective.max()
    # The same sweep again: the finished trials are told to the study, nothing reruns.
    assert store.open(config) is True
    again = Sweeper(None, plan, store)  # as the CLI runs it: no cluster needed
    assert again.needs_cluster() is False
    second = again.run()
    assert second.computed == 0 and len(second.results) == 5
