"""Fixtures for the report tests: synthetic run folders and real ones from the backtest CLI.

``make_run`` writes a run folder that follows docs/CONTRACTS.md ("Run folder") from seeded
synthetic bars and a simple long-only trade list, so the report can be tested without the
backtest (empty runs, long daily runs, broken files). ``real_runs`` runs
``python cli.py backtest`` as a subprocess once per session and yields its run folders.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from feeds.synthetic import random_walk_bars
from tests.conftest import REPO

#: (symbol, entry bar index, exit bar index, exit reason)
TradeSpec = tuple[str, int, int, str]


@dataclass(frozen=True)
class RunSpec:
    """What a synthetic run folder contains."""

    symbols: tuple[str, ...] = ("ACME", "BOLT")
    interval: str = "1Min"
    start: str = "2025-10-01"
    end: str = "2025-10-03"
    trades: tuple[TradeSpec, ...] = (
        ("ACME", 40, 150, "signal"),
        ("BOLT", 60, 200, "trail"),
        ("ACME", 400, 520, "stop"),
        ("ACME", 600, 700, "signal"),
    )
    mode: str = "backtest"
    cash: float = 100_000.0
    qty: float = 50.0
    seed: int = 7


def _index(spec: RunSpec) -> pd.DatetimeIndex:
    """Weekday sessions (holidays ignored): NY midnight for 1Day, else 09:30-16:00 minutes."""
    days = pd.bdate_range(spec.start, spec.end).tz_localize("America/New_York")
    if spec.interval == "1Day":
        return days.tz_convert("UTC")
    opens = days + pd.Timedelta(hours=9, minutes=30)
    minutes = pd.to_timedelta(np.arange(390), unit="min")
    return pd.DatetimeIndex([t + m for t in opens for m in minutes]).tz_convert("UTC")


def _bars(spec: RunSpec) -> dict[str, pd.DataFrame]:
    index = _index(spec)
    return {
        sym: random_walk_bars(index, seed=spec.seed + i, start_price=100.0 + 20 * i)
        for i, sym in enumerate(spec.symbols)
    }


def _order_row(oid: str, sym: str, side: str, purpose: str, qty: float, price: float,
               when: pd.Timestamp) -> dict[str, object]:
    iso = when.isoformat()
    return {
        "client_order_id": oid, "symbol": sym, "side": side,
        "type": "stop" if purpose == "stop" else "market", "purpose": purpose, "qty": qty,
        "limit_price": np.nan, "stop_price": np.nan, "created_time": when, "status": "filled",
        "filled_qty": qty, "avg_fill_price": price,
        "status_history": json.dumps([[iso, "new"], [iso, "filled"]]),
        "fills": json.dumps([[iso, qty, price]]),
    }


def write_run_folder(path: Path, spec: RunSpec = RunSpec()) -> Path:
    """Write a contract-conformant run folder at ``path`` and return it."""
    path.mkdir(parents=True, exist_ok=True)
    bars = _bars(spec)
    ts = bars[spec.symbols[0]]["timestamp"]
    n = len(ts)
    stops = {s: np.full(n, np.nan) for s in spec.symbols}
    held = {s: np.zeros(n) for s in spec.symbols}
    cash = np.full(n, spec.cash)
    trades, orders, audit = [], [], []
    for sym, i, j, reason in spec.trades:
        df = bars[sym]
        entry, exit_ = float(df.close[i]), float(df.close[j])
        highs = df.high.to_numpy()[i : j + 1]
        fixed = entry * 0.97
        trail = np.maximum.accumulate(highs) * 0.97
        stops[sym][i:j] = np.maximum(fixed, trail)[: j - i]
        held[sym][i:j] += spec.qty
        cash[i:] -= entry * spec.qty
        cash[j:] += exit_ * spec.qty
        t_in, t_out = df.timestamp[i], df.timestamp[j]
        stamp = lambda t: t.strftime("%Y%m%dT%H%M%S")  # noqa: E731
        eid, xid = f"ratchet-{sym}-{stamp(t_in)}-entry", f"ratchet-{sym}-{stamp(t_out)}-exit"
        pnl = (exit_ - entry) * spec.qty
        trades.append({
            "symbol": sym, "entry_time": t_in, "exit_time": t_out, "entry_price": entry,
            "exit_price": exit_, "qty": spec.qty, "pnl": pnl,
            "return_pct": pnl / (entry * spec.qty), "exit_reason": reason, "bars_held": j - i,
            "entry_order_id": eid, "exit_order_id": xid,
        })
        orders.append(_order_row(eid, sym, "buy", "entry", spec.qty, entry, t_in))
        orders.append(_order_row(xid, sym, "sell", "exit", spec.qty, exit_, t_out))
        audit.append([t_in, "decision", sym, "buy", "signal", spec.qty, entry, eid, ""])
        audit.append([t_out, "decision", sym, "sell", reason, spec.qty, exit_, xid, ""])
    value = cash + sum(held[s] * bars[s].close.to_numpy() for s in spec.symbols)
    market = value - cash
    first = np.array([bars[s].close.iloc[0] for s in spec.symbols])
    closes = np.column_stack([bars[s].close.to_numpy() for s in spec.symbols])
    benchmark = spec.cash * (closes / first).mean(axis=1)
    equity = pd.DataFrame({
        "timestamp": ts, "cash": cash, "value": value, "exposure": market / value,
        "positions": sum((held[s] > 0).astype("int64") for s in spec.symbols),
        "benchmark": benchmark,
    })
    prices = pd.concat(
        [pd.DataFrame({"timestamp": ts, "symbol": s, "close": bars[s].close, "stop": stops[s]})
         for s in spec.symbols], ignore_index=True,
    )
    trade_cols = ["symbol", "entry_time", "exit_time", "entry_price", "exit_price", "qty",
                  "pnl", "return_pct", "exit_reason", "bars_held", "entry_order_id",
                  "exit_order_id"]
    trades_df = pd.DataFrame(trades, columns=trade_cols)
    if trades_df.empty:
        trades_df = trades_df.astype({
            "symbol": "str", "entry_time": "datetime64[ns, UTC]",
            "exit_time": "datetime64[ns, UTC]", "entry_price": "float64",
            "exit_price": "float64", "qty": "float64", "pnl": "float64",
            "return_pct": "float64", "exit_reason": "str", "bars_held": "int64",
            "entry_order_id": "str", "exit_order_id": "str",
        })
    order_cols = list(_order_row("x", "X", "buy", "entry", 1.0, 1.0, ts[0]))
    pd.DataFrame(orders, columns=order_cols).to_parquet(path / "orders.parquet")
    trades_df.to_parquet(path / "trades.parquet")
    equity.to_parquet(path / "equity.parquet")
    prices.to_parquet(path / "prices.parquet")
    pd.DataFrame(audit, columns=["time", "kind", "symbol", "action", "reason", "qty", "price",
                                 "client_order_id", "detail"]).to_csv(path / "audit.csv",
                                                                      index=False)
    wins = [t["pnl"] for t in trades if t["pnl"] > 0]
    losses = [-t["pnl"] for t in trades if t["pnl"] <= 0]
    peak = np.maximum.accumulate(value)
    stats = {
        "total_return": value[-1] / value[0] - 1, "cagr": 0.12, "sharpe": 1.3,
        "sortino": 1.9, "max_drawdown": float((value / peak - 1).min()),
        "max_drawdown_duration_days": 0.42, "win_rate": len(wins) / len(trades) if trades
        else None, "profit_factor": sum(wins) / sum(losses) if losses else None,
        "exposure": float(np.mean(market / value)), "trade_count": len(trades),
        "start": ts.iloc[0].isoformat(), "end": ts.iloc[-1].isoformat(),
        "start_value": float(value[0]), "end_value": float(value[-1]), "bars": n,
    }
    (path / "stats.json").write_text(json.dumps(stats), encoding="utf-8")
    config = {
        "mode": spec.mode, "run_id": path.name, "created_at": "2025-11-24T12:00:00+00:00",
        "settings": {"symbols": list(spec.symbols), "bar_interval": spec.interval,
                     "signal": "ma", "fast_period": 10, "slow_period": 30,
                     "risk_per_trade_pct": 0.02, "max_position_pct": 0.1, "max_positions": 5,
                     "atr_period": 14, "atr_stop_multiplier": 2.0, "trail_stop_pct": 0.03,
                     "use_limit_orders": True, "limit_order_timeout": 30.0,
                     "cash": spec.cash, "commission": 0.0},
        "data": "data/bars", "symbols": list(spec.symbols), "interval": spec.interval,
        "start": spec.start, "end": spec.end, "version": "0.1.0",
    }
    (path / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    return path


IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def text_of(page: str) -> str:
    """The visible text of a page, whitespace collapsed (good enough for assertions)."""
    page = re.sub(r"<style>.*?</style>", " ", page, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))


def images(page: str) -> list[bytes]:
    """The decoded bytes of every embedded PNG of a page."""
    return [base64.b64decode(m) for m in IMG.findall(page)]


def run_cli(*args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """``python cli.py ARGS`` as a subprocess (text output captured)."""
    return subprocess.run([sys.executable, str(REPO / "cli.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MPLBACKEND": "Agg"})


@pytest.fixture
def make_run(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_run(name, **RunSpec fields)`` writes a synthetic run folder."""

    def make(name: str = "20251124-120000-backtest", **fields: object) -> Path:
        return write_run_folder(tmp_path / "runs" / name, RunSpec(**fields))  # type: ignore[arg-type]

    return make


