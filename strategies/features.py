"""The one feature function of the ML signal, shared by training, backtest and live trading.

``compute_features(bars)`` turns OHLCV bars into one row of features per bar. Row ``i`` is a
pure function of rows ``i - LOOKBACK + 1 .. i``: no row reads a later bar, and no row depends on
where the frame starts once it has ``LOOKBACK`` rows of history. So a backtest (one pass over
the whole history) and the live loop (a trailing window, last row) get bit-identical features.

Two design rules keep that exact, not merely close:

* Every indicator has a finite window. Recursive smoothers (Wilder's ATR and RSI, EMAs) depend
  on the first bar of the series, so ATR and RSI here average over a plain window instead
  (Cutler's RSI; ATR as the mean true range). The Strategy's stop sizing still uses Wilder's ATR;
  this ATR is only a model input.
* Window sums are computed term by term in a fixed order (``((x0 + x1) + x2) + ...``), not with
  running sums or cumulative sums, whose rounding depends on the start of the frame. Only
  IEEE-exact operations are used elementwise (``+ - * /``, ``sqrt``, max/min).

Changing what a feature means requires bumping ``FEATURE_VERSION``: saved models record
``feature_set_hash()`` and are refused when it differs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

#: Bump when any feature's definition changes; it is part of ``feature_set_hash()``.
FEATURE_VERSION = 1

RETURN_HORIZONS: tuple[int, ...] = (1, 5, 15, 60)
MA_FAST, MA_SLOW = 10, 30
ATR_PERIOD = 14
RSI_PERIOD = 14
VOLATILITY_WINDOW = 30
VOLUME_WINDOW = 60
RANGE_WINDOW = 30


@dataclass(frozen=True)
class FeatureSpec:
    """One feature: its column name, what it measures and how many rows it reads."""

    name: str
    description: str
    #: Rows the feature reads, the current one included (``close[i-60]`` -> 61).
    rows: int


FEATURES: tuple[FeatureSpec, ...] = (
    *(
        FeatureSpec(f"ret_{h}", f"close / close {h} bars earlier - 1", h + 1)
        for h in RETURN_HORIZONS
    ),
    FeatureSpec(f"ma_ratio_{MA_FAST}", f"close / SMA(close, {MA_FAST}) - 1", MA_FAST),
    FeatureSpec(f"ma_ratio_{MA_SLOW}", f"close / SMA(close, {MA_SLOW}) - 1", MA_SLOW),
    FeatureSpec(
        f"ma_cross_{MA_FAST}_{MA_SLOW}", f"SMA(close, {MA_FAST}) / SMA(close, {MA_SLOW}) - 1",
        MA_SLOW,
    ),
    FeatureSpec(
        f"atr_pct_{ATR_PERIOD}", f"mean true range over {ATR_PERIOD} bars / close", ATR_PERIOD + 1
    ),
    FeatureSpec(
        f"rsi_{RSI_PERIOD}", f"RSI over {RSI_PERIOD} bars, plain averages (Cutler), 0..100",
        RSI_PERIOD + 1,
    ),
    FeatureSpec(
        f"volatility_{VOLATILITY_WINDOW}",
        f"standard deviation of 1-bar returns over {VOLATILITY_WINDOW} bars",
        VOLATILITY_WINDOW + 1,
    ),
    FeatureSpec(
        f"volume_z_{VOLUME_WINDOW}",
        f"z-score of sqrt(volume) against the last {VOLUME_WINDOW} bars",
        VOLUME_WINDOW,
    ),
    FeatureSpec("range_pct", "(high - low) / close of the bar", 1),
    FeatureSpec("close_loc", "(close - low) / (high - low) of the bar; 0.5 if high == low", 1),
    FeatureSpec(
        f"range_pos_{RANGE_WINDOW}",
        f"close within the {RANGE_WINDOW}-bar low..high range, 0..1",
        RANGE_WINDOW,
    ),
)

FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)

#: Rows needed for the first complete feature row (longest window + 1 for return features).
LOOKBACK: int = max(f.rows for f in FEATURES)


def feature_set_hash() -> str:
    """Short stable hash of the feature set: version, names, windows and descriptions."""
    payload = json.dumps(
        {
            "version": FEATURE_VERSION,
            "features": [[f.name, f.description, f.rows] for f in FEATURES],
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def window_sum(values: np.ndarray, window: int) -> np.ndarray:
    """Sum of each trailing ``window`` of ``values``; NaN for the first ``window - 1`` rows.

    Summed term by term in a fixed order, so a row's result depends only on its own window
    (a running sum would carry rounding from the start of the array).
    """
    n = values.shape[0]
    out = np.full(n, np.nan)
    if n < window:
        return out
    m = n - window + 1
    acc = values[0:m].astype(np.float64, copy=True)
    for k in range(1, window):
        acc += values[k : k + m]
    out[window - 1 :] = acc
    return out


def window_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of each trailing window (see ``window_sum``)."""
    return window_sum(values, window) / window


