"""Records a run (orders, equity, prices) and writes the run folder.

``RunRecorder`` is a thin ``bt.Analyzer``: it copies what Backtrader tells it into plain
lists; ``write_run_folder`` turns those lists (plus the Strategy's closed trades and the
audit trail) into the files of docs/CONTRACTS.md, "Run folder". The writer builds the tables
with numpy and pyarrow from the feeds' arrays (no pandas: the backtest command does not
import it); ``equity_frame``/``prices_frame``/``trades_frame`` give the same data as
DataFrames for callers that want them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import backtrader as bt
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from analyzers.audit import Audit
from analyzers.stats import compute_stats_arrays, symbol_stats_arrays
from ratchet.common import arrow
from ratchet.common.atomic import atomic_path, write_json_atomic
from ratchet.common.config import Settings, public_settings
from ratchet.common.nytime import unique_inverse
from ratchet.common.version import __version__

if TYPE_CHECKING:
    import pandas as pd


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


class _Times:
    """Backtrader day number -> UTC datetime / ISO text, each distinct value converted once
    (every symbol shares the bar times, and ``bt.num2date`` is slow)."""

    def __init__(self) -> None:
        self._dt: dict[float, datetime] = {}
        self._iso: dict[Any, str] = {}

    def dt(self, when: float | datetime) -> datetime:
        if isinstance(when, datetime):
            return when
        got = self._dt.get(when)
        if got is None:
            got = self._dt[when] = _utc(when)
        return got

    def iso(self, when: float | datetime) -> str:
        got = self._iso.get(when)
        if got is None:
            got = self._iso[when] = self.dt(when).isoformat()
        return got


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
        data = order.p.data  # .p: Order attributes go through a slow __getattr__
        # A bar time (Backtrader day number, converted when written) or, before any bar,
        # the wall clock.
        when: float | datetime = data.datetime[0] if len(data) else datetime.now(UTC)
        if rec is None:
            rec = self.orders[order.ref] = {
                "client_order_id": order.info.get("cid", "") or f"bt-{order.ref}",
                "symbol": data._name,
                "side": "buy" if order.isbuy() else "sell",
                "type": _TYPES.get(order.p.exectype, str(order.p.exectype)),
                "purpose": order.info.get("purpose", ""),
                "qty": abs(float(order.size)),
                "limit_price": float(order.created.price) if order.p.exectype == bt.Order.Limit
                and order.created.price else math.nan,
                "stop_price": float(order.created.price) if order.p.exectype == bt.Order.Stop
                and order.created.price else math.nan,
                "created_time": when,
                "history": [],
                "fills": [],
            }
        status = _STATUS.get(order.status, str(order.status))
        history = rec["history"]
        if not history or history[-1][1] != status:
            history.append([when, status])
        bits = order.executed.exbits
        seen = self._fills_seen.get(order.ref, 0)
        if len(bits) > seen:
            for b in list(bits)[seen:]:
                rec["fills"].append([b.dt, abs(float(b.size)), float(b.price)])
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
        return equity_table(self.equity).to_pandas()

    def prices_frame(self) -> pd.DataFrame:
        """Per-bar close of every symbol, with the stop level while a position was open."""
        return prices_table(self.bars, self.stops).to_pandas()

    def bars_frame(self, warmup: dict[str, list[Any]] | None = None) -> pd.DataFrame:
        """Every bar the Strategy saw (``ohlc=True``), after the warm-up bars (objects with
        ``ts open high low close volume``): ``symbol, timestamp, open, high, low, close,
        volume, warmup`` (bool), sorted by symbol and time."""
        import pandas as pd

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
        names = ["symbol", "timestamp", "open", "high", "low", "close", "volume", "warmup"]
        if not parts:
            return pd.DataFrame(columns=names)
        frame = pd.concat(parts, ignore_index=True)[names]
        frame["timestamp"] = frame["timestamp"].astype("datetime64[ns, UTC]")
        return frame.sort_values(["symbol", "timestamp"], kind="stable").reset_index(drop=True)


def bt_nums_to_us(nums: np.ndarray) -> np.ndarray:
    """Backtrader day numbers -> UTC epoch microseconds (int64).

    A float day number near 740,000 resolves about 10 microseconds, so times are rounded to
    the millisecond (bars start on whole seconds in practice).
    """
    ms = np.rint((np.asarray(nums, dtype=np.float64) - 719163.0) * 86_400_000.0)
    return ms.astype(np.int64) * 1000


def bt_nums_to_utc(nums: np.ndarray) -> pd.DatetimeIndex:
    """Backtrader day numbers -> UTC timestamps (millisecond-rounded, see ``bt_nums_to_us``)."""
    import pandas as pd

    return pd.DatetimeIndex(pd.to_datetime(bt_nums_to_us(nums), unit="us", utc=True))


def equity_arrays(rows: list[tuple[float, float, float, float, int]]) -> dict[str, np.ndarray]:
    """The recorder's equity rows as numpy columns (``timestamp`` in epoch microseconds)."""
    arr = np.asarray(rows, dtype=np.float64).reshape(-1, 5)
    return {"timestamp": bt_nums_to_us(arr[:, 0]), "cash": arr[:, 1], "value": arr[:, 2],
            "exposure": arr[:, 3], "positions": arr[:, 4].astype(np.int64)}


