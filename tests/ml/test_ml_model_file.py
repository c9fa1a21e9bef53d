"""The model file: round trip, metadata, and a clear refusal of wrong or damaged files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import skops.io as sio

from ratchet.common.config import Settings
from ratchet.common.errors import UserError
from strategies.features import FEATURE_NAMES, feature_set_hash
from strategies.ml import (
    ESTIMATOR_ENTRY,
    METADATA_ENTRY,
    MLSignal,
    ModelError,
    TrainedModel,
    library_versions,
    load_model,
    save_model,
    version_problems,
)
from strategies.signals import make_signal
from tests.ml.conftest import HORIZON, SYMBOLS, make_bars


def _rewrite(src: Path, dst: Path, meta_fn: Callable[[dict[str, Any]], None] | None = None,
             blob: bytes | None = None, fix_sha: bool = True) -> Path:
    """Copy a model file, changing its metadata and/or estimator bytes."""
    with zipfile.ZipFile(src) as zf:
        meta = json.loads(zf.read(METADATA_ENTRY))
        est = zf.read(ESTIMATOR_ENTRY) if blob is None else blob
    if meta_fn:
        meta_fn(meta)
    if fix_sha:
        meta["estimator_sha256"] = hashlib.sha256(est).hexdigest()
    with zipfile.ZipFile(dst, "w") as zf:
        zf.writestr(METADATA_ENTRY, json.dumps(meta))
        zf.writestr(ESTIMATOR_ENTRY, est)
    return dst


def test_round_trip_gives_identical_predictions(trained: TrainedModel, model_file: Path) -> None:
    loaded = load_model(model_file)
    bars = make_bars(seed=21)
    before = MLSignal(trained).compute(bars)
    after = MLSignal(loaded).compute(bars)
    pd.testing.assert_frame_equal(before, after, check_exact=True)
    assert before["p"].notna().sum() > 1000


def test_metadata_records_features_range_versions_and_validation(model_file: Path,
                                                                  frames: dict) -> None:
    meta = load_model(model_file).metadata
    assert meta["features"]["names"] == list(FEATURE_NAMES)
    assert meta["features"]["hash"] == feature_set_hash()
    assert meta["label"]["horizon"] == HORIZON
    assert meta["bar_interval"] == "1Min"
    assert meta["versions"]["scikit-learn"] == library_versions()["scikit-learn"]
    assert set(meta["training"]["symbols"]) == set(SYMBOLS)
    acme = meta["training"]["symbols"]["ACME"]
    assert pd.Timestamp(acme["first_bar"]) == frames["ACME"]["timestamp"].iloc[0]
    assert pd.Timestamp(acme["last_bar"]) == frames["ACME"]["timestamp"].iloc[-1]
    val = meta["validation"]
    assert val["folds"] == 3 and val["gap_bars"] == HORIZON
    assert val["enter_threshold"] == 0.55 and val["exit_threshold"] == 0.45
    assert 0.0 <= val["overall"]["auc"] <= 1.0 and len(val["per_fold"]) == 3
    # the file is a plain zip whose metadata anyone can read
    with zipfile.ZipFile(model_file) as zf:
        assert set(zf.namelist()) == {METADATA_ENTRY, ESTIMATOR_ENTRY}


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"not found: train one with `python cli.py train"):
        load_model(tmp_path / "nope.rmodel")


@pytest.mark.parametrize("damage", ["truncate", "random", "empty", "text", "flipped"])
def test_damaged_files_are_clear_errors(model_file: Path, tmp_path: Path, damage: str) -> None:
    data = model_file.read_bytes()
    bad = tmp_path / "bad.rmodel"
    if damage == "truncate":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "random":
        bad.write_bytes(np.random.default_rng(0).bytes(5000))
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "text":
        bad.write_text("this is not a model\n")
    else:  # flip bytes inside the compressed estimator: zip CRC or our checksum catches it
        mid = bytearray(data)
        for i in range(len(mid) // 2, len(mid) // 2 + 64):
            mid[i] ^= 0xFF
        bad.write_bytes(bytes(mid))
    with pytest.raises(ModelError) as err:
        load_model(bad)
    msg = str(err.value)
    assert str(bad) in msg and "retrain" in msg and "\n" not in msg


def test_a_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot read model file"):
        load_model(tmp_path)


def test_zip_without_our_entries(tmp_path: Path) -> None:
    bad = tmp_path / "other.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(ModelError, match="not a ratchet model"):
        load_model(bad)


def test_different_feature_hash_is_refused(model_file: Path, tmp_path: Path) -> None:
    def change(meta: dict[str, Any]) -> None:
        meta["features"]["hash"] = "0123456789abcdef"
        meta["features"]["version"] = 0

    bad = _rewrite(model_file, tmp_path / "f.rmodel", change)
    with pytest.raises(ModelError, match=r"trained on feature set 0123456789abcdef \(v0\)"):
        load_model(bad)


def test_changed_feature_code_is_caught_by_the_fingerprint(model_file: Path,
                                                          tmp_path: Path) -> None:
    """Regression guard: feature code changed but FEATURE_VERSION not bumped."""

    def change(meta: dict[str, Any]) -> None:
        meta["probe"]["features"][0][0] += 1e-3

    bad = _rewrite(model_file, tmp_path / "p.rmodel", change)
    with pytest.raises(ModelError, match="different feature code"):
        load_model(bad)


@pytest.mark.parametrize(
    ("lib", "version", "refused"),
    [
        ("scikit-learn", "1.0.2", True),
        ("scikit-learn", "2.{minor}.0", True),
        ("scikit-learn", "{major}.{minor}.99", False),
        ("numpy", "1.26.4", True),
        ("numpy", "{np_major}.0.0", False),
        ("scipy", "0.1.0", False),
    ],
)
def test_library_versions(model_file: Path, tmp_path: Path, lib: str, version: str,
                          refused: bool) -> None:
    sk = library_versions()["scikit-learn"].split(".")
    np_major = library_versions()["numpy"].split(".")[0]
    version = version.format(major=sk[0], minor=sk[1], np_major=np_major)

    def change(meta: dict[str, Any]) -> None:
        meta["versions"][lib] = version

    path = _rewrite(model_file, tmp_path / "v.rmodel", change)
    if refused:
        with pytest.raises(ModelError, match=rf"saved with {lib} {version}, installed is"):
            load_model(path)
    else:
        assert load_model(path).metadata["versions"][lib] == version


def test_version_problems_table() -> None:
    cur = {"scikit-learn": "1.9.1", "numpy": "2.4.6"}
    assert version_problems({"scikit-learn": "1.9.0", "numpy": "2.0.0"}, cur) == []
    assert version_problems({"scikit-learn": "1.9.0rc1", "numpy": "2.1"}, cur) == []
    assert len(version_problems({"scikit-learn": "1.8.2", "numpy": "1.26.0"}, cur)) == 2
    assert version_problems({"numpy": "2.0.0"}, cur) == ["scikit-learn version not recorded"]


@pytest.mark.parametrize("key", ["label", "bar_interval", "versions", "features"])
def test_incomplete_metadata(model_file: Path, tmp_path: Path, key: str) -> None:
    bad = _rewrite(model_file, tmp_path / "i.rmodel", lambda m: m.pop(key))
    with pytest.raises(ModelError, match="incomplete metadata"):
        load_model(bad)


def test_format_version_from_the_future(model_file: Path, tmp_path: Path) -> None:
    bad = _rewrite(model_file, tmp_path / "fv.rmodel",
                   lambda m: m.update(format_version=99))
    with pytest.raises(ModelError, match="format version 99"):
        load_model(bad)


def test_estimator_swapped_without_checksum(model_file: Path, tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    est = LogisticRegression().fit(np.eye(len(FEATURE_NAMES)), [0, 1] * (len(FEATURE_NAMES) // 2))
    bad = _rewrite(model_file, tmp_path / "s.rmodel", blob=sio.dumps(est), fix_sha=False)
    with pytest.raises(ModelError, match="checksum differs"):
        load_model(bad)


def test_other_estimator_class_is_refused(model_file: Path, tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    est = LogisticRegression().fit(np.eye(len(FEATURE_NAMES)), [0, 1] * (len(FEATURE_NAMES) // 2))
    bad = _rewrite(model_file, tmp_path / "c.rmodel", blob=sio.dumps(est))
    with pytest.raises(ModelError, match="unexpected estimator"):
        load_model(bad)


def test_untrusted_types_are_never_loaded(model_file: Path, tmp_path: Path) -> None:
    """A file that would call os.system on load is refused before anything is built."""
    from sklearn.preprocessing import FunctionTransformer

    blob = sio.dumps(FunctionTransformer(func=os.system))
    bad = _rewrite(model_file, tmp_path / "evil.rmodel", blob=blob)
    with pytest.raises(ModelError, match=r"contains types ratchet does not load \(.*system"):
        load_model(bad)


def test_from_settings_uses_model_and_thresholds(model_file: Path) -> None:
    s = Settings(signal="ml", model_path=str(model_file), ml_enter_threshold=0.6,
                 ml_exit_threshold=0.4)
    sig = make_signal(s)
    assert isinstance(sig, MLSignal)
    assert (sig.name, sig.enter, sig.exit, sig.model.horizon) == ("ml", 0.6, 0.4, HORIZON)


def test_from_settings_refuses_another_interval(model_file: Path) -> None:
    s = Settings(signal="ml", model_path=str(model_file), bar_interval="5Min")
    with pytest.raises(ModelError, match=r"trained on 1Min bars, this run uses 5Min"):
        MLSignal.from_settings(s)


def test_bad_thresholds(trained: TrainedModel) -> None:
    with pytest.raises(UserError, match="0 <= exit <= enter <= 1"):
        MLSignal(trained, enter=0.4, exit=0.6)


def test_model_error_is_a_user_error() -> None:
    assert issubclass(ModelError, UserError)


def test_save_is_atomic_and_overwrites(trained: TrainedModel, model_file: Path,
                                       tmp_path: Path) -> None:
    dst = tmp_path / "sub" / "m.rmodel"
    shutil.copy(model_file, tmp_path / "first.rmodel")
    save_model(trained, dst)
    save_model(trained, dst)
    assert load_model(dst).horizon == HORIZON
    assert [p.name for p in dst.parent.iterdir()] == ["m.rmodel"]  # no temp files left
