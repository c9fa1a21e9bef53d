"""Seeded synthetic OHLCV bars: the bundled sample data and the test fixtures.

Prices follow a geometric random walk whose drift switches regime every few days, so a
moving-average crossover has trends to catch and chop to lose money in. Intraday volume is
U-shaped, as in real US equities. Nothing here is real market data.
"""

from __future__ import annotations

import exchange_calendars as xcals
import numpy as np
import pandas as pd


def trading_minutes(start: str, end: str) -> pd.DatetimeIndex:
    """Start times (UTC) of every regular-hours minute of NYSE sessions in [start, end]."""
    cal = xcals.get_calendar("XNYS")
    sessions = cal.sessions_in_range(start, end)
    minutes = []
    for s in sessions:
        open_, close = cal.session_open(s), cal.session_close(s)
        minutes.append(pd.date_range(open_, close, freq="1min", inclusive="left"))
    return minutes[0].append(minutes[1:]) if minutes else pd.DatetimeIndex([], tz="UTC")


def trading_days(start: str, end: str) -> pd.DatetimeIndex:
    """NYSE sessions in [start, end], stamped at New York midnight in UTC (Alpaca's style)."""
    cal = xcals.get_calendar("XNYS")
    sessions = cal.sessions_in_range(start, end)
    return pd.DatetimeIndex(sessions).tz_localize("America/New_York").tz_convert("UTC")


def random_walk_bars(
    index: pd.DatetimeIndex,
    seed: int,
    start_price: float = 100.0,
    bar_vol: float = 0.0008,
    regime_len: int = 600,
    drift_scale: float = 0.00005,
    base_volume: float = 20_000.0,
) -> pd.DataFrame:
    """OHLCV bars on ``index`` from a regime-switching geometric random walk."""
    rng = np.random.default_rng(seed)
    n = len(index)
    regimes = np.repeat(rng.normal(0.0, drift_scale, n // regime_len + 1), regime_len)[:n]
    rets = regimes + rng.normal(0.0, bar_vol, n)
    close = start_price * np.exp(np.cumsum(rets))
    open_ = np.empty(n)
    open_[0] = start_price
    open_[1:] = close[:-1] * np.exp(rng.normal(0.0, bar_vol * 0.2, n - 1))
    span = np.abs(rng.normal(0.0, bar_vol * 0.8, n)) * close
    high = np.maximum(open_, close) + span * rng.uniform(0.2, 1.0, n)
    low = np.minimum(open_, close) - span * rng.uniform(0.2, 1.0, n)
    low = np.maximum(low, np.minimum(open_, close) * 0.5)
    # U-shaped intraday volume: heavy at the open and the close.
    minute_of_day = (index.hour * 60 + index.minute).to_numpy()
    u = np.abs((minute_of_day % 1440) - 1020) / 195.0 if n else np.array([])
    shape = 0.6 + 0.8 * np.clip(u, 0, 1.5) ** 2
    volume = np.round(base_volume * shape * rng.lognormal(0.0, 0.35, n))
    trade_count = np.maximum(1, np.round(volume / 90.0))
    vwap = (open_ + high + low + close) / 4.0
    frame = pd.DataFrame(
        {
            "timestamp": index,
            "open": np.round(open_, 4),
            "high": np.round(high, 4),
            "low": np.round(low, 4),
            "close": np.round(close, 4),
            "volume": volume,
            "trade_count": trade_count,
            "vwap": np.round(vwap, 4),
        }
    )
    # Rounding can push open/close a hair outside [low, high]; widen the range to hold them.
    frame["high"] = frame[["open", "high", "close"]].max(axis=1)
    frame["low"] = frame[["open", "low", "close"]].min(axis=1)
    return frame
