"""The ``ml`` signal: a trained model's probability turned into BUY / SELL / nothing."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from ratchet.common.config import Settings
from ratchet.common.errors import UserError
from strategies.features import LOOKBACK, feature_matrix
from strategies.ml.model_file import ModelError, TrainedModel, load_model
from strategies.signal_types import BUY, HOLD, SELL

logger = logging.getLogger(__name__)


def _ny(t: Any) -> str:
    """A UTC bar time as the CLI shows times: New York, to the minute."""
    ts = pd.Timestamp(t)
    return f"{ts.tz_convert('America/New_York'):%Y-%m-%d %H:%M}" if ts.tzinfo else str(ts)


class MLSignal:
    """SPEC ``ml`` signal: BUY when p >= enter, SELL when p <= exit, nothing in between.

    ``compute`` is one vectorised pass (features for all rows, one ``predict_proba`` call);
    row ``i`` uses rows ``<= i`` only, so a trailing window's last row equals the full pass.
    """

    name = "ml"

    def __init__(self, model: TrainedModel, enter: float = 0.55, exit: float = 0.45) -> None:
        if not 0 <= exit <= enter <= 1:
            raise UserError(f"ml thresholds: need 0 <= exit <= enter <= 1, got {exit}/{enter}")
        self.model = model
        self.enter = float(enter)
        self.exit = float(exit)
        #: Rows before the first non-NaN signal: longest feature window + 1.
        self.warmup: int = LOOKBACK
        training = model.metadata.get("training") or {}
        self._training_span: tuple[pd.Timestamp, pd.Timestamp] | None = (
            (pd.Timestamp(training["start"]), pd.Timestamp(training["end"]))
            if "start" in training and "end" in training
            else None
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> MLSignal:
        """Load ``settings.model_path`` and use the settings' thresholds.

        A model trained on another bar interval is refused: its horizon and features would
        mean something else.
        """
        if not settings.model_path:
            raise ModelError("--signal ml needs --model FILE: train one with `python cli.py train`")
        model = load_model(settings.model_path)
        if model.bar_interval != settings.bar_interval:
            raise ModelError(
                f"model file {settings.model_path} was trained on {model.bar_interval} bars, "
                f"this run uses {settings.bar_interval}: pass --interval {model.bar_interval} "
                f"or retrain with `python cli.py train --interval {settings.bar_interval}`"
            )
        return cls(model, settings.ml_enter_threshold, settings.ml_exit_threshold)

    def predict(self, bars: pd.DataFrame) -> np.ndarray:
        """``p`` for every row of ``bars`` (NaN where features are incomplete)."""
        X = feature_matrix(
            bars["open"].to_numpy(np.float64),
            bars["high"].to_numpy(np.float64),
            bars["low"].to_numpy(np.float64),
            bars["close"].to_numpy(np.float64),
            bars["volume"].to_numpy(np.float64),
        )
        valid = ~np.isnan(X).any(axis=1)
        p = np.full(X.shape[0], np.nan)
        if valid.any():
            p[valid] = self.model.predict_proba(X[valid])
        return p

    def compute(self, bars: pd.DataFrame) -> pd.DataFrame:
        """``signal`` (1 BUY / -1 SELL / 0 / NaN in warm-up) and ``p`` for every row."""
        self._warn_in_sample(bars)
        p = self.predict(bars)
        with np.errstate(invalid="ignore"):
            sig = np.where(p >= self.enter, BUY, np.where(p <= self.exit, SELL, HOLD))
        sig[np.isnan(p)] = np.nan
        return pd.DataFrame({"signal": sig, "p": p}, index=bars.index)

    def _warn_in_sample(self, bars: pd.DataFrame) -> None:
        """Warn once when ``bars`` overlap the bars the model was fitted on (results flatter)."""
        if self._training_span is None or bars.empty or "timestamp" not in bars.columns:
            return
        first, last = bars["timestamp"].iloc[0], bars["timestamp"].iloc[-1]
        lo, hi = self._training_span
        try:
            overlap = bool(first <= hi and last >= lo)
        except TypeError:  # naive timestamps: the contract says UTC; not worth failing over
            return
        if overlap:
            self._training_span = None  # once is enough
            logger.warning(
                "bars %s..%s overlap the model's training range %s..%s (New York time): "
                "results there are in-sample and flattering (the train command's fold "
                "backtests are out of sample)", *(_ny(t) for t in (first, last, lo, hi)),
            )

    def __repr__(self) -> str:
        return (
            f"MLSignal(horizon={self.model.horizon}, interval={self.model.bar_interval}, "
            f"enter={self.enter}, exit={self.exit})"
        )
