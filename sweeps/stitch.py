"""The stitched out-of-sample run folder of a walk-forward sweep.

Each window's test run starts with the cash the previous test run ended with (positions
still open at a window's end are valued at its last close and the next window starts flat),
so the concatenated equity curve is one continuous account. The folder follows the run-folder
contract: ``cli.py report SWEEP/oos`` and ``load_run`` read it like any run.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from analyzers.audit import AUDIT_COLUMNS
from analyzers.recorder import write_parquet
from analyzers.stats import compute_stats
from ratchet.common.atomic import atomic_path, write_json_atomic
from ratchet.common.config import public_settings
from ratchet.common.version import __version__

if TYPE_CHECKING:
    from sweeps.plan import SweepPlan
    from sweeps.store import ResultStore


def _benchmark(prices: pd.DataFrame, equity: pd.DataFrame, start_value: float) -> Any:
    """Equal-weight buy-and-hold of every symbol, scaled to the starting value, at each
    equity time (the run folder's ``benchmark`` column, over the stitched windows)."""
    if prices.empty or equity.empty:
        return np.full(len(equity), start_value)
    wide = prices.pivot_table(index="timestamp", columns="symbol", values="close",
                              aggfunc="last").sort_index().ffill()
    norm = wide / wide.bfill().iloc[0]
    bh = norm.mean(axis=1) * start_value
    return bh.reindex(pd.DatetimeIndex(equity["timestamp"]), method="ffill").to_numpy()


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if f is not None]
    nonempty = [f for f in frames if not f.empty]
    if not nonempty:
        return frames[0] if frames else pd.DataFrame()
    return pd.concat(nonempty, ignore_index=True)


def stitch_oos(store: ResultStore, plan: SweepPlan,
               windows: list[dict[str, Any]]) -> tuple[Path, dict[str, Any]]:
    """Write ``<sweep>/oos/`` from the windows' test runs; returns (folder, stats)."""
    parts = [store.read_frames(w["test_key"]) for w in windows if w.get("test_key")]
    cash = plan.base.cash
    equity = _concat([p["equity"] for p in parts])
    trades = _concat([p["trades"] for p in parts])
    orders = _concat([p["orders"] for p in parts])
    prices = _concat([p["prices"] for p in parts])
    audit = [row for p in parts for row in p["audit"]]
    out = plan.folder / "oos"
    out.mkdir(parents=True, exist_ok=True)
    if not equity.empty:
        equity = equity.sort_values("timestamp", kind="stable").reset_index(drop=True)
        equity["benchmark"] = _benchmark(prices, equity, cash)
    stats: dict[str, Any] = compute_stats(equity, trades, cash) if not equity.empty else \
        {"trade_count": 0, "bars": 0, "total_return": 0.0, "start_value": cash,
         "end_value": cash}
    tested = [w for w in windows if w.get("test_key")]
    if tested:
        stats["open_positions"] = tested[-1].get("oos_open_positions") or {}
    write_parquet(out / "trades.parquet", trades)
    write_parquet(out / "orders.parquet", orders)
    write_parquet(out / "equity.parquet", equity)
    write_parquet(out / "prices.parquet", prices)
    with atomic_path(out / "audit.csv") as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        import csv

        writer = csv.writer(fh)
        writer.writerow(AUDIT_COLUMNS)
        writer.writerows(audit)
    write_json_atomic(out / "stats.json", stats)
    spec = plan.spec
    config = {
        "mode": "walk-forward-oos", "run_id": "oos", "created_at": datetime.now(UTC).isoformat(),
        "settings": public_settings(plan.base), "data": spec.data,
        "symbols": list(plan.base.symbols),
        "interval": plan.base.bar_interval,
        # trading days as a backtest's config.json has them (test_end is exclusive)
        "start": _ny_day(windows[0]["test_start"]) if windows else None,
        "end": _ny_day(windows[-1]["test_end"], exclusive=True) if windows else None,
        "version": __version__,
        "note": "stitched out-of-sample test spans of a walk-forward sweep; each window's "
                "settings are in windows", "windows": windows,
    }
    write_json_atomic(out / "config.json", config)
    return out, stats


def _ny_day(iso: str, exclusive: bool = False) -> str:
    """A window bound (UTC ISO) as its New York trading day, ``YYYY-MM-DD``."""
    t = pd.Timestamp(iso)
    if exclusive:
        t = t - pd.Timedelta(1, "ns")
    return f"{t.tz_convert('America/New_York'):%Y-%m-%d}"
