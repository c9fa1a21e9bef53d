"""The ML signal: labels, walk-forward validation, a safe model file, and ``MLSignal``.

A model predicts ``p`` = probability that the close rises over the next ``H`` bars, from the
features of ``strategies.features`` (the one feature function shared by training, backtest and
live trading). ``MLSignal`` turns ``p`` into the SPEC signal: BUY when ``p >= enter``, SELL when
``p <= exit``.

Model file (``.rmodel``): a zip archive holding

* ``metadata.json``: format, feature names + feature-set hash + a feature fingerprint, label
  horizon, bar interval, training range per symbol, library versions, validation thresholds
  and out-of-sample metrics, the estimator's SHA-256, and probe predictions;
* ``estimator.skops``: the scikit-learn estimator in skops format, loaded with an explicit
  allow-list of types (never pickle), after the metadata checks have passed.

Loading refuses, with a one-line ``ModelError`` naming the file and the fix, anything that is
not such a file, is truncated or altered, was made with another feature set, or with a
scikit-learn major.minor / numpy major version other than the installed one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import platform
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.atomic import atomic_path
from common.config import INTERVAL_SECONDS, Settings
from common.errors import DataError, UserError
from strategies.features import (
    FEATURE_NAMES,
    FEATURE_VERSION,
    LOOKBACK,
    compute_features,
    feature_matrix,
    feature_set_hash,
    probe_bars,
)
from strategies.signals import BUY, HOLD, SELL

logger = logging.getLogger(__name__)

MODEL_FORMAT = "ratchet-model"
MODEL_FORMAT_VERSION = 1
MODEL_SUFFIX = ".rmodel"
METADATA_ENTRY = "metadata.json"
ESTIMATOR_ENTRY = "estimator.skops"
#: Types skops may build beyond its default trusted set (numpy, builtins, sklearn estimators).
ALLOWED_TYPES: frozenset[str] = frozenset(
    {"sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"}
)
ESTIMATOR_CLASS = "sklearn.ensemble.HistGradientBoostingClassifier"
#: Refuse archive entries larger than this (a zip bomb is not a model).
MAX_ENTRY_BYTES = 512 * 1024 * 1024


def _retrain(path: Path | str) -> str:
    """The fix every model error ends with."""
    return f"retrain with `python cli.py train --out {path}`"


#: Default label horizon (bars) per bar interval: roughly a quarter hour to a few days.
DEFAULT_HORIZONS: dict[str, int] = {
    "1Min": 15, "2Min": 10, "3Min": 10, "5Min": 6, "10Min": 6, "15Min": 4, "30Min": 4,
    "1Hour": 3, "1Day": 5,
}  # fmt: skip

#: Estimator settings: shallow, strongly regularised trees; no early stopping, whose random
#: validation split would not respect time order.
DEFAULT_PARAMS: dict[str, Any] = {
    "learning_rate": 0.05,
    "max_iter": 150,
    "max_leaf_nodes": 15,
    "min_samples_leaf": 200,
    "l2_regularization": 1.0,
    "early_stopping": False,
}

ProgressFn = Callable[[str, int, int], None]


class ModelError(UserError):
    """A model file that is missing, corrupt, or incompatible with this install."""

    exit_code = 2


@lru_cache(maxsize=1)
def _thread_controller() -> Any:
    # Built after scikit-learn's compiled modules are loaded, so it sees their OpenMP runtime.
    import sklearn.ensemble  # noqa: F401 - imported for its side effect (see above)
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextmanager
def openmp_threads(n: int | None = 1) -> Iterator[None]:
    """Run the block with at most ``n`` OpenMP threads (``None``: the library default).

    scikit-learn's gradient boosting parallelises with OpenMP. On small inputs (a live bar, a
    fold of a few thousand rows) or a busy machine its busy-waiting threads cost far more than
    they save: measured on 2 shared cores, one-row predictions had a p99 of 50 ms with 2
    threads and 1.5 ms with 1, and a walk-forward fit took 12 s instead of 1.5 s.
    """
    if n is None:
        yield
        return
    with _thread_controller().limit(limits=n, user_api="openmp"):
        yield


# --------------------------------------------------------------------------------------------
# Versions


def library_versions() -> dict[str, str]:
    """Versions of the libraries a saved model depends on."""
    import scipy
    import sklearn
    import skops

    return {
        "python": platform.python_version(),
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "skops": skops.__version__,
        "pandas": pd.__version__,
    }


def _major_minor(version: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in version.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def version_problems(saved: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """Why a model saved under ``saved`` versions may not be loaded under ``current``.

    Rules: scikit-learn major.minor must match (its persisted estimators are only promised to
    work within a release); numpy major must match (array layouts). Other versions are
    recorded for the record only.
    """
    problems: list[str] = []
    for lib, depth in (("scikit-learn", 2), ("numpy", 1)):
        have, want = current.get(lib, "?"), saved.get(lib)
        if not want:
            problems.append(f"{lib} version not recorded")
        elif _major_minor(want)[:depth] != _major_minor(have)[:depth]:
            problems.append(f"saved with {lib} {want}, installed is {have}")
    return problems


# --------------------------------------------------------------------------------------------
# The trained model


@dataclass
class TrainedModel:
    """A fitted estimator and its metadata (what ``save_model`` writes)."""

    estimator: Any
    metadata: dict[str, Any]

    @property
    def horizon(self) -> int:
        """Label horizon in bars."""
        return int(self.metadata["label"]["horizon"])

    @property
    def bar_interval(self) -> str:
        """Bar interval the model was trained on (``1Min``...)."""
        return str(self.metadata["bar_interval"])

    @property
    def feature_names(self) -> list[str]:
        """Feature columns, in the order the estimator expects."""
        return list(self.metadata["features"]["names"])

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """P(close rises over the horizon) for each row of a complete feature matrix."""
        if features.shape[0] == 0:
            return np.empty(0)
        with openmp_threads(1):
            return np.asarray(self.estimator.predict_proba(features)[:, 1], dtype=np.float64)


def make_estimator(seed: int = 0, **overrides: Any) -> Any:
    """A fresh, unfitted classifier with ``DEFAULT_PARAMS`` (``overrides`` win)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    params = {**DEFAULT_PARAMS, **overrides}
    return HistGradientBoostingClassifier(random_state=seed, **params)


