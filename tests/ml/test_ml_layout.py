"""The split of ``strategies/ml.py`` into ``strategies/ml/`` kept every import path callers,
tests, docs and the ``train`` command use, and the ``ml`` <-> ``signals`` cycle stays broken."""

from __future__ import annotations

import importlib

import pytest

#: Names ``strategies.ml`` exported before the split (its ``__all__`` and what tests imported).
BEFORE_SPLIT = (
    "ALLOWED_TYPES", "DEFAULT_HORIZONS", "DEFAULT_PARAMS", "Dataset", "Fold", "FoldResult",
    "MLSignal", "ModelError", "TrainedModel", "Validation", "build_dataset", "fit_final",
    "fold_masks", "fold_model", "label_up", "load_model", "load_training_bars",
    "make_estimator", "openmp_threads", "save_model", "version_problems", "walk_forward",
    "walk_forward_folds", "ESTIMATOR_ENTRY", "METADATA_ENTRY", "library_versions",
    "MODEL_FORMAT", "MODEL_FORMAT_VERSION", "MODEL_SUFFIX", "check_metadata", "build_metadata",
    "infer_interval", "ESTIMATOR_CLASS", "MAX_ENTRY_BYTES", "ProgressFn",
)


@pytest.mark.parametrize("name", BEFORE_SPLIT)
def test_strategies_ml_still_exports(name: str) -> None:
    ml = importlib.import_module("strategies.ml")
    assert getattr(ml, name) is not None
    assert name in ml.__all__


def test_signals_module_keeps_its_names() -> None:
    from strategies import signal_types, signals

    assert (signals.BUY, signals.SELL, signals.HOLD) == (1.0, -1.0, 0.0)
    assert signals.Signal is signal_types.Signal
    assert callable(signals.make_signal)


def test_train_command_keeps_its_table_helpers() -> None:
    from ratchet.commands.train import FoldBacktest, backtest_table, validation_table
    from strategies.ml.training import FoldBacktest as Moved

    assert FoldBacktest is Moved
    assert callable(backtest_table) and callable(validation_table)