def equity_table(rows: list[tuple[float, float, float, float, int]],
                 benchmark: np.ndarray | None = None) -> pa.Table:
    """The run folder's equity columns (``benchmark`` last, when given)."""
    cols = equity_arrays(rows)
    out = {"timestamp": arrow.ts_us(cols["timestamp"]), "cash": arrow.f64(cols["cash"]),
           "value": arrow.f64(cols["value"]), "exposure": arrow.f64(cols["exposure"]),
           "positions": arrow.i64(cols["positions"])}
    if benchmark is not None:
        out["benchmark"] = arrow.f64(benchmark)
    return arrow.table(out)


def prices_table(bars: dict[str, tuple[np.ndarray, np.ndarray]],
                 stops: list[tuple[float, str, float]]) -> pa.Table:
    """Per-bar close of every symbol with the stop level while a position was open, sorted
    by (timestamp, symbol): built from the feeds' arrays in one pass."""
    names = list(bars)
    sizes = [len(bars[s][0]) for s in names]
    dt = np.concatenate([bars[s][0] for s in names]) if names else np.array([], np.float64)
    close = np.concatenate([bars[s][1] for s in names]) if names else np.array([], np.float64)
    code = np.repeat(np.arange(len(names), dtype=np.int32), sizes)
    stop = np.full(dt.shape[0], np.nan)
    if stops:
        offsets = dict(zip(names, np.cumsum([0, *sizes[:-1]]).tolist(), strict=True))
        by_sym: dict[str, tuple[list[float], list[float]]] = {}
        for t, sym, level in stops:
            ts_levels = by_sym.setdefault(sym, ([], []))
            ts_levels[0].append(t)
            ts_levels[1].append(level)
        for sym, (ts, levels) in by_sym.items():
            own = bars[sym][0]
            pos = np.searchsorted(own, np.asarray(ts, np.float64))
            # Several records of one bar: the last wins, as a merge keeps each bar's row once.
            ok = (pos < own.shape[0])
            ok[ok] &= own[pos[ok]] == np.asarray(ts, np.float64)[ok]
            stop[offsets[sym] + pos[ok]] = np.asarray(levels, np.float64)[ok]
    us = bt_nums_to_us(dt)
    rank = np.argsort(np.argsort(np.array(names, dtype=object))) if names else \
        np.array([], np.int64)
    order = np.lexsort((rank[code], us)) if names else np.array([], np.int64)
    return arrow.table({
        "timestamp": arrow.ts_us(us[order]),
        "symbol": arrow.coded_strings(code[order], names),
        "close": arrow.f64(close[order]),
        "stop": arrow.f64(stop[order]),
    })


