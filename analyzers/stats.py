"""Run statistics from an equity curve and closed trades (plain pandas, no Backtrader)."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

TRADING_DAYS = 252


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def daily_values(equity: pd.DataFrame) -> pd.Series:
    """Portfolio value at the last bar of each New York trading day."""
    s = equity.set_index(pd.DatetimeIndex(equity["timestamp"]))["value"]
    ny = s.index.tz_convert("America/New_York")
    return s.groupby(ny.date).last()


def max_drawdown(values: pd.Series) -> tuple[float, float]:
    """(max drawdown as a negative fraction, its duration in days from peak to recovery/end).

    ``values`` is indexed by timestamp.
    """
    if values.empty:
        return 0.0, 0.0
    peak = values.cummax()
    dd = values / peak - 1.0
    worst = float(dd.min())
    # Longest stretch under water (peak to recovery, or to the end if never recovered).
    longest = 0.0
    start: pd.Timestamp | None = None
    idx = values.index
    under = (dd < 0).to_numpy()
    for i, flag in enumerate(under):
        if flag and start is None:
            start = idx[i - 1] if i > 0 else idx[i]
        elif not flag and start is not None:
            longest = max(longest, (idx[i] - start).total_seconds() / 86400)
            start = None
    if start is not None:
        longest = max(longest, (idx[-1] - start).total_seconds() / 86400)
    return worst, longest


def compute_stats(equity: pd.DataFrame, trades: pd.DataFrame, start_value: float) -> dict[str, Any]:
    """Headline statistics of a run (fractions, not percent)."""
    out: dict[str, Any] = {"trade_count": int(len(trades)), "bars": int(len(equity))}
    if equity.empty:
        out.update(total_return=0.0, start_value=start_value, end_value=start_value)
        return out
    ts = pd.DatetimeIndex(equity["timestamp"])
    values = pd.Series(equity["value"].to_numpy(), index=ts)
    end_value = float(values.iloc[-1])
    total = end_value / start_value - 1.0
    days = max((ts[-1] - ts[0]).total_seconds() / 86400, 1.0)
    cagr = (end_value / start_value) ** (365.25 / days) - 1.0 if end_value > 0 else -1.0
    daily = daily_values(equity)
    rets = daily.pct_change().dropna()
    if len(rets) == 0 and len(daily) == 1:
        rets = pd.Series([daily.iloc[0] / start_value - 1.0])
    sharpe = sortino = None
    if len(rets) >= 2 and rets.std(ddof=1) > 0:
        sharpe = float(rets.mean() / rets.std(ddof=1) * math.sqrt(TRADING_DAYS))
        downside = np.sqrt(np.mean(np.minimum(rets.to_numpy(), 0.0) ** 2))
        sortino = float(rets.mean() / downside * math.sqrt(TRADING_DAYS)) if downside > 0 \
            else None
    mdd, mdd_days = max_drawdown(values)
    wins = trades[trades["pnl"] > 0] if len(trades) else trades
    losses = trades[trades["pnl"] < 0] if len(trades) else trades
    gross_win = float(wins["pnl"].sum()) if len(trades) else 0.0
    gross_loss = float(-losses["pnl"].sum()) if len(trades) else 0.0
    out.update(
        start=ts[0].isoformat(),
        end=ts[-1].isoformat(),
        start_value=float(start_value),
        end_value=end_value,
        total_return=float(total),
        cagr=_finite(cagr),
        sharpe=_finite(sharpe) if sharpe is not None else None,
        sortino=_finite(sortino) if sortino is not None else None,
        max_drawdown=float(mdd),
        max_drawdown_duration_days=float(round(mdd_days, 4)),
        win_rate=float(len(wins) / len(trades)) if len(trades) else None,
        profit_factor=(gross_win / gross_loss) if gross_loss > 0 else None,
        exposure=float((equity["positions"] > 0).mean()),
        avg_exposure=float(equity["exposure"].mean()),
        trading_days=int(len(daily)),
    )
    return out


def symbol_stats(trades: pd.DataFrame, prices: pd.DataFrame,
                 symbols: list[str] | None = None) -> dict[str, Any]:
    """Per-symbol rows and buy-and-hold figures for ``stats.json``.

    ``symbols``: {SYMBOL: trades, win_rate, pnl, exposure (share of the symbol's bars with a
    position open: its stop level is recorded then), buy_hold_return (last close over first
    close)}. ``buy_hold_return``: equal-weight buy-and-hold of every symbol of the run;
    ``buy_hold_traded_return``: the same over the symbols that traded (None: no trades).
    """
    closes = prices.sort_values("timestamp") if not prices.empty else prices
    names = list(symbols) if symbols else (
        sorted(closes["symbol"].astype(str).unique()) if not closes.empty else [])
    if len(trades):
        names += sorted(set(trades["symbol"].astype(str)) - set(names))
    rows: dict[str, Any] = {}
    for sym in names:
        t = trades[trades["symbol"] == sym] if len(trades) else trades
        p = closes[closes["symbol"] == sym] if not closes.empty else closes
        close = p["close"].dropna() if not p.empty else pd.Series(dtype="float64")
        bh = float(close.iloc[-1] / close.iloc[0] - 1.0) if len(close) >= 1 and \
            close.iloc[0] > 0 else None
        exposure = float(p["stop"].notna().mean()) if not p.empty and "stop" in p else None
        rows[sym] = {
            "trades": int(len(t)),
            "win_rate": float((t["pnl"] > 0).mean()) if len(t) else None,
            "pnl": float(t["pnl"].sum()) if len(t) else 0.0,
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
