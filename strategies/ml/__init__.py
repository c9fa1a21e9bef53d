"""The ML signal: labels, walk-forward validation, a safe model file, and ``MLSignal``.

A model predicts ``p`` = probability that the close rises over the next ``H`` bars, from the
features of ``strategies.features`` (the one feature function shared by training, backtest and
live trading). ``MLSignal`` turns ``p`` into the SPEC signal: BUY when ``p >= enter``, SELL when
``p <= exit``.

Modules (each importable on its own; everything is also importable from ``strategies.ml``):

* ``model_file``: ``TrainedModel``, the ``.rmodel`` file (``save_model``/``load_model``, the
  checks that refuse a damaged or incompatible file, ``ModelError``), library versions,
  ``openmp_threads``;
* ``dataset``: bars in session, ``label_up``, the pooled ``Dataset``;
* ``validation``: walk-forward folds, out-of-sample metrics, ``fit_final``;
* ``signal``: ``MLSignal``;
* ``training``: the ``train`` pipeline (``run_training``, ``backtest_folds``).
"""

from __future__ import annotations

from strategies.ml.dataset import (
    DEFAULT_HORIZONS,
    Dataset,
    build_dataset,
    infer_interval,
    label_up,
    load_training_bars,
)
from strategies.ml.model_file import (
    ALLOWED_TYPES,
    DEFAULT_PARAMS,
    ESTIMATOR_CLASS,
    ESTIMATOR_ENTRY,
    MAX_ENTRY_BYTES,
    METADATA_ENTRY,
    MODEL_FORMAT,
    MODEL_FORMAT_VERSION,
    MODEL_SUFFIX,
    ModelError,
    TrainedModel,
    build_metadata,
    check_metadata,
    library_versions,
    load_model,
    make_estimator,
    openmp_threads,
    save_model,
    version_problems,
)
from strategies.ml.signal import MLSignal
from strategies.ml.validation import (
    Fold,
    FoldResult,
    ProgressFn,
    Validation,
    fit_final,
    fold_masks,
    fold_model,
    walk_forward,
    walk_forward_folds,
)

__all__ = [
    "ALLOWED_TYPES",
    "DEFAULT_HORIZONS",
    "DEFAULT_PARAMS",
    "ESTIMATOR_CLASS",
    "ESTIMATOR_ENTRY",
    "MAX_ENTRY_BYTES",
    "METADATA_ENTRY",
    "MODEL_FORMAT",
    "MODEL_FORMAT_VERSION",
    "MODEL_SUFFIX",
    "Dataset",
    "Fold",
    "FoldResult",
    "MLSignal",
    "ModelError",
    "ProgressFn",
    "TrainedModel",
    "Validation",
    "build_dataset",
    "build_metadata",
    "check_metadata",
    "fit_final",
    "fold_masks",
    "fold_model",
    "infer_interval",
    "label_up",
    "library_versions",
    "load_model",
    "load_training_bars",
    "make_estimator",
    "openmp_threads",
    "save_model",
    "version_problems",
    "walk_forward",
    "walk_forward_folds",
]