def _jsonable(value: Any) -> Any:
    """Plain JSON (NaN/inf become null, numpy scalars become Python numbers)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _probe(estimator: Any) -> dict[str, Any]:
    """Features and predictions of ``probe_bars`` (a fixed series): the model's fingerprint."""
    rows = compute_features(probe_bars()).to_numpy()[-3:]
    with openmp_threads(1):
        p = estimator.predict_proba(rows)[:, 1]
    return {"features": rows.tolist(), "p": [float(x) for x in p]}


def build_metadata(
    estimator: Any,
    *,
    horizon: int,
    bar_interval: str,
    training: Mapping[str, Any],
    validation: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Metadata for a fitted estimator (``estimator_sha256`` is filled in by ``save_model``)."""
    return _jsonable(
        {
            "format": MODEL_FORMAT,
            "format_version": MODEL_FORMAT_VERSION,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "estimator": {"class": ESTIMATOR_CLASS, "params": dict(params or {})},
            "features": {
                "names": list(FEATURE_NAMES),
                "version": FEATURE_VERSION,
                "hash": feature_set_hash(),
                "lookback": LOOKBACK,
            },
            "label": {"horizon": horizon, "definition": "close[t + horizon] > close[t]"},
            "bar_interval": bar_interval,
            "training": dict(training),
            "validation": dict(validation or {}),
            "versions": library_versions(),
            "probe": _probe(estimator),
        }
    )


def save_model(model: TrainedModel, path: Path) -> Path:
    """Write ``model`` to ``path`` (a zip: metadata.json + estimator.skops), atomically."""
    import skops.io as sio

    path = Path(path)
    blob = sio.dumps(model.estimator)
    meta = dict(model.metadata)
    meta["estimator_sha256"] = hashlib.sha256(blob).hexdigest()
    text = json.dumps(_jsonable(meta), indent=2, sort_keys=True, allow_nan=False)
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(METADATA_ENTRY, text)
        zf.writestr(ESTIMATOR_ENTRY, blob)
    model.metadata = meta
    logger.info("saved model to %s (%d bytes of estimator)", path, len(blob))
    return path


def _read_entries(path: Path) -> tuple[dict[str, Any], bytes]:
    """The two archive entries, or a ``ModelError`` saying why the file is not a model."""
    not_model = f"model file {path} is not a ratchet model or is damaged"
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if METADATA_ENTRY not in names or ESTIMATOR_ENTRY not in names:
                raise ModelError(
                    f"{not_model} (no {METADATA_ENTRY}/{ESTIMATOR_ENTRY}): "
                    f"{_retrain(path)}"
                )
            for name in (METADATA_ENTRY, ESTIMATOR_ENTRY):
                if zf.getinfo(name).file_size > MAX_ENTRY_BYTES:
                    raise ModelError(f"{not_model} ({name} is implausibly large): {_retrain(path)}")
            meta_bytes = zf.read(METADATA_ENTRY)
            blob = zf.read(ESTIMATOR_ENTRY)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError,
            KeyError, ValueError, NotImplementedError) as exc:
        if isinstance(exc, IsADirectoryError | PermissionError):
            raise ModelError(
                f"cannot read model file {path} ({exc.strerror}): check --model"
            ) from None
        why = "not a zip archive, or truncated" if isinstance(exc, zipfile.BadZipFile) else (
            f"{type(exc).__name__}"
        )
        raise ModelError(f"{not_model} ({why}): {_retrain(path)}") from None
    try:
        meta = json.loads(meta_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelError(f"{not_model} (unreadable {METADATA_ENTRY}): {_retrain(path)}") from None
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        raise ModelError(f"{not_model} (unknown format): {_retrain(path)}")
    return meta, blob


def check_metadata(meta: Mapping[str, Any], path: Path) -> None:
    """Refuse a model from another format version, feature set or library versions."""
    version = meta.get("format_version")
    if version != MODEL_FORMAT_VERSION:
        raise ModelError(
            f"model file {path} has format version {version}, this ratchet reads "
            f"{MODEL_FORMAT_VERSION}: {_retrain(path)}"
        )
    feats, label = meta.get("features"), meta.get("label")
    if (
        not isinstance(feats, dict)
        or not isinstance(label, dict)
        or not isinstance(label.get("horizon"), int)
        or meta.get("bar_interval") not in INTERVAL_SECONDS
        or not isinstance(meta.get("versions"), dict)
    ):
        raise ModelError(
            f"model file {path} has incomplete metadata (features, label, bar_interval, "
            f"versions): {_retrain(path)}"
        )
    if feats.get("hash") != feature_set_hash() or list(feats.get("names") or []) != list(
        FEATURE_NAMES
    ):
        raise ModelError(
            f"model file {path} was trained on feature set {feats.get('hash')} "
            f"(v{feats.get('version')}), this ratchet computes {feature_set_hash()} "
            f"(v{FEATURE_VERSION}): {_retrain(path)}"
        )
    problems = version_problems(meta["versions"], library_versions())
    if problems:
        raise ModelError(
            f"model file {path} is incompatible ({'; '.join(problems)}): "
            f"{_retrain(path)}"
        )


def load_model(path: Path | str) -> TrainedModel:
    """Load and verify a model file; any problem is a one-line ``ModelError``."""
    import skops.io as sio

    path = Path(path)
    if not path.exists():
        raise ModelError(
            f"model file {path} not found: train one with `python cli.py train --out {path}`"
        )
    meta, blob = _read_entries(path)
    check_metadata(meta, path)
    if hashlib.sha256(blob).hexdigest() != meta.get("estimator_sha256"):
        raise ModelError(
            f"model file {path} is damaged (estimator checksum differs): "
            f"{_retrain(path)}"
        )
    try:
        untrusted = set(sio.get_untrusted_types(data=blob))
    except Exception as exc:  # noqa: BLE001 - skops raises many types on malformed input
        raise ModelError(
            f"model file {path} is damaged (estimator unreadable: {type(exc).__name__}): "
            f"{_retrain(path)}"
        ) from None
    unexpected = sorted(untrusted - ALLOWED_TYPES)
    if unexpected:
        raise ModelError(
            f"model file {path} contains types ratchet does not load ({', '.join(unexpected)}); "
            f"refusing it: {_retrain(path)}"
        )
    try:
        estimator = sio.loads(blob, trusted=sorted(untrusted))
    except Exception as exc:  # noqa: BLE001 - same: any failure to rebuild is a damaged file
        raise ModelError(
            f"model file {path} is damaged (estimator not loadable: {type(exc).__name__}): "
            f"{_retrain(path)}"
        ) from None
    _verify_estimator(estimator, meta, path)
    logger.info("loaded model %s (horizon %s, %s)", path, meta["label"]["horizon"],
                meta["bar_interval"])
    return TrainedModel(estimator, meta)


def _verify_estimator(estimator: Any, meta: Mapping[str, Any], path: Path) -> None:
    """The rebuilt estimator is the class, shape and behaviour the metadata promises."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    if not isinstance(estimator, HistGradientBoostingClassifier) or list(
        getattr(estimator, "classes_", [])
    ) != [0, 1]:
        raise ModelError(
            f"model file {path} holds an unexpected estimator ({type(estimator).__name__}): "
            f"{_retrain(path)}"
        )
    if getattr(estimator, "n_features_in_", None) != len(FEATURE_NAMES):
        raise ModelError(
            f"model file {path} expects a different number of features: "
            f"{_retrain(path)}"
        )
    probe = meta.get("probe") or {}
    try:
        saved_rows = np.asarray(probe["features"], dtype=np.float64)
        saved_p = np.asarray(probe["p"], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise ModelError(
            f"model file {path} lacks its probe fingerprint: "
            f"{_retrain(path)}"
        ) from None
    rows = compute_features(probe_bars()).to_numpy()[-3:]
    if saved_rows.shape != rows.shape or not np.allclose(saved_rows, rows, rtol=1e-9, atol=1e-12):
        raise ModelError(
            f"model file {path} was trained with different feature code (fingerprint differs "
            f"although the feature hash matches): {_retrain(path)}"
        )
    with openmp_threads(1):
        p = estimator.predict_proba(saved_rows)[:, 1]
    if not np.allclose(p, saved_p, rtol=0, atol=1e-9):
        raise ModelError(
            f"model file {path} predicts differently than when it was saved (library "
            f"behaviour changed): {_retrain(path)}"
        )


# --------------------------------------------------------------------------------------------
# Data and labels


def label_up(close: np.ndarray, horizon: int) -> np.ndarray:
    """1.0 where ``close[i + horizon] > close[i]``, 0.0 where not, NaN for the last rows."""
    n = close.shape[0]
    out = np.full(n, np.nan)
    if horizon < 1:
        raise ValueError("horizon must be at least 1 bar")
    if n > horizon:
        out[: n - horizon] = (close[horizon:] > close[: n - horizon]).astype(np.float64)
    return out


def infer_interval(data_dir: Path, frames: Mapping[str, pd.DataFrame]) -> str:
    """The bar interval of loaded bars: the folder name if it is one, else the median spacing."""
    for part in (Path(data_dir).name, Path(data_dir).parent.name):  # .../1Min or .../1Min/X
        if part in INTERVAL_SECONDS:
            return part
    spacings = [
        np.median(np.diff(pd.DatetimeIndex(f["timestamp"]).asi8)) / 1e9
        for f in frames.values()
        if len(f) > 2
    ]
    if spacings:
        seconds = float(np.median(spacings))
        # Daily bars skip weekends and holidays (the median is still a day) and move by
        # 23-25 h across daylight-saving changes.
        if abs(seconds - 86_400) <= 3600:
            return "1Day"
        for name, length in INTERVAL_SECONDS.items():
            if abs(seconds - length) < 1:
                return name
    raise DataError(f"cannot tell the bar interval of {data_dir}: pass --interval")


def load_training_bars(
    data_dir: Path,
    symbols: Sequence[str] | None,
    start: str | None = None,
    end: str | None = None,
    interval: str | None = None,
    drop_bad: bool = False,
    extended_hours: bool = False,
) -> tuple[dict[str, pd.DataFrame], str]:
    """Bars per symbol from the bar store, resampled to ``interval`` when it is coarser.

    Only the bars the Strategy would see are kept (``feeds.sessions``: regular hours, or the
    extended session with ``extended_hours``), so the model learns on the bars it trades.
    """
    from feeds.store import read_bars, resample_bars, resolve_datasets

    datasets = resolve_datasets(Path(data_dir), list(symbols) if symbols else None)
    frames = {s: read_bars(p, start, end, drop_bad) for s, p in datasets.items()}
    source = infer_interval(Path(data_dir), frames)
    if interval is None or interval == source:
        return _in_session(frames, source, extended_hours), source
    if interval not in INTERVAL_SECONDS:
        raise DataError(f"unknown interval {interval!r}: use one of {', '.join(INTERVAL_SECONDS)}")
    if INTERVAL_SECONDS[interval] < INTERVAL_SECONDS[source]:
        raise DataError(
            f"{data_dir} holds {source} bars; cannot make finer {interval} bars from them "
            "(pick a coarser --interval or finer data)"
        )
    logger.info("resampling %s bars to %s", source, interval)
    return _in_session({s: resample_bars(f, interval) for s, f in frames.items()}, interval,
                       extended_hours), interval


def _in_session(frames: dict[str, pd.DataFrame], interval: str,
                extended_hours: bool) -> dict[str, pd.DataFrame]:
    from feeds.sessions import session_codes, tradeable

    out = {}
    for sym, frame in frames.items():
        ts = pd.DatetimeIndex(frame["timestamp"]).as_unit("ns").asi8
        keep = tradeable(session_codes(ts, INTERVAL_SECONDS[interval], extended_hours),
                         extended_hours)
        out[sym] = frame if keep.all() else frame[keep].reset_index(drop=True)
    return out


@dataclass
class Dataset:
    """Labeled feature rows of all symbols, pooled, with their place on a common time grid."""

    symbols: list[str]
    #: The sorted union of all bar times (int64 ns); ``pos`` indexes it.
    grid: np.ndarray
    symbol_idx: np.ndarray
    ts: np.ndarray
    pos: np.ndarray
    #: Time of the bar whose close decides the label (int64 ns).
    label_end: np.ndarray
    X: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])