def benchmark_values(bars: dict[str, tuple[np.ndarray, np.ndarray]], equity_us: np.ndarray,
                     start_value: float) -> np.ndarray:
    """Equal-weight buy-and-hold of every symbol, scaled to the starting value, at each
    equity time (each symbol's close carried forward, normalised by its first close)."""
    if not bars or equity_us.shape[0] == 0:
        return np.full(equity_us.shape[0], start_value)
    names = sorted(bars)
    times = unique_inverse(np.concatenate([bt_nums_to_us(bars[s][0]) for s in names]))[0]
    # One column per symbol, rows contiguous: summed along each row as pandas sums a wide
    # frame's rows, so the figures are the same to the last bit.
    wide = np.full((times.shape[0], len(names)), np.nan)
    for k, sym in enumerate(names):
        dt, close = bars[sym]
        if dt.shape[0] == 0:
            continue
        pos = np.searchsorted(times, bt_nums_to_us(dt))
        row = np.full(times.shape[0], np.nan)
        row[pos] = close
        # carry the last close forward over the symbol's gaps
        idx = np.where(np.isnan(row), 0, np.arange(times.shape[0]))
        np.maximum.accumulate(idx, out=idx)
        filled = row[idx]
        filled[: pos[0]] = np.nan
        wide[:, k] = filled / close[0]
    valid = ~np.isnan(wide)
    total = np.where(valid, wide, 0.0).sum(axis=1)
    count = valid.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        bh = total / count * start_value
    # equity times are the union of bar times; carry forward for any that are not
    at = np.searchsorted(times, equity_us, side="right") - 1
    out = np.where(at >= 0, bh[np.clip(at, 0, None)], np.nan)
    return out


