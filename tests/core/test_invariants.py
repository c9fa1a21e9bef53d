"""The SPEC invariant checker (``tests/invariants.py``) over small real-shaped bar sets.

Each fixture is a bar store like the real files in ``../shared/data`` are shaped: staggered
listings, an early end and a long gap, pre-market and after-hours bars, a sub-dollar stock,
half days around Thanksgiving, and daily bars. Each runs through ``cli.py``'s backtest path
with the default settings and with a tight trail and tight caps; the checker must find no
violation. One test tampers with a run folder to show the checker does catch one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analyzers import load_run
from feeds.store import read_bars, resolve_datasets, write_bars
from feeds.synthetic import random_walk_bars, trading_days, trading_minutes
from ratchet.common.config import Settings
from ratchet.engine.backtest import run_backtest
from ratchet.engine.datasets import load_datasets
from tests.invariants import check_run

NY = "America/New_York"
TIGHT = {"trail_stop_pct": 0.002, "max_positions": 2, "max_position_pct": 0.05,
         "risk_per_trade_pct": 0.01}


def _extended_minutes(days: list[str]) -> pd.DatetimeIndex:
    """Every minute 04:00-20:00 New York of ``days`` (pre-market, regular, after-hours)."""
    parts = [pd.date_range(pd.Timestamp(f"{d} 04:00", tz=NY), pd.Timestamp(f"{d} 19:59", tz=NY),
                           freq="1min") for d in days]
    return pd.DatetimeIndex(np.concatenate([p.tz_convert("UTC").as_unit("ns").asi8
                                            for p in parts])).tz_localize("UTC")


def _walk(index: pd.DatetimeIndex, seed: int, price: float, vol: float = 0.0015) -> pd.DataFrame:
    return random_walk_bars(index, seed=seed, start_price=price, bar_vol=vol, regime_len=120,
                            drift_scale=0.0004)


def _fixtures() -> dict[str, tuple[str, dict[str, pd.DataFrame]]]:
    minutes = trading_minutes("2025-09-02", "2025-09-04")
    gap = _walk(minutes, 3, 60.0)
    gap = gap[(gap.timestamp < minutes[200]) | (gap.timestamp >= minutes[500])]  # 5 h gap
    half = trading_minutes("2025-11-25", "2025-11-28")  # Thanksgiving; 28th closes 13:00
    ah = _extended_minutes(["2025-11-28"])
    half_ext = pd.DatetimeIndex(sorted(set(half) | set(ah[ah >= pd.Timestamp(
        "2025-11-28 18:00", tz="UTC")])))  # bars after the early close: never traded
    days = trading_days("2014-01-01", "2016-12-31")
    return {
        "staggered": ("1Min", {
            "ACME": _walk(minutes, 1, 40.0),
            "LATE": _walk(minutes[390:], 2, 25.0),  # listed on the 2nd session
            "GAPS": gap,
            "GONE": _walk(minutes[:700], 4, 80.0),  # its data ends mid 2nd session
        }),
        "extended": ("1Min", {
            "SPYX": _walk(_extended_minutes(["2025-09-02", "2025-09-03"]), 5, 450.0, 0.0008),
            "QQQX": _walk(_extended_minutes(["2025-09-02", "2025-09-03"]), 6, 380.0, 0.0008),
        }),
        "subdollar": ("1Min", {
            "PENY": _walk(minutes, 7, 0.85, 0.004),
            "ACME": _walk(minutes, 8, 12.0),
        }),
        "halfday": ("1Min", {"TURK": _walk(half_ext, 9, 30.0), "GRVY": _walk(half, 10, 55.0)}),
        "daily": ("1Day", {
            "OLDX": _walk(days, 11, 20.0, 0.02),
            "NEWX": _walk(days[400:], 12, 3.0, 0.03),  # listed a year and a half later
        }),
    }


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One bar folder per fixture."""
    root = tmp_path_factory.mktemp("fixtures")
    out = {}
    for name, (interval, frames) in _fixtures().items():
        folder = root / name / interval
        for sym, frame in frames.items():
            write_bars(folder / f"{sym}.parquet", frame)
        out[name] = folder
    return out