def build_dataset(frames: Mapping[str, pd.DataFrame], horizon: int) -> Dataset:
    """Features and labels of every symbol, keeping rows with complete features and a label."""
    symbols = sorted(frames)
    if not symbols:
        raise DataError("no bars to train on")
    grid = np.unique(
        np.concatenate([pd.DatetimeIndex(frames[s]["timestamp"]).asi8 for s in symbols])
    )
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("sym", "ts", "end", "X", "y")}
    for k, sym in enumerate(symbols):
        f = frames[sym]
        ts = pd.DatetimeIndex(f["timestamp"]).asi8
        X = compute_features(f).to_numpy()
        y = label_up(f["close"].to_numpy(np.float64), horizon)
        end = np.full(ts.shape[0], np.iinfo(np.int64).max)
        end[: max(ts.shape[0] - horizon, 0)] = ts[horizon:]
        keep = ~np.isnan(X).any(axis=1) & ~np.isnan(y)
        parts["sym"].append(np.full(int(keep.sum()), k))
        parts["ts"].append(ts[keep])
        parts["end"].append(end[keep])
        parts["X"].append(X[keep])
        parts["y"].append(y[keep].astype(np.int64))
    ts_all = np.concatenate(parts["ts"])
    order = np.argsort(ts_all, kind="stable")
    return Dataset(
        symbols=symbols,
        grid=grid,
        symbol_idx=np.concatenate(parts["sym"])[order],
        ts=ts_all[order],
        pos=np.searchsorted(grid, ts_all[order]),
        label_end=np.concatenate(parts["end"])[order],
        X=np.concatenate(parts["X"])[order],
        y=np.concatenate(parts["y"])[order],
    )


# --------------------------------------------------------------------------------------------
# Walk-forward validation


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
        return _jsonable(
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
    meta["probe"] = _probe(result.estimator)
    return TrainedModel(result.estimator, meta)


# --------------------------------------------------------------------------------------------
# The signal


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


__all__ = [
    "ALLOWED_TYPES",
    "DEFAULT_HORIZONS",
    "DEFAULT_PARAMS",
    "Dataset",
    "Fold",
    "FoldResult",
    "MLSignal",
    "ModelError",
    "TrainedModel",
    "Validation",
    "build_dataset",
    "fit_final",
    "fold_masks",
    "fold_model",
    "label_up",
    "load_model",
    "load_training_bars",
    "make_estimator",
    "openmp_threads",
    "save_model",
    "version_problems",
    "walk_forward",
    "walk_forward_folds",
]