@pytest.fixture(scope="session")
def real_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two run folders written by the real backtest CLI (quick: two symbols, eight days).

    The second run uses faster moving averages (5/20 instead of 10/30), so the two differ in
    two settings and in their trades.
    """
    out = tmp_path_factory.mktemp("real_runs")
    base = ["backtest", "--out", out, "--symbols", "ACME,BOLT", "--start", "2025-10-01",
            "--end", "2025-10-10", "--no-progress"]
    for extra in ([], ["--fast", "5", "--slow", "20"]):
        proc = run_cli(*base, *extra)
        assert proc.returncode == 0, proc.stderr
    runs = sorted((p for p in out.iterdir() if (p / "config.json").exists()),
                  key=lambda p: json.loads((p / "config.json").read_text())["settings"]
                  ["fast"], reverse=True)
    assert len(runs) == 2, runs
    return runs


@pytest.fixture(scope="session")
def real_empty_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real backtest that cannot trade: 8 daily bars never warm up the 30-bar slow SMA."""
    out = tmp_path_factory.mktemp("real_empty")
    proc = run_cli("backtest", "--out", out, "--symbols", "ACME", "--start", "2025-10-01",
                   "--end", "2025-10-10", "--interval", "1Day", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (p for p in out.iterdir() if (p / "config.json").exists())
    assert pd.read_parquet(run_dir / "trades.parquet").empty
    return run_dir
