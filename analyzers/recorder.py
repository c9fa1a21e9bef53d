"""Records a run (orders, equity, prices) and writes the run folder.

``RunRecorder`` is a thin ``bt.Analyzer``: it copies what Backtrader tells it into plain
lists; ``write_run_folder`` turns those lists (plus the Strategy's closed trades and the
audit trail) into the files of docs/CONTRACTS.md, "Run folder".
"""

from __future__ import annotations

import json
import logging
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import backtrader as bt
import numpy as np
import pandas as pd

from analyzers.audit import Audit
from analyzers.stats import compute_stats
from common.atomic import atomic_path, write_json_atomic
from common.config import Settings

logger = logging.getLogger(__name__)

_TYPES = {bt.Order.Market: "market", bt.Order.Limit: "limit", bt.Order.Stop: "stop",
          bt.Order.StopLimit: "stop_limit", bt.Order.StopTrail: "trailing_stop"}
_STATUS = {
    bt.Order.Created: "created", bt.Order.Submitted: "submitted", bt.Order.Accepted: "accepted",
    bt.Order.Partial: "partially_filled", bt.Order.Completed: "filled",
    bt.Order.Canceled: "canceled", bt.Order.Expired: "expired", bt.Order.Margin: "margin",
    bt.Order.Rejected: "rejected",
}


def _utc(num: float) -> datetime:
    return bt.num2date(num).replace(tzinfo=UTC)


class RunRecorder(bt.Analyzer):
    """Collects orders, per-step equity and per-bar prices/stops.

    Param ``progress``: optional callable(steps_done) called every 500 steps.
    """

    params = (("progress", None),)

    def start(self) -> None:
        self.orders: dict[int, dict[str, Any]] = {}
        self.equity: list[tuple[datetime, float, float, float, int]] = []
        self.prices: list[tuple[datetime, str, float, float]] = []
        self._seen: dict[str, int] = {}
        self._fills_seen: dict[int, int] = {}

    def notify_order(self, order: bt.Order) -> None:
        rec = self.orders.get(order.ref)
        data = order.data
        when = _utc(data.datetime[0]) if len(data) else datetime.now(UTC)
        if rec is None:
            rec = self.orders[order.ref] = {
                "client_order_id": order.info.get("cid", "") or f"bt-{order.ref}",
                "symbol": data._name,
                "side": "buy" if order.isbuy() else "sell",
                "type": _TYPES.get(order.exectype, str(order.exectype)),
                "purpose": order.info.get("purpose", ""),
                "qty": abs(float(order.size)),
                "limit_price": float(order.created.price) if order.exectype == bt.Order.Limit
                and order.created.price else math.nan,
                "stop_price": float(order.created.price) if order.exectype == bt.Order.Stop
                and order.created.price else math.nan,
                "created_time": when,
                "history": [],
                "fills": [],
            }
        status = _STATUS.get(order.status, str(order.status))
        if not rec["history"] or rec["history"][-1][1] != status:
            rec["history"].append([when.isoformat(), status])
        bits = order.executed.exbits
        seen = self._fills_seen.get(order.ref, 0)
        for b in list(bits)[seen:]:
            rec["fills"].append([_utc(b.dt).isoformat(), abs(float(b.size)), float(b.price)])
        self._fills_seen[order.ref] = len(bits)
        rec["status"] = status
        rec["filled_qty"] = abs(float(order.executed.size))
        rec["avg_fill_price"] = float(order.executed.price) if order.executed.size else math.nan

    def next(self) -> None:
        strat = self.strategy
        broker = strat.broker
        value = float(broker.getvalue())
        cash = float(broker.getcash())
        now = None
        exposure = 0.0
        npos = 0
        books = getattr(strat, "books", {})
        for d in strat.datas:
            if not len(d):
                continue
            t = _utc(d.datetime[0])
            now = t if now is None or t > now else now
            pos = strat.getposition(d).size
            close = float(d.close[0])
            if pos:
                npos += 1
                exposure += abs(pos) * close
            if self._seen.get(d._name) != len(d):
                self._seen[d._name] = len(d)
                book = books.get(d._name)
                st = getattr(book, "stop_state", None)
                stop = float(st.level) if (st is not None and pos) else math.nan
                self.prices.append((t, d._name, close, stop))
        if now is not None:
            self.equity.append((now, cash, value, exposure / value if value else 0.0, npos))
        if self.p.progress is not None and len(self.equity) % 500 == 0:
            self.p.progress(len(self.equity))

    def get_analysis(self) -> dict[str, Any]:
        return {"orders": len(self.orders), "bars": len(self.equity)}


