"""Run statistics from an equity curve and closed trades.

``compute_stats_arrays`` does the work on numpy arrays (the backtest path imports no pandas);
``compute_stats`` takes the run folder's DataFrames and gives the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from ratchet.common.nytime import ny_dates

if TYPE_CHECKING:
    import pandas as pd


TRADING_DAYS = 252
_NS_PER_S = 1_000_000_000


def _finite(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def daily_last(ts_ns: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Value at the last bar of each New York trading day (``ts_ns`` sorted)."""
    days = ny_dates(ts_ns)
    if days.shape[0] == 0:
        return np.asarray(values, dtype=np.float64)[:0]
    last = np.flatnonzero(np.append(days[1:] != days[:-1], True))
    return np.asarray(values, dtype=np.float64)[last]


def max_drawdown_arrays(ts_ns: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """(max drawdown as a negative fraction, its duration in days from peak to recovery/end)."""
    if values.shape[0] == 0:
        return 0.0, 0.0
    peak = np.maximum.accumulate(values)
    dd = values / peak - 1.0
    worst = float(dd.min())
    # Longest stretch under water (peak to recovery, or to the end if never recovered).
    under = dd < 0
    if not under.any():
        return worst, 0.0
    ts = np.asarray(ts_ns, dtype=np.int64)
    flags = np.concatenate(([False], under, [False])).astype(np.int8)
    edges = np.diff(flags)
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)  # first bar back at the peak, or len(values)
    longest = 0.0
    n = values.shape[0]
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        begin = ts[s - 1] if s > 0 else ts[s]
        stop = ts[e] if e < n else ts[n - 1]
        longest = max(longest, int(stop - begin) / _NS_PER_S / 86400)
    return worst, longest