def window_std(values: np.ndarray, window: int) -> np.ndarray:
    """Sample standard deviation (ddof=1) of each trailing window, two-pass and order-fixed."""
    n = values.shape[0]
    out = np.full(n, np.nan)
    if n < window or window < 2:
        return out
    m = n - window + 1
    mean = window_mean(values, window)[window - 1 :]
    acc = np.zeros(m)
    for k in range(window):
        d = values[k : k + m] - mean
        acc += d * d
    out[window - 1 :] = np.sqrt(acc / (window - 1))
    return out


def window_max(values: np.ndarray, window: int) -> np.ndarray:
    """Maximum of each trailing window (exact: max does not round)."""
    out = np.full(values.shape[0], np.nan)
    if values.shape[0] >= window:
        out[window - 1 :] = np.lib.stride_tricks.sliding_window_view(values, window).max(axis=1)
    return out


def window_min(values: np.ndarray, window: int) -> np.ndarray:
    """Minimum of each trailing window."""
    out = np.full(values.shape[0], np.nan)
    if values.shape[0] >= window:
        out[window - 1 :] = np.lib.stride_tricks.sliding_window_view(values, window).min(axis=1)
    return out


def lagged(values: np.ndarray, lag: int) -> np.ndarray:
    """``values`` shifted ``lag`` rows later (row i holds row i - lag); NaN where undefined."""
    out = np.full(values.shape[0], np.nan)
    if lag < values.shape[0]:
        out[lag:] = values[: values.shape[0] - lag]
    return out


def feature_matrix(
    open_: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    volume: np.ndarray,
) -> np.ndarray:
    """Features as an ``(n, len(FEATURE_NAMES))`` float64 array, NaN in the warm-up rows.

    ``open_`` is accepted for a stable signature; no feature uses it yet.
    """
    del open_  # no feature reads the open; kept so callers pass whole bars
    c = np.asarray(close, dtype=np.float64)
    h = np.asarray(high, dtype=np.float64)
    lo = np.asarray(low, dtype=np.float64)
    v = np.asarray(volume, dtype=np.float64)
    n = c.shape[0]
    cols: dict[str, np.ndarray] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for hz in RETURN_HORIZONS:
            cols[f"ret_{hz}"] = c / lagged(c, hz) - 1.0
        fast, slow = window_mean(c, MA_FAST), window_mean(c, MA_SLOW)
        cols[f"ma_ratio_{MA_FAST}"] = c / fast - 1.0
        cols[f"ma_ratio_{MA_SLOW}"] = c / slow - 1.0
        cols[f"ma_cross_{MA_FAST}_{MA_SLOW}"] = fast / slow - 1.0

        prev_c = lagged(c, 1)
        true_range = np.maximum(h - lo, np.maximum(np.abs(h - prev_c), np.abs(lo - prev_c)))
        cols[f"atr_pct_{ATR_PERIOD}"] = window_mean(true_range, ATR_PERIOD) / c

        diff = c - prev_c
        gain = window_mean(np.where(diff > 0, diff, 0.0), RSI_PERIOD)
        loss = window_mean(np.where(diff < 0, -diff, 0.0), RSI_PERIOD)
        total = gain + loss
        rsi = np.where(total > 0, 100.0 * gain / total, 50.0)
        cols[f"rsi_{RSI_PERIOD}"] = np.where(np.isnan(diff) | np.isnan(gain), np.nan, rsi)

        ret1 = cols["ret_1"]
        cols[f"volatility_{VOLATILITY_WINDOW}"] = window_std(ret1, VOLATILITY_WINDOW)

        sv = np.sqrt(np.maximum(v, 0.0))
        v_mean, v_std = window_mean(sv, VOLUME_WINDOW), window_std(sv, VOLUME_WINDOW)
        z = np.where(v_std > 0, (sv - v_mean) / v_std, 0.0)
        cols[f"volume_z_{VOLUME_WINDOW}"] = np.where(np.isnan(v_std), np.nan, z)

        span = h - lo
        cols["range_pct"] = span / c
        cols["close_loc"] = np.where(span > 0, (c - lo) / span, 0.5)

        hi_n, lo_n = window_max(h, RANGE_WINDOW), window_min(lo, RANGE_WINDOW)
        span_n = hi_n - lo_n
        pos = np.where(span_n > 0, (c - lo_n) / span_n, 0.5)
        cols[f"range_pos_{RANGE_WINDOW}"] = np.where(np.isnan(span_n), np.nan, pos)

    out = np.empty((n, len(FEATURE_NAMES)), dtype=np.float64)
    for j, name in enumerate(FEATURE_NAMES):
        out[:, j] = cols[name]
    # Guard against inf from a zero price in unvalidated input: treat as missing.
    out[~np.isfinite(out)] = np.nan
    return out


