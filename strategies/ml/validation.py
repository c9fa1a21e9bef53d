"""Walk-forward validation on the time grid, and the final fit on every labeled row."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ratchet.common.errors import UserError
from strategies.features import LOOKBACK
from strategies.ml.dataset import Dataset
from strategies.ml.model_file import (
    DEFAULT_PARAMS,
    TrainedModel,
    build_metadata,
    jsonable,
    make_estimator,
    openmp_threads,
    probe_fingerprint,
)

logger = logging.getLogger(__name__)

#: ``(description, done, total)``: how long work reports its progress.
ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Fold:
    """One walk-forward step on the time grid: train before ``train_end``, test after a gap."""

    index: int
    #: Rows with grid position < train_end (and label decided before test_start) train.
    train_end: int
    test_start: int
    test_end: int


def walk_forward_folds(n_times: int, folds: int, gap: int) -> list[Fold]:
    """Expanding-window folds: the grid is cut in ``folds + 1`` blocks 0..folds; block k tests
    the model trained on blocks 0..k-1 minus their last ``gap`` bars (whose labels reach into
    the test)."""
    if folds < 1:
        raise UserError("--folds must be at least 1")
    if gap < 0:
        raise UserError("--gap must be >= 0")
    bounds = [round(k * n_times / (folds + 1)) for k in range(folds + 2)]
    out = []
    for k in range(1, folds + 1):
        start, end = bounds[k], bounds[k + 1]
        train_end = start - gap
        if train_end <= LOOKBACK or end <= start:
            raise UserError(
                f"too few bars ({n_times}) for {folds} folds with a gap of {gap}: use fewer "
                "--folds, a smaller --gap, or more data"
            )
        out.append(Fold(k, train_end, start, end))
    return out


def fold_masks(data: Dataset, fold: Fold) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (train, test) row masks of ``fold``.

    Train: grid position before ``train_end`` (the gap is already cut off) AND label decided
    strictly before the first test bar, so no training label looks into the test span.
    Test: grid position in ``[test_start, test_end)``.
    """
    test_start_ns = data.grid[fold.test_start]
    train = (data.pos < fold.train_end) & (data.label_end < test_start_ns)
    test = (data.pos >= fold.test_start) & (data.pos < fold.test_end)
    return train, test


def _metrics(y: np.ndarray, p: np.ndarray, enter: float, exit_: float) -> dict[str, float]:
    """Out-of-sample accuracy (at 0.5), AUC, log loss and how the thresholds would fire."""
    from sklearn.metrics import log_loss, roc_auc_score

    n = int(y.shape[0])
    if n == 0:
        return {"rows": 0}
    both = len(np.unique(y)) == 2
    buy, sell = p >= enter, p <= exit_
    return {
        "rows": n,
        "base_rate": float(y.mean()),
        "accuracy": float(((p >= 0.5).astype(np.int64) == y).mean()),
        "auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "log_loss": float(log_loss(y, np.clip(p, 1e-12, 1 - 1e-12), labels=[0, 1])),
        "buy_share": float(buy.mean()),
        "buy_hit_rate": float(y[buy].mean()) if buy.any() else float("nan"),
        "sell_share": float(sell.mean()),
        "sell_hit_rate": float(1 - y[sell].mean()) if sell.any() else float("nan"),
    }


@dataclass
class FoldResult:
    """A fold's model, its test span and out-of-sample metrics."""

    fold: Fold
    estimator: Any
    train_rows: int
    test_start: pd.Timestamp
    test_end: pd.Timestamp
    metrics: dict[str, float]


@dataclass
class Validation:
    """Walk-forward results: per fold, and pooled over all test rows."""

    folds: list[FoldResult]
    overall: dict[str, float]
    gap: int
    enter: float
    exit: float
    oos_p: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))
    oos_y: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0, dtype=np.int64))

    def summary(self) -> dict[str, Any]:
        """JSON-able summary for the model metadata."""
        return jsonable(
            {
                "scheme": "expanding walk-forward, purged gap between train and test",
                "folds": len(self.folds),
                "gap_bars": self.gap,
                "enter_threshold": self.enter,
                "exit_threshold": self.exit,
                "per_fold": [
                    {
                        "fold": r.fold.index,
                        "train_rows": r.train_rows,
                        "test_start": r.test_start.isoformat(),
                        "test_end": r.test_end.isoformat(),
                        **r.metrics,
                    }
                    for r in self.folds
                ],
                "overall": self.overall,
            }
        )


