"""Bad sweep input stops with one line; the parsing, constraint and statistics helpers."""

from __future__ import annotations

import math
import random
import socket
from pathlib import Path

import pytest

from ratchet.common.config import Settings
from ratchet.common.errors import ConfigError
from sweeps.objective import deflated_sharpe, objective_value, score
from sweeps.space import Constraint, build_space, parse_grid, parse_range
from tests.conftest import run_cli
from tests.sweep.conftest import SMALL


def _one_line_error(proc, *needles: str) -> None:
    assert proc.returncode not in (0, None)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize(("args", "needles"), [
    (["--grid", "fsat=5,10"], ("unknown setting 'fsat'", "fast")),
    (["--grid", "fast="], ("--grid fast= is empty",)),
    (["--grid", "fast=40,50", "--grid", "slow=20,30"], ("no valid cell", "fast < slow")),
    (["--grid", "fast=5", "--data", "/nonexistent/bars"], ("/nonexistent/bars",)),
])
def test_bad_input_is_one_line_before_any_cluster(tmp_path: Path, args: list[str],
                                                  needles: tuple[str, ...]) -> None:
    proc = run_cli("sweep", *SMALL, *args, "--out", str(tmp_path), timeout=120)
    _one_line_error(proc, *needles)
    assert not any(tmp_path.iterdir())  # nothing written


def test_unreachable_scheduler_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = run_cli("sweep", *SMALL, "--grid", "fast=5,8", "--scheduler",
                   f"tcp://127.0.0.1:{port}", "--connect-timeout", "1", "--out", str(tmp_path),
                   timeout=120)
    _one_line_error(proc, f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}")


def test_grids_ranges_aliases_and_percent() -> None:
    assert parse_grid("fast=5,10,10").values == (5, 10)
    assert parse_grid("risk=1,2").values == (0.01, 0.02)  # percent, like --risk
    assert parse_grid("atr-mult=1.5,2").field == "atr_stop_multiplier"
    assert parse_range("slow=20:50:10").grid() == (20, 30, 40, 50)
    assert parse_range("trail=0.01:0.03:0.01").grid() == (0.01, 0.02, 0.03)
    with pytest.raises(ConfigError, match="takes whole numbers"):
        parse_range("fast=5:9.5:1")
    with pytest.raises(ConfigError, match="no step"):
        parse_range("trail=0.01:0.05").grid()
    with pytest.raises(ConfigError, match="bad value"):
        parse_grid("fast=five")
    with pytest.raises(ConfigError, match="nothing to sweep"):
        build_space([], [], [])


def test_constraints_filter_cells_and_random_respects_them() -> None:
    space = build_space(["fast=5,10,20"], ["slow=10:40:10"], ["slow>=2*fast"])
    cells, skipped = space.grid_cells(Settings())
    assert all(c["slow_period"] >= 2 * c["fast_period"] for c in cells)
    assert len(cells) == 4 + 3 + 1 and sum(skipped.values()) == 12 - 8
    sample, _ = space.random_cells(Settings(), 4, seed=1)
    assert len(sample) == 4 and all(c["slow_period"] >= 2 * c["fast_period"] for c in sample)
    assert Constraint.parse("fast < slow").holds(Settings(fast_period=5, slow_period=6))
    with pytest.raises(ConfigError, match="write A<B"):
        Constraint.parse("fast <> slow")


def test_objectives_and_min_trades() -> None:
    stats = {"sharpe": 1.2, "cagr": 0.2, "max_drawdown": -0.1, "trade_count": 3}
    assert objective_value(stats, "calmar") == pytest.approx(2.0)
    assert score(stats, "sharpe", 3) == (1.2, True)
    assert score(stats, "sharpe", 4) == (1.2, False)
    assert score({"sharpe": None, "trade_count": 9}, "sharpe", 1) == (None, False)


def test_deflated_sharpe_penalises_many_trials() -> None:
    rng = random.Random(3)
    few = [rng.gauss(0, 0.05) for _ in range(5)]
    many = [rng.gauss(0, 0.05) for _ in range(500)]
    a = deflated_sharpe(0.15, few, 250, 0.0, 3.0)
    b = deflated_sharpe(0.15, many, 250, 0.0, 3.0)
    assert a is not None and b is not None and 0 <= b < a <= 1
    # One trial's worth of selection: reduces to the probabilistic Sharpe ratio vs 0.
    assert deflated_sharpe(0.1, [0.1], 250, 0, 3) is None
    assert math.isclose(deflated_sharpe(0.0, [0.0, 0.0], 250, 0, 3), 0.5)


def test_worker_cache_loads_once_and_refuses_other_bars_or_code(tmp_path: Path) -> None:
    """A worker that cannot read the data, reads other bars or runs other code says so in
    one line naming the worker (the client's fingerprint and code version travel along)."""
    from dataclasses import replace

    from ratchet.common.errors import DataError
    from sweeps.cell import DataCache, DataSpec, code_version, fingerprint, load_bars
    from tests.sweep.conftest import write_tiny_bars

    data = write_tiny_bars(tmp_path, "2025-10-06", "2025-10-06")
    bars = load_bars(str(data), None, "1Min", None, False)
    spec = DataSpec(str(data), None, "1Min", None, False, fingerprint(bars), code_version())
    cache = DataCache()
    first = cache.get(spec, "tcp://w1")
    assert cache.get(spec, "tcp://w1") is first and cache.loads == 1
    with pytest.raises(DataError, match=r"worker tcp://w1 cannot read the data: .*missing"):
        DataCache().get(replace(spec, data=str(tmp_path / "missing")), "tcp://w1")
    with pytest.raises(DataError, match="worker tcp://w2 reads other bars"):
        DataCache().get(replace(spec, fingerprint="0" * 32), "tcp://w2")
    with pytest.raises(DataError, match="worker tcp://w3 runs other ratchet code"):
        DataCache().get(replace(spec, code_version="x"), "tcp://w3")


def test_space_is_described_in_the_units_typed() -> None:
    """Regression: `--grid risk_pct=1,2` was recorded in config.json's "space" (and the
    sweep report) as 'risk_pct=0.01,0.02', the stored fractions under the percent name."""
    assert parse_grid("risk_pct=1,2").describe() == "risk_pct=1,2"
    assert parse_grid("max_position_pct=5,10").describe() == "max_position_pct=5,10"
    assert parse_grid("trail=0.02,0.03").describe() == "trail=0.02,0.03"  # old: a fraction
    assert parse_grid("fast=5,10").describe() == "fast=5,10"
    # messages name settings as users know them (was 'fast_period takes whole numbers')
    with pytest.raises(ConfigError, match="'fast=5:9.5:1': fast takes whole numbers"):
        parse_range("fast=5:9.5:1")
