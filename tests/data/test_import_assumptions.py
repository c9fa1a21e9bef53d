"""``cli.py data import`` says what it assumes (issue 15): the bar-stamp convention, day/month
order, the symbol from the file name, unadjusted Yahoo prices."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from feeds.importers import ImportOptions, parse_csv, symbol_from_filename
from feeds.store import read_bars
from ratchet.common.errors import DataError
from tests.data.conftest import one_line_error, run_data, write_csv

# NinjaTrader-style minute export: no header, times label the END of each bar (09:31..16:00 NY
# in winter = 14:31..21:00 UTC).
NT_ROWS = "".join(f"20110103 {h:02d}{m:02d}00;126.35;126.39;126.30;126.39;1579\n"
                  for h, m in ((14, 31), (14, 32), (20, 59), (21, 0)))
COLUMNS = "timestamp,open,high,low,close,volume"


def test_headerless_file_error_names_columns_and_stamp(tmp_path: Path) -> None:
    """Regression: the error named --columns but not --stamp."""
    src = tmp_path / "SPY.txt"
    src.write_text(NT_ROWS)
    line = one_line_error(run_data("import", str(src), "--out", str(tmp_path / "bars")))
    assert "--columns" in line and "--stamp end" in line


def test_assumed_bar_start_is_said_and_end_labels_are_suspected(tmp_path: Path) -> None:
    """Regression: leaving out --stamp end put every bar a minute late without a word."""
    src = tmp_path / "SPY.txt"
    src.write_text(NT_ROWS)
    proc = run_data("import", str(src), "--columns", COLUMNS, "--dtformat", "%Y%m%d %H%M%S",
                    "--out", str(tmp_path / "bars"))
    assert proc.returncode == 0, proc.stderr
    note = " ".join(proc.stderr.split())
    assert "note: SPY:" in note and "read as bar STARTS" in note
    assert "start at 16:00 New York and none at 09:30" in note and "--stamp end" in note
    fixed = run_data("import", str(src), "--columns", COLUMNS, "--dtformat", "%Y%m%d %H%M%S",
                     "--stamp", "end", "--replace", "--out", str(tmp_path / "bars"))
    assert fixed.returncode == 0, fixed.stderr
    assert "note:" not in fixed.stderr
    bars = read_bars(tmp_path / "bars" / "1Min" / "SPY.parquet")
    assert bars["timestamp"].iloc[0] == pd.Timestamp("2011-01-03 14:30", tz="UTC")


def test_ambiguous_day_month_dates_are_refused_with_the_deciding_flag(tmp_path: Path) -> None:
    """Regression: 02/01/2024, 03/01/2024 were read month-first without a word."""
    src = write_csv(tmp_path / "AMB.csv", """
        Date,Open,High,Low,Close,Volume
        02/01/2024,10,11,9,10.5,100
        03/01/2024,10,11,9,10.5,100
        04/01/2024,10,11,9,10.5,100
    """)
    line = one_line_error(run_data("import", str(src), "--out", str(tmp_path / "bars")))
    assert "day-first and month-first" in line and "--dtformat '%d/%m/%Y'" in line
    ok = run_data("import", str(src), "--dtformat", "%d/%m/%Y", "--out", str(tmp_path / "bars"))
    assert ok.returncode == 0, ok.stderr
    bars = read_bars(tmp_path / "bars" / "1Day" / "AMB.parquet")
    days = bars["timestamp"].dt.tz_convert("America/New_York").dt.strftime("%m-%d").tolist()
    assert days == ["01-02", "01-03", "01-04"]


@pytest.mark.parametrize(("rows", "first_day"), [
    (["13/01/2024", "02/02/2024"], "2024-01-13"),  # a day above 12: day first
    (["01/13/2024", "02/02/2024"], "2024-01-13"),  # a month-second value above 12
])
def test_the_file_itself_decides_day_or_month_first(tmp_path: Path, rows: list[str],
                                                    first_day: str) -> None:
    src = tmp_path / "DM.csv"
    src.write_text("Date,Open,High,Low,Close,Volume\n"
                   + "".join(f"{d},10,11,9,10.5,100\n" for d in rows))
    parsed = parse_csv(src, ImportOptions())
    first = parsed.frame["timestamp"].iloc[0].tz_convert("America/New_York")
    assert first.strftime("%Y-%m-%d") == first_day


@pytest.mark.parametrize(("name", "symbol"), [
    ("AAPL.csv", "AAPL"), ("aapl.csv", "AAPL"), ("SPY_Minute_2021.csv", "SPY"),
    ("yahoofinance-AAPL-2004.csv", "AAPL"), ("TUV_bars.csv", "TUV"),
    ("orcl-2000-yahoofinance.csv", "ORCL"), ("AMZN_DAY.csv", "AMZN"),
    ("nt-spy-minute-2011.csv", None), ("2006-day-001.txt", None), ("data.csv", None),
])
def test_symbol_only_from_a_plain_file_name(name: str, symbol: str | None) -> None:
    """Regression: nt-spy-minute-2011.csv became NT and 2006-day-001.txt became DAY."""
    assert symbol_from_filename(Path(name)) == symbol


def test_unclear_file_name_asks_for_symbol(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "nt-spy-minute-2011.csv", """
        timestamp,open,high,low,close,volume
        2025-10-01T13:30:00Z,10,11,9,10.5,100
        2025-10-01T13:31:00Z,10,11,9,10.5,100
    """)
    line = one_line_error(run_data("import", str(src), "--out", str(tmp_path / "bars")))
    assert "nt-spy-minute-2011.csv" in line and "--symbol" in line
    assert not (tmp_path / "bars").exists()


def test_yahoo_adj_close_hints_at_adjusted(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "ADJ.csv", """
        Date,Open,High,Low,Close,Adj Close,Volume
        2024-03-07,17.0,18.0,16.0,17.5,8.75,4000
        2024-03-08,18.0,19.0,17.0,18.5,9.25,3000
    """)
    parsed = parse_csv(src, ImportOptions())
    assert any("--adjusted" in n and "unadjusted" in n for n in parsed.notes)
    assert not parse_csv(src, ImportOptions(adjusted=True)).notes
    same = write_csv(tmp_path / "SAME.csv", """
        Date,Open,High,Low,Close,Adj Close,Volume
        2024-03-07,17.0,18.0,16.0,17.5,17.5,4000
        2024-03-08,18.0,19.0,17.0,18.5,18.5,3000
    """)
    assert not parse_csv(same, ImportOptions()).notes  # nothing to adjust: no hint


def test_day_first_helper_raises_data_error() -> None:
    from feeds.importers import day_first

    with pytest.raises(DataError, match="--dtformat"):
        day_first(pd.Series(["01/02/2024 09:30", "02/02/2024 09:30"]))
    assert day_first(pd.Series(["2024-01-02"])) is None
