"""The Parquet bar store: validation errors name file and row; layout; resampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feeds import store
from ratchet.common.errors import DataError
from tests.conftest import flat_bars


def _write(path: Path, frame: pd.DataFrame) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return path


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.assign(close=f.close.where(f.index != 7)),
         "row 7 (2025-10-01T13:37:00+00:00): NaN value"),
        (lambda f: f.assign(high=f.high.where(f.index != 3, 90.0)), "row 3"),
        (lambda f: f.assign(low=f.low.where(f.index != 4, -1.0)), "row 4"),
        (lambda f: f.assign(open=f.open.where(f.index != 5, 0.0)), "non-positive price"),
    ],
)
def test_bad_rows_name_file_and_row(tmp_path: Path, mutate, message: str) -> None:
    path = _write(tmp_path / "ACME.parquet", mutate(flat_bars(20)))
    with pytest.raises(DataError) as err:
        store.read_bars(path)
    assert str(path) in str(err.value) and message in str(err.value)
    assert "--drop-bad-rows" in str(err.value)


def test_high_below_low_is_reported_as_such(tmp_path: Path) -> None:
    f = flat_bars(20)
    f.loc[3, ["high", "low"]] = [99.0, 101.0]
    path = _write(tmp_path / "ACME.parquet", f)
    with pytest.raises(DataError, match=r"row 3 .*high < low"):
        store.read_bars(path)


def test_duplicate_and_unsorted_timestamps(tmp_path: Path) -> None:
    f = flat_bars(10)
    dup = _write(tmp_path / "a" / "X.parquet", pd.concat([f.iloc[:5], f.iloc[4:]]))
    with pytest.raises(DataError, match="row 5 .*duplicate timestamp"):
        store.read_bars(dup)
    uns = _write(tmp_path / "b" / "X.parquet", f.iloc[[0, 1, 3, 2, 4]])
    with pytest.raises(DataError, match="row 3 .*unsorted"):
        store.read_bars(uns)


def test_drop_bad_rows_keeps_the_good_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    f = flat_bars(20)
    f.loc[[2, 9], "close"] = np.nan
    path = _write(tmp_path / "ACME.parquet", f)
    out = store.read_bars(path, drop_bad=True)
    assert len(out) == 18
    assert "dropping row 2" in caplog.text and "dropping row 9" in caplog.text


def test_missing_column_and_corrupt_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "ACME.parquet", flat_bars(5).drop(columns=["volume"]))
    with pytest.raises(DataError, match="missing column.*volume"):
        store.read_bars(path)
    broken = tmp_path / "BAD.parquet"
    broken.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match="BAD.parquet is not a readable Parquet file"):
        store.read_bars(broken)


def test_naive_timestamps_are_utc_and_other_zones_converted(tmp_path: Path) -> None:
    f = flat_bars(3)
    naive = _write(tmp_path / "N.parquet", f.assign(timestamp=f.timestamp.dt.tz_localize(None)))
    ny = _write(tmp_path / "Y.parquet",
                f.assign(timestamp=f.timestamp.dt.tz_convert("America/New_York")))
    for p in (naive, ny):
        got = store.read_bars(p)["timestamp"]
        assert str(got.dt.tz) == "UTC"
        assert got.iloc[0] == pd.Timestamp("2025-10-01 13:30", tz="UTC")


def test_date_range_filter(tmp_path: Path) -> None:
    path = _write(tmp_path / "X.parquet", flat_bars(60))
    got = store.read_bars(path, start="2025-10-01 13:40", end="2025-10-01 13:49")
    assert len(got) == 10


def test_folder_of_parts_later_part_wins(tmp_path: Path) -> None:
    base = flat_bars(10)
    newer = flat_bars(10, price=101.0).iloc[5:]
    store.write_bars(tmp_path / "1Min" / "X" / "0001.parquet", base)
    store.append_bars(tmp_path / "1Min" / "X", newer, "0002")
    got = store.read_bars(tmp_path / "1Min" / "X")
    assert len(got) == 10
    assert list(got.close[:5]) == [100.0] * 5 and list(got.close[5:]) == [101.0] * 5
    assert store.discover(tmp_path / "1Min") == {"X": tmp_path / "1Min" / "X"}


def test_append_moves_a_single_file_into_a_folder(tmp_path: Path) -> None:
    store.write_bars(tmp_path / "X.parquet", flat_bars(5))
    store.append_bars(tmp_path / "X", flat_bars(5, start="2025-10-01 13:35"), "live-1")
    assert not (tmp_path / "X.parquet").exists()
    assert len(store.read_bars(tmp_path / "X")) == 10


def test_write_is_atomic_on_failure(tmp_path: Path) -> None:
    """A failed write (bad data) leaves the existing file untouched and no temp files."""
    path = store.write_bars(tmp_path / "X.parquet", flat_bars(5))
    before = path.read_bytes()
    with pytest.raises(DataError):
        store.write_bars(path, flat_bars(5).assign(close=-1.0))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X.parquet"]


def test_unknown_symbol_lists_what_exists(tmp_path: Path) -> None:
    store.write_bars(tmp_path / "AAA.parquet", flat_bars(5))
    with pytest.raises(DataError, match="no bars for ZZZ .*available symbols are AAA"):
        store.resolve_datasets(tmp_path, ["ZZZ"])
    with pytest.raises(DataError, match="does not exist"):
        store.resolve_datasets(tmp_path / "nope", None)


def test_resample_minutes_and_days() -> None:
    f = flat_bars(390, start="2025-10-01 13:30")
    f["high"] = f["high"] + np.arange(390) * 0.01
    f["volume"] = 1.0
    five = store.resample_bars(f, "5Min")
    assert len(five) == 78
    assert five.timestamp.iloc[1] == pd.Timestamp("2025-10-01 13:35", tz="UTC")
    assert five.volume.iloc[0] == 5.0
    assert five.high.iloc[0] == pytest.approx(100.5 + 0.04)
    day = store.resample_bars(f, "1Day")
    assert len(day) == 1
    assert day.timestamp.iloc[0] == pd.Timestamp("2025-10-01 04:00", tz="UTC")  # NY midnight
    assert day.high.iloc[0] == pytest.approx(100.5 + 3.89)


def test_read_arrays_is_numpy_and_utc_ns(tmp_path: Path) -> None:
    path = _write(tmp_path / "X.parquet", flat_bars(4))
    a = store.read_arrays(path)
    assert a.ts.dtype == np.int64 and a.close.dtype == np.float64
    assert a.ts[0] == pd.Timestamp("2025-10-01 13:30", tz="UTC").value
    assert a.symbol == "X"


def test_string_timestamps_are_parsed(tmp_path: Path) -> None:
    f = flat_bars(3)
    table = pa.table({"timestamp": [t.isoformat() for t in f.timestamp],
                      **{c: f[c].to_numpy() for c in ("open", "high", "low", "close", "volume")}})
    pq.write_table(table, tmp_path / "S.parquet")
    assert store.read_bars(tmp_path / "S.parquet")["timestamp"].iloc[2] == \
        pd.Timestamp("2025-10-01 13:32", tz="UTC")


def test_interrupted_move_into_a_folder_loses_no_bar(tmp_path: Path) -> None:
    """A crash between building the parts folder and removing the single file leaves both;
    readers then use the folder (which holds the base part) and the next append tidies up."""
    store.write_bars(tmp_path / "X.parquet", flat_bars(5))
    (tmp_path / "X").mkdir()
    import os

    os.link(tmp_path / "X.parquet", tmp_path / "X" / "0000-base.parquet")
    assert store.discover(tmp_path) == {"X": tmp_path / "X"}
    assert len(store.read_bars(store.discover(tmp_path)["X"])) == 5
    store.append_bars(tmp_path / "X", flat_bars(3, start="2025-10-01 13:35"), "p1")
    assert not (tmp_path / "X.parquet").exists()
    assert len(store.read_bars(tmp_path / "X")) == 8
