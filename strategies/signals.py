"""The signal interface and the moving-average crossover signal.

A signal turns bars into BUY (+1), SELL (-1) or nothing (0) per bar, with NaN during warm-up.
``compute`` is vectorised over a whole bar history; row ``i`` reads rows ``<= i`` only, so the
same function serves a backtest (one pass over all bars) and live trading (a trailing window,
last row).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ratchet.common.config import Settings
from strategies.signal_types import BUY, HOLD, SELL, Signal

if TYPE_CHECKING:
    import pandas as pd

# BUY/SELL/HOLD and Signal live in the leaf ``strategies.signal_types`` (so ``strategies.ml``
# need not import this module); imported here, they stay importable from here as before.


def sma(values: np.ndarray, period: int) -> np.ndarray:
    """Simple moving average; NaN for the first ``period - 1`` values."""
    out = np.full(values.shape[0], np.nan)
    if values.shape[0] < period:
        return out
    csum = np.cumsum(np.insert(values.astype(np.float64), 0, 0.0))
    out[period - 1 :] = (csum[period:] - csum[:-period]) / period
    return out


def sma_window(values: np.ndarray, period: int) -> np.ndarray:
    """SMA with each window summed by numpy (no running-sum drift); within a few ulps of
    Backtrader's ``bt.indicators.SMA`` (``math.fsum`` per window; the tests hold that
    reference)."""
    n = values.shape[0]
    out = np.full(n, np.nan)
    if n < period:
        return out
    windows = np.lib.stride_tricks.sliding_window_view(values.astype(np.float64), period)
    out[period - 1 :] = windows.sum(axis=1) / period
    return out


#: Where |fast - slow| is below this fraction of slow, the sign of the difference is settled
#: with exact sums. numpy's per-window sums are off by ~1e-15 relative, far inside it.
NEAR_TIE = 1e-9


def exact_near_ties(close: np.ndarray, fast: np.ndarray, slow: np.ndarray,
                    fast_period: int, slow_period: int) -> None:
    """Recompute, in place and exactly, both SMAs on bars where they nearly tie.

    A crossover only depends on the sign of fast - slow (and on exact equality), which a
    few ulps can change only when the two are within a few ulps of each other.
    """
    with np.errstate(invalid="ignore"):
        near = np.flatnonzero(np.abs(fast - slow) <= NEAR_TIE * np.abs(slow))
    fsum = math.fsum
    for i in near.tolist():
        fast[i] = fsum(close[i - fast_period + 1 : i + 1].tolist()) / fast_period
        slow[i] = fsum(close[i - slow_period + 1 : i + 1].tolist()) / slow_period


def crossover(fast: np.ndarray, slow: np.ndarray) -> np.ndarray:
    """+1 where fast crosses above slow on this bar, -1 below, 0 else, NaN until defined.

    SPEC: BUY when fast[-1] <= slow[-1] and fast[0] > slow[0]; SELL mirrors it.
    """
    n = fast.shape[0]
    out = np.full(n, np.nan)
    if n < 2:
        return out
    prev_f, prev_s, f, s = fast[:-1], slow[:-1], fast[1:], slow[1:]
    valid = ~(np.isnan(prev_f) | np.isnan(prev_s) | np.isnan(f) | np.isnan(s))
    up = (prev_f <= prev_s) & (f > s)
    down = (prev_f >= prev_s) & (f < s)
    sig = np.where(up, BUY, np.where(down, SELL, HOLD))
    out[1:] = np.where(valid, sig, np.nan)
    return out


class MASignal:
    """SPEC ``ma`` signal: SMA(close, fast) crossing SMA(close, slow)."""

    name = "ma"

    def __init__(self, fast_period: int = 10, slow_period: int = 30) -> None:
        if not 0 < fast_period < slow_period:
            raise ValueError(f"need 0 < fast < slow, got {fast_period}/{slow_period}")
        self.fast_period = fast_period
        self.slow_period = slow_period
        # slow SMA needs slow_period bars, the cross needs the bar before too
        self.warmup = slow_period + 1

    def compute(self, bars: pd.DataFrame) -> pd.DataFrame:
        """Vectorised crossover over ``bars['close']``."""
        import pandas as pd

        sig, fast, slow = self.compute_close(bars["close"].to_numpy(np.float64))
        return pd.DataFrame({"signal": sig, "fast": fast, "slow": slow}, index=bars.index)

    def compute_close(self, close: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(signal, fast SMA, slow SMA) from the closes alone, on numpy arrays: what
        ``compute`` returns, without pandas (the backtest's path)."""
        close = np.asarray(close, dtype=np.float64)
        fast = sma_window(close, self.fast_period)
        slow = sma_window(close, self.slow_period)
        exact_near_ties(close, fast, slow, self.fast_period, self.slow_period)
        return crossover(fast, slow), fast, slow

    def __repr__(self) -> str:
        return f"MASignal(fast={self.fast_period}, slow={self.slow_period})"


def make_signal(settings: Settings) -> Signal:
    """The signal ``settings.signal`` names: ``ma`` or ``ml``."""
    if settings.signal == "ma":
        return MASignal(settings.fast_period, settings.slow_period)
    if settings.signal == "ml":
        from strategies.ml import MLSignal  # imported late: scikit-learn is heavy

        return MLSignal.from_settings(settings)
    raise ValueError(f"unknown signal {settings.signal!r}")
