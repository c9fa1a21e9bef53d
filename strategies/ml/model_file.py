"""The model file: a fitted estimator and its metadata, saved and loaded safely.

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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ratchet.common.atomic import atomic_path
from ratchet.common.config import INTERVAL_SECONDS
from ratchet.common.errors import UserError
from strategies.features import (
    FEATURE_NAMES,
    FEATURE_VERSION,
    LOOKBACK,
    compute_features,
    feature_set_hash,
    probe_bars,
)

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


def jsonable(value: Any) -> Any:
    """Plain JSON (NaN/inf become null, numpy scalars become Python numbers)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def probe_fingerprint(estimator: Any) -> dict[str, Any]:
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
    return jsonable(
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
            "probe": probe_fingerprint(estimator),
        }
    )


def save_model(model: TrainedModel, path: Path) -> Path:
    """Write ``model`` to ``path`` (a zip: metadata.json + estimator.skops), atomically."""
    import skops.io as sio

    path = Path(path)
    blob = sio.dumps(model.estimator)
    meta = dict(model.metadata)
    meta["estimator_sha256"] = hashlib.sha256(blob).hexdigest()
    text = json.dumps(jsonable(meta), indent=2, sort_keys=True, allow_nan=False)
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
