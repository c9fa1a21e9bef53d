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
from analyzers.stats import compute_stats, symbol_stats
from common.atomic import atomic_path, write_json_atomic
from common.config import Settings, public_settings

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
    """Collects orders, per-step equity and the stop level of open positions.

    Param ``progress``: optional callable(steps_done) called every 500 steps. Times are kept
    as Backtrader day numbers and converted once, in ``write_run_folder``. Param ``ohlc``:
    also keep every bar's open/high/low/volume (paper runs: ``bars.parquet``, for parity).
    """

    params = (("progress", None), ("ohlc", False))

    def start(self) -> None:
        self.orders: dict[int, dict[str, Any]] = {}
        self.equity: list[tuple[float, float, float, float, int]] = []
        self.stops: list[tuple[float, str, float]] = []
        self.bars: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.ohlc: dict[str, dict[str, np.ndarray]] = {}
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
        exposure = 0.0
        npos = 0
        # Only symbols with an open trade can hold a position (the Strategy's books).
        for book in getattr(strat, "books", {}).values():
            if book.trade is None and book.stop_state is None:
                continue
            data = strat.getdatabyname(book.symbol)
            pos = strat.getposition(data).size
            if not pos:
                continue
            npos += 1
            close = data.lines.close
            exposure += abs(pos) * close.array[close._idx]
            st = book.stop_state
            if st is not None:
                dt = data.lines.datetime
                self.stops.append((dt.array[dt._idx], book.symbol, float(st.level)))
        self.equity.append((float(strat.lines.datetime[0]), float(broker.getcash()), value,
                            exposure / value if value else 0.0, npos))
        if self.p.progress is not None and len(self.equity) % 500 == 0:
            self.p.progress(len(self.equity))

    def stop(self) -> None:
        # Every bar each feed delivered: the prices of the run, taken in one piece.
        for data in self.strategy.datas:
            n = len(data)
            dt = np.frombuffer(data.lines.datetime.array, dtype=np.float64)[:n].copy()
            close = np.frombuffer(data.lines.close.array, dtype=np.float64)[:n].copy()
            self.bars[data._name] = (dt, close)
            if self.p.ohlc:
                self.ohlc[data._name] = {
                    "t": dt, "close": close,
                    **{k: np.frombuffer(getattr(data.lines, k).array, dtype=np.float64)[:n].copy()
                       for k in ("open", "high", "low", "volume")}}

    def get_analysis(self) -> dict[str, Any]:
        return {"orders": len(self.orders), "bars": len(self.equity)}

    def equity_frame(self) -> pd.DataFrame:
        """Per-step cash, value, exposure and open positions."""
        eq = pd.DataFrame(self.equity, columns=["t", "cash", "value", "exposure", "positions"])
        eq.insert(0, "timestamp", bt_nums_to_utc(eq.pop("t").to_numpy()))
        return eq

    def prices_frame(self) -> pd.DataFrame:
        """Per-bar close of every symbol, with the stop level while a position was open."""
        parts = []
        for sym, (dt, close) in self.bars.items():
            parts.append(pd.DataFrame({"t": dt, "symbol": sym, "close": close}))
        empty = pd.DataFrame({"t": np.array([], np.float64), "symbol": np.array([], object),
                              "close": np.array([], np.float64)})
        prices = pd.concat(parts, ignore_index=True) if parts else empty
        stops = pd.DataFrame(self.stops, columns=["t", "symbol", "stop"]).astype(
            {"t": np.float64, "symbol": object, "stop": np.float64})
        prices = prices.merge(stops, on=["t", "symbol"], how="left")
        prices.insert(0, "timestamp", bt_nums_to_utc(prices.pop("t").to_numpy()))
        return prices.sort_values(["timestamp", "symbol"], kind="stable").reset_index(drop=True)


    def bars_frame(self, warmup: dict[str, list[Any]] | None = None) -> pd.DataFrame:
        """Every bar the Strategy saw (``ohlc=True``), after the warm-up bars (objects with
        ``ts open high low close volume``): ``symbol, timestamp, open, high, low, close,
        volume, warmup`` (bool), sorted by symbol and time."""
        parts = []
        for sym, bars in (warmup or {}).items():
            if bars:
                parts.append(pd.DataFrame({
                    "symbol": sym, "timestamp": pd.to_datetime([b.ts for b in bars], utc=True),
                    **{k: np.array([getattr(b, k) for b in bars], np.float64)
                       for k in ("open", "high", "low", "close", "volume")},
                    "warmup": True}))
        for sym, cols in self.ohlc.items():
            parts.append(pd.DataFrame({
                "symbol": sym, "timestamp": bt_nums_to_utc(cols["t"]),
                **{k: cols[k] for k in ("open", "high", "low", "close", "volume")},
                "warmup": False}))
        cols = ["symbol", "timestamp", "open", "high", "low", "close", "volume", "warmup"]
        if not parts:
            return pd.DataFrame(columns=cols)
        frame = pd.concat(parts, ignore_index=True)[cols]
        frame["timestamp"] = frame["timestamp"].astype("datetime64[ns, UTC]")
        return frame.sort_values(["symbol", "timestamp"], kind="stable").reset_index(drop=True)


def bt_nums_to_utc(nums: np.ndarray) -> pd.DatetimeIndex:
    """Backtrader day numbers -> UTC timestamps.

    A float day number near 740,000 resolves about 10 microseconds, so times are rounded to
    the millisecond (bars start on whole seconds in practice).
    """
    ms = np.rint((np.asarray(nums, dtype=np.float64) - 719163.0) * 86_400_000.0)
    return pd.DatetimeIndex(pd.to_datetime(ms.astype(np.int64) * 1000, unit="us", utc=True))


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
                 "return_pct", "exit_reason", "bars_held", "entry_order_id", "exit_order_id",
                 "exit_reasons"]


def trades_frame(closed_trades: list[dict[str, Any]]) -> pd.DataFrame:
    """Closed trades with fixed dtypes (the same schema when there are none)."""
    trades = pd.DataFrame(closed_trades, columns=TRADE_COLUMNS)
    for c in ("entry_time", "exit_time"):
        trades[c] = pd.to_datetime(trades[c], utc=True).astype("datetime64[us, UTC]")
    for c in ("entry_price", "exit_price", "qty", "pnl", "return_pct"):
        trades[c] = trades[c].astype("float64")
    for c in ("symbol", "exit_reason", "entry_order_id", "exit_order_id", "exit_reasons"):
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
    equity = recorder.equity_frame()
    prices = recorder.prices_frame()
    equity["benchmark"] = _benchmark(prices, equity, settings.cash)
    trades = trades_frame(closed_trades)
    orders = _frame_orders(recorder.orders)
    stats = compute_stats(equity, trades, float(meta.get("start_value", settings.cash)))
    stats.update(symbol_stats(trades, prices, list(settings.symbols)))
    open_positions = meta.pop("open_positions", None)
    if open_positions is not None:
        stats["open_positions"] = open_positions
    write_parquet(run_dir / "trades.parquet", trades)
    write_parquet(run_dir / "orders.parquet", orders)
    write_parquet(run_dir / "equity.parquet", equity)
    write_parquet(run_dir / "prices.parquet", prices)
    audit.write_csv(run_dir / "audit.csv")
    write_json_atomic(run_dir / "stats.json", stats)
    config = {"run_id": run_dir.name, "settings": public_settings(settings),
              "created_at": datetime.now(UTC).isoformat(), "version": "0.1.0", **meta}
    write_json_atomic(run_dir / "config.json", config)
    return stats