def _iso(ns: int) -> str:
    secs, rem = divmod(int(ns), _NS_PER_S)
    return datetime.fromtimestamp(secs, UTC).replace(microsecond=rem // 1000).isoformat()


def compute_stats_arrays(
    ts_ns: np.ndarray,
    value: np.ndarray,
    positions: np.ndarray,
    exposure: np.ndarray,
    pnl: np.ndarray,
    start_value: float,
) -> dict[str, Any]:
    """Headline statistics of a run (fractions, not percent) from the equity curve's columns
    (UTC epoch nanoseconds, value, open positions, exposure) and the closed trades' pnl."""
    value = np.asarray(value, dtype=np.float64)
    pnl = np.asarray(pnl, dtype=np.float64)
    n_trades = int(pnl.shape[0])
    out: dict[str, Any] = {"trade_count": n_trades, "bars": int(value.shape[0])}
    if value.shape[0] == 0:
        out.update(total_return=0.0, start_value=start_value, end_value=start_value)
        return out
    ts = np.asarray(ts_ns, dtype=np.int64)
    end_value = float(value[-1])
    total = end_value / start_value - 1.0
    days = max(int(ts[-1] - ts[0]) / _NS_PER_S / 86400, 1.0)
    cagr = (end_value / start_value) ** (365.25 / days) - 1.0 if end_value > 0 else -1.0
    daily = daily_last(ts, value)
    rets = daily[1:] / daily[:-1] - 1.0
    rets = rets[~np.isnan(rets)]
    if len(rets) == 0 and len(daily) == 1:
        rets = np.array([daily[0] / start_value - 1.0])
    sharpe = sortino = None
    if len(rets) >= 2 and rets.std(ddof=1) > 0:
        mean = rets.mean()
        sharpe = float(mean / rets.std(ddof=1) * math.sqrt(TRADING_DAYS))
        downside = np.sqrt(np.mean(np.minimum(rets, 0.0) ** 2))
        sortino = float(mean / downside * math.sqrt(TRADING_DAYS)) if downside > 0 else None
    mdd, mdd_days = max_drawdown_arrays(ts, value)
    wins = pnl[pnl > 0]
    losses = pnl[pnl < 0]
    gross_win = float(wins.sum()) if n_trades else 0.0
    gross_loss = float(-losses.sum()) if n_trades else 0.0
    out.update(
        start=_iso(ts[0]),
        end=_iso(ts[-1]),
        start_value=float(start_value),
        end_value=end_value,
        total_return=float(total),
        cagr=_finite(cagr),
        sharpe=_finite(sharpe) if sharpe is not None else None,
        sortino=_finite(sortino) if sortino is not None else None,
        max_drawdown=float(mdd),
        max_drawdown_duration_days=float(round(mdd_days, 4)),
        win_rate=float(len(wins) / n_trades) if n_trades else None,
        profit_factor=(gross_win / gross_loss) if gross_loss > 0 else None,
        exposure=float((np.asarray(positions) > 0).mean()),
        avg_exposure=float(np.asarray(exposure, dtype=np.float64).mean()),
        trading_days=int(len(daily)),
    )
    return out


def _share_marked(times: np.ndarray, marks: np.ndarray) -> float:
    """Share of ``times`` (sorted) that appear in ``marks`` (searchsorted, not ``np.isin``:
    that imports numpy.ma, 20 ms the backtest command does not need)."""
    hit = np.zeros(times.shape[0], dtype=bool)
    if marks.size:
        pos = np.searchsorted(times, marks)
        ok = pos < times.shape[0]
        ok[ok] &= times[pos[ok]] == marks[ok]
        hit[pos[ok]] = True
    return float(hit.mean())


def symbol_stats_arrays(bars: Mapping[str, tuple[np.ndarray, np.ndarray]],
                        stops: Iterable[tuple[float, str, float]],
                        trades: Iterable[Mapping[str, Any]],
                        symbols: Sequence[str] | None = None) -> dict[str, Any]:
    """Per-symbol rows and buy-and-hold figures for ``stats.json``, from the recorder's
    arrays (``bars``: symbol -> (bar times, closes); ``stops``: (bar time, symbol, level)
    while a position was open; ``trades``: closed trades with ``symbol`` and ``pnl``).

    ``symbols``: {SYMBOL: trades, win_rate, pnl, exposure (share of the symbol's bars with a
    position open: its stop level is recorded then), buy_hold_return (last close over first
    close)}, in the order of ``symbols`` then any other symbol of the run.
    ``buy_hold_return``: equal-weight buy-and-hold of every symbol of the run;
    ``buy_hold_traded_return``: the same over the symbols that traded (None: no trades).
    """
    pnl_by: dict[str, list[float]] = {}
    for t in trades:
        pnl_by.setdefault(str(t["symbol"]), []).append(float(t["pnl"]))
    stop_times: dict[str, list[float]] = {}
    for when, sym, _level in stops:
        stop_times.setdefault(sym, []).append(when)
    names = [s for s in (symbols or ()) if s in bars]
    names += sorted(set(bars) - set(names))
    names += sorted(set(pnl_by) - set(names))
    rows: dict[str, Any] = {}
    for sym in names:
        dt, close = bars.get(sym, (np.array([]), np.array([])))
        closes = close[np.isfinite(close)]
        bh = float(closes[-1] / closes[0] - 1.0) if closes.size and closes[0] > 0 else None
        exposure = _share_marked(dt, np.asarray(stop_times.get(sym, []), np.float64)) \
            if dt.size else None
        pnls = pnl_by.get(sym, [])
        rows[sym] = {
            "trades": len(pnls),
            "win_rate": sum(1 for x in pnls if x > 0) / len(pnls) if pnls else None,
            "pnl": math.fsum(pnls),
            "exposure": exposure,
            "buy_hold_return": _finite(bh) if bh is not None else None,
        }

    def mean_bh(keys: list[str]) -> float | None:
        vals = [rows[k]["buy_hold_return"] for k in keys
                if rows[k]["buy_hold_return"] is not None]
        return float(np.mean(vals)) if vals else None

    traded = [k for k, r in rows.items() if r["trades"]]
    return {"symbols": rows, "buy_hold_return": mean_bh(list(rows)),
            "buy_hold_traded_return": mean_bh(traded) if traded else None}


def compute_stats(equity: pd.DataFrame, trades: pd.DataFrame, start_value: float
                  ) -> dict[str, Any]:
    """``compute_stats_arrays`` on the run folder's ``equity`` and ``trades`` frames."""
    import pandas as pd

    ts = pd.DatetimeIndex(equity["timestamp"]).as_unit("ns").asi8 if len(equity) else \
        np.array([], dtype=np.int64)
    return compute_stats_arrays(
        ts, equity["value"].to_numpy(np.float64), equity["positions"].to_numpy(),
        equity["exposure"].to_numpy(np.float64),
        trades["pnl"].to_numpy(np.float64) if len(trades) else np.array([]), start_value)