def compute_features(bars: pd.DataFrame) -> pd.DataFrame:
    """Feature columns ``FEATURE_NAMES`` for every row of ``bars`` (same index).

    ``bars`` needs ``open high low close volume`` and must be sorted by time. Row ``i`` uses
    rows ``<= i`` only; the first ``LOOKBACK - 1`` rows are NaN.
    """
    missing = [c for c in ("open", "high", "low", "close", "volume") if c not in bars.columns]
    if missing:
        raise ValueError(f"bars lack column(s) {', '.join(missing)}")
    matrix = feature_matrix(
        bars["open"].to_numpy(np.float64),
        bars["high"].to_numpy(np.float64),
        bars["low"].to_numpy(np.float64),
        bars["close"].to_numpy(np.float64),
        bars["volume"].to_numpy(np.float64),
    )
    return pd.DataFrame(matrix, index=bars.index, columns=list(FEATURE_NAMES))


def probe_bars(n: int = 2 * LOOKBACK) -> pd.DataFrame:
    """A fixed, formula-made bar series (no RNG) used to fingerprint the feature code.

    A saved model stores the features of these bars; loading recomputes and compares them, so
    a change to the feature code that forgot to bump ``FEATURE_VERSION`` is still caught.
    """
    i = np.arange(n, dtype=np.float64)
    close = 100.0 + 5.0 * np.sin(i / 7.0) + 0.05 * i + 0.7 * np.sin(i * 1.3)
    open_ = close - 0.3 * np.cos(i / 3.0)
    high = np.maximum(open_, close) + 0.2 + 0.1 * np.abs(np.sin(i * 0.9))
    low = np.minimum(open_, close) - 0.2 - 0.1 * np.abs(np.cos(i * 1.1))
    volume = 1000.0 + 400.0 * np.abs(np.sin(i / 5.0)) + 50.0 * (i % 7)
    ts = pd.date_range("2020-01-02 14:30", periods=n, freq="1min", tz="UTC")
    return pd.DataFrame(
        {"timestamp": ts, "open": open_, "high": high, "low": low, "close": close,
         "volume": volume}
    )


__all__ = [
    "FEATURES",
    "FEATURE_NAMES",
    "FEATURE_VERSION",
    "LOOKBACK",
    "FeatureSpec",
    "compute_features",
    "feature_matrix",
    "feature_set_hash",
    "probe_bars",
    "window_mean",
    "window_std",
    "window_sum",
]