def walk_forward(
    data: Dataset,
    folds: int,
    gap: int,
    horizon: int,
    seed: int = 0,
    enter: float = 0.55,
    exit_: float = 0.45,
    params: Mapping[str, Any] | None = None,
    progress: ProgressFn | None = None,
    threads: int | None = 1,
) -> Validation:
    """Time-ordered validation: each fold trains on the past only and tests on the next block.

    Leak guard: a training row must sit more than ``gap`` bars before the test block and its
    label (decided by the close ``horizon`` bars later) must be known before the test starts.
    """
    if gap < horizon:
        raise UserError(
            f"--gap {gap} is shorter than --horizon {horizon}: training labels would overlap "
            "the test span; use --gap >= --horizon"
        )
    plan = walk_forward_folds(data.grid.shape[0], folds, gap)
    results: list[FoldResult] = []
    all_p: list[np.ndarray] = []
    all_y: list[np.ndarray] = []
    for done, fold in enumerate(plan):
        if progress:
            progress(f"fold {fold.index}/{len(plan)}", done, len(plan))
        test_start_ns = data.grid[fold.test_start]
        train, test = fold_masks(data, fold)
        if train.sum() < 100 or len(np.unique(data.y[train])) < 2:
            raise UserError(
                f"fold {fold.index} has too little training data ({int(train.sum())} rows): "
                "use fewer --folds or more data"
            )
        with openmp_threads(threads):
            est = make_estimator(seed, **(params or {})).fit(data.X[train], data.y[train])
            p = est.predict_proba(data.X[test])[:, 1] if test.any() else np.empty(0)
        all_p.append(p)
        all_y.append(data.y[test])
        results.append(
            FoldResult(
                fold=fold,
                estimator=est,
                train_rows=int(train.sum()),
                test_start=pd.Timestamp(test_start_ns, tz="UTC"),
                test_end=pd.Timestamp(data.grid[fold.test_end - 1], tz="UTC"),
                metrics=_metrics(data.y[test], p, enter, exit_),
            )
        )
        logger.info("fold %d: %s", fold.index, results[-1].metrics)
    if progress:
        progress("validation done", len(plan), len(plan))
    oos_p, oos_y = np.concatenate(all_p), np.concatenate(all_y)
    return Validation(
        folds=results,
        overall=_metrics(oos_y, oos_p, enter, exit_),
        gap=gap,
        enter=enter,
        exit=exit_,
        oos_p=oos_p,
        oos_y=oos_y,
    )


def fit_final(
    data: Dataset,
    frames: Mapping[str, pd.DataFrame],
    horizon: int,
    bar_interval: str,
    seed: int = 0,
    params: Mapping[str, Any] | None = None,
    validation: Validation | None = None,
    threads: int | None = 1,
) -> TrainedModel:
    """Fit on every labeled row and attach metadata (training range per symbol, validation)."""
    if len(data) < 100 or len(np.unique(data.y)) < 2:
        raise UserError(f"too little labeled data to train ({len(data)} rows): use more bars")
    full_params = {**DEFAULT_PARAMS, **(params or {}), "random_state": seed}
    with openmp_threads(threads):
        est = make_estimator(seed, **(params or {})).fit(data.X, data.y)
    per_symbol: dict[str, Any] = {}
    for k, sym in enumerate(data.symbols):
        rows = data.symbol_idx == k
        bars = frames[sym]
        per_symbol[sym] = {
            "rows": int(rows.sum()),
            "first_bar": pd.Timestamp(bars["timestamp"].iloc[0]).isoformat(),
            "last_bar": pd.Timestamp(bars["timestamp"].iloc[-1]).isoformat(),
            "first_row": pd.Timestamp(data.ts[rows].min(), tz="UTC").isoformat()
            if rows.any() else None,
            "last_row": pd.Timestamp(data.ts[rows].max(), tz="UTC").isoformat()
            if rows.any() else None,
        }
    training = {
        "rows": len(data),
        "positive_rate": float(data.y.mean()),
        "start": pd.Timestamp(data.grid[0], tz="UTC").isoformat(),
        "end": pd.Timestamp(data.grid[-1], tz="UTC").isoformat(),
        "symbols": per_symbol,
        "seed": seed,
    }
    meta = build_metadata(
        est,
        horizon=horizon,
        bar_interval=bar_interval,
        training=training,
        validation=validation.summary() if validation else None,
        params=full_params,
    )
    return TrainedModel(est, meta)


def fold_model(result: FoldResult, final: TrainedModel) -> TrainedModel:
    """A fold's estimator wrapped with the final model's metadata, for out-of-sample replay."""
    meta = dict(final.metadata)
    meta["training"] = {"note": f"walk-forward fold {result.fold.index}",
                        "test_start": result.test_start.isoformat()}
    meta["probe"] = probe_fingerprint(result.estimator)
    return TrainedModel(result.estimator, meta)

