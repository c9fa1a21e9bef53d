"""The ``train`` pipeline: dataset, walk-forward validation, final fit, and the backtest of
every fold's model on its own test span.

The backtest itself is passed in (``BacktestFn``, in practice
``ratchet.engine.backtest.run_backtest``) so this library never imports the command layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ratchet.common.config import Settings
from strategies.ml.dataset import Dataset, build_dataset
from strategies.ml.model_file import TrainedModel
from strategies.ml.signal import MLSignal
from strategies.ml.validation import (
    ProgressFn,
    Validation,
    fit_final,
    fold_model,
    walk_forward,
)

#: ``run_backtest(settings, datasets, out=None, start=..., signal=...)`` -> a result with
#: ``.stats`` (``ratchet.engine.backtest.run_backtest``'s signature).
BacktestFn = Callable[..., Any]


@dataclass
class FoldBacktest:
    """The Strategy's result on one fold's test span with that fold's model."""

    fold: int
    start: pd.Timestamp
    end: pd.Timestamp
    stats: dict[str, Any]
    buy_hold: float


def backtest_folds(
    validation: Validation,
    frames: Mapping[str, pd.DataFrame],
    final: TrainedModel,
    settings: Settings,
    run_backtest: BacktestFn,
    progress: Callable[[int], None] | None = None,
) -> list[FoldBacktest]:
    """Backtest each fold's model over its test span (earlier bars only warm up indicators)."""
    from feeds.store import arrays_from_frame

    out: list[FoldBacktest] = []
    for done, result in enumerate(validation.folds):
        datasets = {}
        closes = []
        for sym, frame in frames.items():
            ts = pd.DatetimeIndex(frame["timestamp"])
            upto = frame[ts <= result.test_end]
            in_span = upto[pd.DatetimeIndex(upto["timestamp"]) >= result.test_start]
            if in_span.empty:
                continue
            datasets[sym] = arrays_from_frame(sym, upto.reset_index(drop=True))
            closes.append(in_span["close"].iloc[-1] / in_span["close"].iloc[0] - 1.0)
        signal = MLSignal(fold_model(result, final), settings.ml_enter_threshold,
                          settings.ml_exit_threshold)
        bt = run_backtest(settings.replace(symbols=tuple(datasets)), datasets, out=None,
                          start=result.test_start, signal=signal)
        out.append(FoldBacktest(result.fold.index, result.test_start, result.test_end,
                                bt.stats, float(np.mean(closes)) if closes else math.nan))
        if progress:
            progress(done + 1)
    return out


@dataclass
class TrainingRun:
    """What one ``train`` run produced (the model is saved by the caller)."""

    dataset: Dataset
    validation: Validation
    model: TrainedModel
    backtests: list[FoldBacktest] = field(default_factory=list)


def run_training(
    frames: Mapping[str, pd.DataFrame],
    bar_interval: str,
    settings: Settings,
    *,
    horizon: int,
    folds: int,
    gap: int,
    seed: int = 0,
    params: Mapping[str, Any] | None = None,
    threads: int | None = 1,
    run_backtest: BacktestFn | None = None,
    data_label: str = "",
    progress: ProgressFn | None = None,
) -> TrainingRun:
    """Features and labels, walk-forward validation, the final fit, and (with
    ``run_backtest``) each fold's out-of-sample backtest, recorded in the model's metadata."""
    report: ProgressFn = progress or (lambda _d, _n, _t: None)
    report("features and labels", 0, 1)
    dataset = build_dataset(frames, horizon)
    validation = walk_forward(dataset, folds, gap, horizon, seed, settings.ml_enter_threshold,
                              settings.ml_exit_threshold, params, progress, threads)
    report("fitting the final model", 0, 1)
    model = fit_final(dataset, frames, horizon, bar_interval, seed, params, validation, threads)
    backtests: list[FoldBacktest] = []
    if run_backtest is not None:
        n = len(validation.folds)
        report("backtesting test spans", 0, n)
        backtests = backtest_folds(validation, frames, model, settings, run_backtest,
                                   lambda k: report("backtesting test spans", k, n))
    model.metadata["training"].update(data=data_label, horizon=horizon, gap=gap)
    if backtests:
        model.metadata["validation"]["backtest"] = [
            {"fold": b.fold, "total_return": b.stats.get("total_return"),
             "trade_count": b.stats.get("trade_count"), "win_rate": b.stats.get("win_rate"),
             "max_drawdown": b.stats.get("max_drawdown"), "buy_hold": b.buy_hold}
            for b in backtests
        ]
    return TrainingRun(dataset, validation, model, backtests)
