"""Walk-forward validation: time order, a purged gap, honest metrics, determinism."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from feeds.store import write_bars
from ratchet.common.errors import DataError, UserError
from strategies.features import LOOKBACK
from strategies.ml import (
    build_dataset,
    fold_masks,
    load_training_bars,
    make_estimator,
    openmp_threads,
    walk_forward,
    walk_forward_folds,
)
from tests.ml.conftest import HORIZON, SMALL_PARAMS


def test_folds_are_time_ordered_with_a_gap() -> None:
    folds = walk_forward_folds(1200, folds=4, gap=15)
    assert [f.index for f in folds] == [1, 2, 3, 4]
    for a, b in zip(folds, folds[1:], strict=False):
        assert a.test_end == b.test_start  # contiguous test blocks, no overlap
        assert a.train_end < b.train_end  # expanding training window
    for f in folds:
        assert f.train_end == f.test_start - 15
    assert folds[-1].test_end == 1200


@pytest.mark.parametrize("gap", [HORIZON, HORIZON + 20])
def test_no_training_label_reaches_into_the_test_span(frames: dict, gap: int) -> None:
    """Every training row's label is decided before the test starts, and >= gap bars before."""
    data = build_dataset(frames, HORIZON)
    for fold in walk_forward_folds(data.grid.shape[0], 3, gap):
        train, test = fold_masks(data, fold)
        assert train.any() and test.any()
        test_start = data.grid[fold.test_start]
        assert data.label_end[train].max() < test_start
        assert data.ts[train].max() < test_start
        assert data.pos[train].max() < fold.test_start - gap
        assert data.ts[test].min() >= test_start
        assert not (train & test).any()


def test_dataset_drops_warmup_and_unlabeled_rows(frames: dict) -> None:
    data = build_dataset(frames, HORIZON)
    n = sum(len(f) for f in frames.values())
    assert len(data) == n - len(frames) * (LOOKBACK - 1 + HORIZON)
    assert not np.isnan(data.X).any()
    assert set(np.unique(data.y)) == {0, 1}
    assert (np.diff(data.ts) >= 0).all()
    # the label is the real future move of that symbol's close
    acme = frames["ACME"].set_index("timestamp")["close"]
    k = data.symbols.index("ACME")
    rows = np.flatnonzero(data.symbol_idx == k)[:50]
    for r in rows:
        t, end = pd.Timestamp(data.ts[r], tz="UTC"), pd.Timestamp(data.label_end[r], tz="UTC")
        assert data.y[r] == int(acme[end] > acme[t])


def test_gap_shorter_than_horizon_is_refused(frames: dict) -> None:
    data = build_dataset(frames, HORIZON)
    with pytest.raises(UserError, match="--gap 2 is shorter than --horizon 5"):
        walk_forward(data, folds=2, gap=2, horizon=HORIZON)


def test_too_many_folds_is_a_clear_error() -> None:
    with pytest.raises(UserError, match="too few bars"):
        walk_forward_folds(300, folds=10, gap=15)


def test_metrics_are_out_of_sample_and_deterministic(frames: dict) -> None:
    data = build_dataset(frames, HORIZON)
    a = walk_forward(data, folds=3, gap=HORIZON, horizon=HORIZON, seed=1, params=SMALL_PARAMS)
    b = walk_forward(data, folds=3, gap=HORIZON, horizon=HORIZON, seed=1, params=SMALL_PARAMS)
    np.testing.assert_array_equal(a.oos_p, b.oos_p)
    assert a.overall["rows"] == sum(r.metrics["rows"] for r in a.folds) == a.oos_y.shape[0]
    for r in a.folds:
        assert 0.0 <= r.metrics["auc"] <= 1.0
        assert 0.0 <= r.metrics["accuracy"] <= 1.0
    # each fold's model really is trained on its own past: refit and compare
    fold = a.folds[1]
    train, test = fold_masks(data, fold.fold)
    with openmp_threads(1):
        refit = make_estimator(1, **SMALL_PARAMS).fit(data.X[train], data.y[train])
    np.testing.assert_array_equal(refit.predict_proba(data.X[test])[:, 1],
                                  fold.estimator.predict_proba(data.X[test])[:, 1])
    summary = a.summary()
    assert summary["scheme"].startswith("expanding walk-forward")
    assert len(summary["per_fold"]) == 3


def test_a_leaky_feature_would_be_noticed(frames: dict) -> None:
    """Sanity of the metric: a feature that is the label itself scores AUC 1, so the near-0.5
    AUC on random-walk bars is the model, not a broken metric."""
    data = build_dataset(frames, HORIZON)
    data.X = data.X.copy()
    data.X[:, 0] = data.y + np.random.default_rng(0).normal(0, 0.01, len(data))
    v = walk_forward(data, folds=2, gap=HORIZON, horizon=HORIZON, params=SMALL_PARAMS)
    assert v.overall["auc"] > 0.99



def test_interval_inferred_and_resampled(data_dir: Path, tmp_path: Path) -> None:
    """The folder name gives the interval; elsewhere the bar spacing does; --interval resamples."""
    plain = tmp_path / "bars"
    plain.mkdir()
    shutil.copy(data_dir / "ACME.parquet", plain / "ACME.parquet")
    frames, interval = load_training_bars(plain, None)
    assert interval == "1Min" and list(frames) == ["ACME"]
    five, interval = load_training_bars(plain, ["acme"], interval="5Min")
    assert interval == "5Min"
    assert len(five["ACME"]) == len(frames["ACME"]) // 5
    assert (five["ACME"]["timestamp"].diff().dropna() >= pd.Timedelta(minutes=5)).all()
    day, interval = load_training_bars(data_dir, ["ACME"], interval="1Day")
    assert interval == "1Day" and len(day["ACME"]) == 5
    daily = tmp_path / "daily"
    write_bars(daily / "ACME.parquet", day["ACME"])
    assert load_training_bars(daily, None)[1] == "1Day"  # from the spacing
    with pytest.raises(DataError, match="cannot make finer 1Min bars"):
        load_training_bars(daily, None, interval="1Min")