def _run(folder: Path, out: Path, **overrides: object) -> Path:
    interval = folder.name
    datasets = load_datasets(folder, None, interval)
    settings = Settings(symbols=tuple(datasets), bar_interval=interval,  # type: ignore[arg-type]
                        **overrides)  # type: ignore[arg-type]
    result = run_backtest(settings, datasets, out=out, meta={"data": str(folder)})
    assert result.run_dir is not None
    return result.run_dir


def _bars(folder: Path) -> dict[str, pd.DataFrame]:
    return {s: read_bars(p) for s, p in resolve_datasets(folder, None).items()}


CASES = [
    ("staggered", {}), ("staggered", TIGHT),
    ("extended", {}), ("extended", {"extended_hours": True, **TIGHT}),
    ("subdollar", {}), ("subdollar", TIGHT),
    ("halfday", {}), ("halfday", {"volume_participation": 0.002, **TIGHT}),
    ("daily", {}), ("daily", TIGHT),
]


@pytest.mark.parametrize(("fixture", "overrides"), CASES,
                         ids=[f"{f}-{'tight' if o else 'default'}" for f, o in CASES])
def test_the_spec_holds_on_real_shaped_bars(stores: dict[str, Path], tmp_path: Path,
                                            fixture: str, overrides: dict[str, object]) -> None:
    run_dir = _run(stores[fixture], tmp_path, **overrides)
    report = check_run(run_dir, _bars(stores[fixture]))
    assert report.violations == []
    run = load_run(run_dir)
    assert len(run.orders) > 0 and report.by_kind["entry"] > 0  # something was checked
    assert report.checks > 50


def test_each_symbol_trades_from_its_own_start(stores: dict[str, Path], tmp_path: Path) -> None:
    """The late listing, the gapped and the ended symbol all trade, and nothing fills after
    a symbol's data ended (issue 10.1 on the checker's fixtures)."""
    run = load_run(_run(stores["staggered"], tmp_path))
    traded = set(run.orders[run.orders.purpose == "entry"].symbol)
    assert traded == {"ACME", "LATE", "GAPS", "GONE"}
    gone_end = read_bars(stores["staggered"] / "GONE.parquet").timestamp.max()
    fills = [pd.Timestamp(f[0]) for s in run.orders[run.orders.symbol == "GONE"].fills
             for f in json.loads(s)]
    assert fills and max(fills) <= gone_end


def test_no_trading_outside_the_half_day_session(stores: dict[str, Path],
                                                 tmp_path: Path) -> None:
    run = load_run(_run(stores["halfday"], tmp_path))
    close = pd.Timestamp("2025-11-28 18:00", tz="UTC")  # 13:00 New York, the early close
    assert run.equity.timestamp.max() < close
    assert (pd.to_datetime(run.audit.time) < close).all()


def test_the_checker_catches_a_tampered_run(stores: dict[str, Path], tmp_path: Path) -> None:
    """A buy limit a cent above the close, an order filled in the pre-market and a trade whose
    reason is wrong are each reported."""
    run_dir = _run(stores["subdollar"], tmp_path)
    orders = pd.read_parquet(run_dir / "orders.parquet")
    i = orders.index[(orders.purpose == "entry") & (orders.type == "limit")][0]
    orders.loc[i, "limit_price"] += 0.01
    j = orders.index[orders.filled_qty > 0][-1]
    fills = json.loads(orders.loc[j, "fills"])
    fills[0][0] = "2025-09-04T12:00:00+00:00"  # 08:00 New York
    orders.loc[j, "fills"] = json.dumps(fills)
    orders.to_parquet(run_dir / "orders.parquet")
    trades = pd.read_parquet(run_dir / "trades.parquet")
    stops = trades.index[trades.exit_reason.isin(["stop", "trail"])]
    flip = {"stop": "trail", "trail": "stop"}
    trades.loc[stops[0], "exit_reason"] = flip[trades.loc[stops[0], "exit_reason"]]
    trades.to_parquet(run_dir / "trades.parquet")
    kinds = {v.split("]")[0][1:] for v in check_run(run_dir, _bars(stores["subdollar"]))
             .violations}
    assert {"limit", "session", "exit"} <= kinds