def _frame_orders(orders: dict[int, dict[str, Any]]) -> pd.DataFrame:
    cols = ["client_order_id", "symbol", "side", "type", "purpose", "qty", "limit_price",
            "stop_price", "created_time", "status", "filled_qty", "avg_fill_price",
            "status_history", "fills"]
    rows = []
    for rec in orders.values():
        rows.append({**{k: rec.get(k) for k in cols if k in rec},
                     "status_history": json.dumps(rec["history"]),
                     "fills": json.dumps(rec["fills"])})
    df = pd.DataFrame(rows, columns=cols)
    if not df.empty:
        df["created_time"] = pd.to_datetime(df["created_time"], utc=True)
    return df


def _benchmark(prices: pd.DataFrame, equity: pd.DataFrame, start_value: float) -> np.ndarray:
    """Equal-weight buy-and-hold of every symbol, scaled to the starting value."""
    if prices.empty or equity.empty:
        return np.full(len(equity), start_value)
    wide = prices.pivot_table(index="timestamp", columns="symbol", values="close",
                              aggfunc="last").sort_index().ffill()
    norm = wide / wide.bfill().iloc[0]
    bh = norm.mean(axis=1) * start_value
    return bh.reindex(pd.DatetimeIndex(equity["timestamp"]), method="ffill").to_numpy()


def write_parquet(path: Path, frame: pd.DataFrame) -> None:
    """Write a DataFrame as Parquet atomically."""
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


TRADE_COLUMNS = ["symbol", "entry_time", "exit_time", "entry_price", "exit_price", "qty", "pnl",
                 "return_pct", "exit_reason", "bars_held", "entry_order_id", "exit_order_id"]


def trades_frame(closed_trades: list[dict[str, Any]]) -> pd.DataFrame:
    """Closed trades with fixed dtypes (the same schema when there are none)."""
    trades = pd.DataFrame(closed_trades, columns=TRADE_COLUMNS)
    for c in ("entry_time", "exit_time"):
        trades[c] = pd.to_datetime(trades[c], utc=True).astype("datetime64[us, UTC]")
    for c in ("entry_price", "exit_price", "qty", "pnl", "return_pct"):
        trades[c] = trades[c].astype("float64")
    for c in ("symbol", "exit_reason", "entry_order_id", "exit_order_id"):
        trades[c] = trades[c].astype("object")
    trades["bars_held"] = trades["bars_held"].astype("int64")
    return trades


def write_run_folder(
    run_dir: Path,
    recorder: RunRecorder,
    closed_trades: list[dict[str, Any]],
    audit: Audit,
    settings: Settings,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Write every file of the run folder; returns the stats."""
    run_dir = Path(run_dir)
    equity = pd.DataFrame(recorder.equity,
                          columns=["timestamp", "cash", "value", "exposure", "positions"])
    prices = pd.DataFrame(recorder.prices, columns=["timestamp", "symbol", "close", "stop"])
    for df in (equity, prices):
        df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True)
    equity["benchmark"] = _benchmark(prices, equity, settings.cash)
    trades = trades_frame(closed_trades)
    orders = _frame_orders(recorder.orders)
    stats = compute_stats(equity, trades, float(meta.get("start_value", settings.cash)))
    open_positions = meta.pop("open_positions", None)
    if open_positions is not None:
        stats["open_positions"] = open_positions
    write_parquet(run_dir / "trades.parquet", trades)
    write_parquet(run_dir / "orders.parquet", orders)
    write_parquet(run_dir / "equity.parquet", equity)
    write_parquet(run_dir / "prices.parquet", prices)
    audit.write_csv(run_dir / "audit.csv")
    write_json_atomic(run_dir / "stats.json", stats)
    config = {"run_id": run_dir.name, "settings": settings.to_dict(),
              "created_at": datetime.now(UTC).isoformat(), "version": "0.1.0", **meta}
    write_json_atomic(run_dir / "config.json", config)
    return stats
