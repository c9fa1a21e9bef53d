"""``cli.py data info``: ranges, counts and gaps beyond normal closures (NYSE calendar)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from feeds.store import append_bars, write_bars
from feeds.synthetic import random_walk_bars, trading_days, trading_minutes
from tests.data.conftest import one_line_error, run_data


def _store(root: Path) -> None:
    """1Min: 3 sessions around Thanksgiving 2025 (holiday and early close) with a 10-minute
    hole and one session missing; 1Day: December 2024 with one real session missing."""
    minutes = trading_minutes("2025-11-25", "2025-12-01")  # Tue, Wed, Fri (13:00 close), Mon
    frame = random_walk_bars(minutes, seed=7)
    ts = frame["timestamp"]
    hole = (ts >= pd.Timestamp("2025-11-25 15:00", tz="UTC")) & (
        ts < pd.Timestamp("2025-11-25 15:10", tz="UTC"))
    wednesday = ts.dt.tz_convert("America/New_York").dt.day == 26
    frame = frame[~hole & ~wednesday]
    # Stored as two parts, with a pre-market bar that is outside regular hours.
    pre = frame.iloc[:1].copy()
    pre["timestamp"] = pd.Timestamp("2025-11-25 13:00", tz="UTC")
    pd_frame = pd.concat([pre, frame.iloc[:500]])
    append_bars(root / "1Min" / "GAPY", pd_frame, "a")
    append_bars(root / "1Min" / "GAPY", frame.iloc[500:], "b", metadata={"feed": "iex"})
    days = random_walk_bars(trading_days("2024-12-01", "2024-12-31"), seed=8)
    days = days[days["timestamp"] != pd.Timestamp("2024-12-16 05:00", tz="UTC")]
    write_bars(root / "1Day" / "GAPY.parquet", days)


def test_info_json_counts_gaps_but_not_holidays(tmp_path: Path) -> None:
    _store(tmp_path)
    proc = run_data("info", str(tmp_path), "--json", "--gaps", "5")
    assert proc.returncode == 0, proc.stderr
    infos = {(i["symbol"], i["timeframe"]): i for i in json.loads(proc.stdout)}
    minute = infos[("GAPY", "1Min")]
    # Tue 390 + Wed 390 + Fri 210 (early close) + Mon 390; Thanksgiving is not expected.
    assert minute["sessions"] == 4
    assert minute["expected"] == 390 + 390 + 210 + 390
    assert minute["missing"] == 10 + 390
    assert minute["missing_sessions"] == 1
    assert minute["gap_count"] == 2
    assert minute["largest_gaps"][0] == {"start": "2025-11-26T14:30:00+00:00",
                                         "end": "2025-11-26T21:00:00+00:00", "bars": 390}
    assert minute["largest_gaps"][1]["start"] == "2025-11-25T15:00:00+00:00"
    assert minute["largest_gaps"][1]["bars"] == 10
    assert minute["outside"] == 1  # the pre-market bar
    assert minute["bars"] == 390 - 10 + 210 + 390 + 1
    assert minute["parts"] == 2 and minute["feed"] == "iex"
    assert minute["first"] == "2025-11-25T13:00:00+00:00"
    daily = infos[("GAPY", "1Day")]
    # December 2024: 21 sessions (Christmas is a holiday), one of them missing.
    assert daily["expected"] == 21 and daily["bars"] == 20
    assert daily["missing_sessions"] == 1 and daily["gap_count"] == 1
    assert daily["largest_gaps"][0]["start"] == "2024-12-16T05:00:00+00:00"


def test_info_table_on_the_bundled_data() -> None:
    proc = run_data("info", "--timeframe", "1Min", "--symbols", "ACME,BOLT")
    assert proc.returncode == 0, proc.stderr
    rows = [ln for ln in proc.stdout.splitlines() if "ACME" in ln or "BOLT" in ln]
    assert len(rows) == 2
    for row in rows:
        cells = re.split(r"\s{2,}", row.strip())
        # symbol, interval, first, last (New York time), bars, expected, missing, empty, gaps
        assert cells[1:9] == ["1Min", "2025-10-01 09:30", "2025-10-31 15:59", "8,970",
                              "8,970", "0", "0", "0"]


def test_info_fits_80_columns_and_cuts_no_value() -> None:
    """Regression: in 80 columns every cell was cut (`AC…`, `20…`); piped, ~170 columns."""
    narrow = run_data("info", "--timeframe", "1Min", "--symbols", "ACME", env={"COLUMNS": "80"})
    assert narrow.returncode == 0, narrow.stderr
    assert max(len(ln) for ln in narrow.stdout.splitlines()) <= 80
    assert "…" not in narrow.stdout
    for value in ("ACME 1Min", "first: 2025-10-01 09:30", "last: 2025-10-31 15:59",
                  "bars: 8,970", "parts: 1"):
        assert value in narrow.stdout, narrow.stdout
    assert "│" not in narrow.stdout  # plain text when piped


def test_info_reports_a_corrupt_file_and_exits_non_zero(tmp_path: Path) -> None:
    _store(tmp_path)
    (tmp_path / "1Day" / "BRKN.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    proc = run_data("info", str(tmp_path), "--json")
    infos = {(i["symbol"], i["timeframe"]): i for i in json.loads(proc.stdout)}
    assert "not a readable Parquet file" in infos[("BRKN", "1Day")]["error"]
    assert infos[("GAPY", "1Day")]["error"] is None  # the others are still summarised
    line = one_line_error(proc)
    assert "1 dataset(s) unreadable" in line and "BRKN.parquet" in line


def test_info_missing_folder_is_one_line_error(tmp_path: Path) -> None:
    line = one_line_error(run_data("info", str(tmp_path / "nope")))
    assert "does not exist" in line
    (tmp_path / "empty").mkdir()
    assert "no bar datasets under" in one_line_error(run_data("info", str(tmp_path / "empty")))
