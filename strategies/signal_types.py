"""What every signal shares: the BUY / SELL / HOLD values and the ``Signal`` protocol.

A leaf module (no project imports), so the signal implementations (``strategies.signals`` for
``ma``, ``strategies.ml`` for ``ml``) depend on it and never on each other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import pandas as pd

BUY = 1.0
SELL = -1.0
HOLD = 0.0


@runtime_checkable
class Signal(Protocol):
    """What the Strategy needs from a signal."""

    name: str
    #: Bars needed before the first non-NaN signal.
    warmup: int

    def compute(self, bars: pd.DataFrame) -> pd.DataFrame:
        """Per-bar ``signal`` column (1 BUY, -1 SELL, 0 nothing, NaN warm-up) + diagnostics."""
        ...


__all__ = ["BUY", "HOLD", "SELL", "Signal"]