def write_parquet(path: Path, frame: pd.DataFrame | pa.Table) -> None:
    """Write a DataFrame or an Arrow table as Parquet atomically.

    Tables: dictionary encoding for the text columns only (symbols, reasons); on unique
    floats and times it costs time and memory (about 35 MiB of peak for 164k price rows)
    and makes the file bigger.
    """
    with atomic_path(path) as tmp:
        if isinstance(frame, pa.Table):
            text = [f.name for f in frame.schema
                    if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
            pq.write_table(frame, tmp, use_dictionary=text)
        else:
            frame.to_parquet(tmp, index=False)


TRADE_COLUMNS = ["symbol", "entry_time", "exit_time", "entry_price", "exit_price", "qty", "pnl",
                 "return_pct", "exit_reason", "bars_held", "entry_order_id", "exit_order_id",
                 "exit_reasons"]
_TRADE_KINDS = {
    "symbol": "str", "entry_time": "time", "exit_time": "time", "entry_price": "float",
    "exit_price": "float", "qty": "float", "pnl": "float", "return_pct": "float",
    "exit_reason": "str", "bars_held": "int", "entry_order_id": "str", "exit_order_id": "str",
    "exit_reasons": "str",
}


def trades_table(closed_trades: list[dict[str, Any]]) -> pa.Table:
    """Closed trades with fixed column types (the same schema when there are none)."""
    cols: dict[str, pa.Array] = {}
    for c in TRADE_COLUMNS:
        values = [t[c] for t in closed_trades]
        kind = _TRADE_KINDS[c]
        if kind == "str":
            cols[c] = arrow.strings([str(v) for v in values])
        elif kind == "time":
            cols[c] = arrow.ts_us([arrow.micros(v) for v in values])
        elif kind == "int":
            cols[c] = arrow.i64(values)
        else:
            cols[c] = arrow.f64(values)
    return arrow.table(cols)


def trades_frame(closed_trades: list[dict[str, Any]]) -> pd.DataFrame:
    """Closed trades as a DataFrame with fixed dtypes (the same schema when there are none)."""
    return trades_table(closed_trades).to_pandas()


_ORDER_COLUMNS = ["client_order_id", "symbol", "side", "type", "purpose", "qty", "limit_price",
                  "stop_price", "created_time", "status", "filled_qty", "avg_fill_price",
                  "status_history", "fills"]


def orders_table(orders: dict[int, dict[str, Any]], times: _Times | None = None) -> pa.Table:
    """One row per order; status history and fills as JSON text."""
    times = times or _Times()
    recs = list(orders.values())
    cols: dict[str, pa.Array] = {}
    for c in ("client_order_id", "symbol", "side", "type", "purpose"):
        cols[c] = arrow.strings([str(r[c]) for r in recs], large=True)
    for c in ("qty", "limit_price", "stop_price"):
        cols[c] = arrow.f64([r[c] for r in recs])
    cols["created_time"] = arrow.ts_us([arrow.micros(times.dt(r["created_time"])) for r in recs])
    cols["status"] = arrow.strings([str(r.get("status", "")) for r in recs], large=True)
    for c in ("filled_qty", "avg_fill_price"):
        cols[c] = arrow.f64([r.get(c, math.nan) for r in recs])
    iso = times.iso
    cols["status_history"] = arrow.strings(
        [_history_json(r["history"], iso) for r in recs], large=True)
    cols["fills"] = arrow.strings([_fills_json(r["fills"], iso) for r in recs], large=True)
    return arrow.table({c: cols[c] for c in _ORDER_COLUMNS})


def _history_json(history: list[list[Any]], iso: Callable[[Any], str]) -> str:
    """``json.dumps([[iso(time), status], ...])`` by formatting: ISO times and status names
    need no escaping (~4,000 orders a run: json.dumps was most of the orders table's cost)."""
    return "[" + ", ".join([f'["{iso(w)}", "{st}"]' for w, st in history]) + "]"


def _fills_json(fills: list[list[Any]], iso: Callable[[Any], str]) -> str:
    """``json.dumps([[iso(time), qty, price], ...])``; finite floats print as json prints
    them (``repr``), anything else goes through json."""
    if not all(type(q) is float and type(p) is float and math.isfinite(q + p)
               for _, q, p in fills):
        return json.dumps([[iso(w), q, p] for w, q, p in fills])
    return "[" + ", ".join([f'["{iso(w)}", {q!r}, {p!r}]' for w, q, p in fills]) + "]"


def run_stats(recorder: RunRecorder, closed_trades: list[dict[str, Any]], start_value: float,
              symbols: list[str] | None = None) -> dict[str, Any]:
    """The run's statistics without writing anything (``compute_stats_arrays``), with the
    per-symbol rows (``symbol_stats_arrays``, in the order of ``symbols``)."""
    eq = equity_arrays(recorder.equity)
    pnl = np.array([t["pnl"] for t in closed_trades], dtype=np.float64)
    stats = compute_stats_arrays(eq["timestamp"] * 1000, eq["value"], eq["positions"],
                                 eq["exposure"], pnl, start_value)
    stats.update(symbol_stats_arrays(recorder.bars, recorder.stops, closed_trades, symbols))
    return stats


def write_run_folder(
    run_dir: Path,
    recorder: RunRecorder,
    closed_trades: list[dict[str, Any]],
    audit: Audit,
    settings: Settings,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Write every file of the run folder; returns the stats.

    Each table is built from the recorder's arrays and written before the next is built,
    so the peak holds one of them at a time.
    """
    run_dir = Path(run_dir)
    start_value = float(meta.get("start_value", settings.cash))
    stats = run_stats(recorder, closed_trades, start_value, list(settings.symbols))
    open_positions = meta.pop("open_positions", None)
    if open_positions is not None:
        stats["open_positions"] = open_positions
    write_parquet(run_dir / "trades.parquet", trades_table(closed_trades))
    write_parquet(run_dir / "orders.parquet", orders_table(recorder.orders))
    eq_us = equity_arrays(recorder.equity)["timestamp"]
    write_parquet(run_dir / "equity.parquet", equity_table(
        recorder.equity, benchmark_values(recorder.bars, eq_us, settings.cash)))
    write_parquet(run_dir / "prices.parquet", prices_table(recorder.bars, recorder.stops))
    audit.write_csv(run_dir / "audit.csv")
    write_json_atomic(run_dir / "stats.json", stats)
    config = {"run_id": run_dir.name, "settings": public_settings(settings),
              "created_at": datetime.now(UTC).isoformat(), "version": __version__, **meta}
    write_json_atomic(run_dir / "config.json", config)
    return stats
