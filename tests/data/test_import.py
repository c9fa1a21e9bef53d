"""``cli.py data import``: Yahoo, Backtrader generic CSV and Alpaca dump layouts, time zones,
adjustment, validation with line numbers, and broken files."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest

from feeds.store import read_bars
from tests.data.conftest import one_line_error, run_data, write_csv

YAHOO = """
Date,Open,High,Low,Close,Adj Close,Volume
2024-03-12,20.0,21.0,19.0,20.5,10.25,1000
2024-03-11,19.0,20.0,18.0,19.5,9.75,2000
2024-03-08,18.0,19.0,17.0,18.5,9.25,3000
2024-03-07,17.0,18.0,16.0,17.5,8.75,4000
"""


def test_yahoo_daily_newest_first_is_sorted_and_stamped_at_new_york_midnight(tmp_path):
    src = write_csv(tmp_path / "WXYZ.csv", YAHOO)
    out = tmp_path / "bars"
    proc = run_data("import", str(src), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "WXYZ 1Day (yahoo), 4 bars 2024-03-07 .. 2024-03-12" in proc.stdout
    bars = read_bars(out / "1Day" / "WXYZ.parquet")
    # New York midnight in UTC: 05:00 before the DST change of 2024-03-10, 04:00 after.
    assert [t.isoformat() for t in bars["timestamp"]] == [
        "2024-03-07T05:00:00+00:00", "2024-03-08T05:00:00+00:00",
        "2024-03-11T04:00:00+00:00", "2024-03-12T04:00:00+00:00"]
    assert bars["close"].tolist() == [17.5, 18.5, 19.5, 20.5]  # unadjusted by default
    meta = pq.read_schema(out / "1Day" / "WXYZ.parquet").metadata
    assert meta[b"ratchet.layout"] == b"yahoo" and meta[b"ratchet.source"] == b"import"


def test_yahoo_adjusted_scales_prices_and_volume(tmp_path):
    src = write_csv(tmp_path / "data.csv", YAHOO)
    proc = run_data("import", str(src), "--symbol", "wxyz", "--adjusted",
                    "--out", str(tmp_path / "bars"))
    assert proc.returncode == 0, proc.stderr
    bars = read_bars(tmp_path / "bars" / "1Day" / "WXYZ.parquet")
    first = bars.iloc[0]  # 2024-03-07: factor 8.75 / 17.5 = 0.5
    assert (first["open"], first["high"], first["low"], first["close"]) == (8.5, 9.0, 8.0, 8.75)
    assert first["volume"] == 8000  # dollar volume kept


def test_backtrader_generic_csv_with_dtformat_and_tz(tmp_path):
    src = write_csv(tmp_path / "qrs.txt", """
        datetime,open,high,low,close,volume,openinterest
        15/01/2025 09:30,10,11,9,10.5,100,0
        15/01/2025 09:31,10.5,11,10,10.75,200,0
        15/01/2025 09:32,10.75,12,10.5,11.5,300,0
    """)
    utc = run_data("import", str(src), "--dtformat", "%d/%m/%Y %H:%M",
                   "--out", str(tmp_path / "utc"))
    assert utc.returncode == 0, utc.stderr
    assert "QRS 1Min (backtrader)" in utc.stdout and "naive times read as UTC" in utc.stdout
    ny = run_data("import", str(src), "--dtformat", "%d/%m/%Y %H:%M", "--tz",
                  "America/New_York", "--out", str(tmp_path / "ny"))
    assert ny.returncode == 0, ny.stderr
    a = read_bars(tmp_path / "utc" / "1Min" / "QRS.parquet")
    b = read_bars(tmp_path / "ny" / "1Min" / "QRS.parquet")
    assert a["timestamp"].iloc[0] == pd.Timestamp("2025-01-15 09:30", tz="UTC")
    assert b["timestamp"].iloc[0] == pd.Timestamp("2025-01-15 14:30", tz="UTC")  # EST = UTC-5


def test_alpaca_dump_keeps_trade_count_and_vwap_and_can_resample(tmp_path):
    src = write_csv(tmp_path / "TUV_bars.csv", """
        t,o,h,l,c,v,n,vw
        2025-10-01T13:30:00Z,10,11,9,10.5,100,5,10.2
        2025-10-01T13:31:00Z,10.5,11,10,10.75,200,7,10.6
        2025-10-01T13:32:00Z,10.75,12,10.5,11.5,300,9,11.1
        2025-10-01T13:35:00Z,11.5,12,11,11.75,400,11,11.6
    """)
    proc = run_data("import", str(src), "--out", str(tmp_path / "bars"))
    assert proc.returncode == 0, proc.stderr
    assert "TUV 1Min (alpaca)" in proc.stdout
    bars = read_bars(tmp_path / "bars" / "1Min" / "TUV.parquet")
    assert bars["trade_count"].tolist() == [5, 7, 9, 11]
    assert bars["vwap"].tolist() == [10.2, 10.6, 11.1, 11.6]
    five = run_data("import", str(src), "--timeframe", "5Min", "--out", str(tmp_path / "bars"))
    assert five.returncode == 0, five.stderr
    agg = read_bars(tmp_path / "bars" / "5Min" / "TUV.parquet")
    assert agg["volume"].tolist() == [600, 400]
    assert agg["high"].tolist() == [12, 12] and agg["open"].tolist() == [10, 11.5]


def test_bad_row_names_the_line_and_drop_bad_rows_skips_it(tmp_path):
    src = write_csv(tmp_path / "BAD.csv", """
        timestamp,open,high,low,close,volume
        2025-10-01 13:30:00+00:00,10,11,9,10.5,100
        2025-10-01 13:31:00+00:00,10,9,11,10.5,100
        2025-10-01 13:32:00+00:00,10,11,9,10.5,100
        2025-10-01 13:33:00+00:00,10,11,9,null,100
    """)
    out = tmp_path / "bars"
    line = one_line_error(run_data("import", str(src), "--out", str(out)))
    assert f"{src}: line 3 (2025-10-01T13:31:00+00:00): high < low" in line
    assert "(and 1 more bad rows)" in line and "--drop-bad-rows" in line
    assert not (out / "1Min" / "BAD.parquet").exists()
    ok = run_data("import", str(src), "--out", str(out), "--drop-bad-rows")
    assert ok.returncode == 0, ok.stderr
    assert "2 bad rows dropped" in ok.stdout
    assert len(read_bars(out / "1Min" / "BAD.parquet")) == 2


def test_unparseable_time_and_number_name_the_line(tmp_path):
    when = write_csv(tmp_path / "TIM.csv", """
        Date,Open,High,Low,Close,Volume
        2024-01-02,10,11,9,10.5,100
        2024-01-0x,10,11,9,10.5,100
    """)
    assert "line 3: time '2024-01-0x' cannot be parsed" in one_line_error(
        run_data("import", str(when), "--out", str(tmp_path)))
    num = write_csv(tmp_path / "NUM.csv", """
        Date,Open,High,Low,Close,Volume
        2024-01-02,10,11,9,10.5,100
        2024-01-03,10,eleven,9,10.5,100
    """)
    assert "line 3: column 'High' value 'eleven' is not a number" in one_line_error(
        run_data("import", str(num), "--out", str(tmp_path)))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "is empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\xff\xfe\x00\x00", "not a readable"),
        (b"Date,Open,High,Low,Close,Volume\n", "no data rows"),
        (b"20250101 093000;1;2;0.5;1.5;10\n", "has no header row"),
        (b"Symbol,Price\nAAA,1\nAAA,2\n", "no column for timestamp, open, high, low, close"),
    ],
)
def test_broken_files_are_one_line_errors(tmp_path, content, expected):
    src = tmp_path / "BRK.csv"
    src.write_bytes(content)
    line = one_line_error(run_data("import", str(src), "--out", str(tmp_path / "bars")))
    assert expected in line and str(src) in line
    assert not (tmp_path / "bars").exists()


def test_existing_dataset_needs_replace_or_merge(tmp_path):
    out = tmp_path / "bars"
    a = write_csv(tmp_path / "a.csv", """
        timestamp,open,high,low,close,volume
        2025-10-01T13:30:00Z,10,11,9,10.5,100
        2025-10-01T13:31:00Z,10,11,9,10.5,100
    """)
    b = write_csv(tmp_path / "b.csv", """
        timestamp,open,high,low,close,volume
        2025-10-01T13:31:00Z,20,21,19,20.5,200
        2025-10-01T13:32:00Z,20,21,19,20.5,200
    """)
    assert run_data("import", str(a), "--symbol", "MRG", "--out", str(out)).returncode == 0
    line = one_line_error(run_data("import", str(b), "--symbol", "MRG", "--out", str(out)))
    assert "already exists" in line and "--replace" in line and "--merge" in line
    merged = run_data("import", str(b), "--symbol", "MRG", "--merge", "--out", str(out))
    assert merged.returncode == 0, merged.stderr
    bars = read_bars(out / "1Min" / "MRG")
    assert bars["close"].tolist() == [10.5, 20.5, 20.5]  # the newer import wins at 13:31
    replaced = run_data("import", str(a), "--symbol", "MRG", "--replace", "--out", str(out))
    assert replaced.returncode == 0, replaced.stderr
    assert not (out / "1Min" / "MRG").exists()
    assert read_bars(out / "1Min" / "MRG.parquet")["close"].tolist() == [10.5, 10.5]


def test_headerless_file_with_columns_and_end_labels(tmp_path):
    src = tmp_path / "nt.csv"
    src.write_text("20110103 143100;126.35;126.39;126.35;126.39;1579\n"
                   "20110103 143200;126.45;126.45;126.45;126.45;300\n")
    proc = run_data("import", str(src), "--symbol", "SPY", "--columns",
                    "timestamp,open,high,low,close,volume", "--dtformat", "%Y%m%d %H%M%S",
                    "--stamp", "end", "--out", str(tmp_path / "bars"))
    assert proc.returncode == 0, proc.stderr
    bars = read_bars(tmp_path / "bars" / "1Min" / "SPY.parquet")
    assert bars["timestamp"].iloc[0] == pd.Timestamp("2011-01-03 14:30", tz="UTC")


def test_bad_tz_and_map_options(tmp_path):
    src = write_csv(tmp_path / "OPT.csv", """
        when,o,h,l,last,v
        2025-10-01 09:30,10,11,9,10.5,100
        2025-10-01 09:31,10,11,9,10.5,100
    """)
    assert "--tz 'Mars/Olympus' is not a time zone" in one_line_error(
        run_data("import", str(src), "--tz", "Mars/Olympus", "--out", str(tmp_path)))
    proc = run_data("import", str(src), "--map", "timestamp=when", "--tz", "America/New_York",
                    "--out", str(tmp_path / "bars"))
    assert proc.returncode == 0, proc.stderr
    bars = read_bars(tmp_path / "bars" / "1Min" / "OPT.parquet")
    assert bars["close"].tolist() == [10.5, 10.5]
    assert bars["timestamp"].iloc[0] == pd.Timestamp("2025-10-01 13:30", tz="UTC")
