"""Import bar CSV files into the Parquet bar store.

Layouts recognised from the header row (names are matched case-insensitively; extra columns
such as ``OpenInterest`` are ignored):

==============  ===========================================================================
layout          header
==============  ===========================================================================
``yahoo``       ``Date,Open,High,Low,Close,Adj Close,Volume`` (any order; ``Adj Close``
                optional). Daily. Newest-first files are reversed.
``backtrader``  Backtrader generic CSV: ``datetime,open,high,low,close,volume,openinterest``
                or ``Date,Time,Open,...`` (date and time in two columns); ``--dtformat`` /
                ``--tmformat`` take strptime formats as ``GenericCSVData`` does.
``alpaca``      Alpaca bar dumps: ``t,o,h,l,c,v[,n,vw]`` (the API's JSON keys) or
                ``timestamp,open,high,low,close,volume[,trade_count,vwap]`` (alpaca-py's
                ``BarSet.df``, also with a ``symbol`` column).
``generic``     anything else with a recognisable time column (``Datetime``, ``time``, an
                unnamed index column) and OHLCV columns.
==============  ===========================================================================

Timestamps with an offset (``2021-09-15 09:30:00-04:00``, ``...Z``) are exact. Naive ones
are read in ``--tz``: by default ``America/New_York`` for daily bars (and the Yahoo layout)
and ``UTC`` otherwise. Daily bars are stamped at New York midnight in UTC, as Alpaca does.
Every row is validated by the store's rules (SPEC "Bars"); a bad row is an error naming the
file and its line, or is dropped with a warning under ``--drop-bad-rows``.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import re
import shutil
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from feeds.coverage import NY
from feeds.store import (
    append_bars,
    is_valid_symbol,
    resample_bars,
    validate_columns,
    write_bars,
)
from ratchet.common.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

CANONICAL: tuple[str, ...] = ("timestamp", "date", "time", "open", "high", "low", "close",
                              "adj_close", "volume", "trade_count", "vwap")

#: Header names (normalised: lower case, no spaces/underscores/dots) -> canonical column.
ALIASES: dict[str, str] = {
    "timestamp": "timestamp", "t": "timestamp", "datetime": "timestamp", "unnamed0": "timestamp",
    "": "timestamp", "gmttime": "timestamp", "localtime": "timestamp", "timeutc": "timestamp",
    "date": "date", "day": "date", "tradedate": "date",
    "time": "time",
    "open": "open", "o": "open", "openprice": "open",
    "high": "high", "h": "high", "highprice": "high",
    "low": "low", "l": "low", "lowprice": "low",
    "close": "close", "c": "close", "closeprice": "close", "last": "close",
    "adjclose": "adj_close", "adjustedclose": "adj_close",
    "volume": "volume", "v": "volume", "vol": "volume",
    "tradecount": "trade_count", "n": "trade_count", "trades": "trade_count",
    "numberoftrades": "trade_count",
    "vwap": "vwap", "vw": "vwap",
}

#: Interval name -> bar length, for inference and ``--stamp end``.
INTERVALS: dict[str, pd.Timedelta] = {
    "1Min": pd.Timedelta(minutes=1), "5Min": pd.Timedelta(minutes=5),
    "15Min": pd.Timedelta(minutes=15), "1Hour": pd.Timedelta(hours=1),
    "1Day": pd.Timedelta(days=1),
}

_OFFSET_RE = re.compile(r"(?:Z|[+-]\d{2}:?\d{2})$", re.IGNORECASE)
_NUMERIC = ("open", "high", "low", "close", "adj_close", "volume", "trade_count", "vwap")


def _norm(name: str) -> str:
    return re.sub(r"[\s_.:\-]+", "", str(name).strip().lower())


@dataclass(frozen=True)
class ImportOptions:
    """Options of ``cli.py data import`` (see the module docstring)."""

    symbol: str | None = None
    timeframe: str | None = None
    tz: str | None = None
    dtformat: str | None = None
    tmformat: str | None = None
    adjusted: bool = False
    drop_bad: bool = False
    columns: tuple[str, ...] | None = None
    mapping: Mapping[str, str] = field(default_factory=dict)
    sep: str | None = None
    #: "start" or "end"; None: start, assumed (and said so in the result's notes)
    stamp: str | None = None


@dataclass
class ParsedCsv:
    """One CSV file parsed into store columns, before writing."""

    path: Path
    layout: str
    symbol: str
    timeframe: str
    tz: str
    frame: pd.DataFrame
    dropped: int = 0
    reversed: bool = False
    resampled_from: str | None = None
    #: things the import assumed or noticed, for the user (printed as "note: ...")
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ImportResult:
    """Where one file went."""

    source: Path
    target: Path
    symbol: str
    timeframe: str
    layout: str
    bars: int
    first: pd.Timestamp | None
    last: pd.Timestamp | None
    dropped: int
    tz: str
    notes: tuple[str, ...] = ()


def check_tz(name: str) -> str:
    """``name`` if it is an IANA time zone, else a ``ConfigError``."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"--tz {name!r} is not a time zone: use an IANA name such as America/New_York or UTC"
        ) from None
    return name


#: File names that are words, not tickers (``data.csv`` is not the symbol DATA).
_GENERIC_NAMES = frozenset({"data", "bars", "bar", "price", "quote", "quotes", "ohlc",
                            "ohlcv", "daily", "day", "min", "minute", "hour", "hist", "file",
                            "test", "out", "input", "stock", "table", "trade", "all", "iday",
                            "week", "month", "year", "tick", "ticks", "volume",
                            "csv", "txt"})


def symbol_from_filename(path: Path) -> str | None:
    """A ticker read from a file name, only when the name says it plainly: the whole name
    (``AAPL.csv``, ``aapl.csv``), its only word of 1-5 letters that is not a common word
    (``orcl-2000-yahoofinance.csv``, ``AMZN_DAY.csv``), or else its one upper-case such word
    (``SPY_Minute_2021.csv``, ``yahoofinance-AAPL-2004.csv``). Anything else
    (``nt-spy-minute-2011.csv``: NT or SPY? ``2006-day-001.txt``: no word) is None: the
    user names it with --symbol."""
    stem = path.name
    for suffix in (".gz", ".csv", ".txt"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    if is_valid_symbol(stem.upper()) and stem.isalpha() and len(stem) <= 5 \
            and stem.lower() not in _GENERIC_NAMES:
        return stem.upper()
    words = [w for w in re.split(r"[-_ .]", stem)
             if w.isalpha() and 1 <= len(w) <= 5 and w.lower() not in _GENERIC_NAMES]
    if len(words) == 1:  # orcl-2000-yahoofinance.csv, AMZN_DAY.csv
        return words[0].upper()
    upper = [w for w in words if w.isupper()]
    return upper[0] if len(upper) == 1 else None  # nt-spy-minute: NT or SPY? ask


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix.lower() == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig")
    return path.open("r", encoding="utf-8-sig", newline="")


def _first_line(path: Path) -> str:
    try:
        with _open_text(path) as fh:
            for line in fh:
                if line.strip():
                    return line.rstrip("\r\n")
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise DataError(
            f"{path} is not a readable text CSV ({exc.__class__.__name__}): check the file"
        ) from None
    raise DataError(f"{path} is empty: nothing to import")


def _sniff_sep(line: str) -> str:
    counts = {sep: line.count(sep) for sep in (",", ";", "\t", "|")}
    best = max(counts, key=lambda k: counts[k])
    return best if counts[best] else ","


def _looks_like_data(fields: Sequence[str]) -> bool:
    """True when a first row is data, not a header (its first field is a number/date)."""
    first = fields[0].strip().strip('"')
    return bool(re.match(r"^[\d.+\-/: T]+$", first)) and any(ch.isdigit() for ch in first)


def detect_layout(canon: Mapping[str, str]) -> str:
    """Layout name from the mapping canonical column -> header name."""
    names = {_norm(v) for v in canon.values()}
    if "adj_close" in canon or names >= {"date", "open", "high", "low", "close", "volume"} \
            and "time" not in canon and "timestamp" not in canon:
        return "yahoo"
    if names >= {"t", "o", "h", "l", "c"} or ("timestamp" in canon and (
            "trade_count" in canon or "vwap" in canon)):
        return "alpaca"
    return "generic"


def map_columns(header: Sequence[str], options: ImportOptions,
                path: Path) -> tuple[dict[str, str], str]:
    """canonical name -> header column, and the layout name."""
    canon: dict[str, str] = {}
    extra = {_norm(h) for h in header}
    for col in header:
        key = ALIASES.get(_norm(col))
        if key and key not in canon:
            canon[key] = col
    for dest, src in options.mapping.items():
        if dest not in CANONICAL:
            raise ConfigError(f"--map {dest}={src}: {dest!r} is not one of {', '.join(CANONICAL)}")
        if src not in header:
            raise ConfigError(f"--map {dest}={src}: {path} has no column {src!r} (columns: "
                              f"{', '.join(map(str, header))})")
        canon[dest] = src
    layout = detect_layout(canon)
    if "openinterest" in extra:
        layout = "backtrader"
    if "timestamp" not in canon and "date" in canon:
        canon["timestamp"] = canon.pop("date")
        if "time" in canon:
            canon["date"] = canon["timestamp"]  # date and time in two columns
    elif "timestamp" in canon and "date" in canon:
        canon.pop("date")
    if "timestamp" not in canon and "time" in canon:
        canon["timestamp"] = canon.pop("time")
    missing = [c for c in ("timestamp", "open", "high", "low", "close") if c not in canon]
    if missing:
        raise DataError(
            f"{path}: no column for {', '.join(missing)} in header "
            f"{','.join(map(str, header))}: rename it, or pass --map {missing[0]}=COLUMN "
            "(or --columns for a file without a header)"
        )
    return canon, layout


def _line_numbers(n: int, has_header: bool) -> np.ndarray:
    return np.arange(n, dtype=np.int64) + (2 if has_header else 1)


def _bad_line_error(path: Path, line: int, what: str) -> DataError:
    return DataError(f"{path} line {line}: {what}; fix the file or pass --drop-bad-rows "
                     "to skip bad rows")


_DMY_RE = r"^\s*(\d{1,2})[/.\-](\d{1,2})[/.\-]\d{2,4}\b"


def day_first(text: pd.Series, path: Path | None = None) -> bool | None:
    """Whether ``NN/NN/YYYY`` dates put the day first: True/False when some value shows it
    (a number above 12), None when the column has no such dates. Every value fitting both
    readings is a ``DataError`` naming ``--dtformat``: 02/01/2024 is 2 January in Europe and
    1 February in the US, and a wrong guess shifts every bar silently."""
    parts = text.dropna().str.extract(_DMY_RE)
    parts = parts.dropna()
    if parts.empty:
        return None
    first, second = parts[0].astype(int), parts[1].astype(int)
    if (first > 12).any():
        return True
    if (second > 12).any():
        return False
    sample = text.dropna().iloc[0]
    where = f"{path}: " if path is not None else ""
    raise DataError(
        f"{where}dates such as {sample!r} read both day-first and month-first (no day above "
        "12 in the file): pass --dtformat '%d/%m/%Y' (day first) or --dtformat '%m/%d/%Y' "
        "(month first), with the time part too if there is one (e.g. ' %H:%M')")


def _parse_times(raw: pd.Series, fmt: str | None,
                 path: Path | None = None) -> tuple[pd.Series, bool]:
    """Parse timestamps; returns (values, aware). Aware values are UTC, naive stay naive."""
    text = raw.astype("string").str.strip()
    sample = text.dropna().head(50)
    if sample.empty:
        return pd.Series(pd.NaT, index=raw.index, dtype="datetime64[ns]"), False
    if fmt is None and sample.str.fullmatch(r"\d{9,19}").all():
        digits = len(sample.iloc[0])
        unit = "s" if digits <= 10 else "ms" if digits <= 13 else "us" if digits <= 16 else "ns"
        values = pd.to_datetime(pd.to_numeric(text, errors="coerce"), unit=unit, utc=True)
        return values, True
    aware = bool(sample.str.contains(_OFFSET_RE).all())
    kwargs: dict[str, object] = {"errors": "coerce", "utc": aware}
    if fmt:
        values = pd.to_datetime(text, format=fmt, **kwargs)
    else:
        values = pd.to_datetime(text, format="ISO8601", **kwargs)
        if values.isna().sum() > text.isna().sum():
            # Not ISO 8601 (e.g. 11/5/2019 9:30): let pandas infer one consistent format,
            # day-first or month-first as the file's own numbers decide (never a guess).
            dayfirst = day_first(text, path)
            with contextlib.suppress(ValueError, TypeError), warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                alt = pd.to_datetime(text, dayfirst=bool(dayfirst), **kwargs)
                if alt.isna().sum() < values.isna().sum():
                    values = alt
    if not aware and getattr(values.dt, "tz", None) is not None:
        aware = True
    return values, aware


def infer_timeframe(ts: pd.Series, path: Path) -> str | None:
    """The interval matching the smallest spacing of ``ts`` (sparse minute data still has
    neighbouring minutes somewhere; daily data has consecutive days). None when the bars are
    closer than one minute (ticks, seconds): they can only be resampled to --timeframe."""
    vals = ts.dropna()
    if len(vals) < 2:
        raise DataError(f"{path}: too few bars to tell the bar interval: pass --timeframe")
    ns = pd.DatetimeIndex(vals).as_unit("ns").asi8
    diffs = np.abs(np.diff(ns))
    diffs = diffs[diffs > 0]
    if diffs.size == 0:
        raise DataError(f"{path}: all timestamps are equal: check the time column")
    step = pd.Timedelta(int(diffs.min()), unit="ns")
    if step >= pd.Timedelta(hours=20):
        return "1Day"
    for name, length in INTERVALS.items():
        if step == length:
            return name
    if step < INTERVALS["1Min"]:
        return None
    raise DataError(
        f"{path}: bars are as little as {step} apart, which is none of {', '.join(INTERVALS)}: "
        "pass --timeframe (a coarser one resamples)"
    )


@dataclass
class _Rows:
    """Rows of one file while they are converted: values plus their CSV line numbers."""

    ts: pd.Series
    lines: np.ndarray
    numbers: dict[str, np.ndarray]
    dropped: int = 0

    def keep(self, mask: np.ndarray) -> None:
        self.dropped += int((~mask).sum())
        self.ts = self.ts[mask].reset_index(drop=True)
        self.lines = self.lines[mask]
        self.numbers = {k: v[mask] for k, v in self.numbers.items()}


def _read_csv(path: Path, sep: str, has_header: bool, options: ImportOptions) -> pd.DataFrame:
    return pd.read_csv(
        path, sep=sep, header=0 if has_header else None, index_col=False,
        names=list(options.columns) if options.columns else None,
        dtype=str, skip_blank_lines=False, keep_default_na=False,
        skipinitialspace=True, compression="infer", encoding="utf-8-sig",
        on_bad_lines="error", engine="c",
    )


def _read_frame(path: Path, options: ImportOptions) -> tuple[pd.DataFrame, np.ndarray]:
    """The CSV as strings, blank lines removed, with the file line number of each row."""
    if not path.is_file():
        raise DataError(f"{path} does not exist: check the file name")
    first = _first_line(path)
    sep = options.sep or _sniff_sep(first)
    looks_data = _looks_like_data(first.split(sep))
    has_header = not looks_data
    if options.columns is None and looks_data:
        raise DataError(
            f"{path} has no header row (first line {first[:60]!r}): pass --columns naming "
            "each column, e.g. --columns timestamp,open,high,low,close,volume, and --stamp "
            "end if its times label the END of each bar (NinjaTrader exports do)"
        )
    try:
        with warnings.catch_warnings():
            # a header/data width mismatch shows up below as a bad row naming its line, not
            # as pandas' ParserWarning on the console
            warnings.simplefilter("ignore", pd.errors.ParserWarning)
            df = _read_csv(path, sep, has_header, options)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError, EOFError) as exc:
        detail = str(exc).splitlines()[0][:160] if str(exc) else exc.__class__.__name__
        raise DataError(f"{path} is not a readable CSV ({detail}): check the file") from None
    lines = _line_numbers(len(df), has_header)
    blank = df.apply(lambda c: c.fillna("").str.strip() == "").all(axis=1).to_numpy()
    if blank.any():
        df, lines = df.loc[~blank].reset_index(drop=True), lines[~blank]
    if df.empty:
        raise DataError(f"{path} has a header but no data rows: nothing to import")
    return df, lines


def _time_column(df: pd.DataFrame, canon: Mapping[str, str],
                 options: ImportOptions) -> tuple[pd.Series, str | None]:
    """The raw time strings (date and time joined if split) and the strptime format."""
    if "date" in canon and "time" in canon:
        raw = df[canon["date"]].str.strip() + " " + df[canon["time"]].str.strip()
        fmt = None
        if options.dtformat or options.tmformat:
            fmt = f"{options.dtformat or '%Y-%m-%d'} {options.tmformat or '%H:%M:%S'}"
        return raw, fmt
    return df[canon["timestamp"]], options.dtformat


def _parse_rows(df: pd.DataFrame, lines: np.ndarray, canon: Mapping[str, str],
                options: ImportOptions, path: Path) -> tuple[_Rows, bool, bool]:
    """Parse times and numbers; returns (rows, aware, date_only). Unparseable rows raise
    (naming the line) or are dropped under --drop-bad-rows."""
    raw_ts, fmt = _time_column(df, canon, options)
    if raw_ts.astype("string").str.strip().dropna().head(20).str.fullmatch(
            r"\d{1,2}:\d{2}(?::\d{2})?(?:\.\d+)?").all():
        raise DataError(
            f"{path}: column {canon['timestamp']!r} holds times without dates: name the date "
            "and time columns with --columns (e.g. --columns date,time,open,high,low,close,"
            "volume) or --map"
        )
    ts, aware = _parse_times(raw_ts, fmt, path)
    date_only = bool(raw_ts.astype("string").str.strip().dropna().head(50)
                     .str.fullmatch(r"\d{4}-\d{2}-\d{2}|\d{1,2}/\d{1,2}/\d{4}|\d{8}").all())
    numbers: dict[str, np.ndarray] = {}
    bad = np.zeros(len(df), dtype=bool)
    why: dict[int, str] = {}
    for col in _NUMERIC:
        if col not in canon:
            continue
        text = df[canon[col]].fillna("").str.strip()
        vals = pd.to_numeric(text.replace({"": None, "null": None, "NaN": None}),
                             errors="coerce").to_numpy(np.float64)
        # Empty and "null" cells become NaN, which validation reports as a bad row.
        wrong = np.isnan(vals) & ~np.isin(text.str.lower().to_numpy(), ["", "null", "nan"])
        for i in np.flatnonzero(wrong & ~bad)[:1]:
            why[int(i)] = f"column {canon[col]!r} value {text.iloc[i]!r} is not a number"
        bad |= wrong
        numbers[col] = vals
    nat = ts.isna().to_numpy()
    for i in np.flatnonzero(nat & ~bad)[:1]:
        why[int(i)] = (f"time {str(raw_ts.iloc[i])!r} cannot be parsed"
                       + ("" if fmt else " (pass --dtformat)"))
    bad |= nat
    if "volume" not in numbers:
        numbers["volume"] = np.zeros(len(df))
        logger.info("%s has no volume column; volume set to 0", path)
    rows = _Rows(ts, lines, numbers)
    if bad.any():
        if not options.drop_bad:
            i = min(why)
            raise _bad_line_error(path, int(lines[i]), why[i])
        logger.warning("%s: dropping %d unparseable row(s), first at line %d", path,
                       int(bad.sum()), int(lines[np.flatnonzero(bad)[0]]))
        rows.keep(~bad)
    return rows, aware, date_only


def _to_utc_ns(rows: _Rows, aware: bool, date_only: bool, interval: str, tz: str,
               options: ImportOptions, path: Path) -> np.ndarray:
    """Bar starts as int64 ns UTC; daily bars at New York midnight."""
    daily = interval == "1Day"
    if aware:
        utc = pd.DatetimeIndex(rows.ts).tz_convert("UTC")
    elif daily and date_only:
        # A bare date is a New York trading date whatever --tz says.
        utc = pd.DatetimeIndex(rows.ts).normalize().tz_localize(NY).tz_convert("UTC")
    else:
        local = pd.DatetimeIndex(rows.ts).tz_localize(tz, ambiguous="NaT", nonexistent="NaT")
        odd = np.asarray(local.isna())
        if odd.any():
            if not options.drop_bad:
                i = int(np.flatnonzero(odd)[0])
                raise _bad_line_error(path, int(rows.lines[i]),
                                      f"time {rows.ts.iloc[i]} does not exist or is ambiguous "
                                      f"in {tz} (daylight saving change)")
            rows.keep(~odd)
            local = local[~odd]
        utc = local.tz_convert("UTC")
    if daily:
        # A daily bar belongs to a New York trading date; Alpaca stamps it at its midnight.
        utc = utc.tz_convert(NY).tz_localize(None).normalize().tz_localize(NY).tz_convert("UTC")
    elif options.stamp == "end" and interval in INTERVALS:
        utc = utc - INTERVALS[interval]
    return np.asarray(utc.as_unit("ns").asi8, dtype=np.int64)


def _adjust(numbers: dict[str, np.ndarray], options: ImportOptions, path: Path,
            notes: list[str] | None = None) -> None:
    """Scale OHLC by Adj Close / Close (and volume inversely) under --adjusted."""
    if not options.adjusted:
        if "adj_close" in numbers and notes is not None:
            differs = bool(np.nanmax(np.abs(numbers["adj_close"] - numbers["close"]) /
                                     np.abs(numbers["close"])) > 1e-6) \
                if numbers["close"].size else False
            if differs:
                notes.append("the file has an Adj Close column that differs from Close: "
                             "prices were imported unadjusted; pass --adjusted (with "
                             "--replace) to adjust OHLC for splits and dividends")
        return
    if "adj_close" not in numbers:
        raise ConfigError(f"--adjusted needs an 'Adj Close' column; {path} has none")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = numbers["adj_close"] / numbers["close"]
    for col in ("open", "high", "low", "close"):
        numbers[col] = numbers[col] * ratio
    # Keep dollar volume: before a 2:1 split the adjusted share count doubles.
    numbers["volume"] = numbers["volume"] / ratio


def _validated_frame(ts_ns: np.ndarray, rows: _Rows, options: ImportOptions,
                     path: Path) -> tuple[pd.DataFrame, bool]:
    """Store validation (SPEC "Bars") with CSV line numbers; newest-first files reversed."""
    cols: dict[str, np.ndarray] = {"timestamp": ts_ns, "_line": rows.lines}
    for col in ("open", "high", "low", "close", "volume", "trade_count", "vwap"):
        if col in rows.numbers:
            cols[col] = rows.numbers[col]
    is_reversed = ts_ns.size > 1 and bool(np.all(np.diff(ts_ns) < 0))
    if is_reversed:
        cols = {k: v[::-1].copy() for k, v in cols.items()}
        logger.info("%s is newest-first; importing it oldest-first", path)
    before = cols["timestamp"].size
    try:
        cols = validate_columns(cols, path, drop_bad=options.drop_bad)
    except DataError as exc:
        raise _with_line(exc, cols["_line"]) from None
    rows.dropped += before - cols["timestamp"].size
    frame = pd.DataFrame({k: v for k, v in cols.items() if k not in ("timestamp", "_line")})
    frame.insert(0, "timestamp", pd.to_datetime(cols["timestamp"], utc=True))
    return frame, is_reversed


def parse_csv(path: Path, options: ImportOptions) -> ParsedCsv:
    """Read, map, convert and validate one CSV file (nothing is written)."""
    path = Path(path)
    df, lines = _read_frame(path, options)
    canon, layout = map_columns(list(df.columns), options, path)
    if layout == "generic" and (options.dtformat or options.tmformat):
        layout = "backtrader"
    rows, aware, date_only = _parse_rows(df, lines, canon, options, path)
    inferred = infer_timeframe(rows.ts, path)
    timeframe = options.timeframe or inferred
    if timeframe is None:
        raise DataError(f"{path}: rows are less than a minute apart (ticks?): pass --timeframe "
                        "1Min or coarser to build bars from them")
    if timeframe not in INTERVALS:
        raise ConfigError(f"--timeframe {timeframe!r} is not supported: use one of "
                          f"{', '.join(INTERVALS)}")
    if inferred is not None and INTERVALS[timeframe] < INTERVALS[inferred]:
        raise ConfigError(f"{path} holds {inferred} bars; --timeframe {timeframe} is finer: "
                          f"use --timeframe {inferred} or coarser")
    if layout == "yahoo" and inferred != "1Day":
        layout = "generic"
    tz = options.tz or (NY if inferred == "1Day" else "UTC")
    ts_ns = _to_utc_ns(rows, aware, date_only, inferred or "tick", tz, options, path)
    notes: list[str] = []
    if inferred not in (None, "1Day"):
        notes += _stamp_notes(ts_ns, inferred, options)
    _adjust(rows.numbers, options, path, notes)
    frame, is_reversed = _validated_frame(ts_ns, rows, options, path)
    resampled = None
    if timeframe != inferred:
        frame = resample_bars(frame, timeframe)
        resampled = inferred
    symbol = (options.symbol or symbol_from_filename(path) or "").upper()
    if not symbol or not is_valid_symbol(symbol):
        words = [w.upper() for w in re.split(r"[-_ .]", path.stem)
                 if w.isalpha() and len(w) <= 5 and w.lower() not in _GENERIC_NAMES]
        hint = " or ".join(f"--symbol {w}" for w in words[:3]) if words else "--symbol XYZ"
        raise ConfigError(f"cannot tell the symbol of {path.name} from its name (only a "
                          "name like AAPL.csv or SPY_1min.csv says it plainly): pass "
                          f"--symbol, e.g. {hint}")
    return ParsedCsv(path, layout, symbol, timeframe, "from offsets" if aware else tz, frame,
                     rows.dropped, is_reversed, resampled, notes)


def _stamp_notes(ts_ns: np.ndarray, interval: str, options: ImportOptions) -> list[str]:
    """Say which bar-time convention was used, and when the times look like the other one
    (regular-session bars stamped 16:00 New York but none at 09:30: end-labelled)."""
    if ts_ns.size == 0:
        return []
    ny = pd.DatetimeIndex(pd.to_datetime(ts_ns, utc=True)).tz_convert(NY)
    minutes = ny.hour * 60 + ny.minute
    length = int(INTERVALS[interval].total_seconds() // 60)
    at_open, at_close = int((minutes == 570).sum()), int((minutes == 960).sum())
    before_close = int((minutes == 960 - length).sum())
    if options.stamp is None:
        if at_close and not at_open:
            return [f"times were read as bar STARTS, but {at_close} bar(s) start at 16:00 New "
                    "York and none at 09:30: the file probably labels bars by their END "
                    "(NinjaTrader does); import it again with --stamp end --replace"]
        return ["times were read as bar starts (the usual convention); if the file labels "
                "bars by their end, import it again with --stamp end --replace"]
    if options.stamp == "end" and at_open == 0 and before_close == 0 and \
            int((minutes == 570 - length).sum()):
        return ["with --stamp end some bars start before 09:30 New York and none at 09:30: "
                "check that the file really labels bars by their end"]
    return []


def _with_line(exc: DataError, lines: np.ndarray) -> DataError:
    """The store names a row by its index; for a CSV the line number is what helps."""
    msg = str(exc)
    m = re.search(r": row (\d+) \(", msg)
    if m and int(m.group(1)) < lines.size:
        line = int(lines[int(m.group(1))])
        msg = msg.replace(f": row {m.group(1)} (", f": line {line} (", 1)
    return DataError(msg)


def target_path(out: Path, timeframe: str, symbol: str) -> Path:
    """Where an imported symbol goes: ``<out>/<timeframe>/<SYMBOL>.parquet``."""
    return Path(out) / timeframe / f"{symbol}.parquet"


def write_import(parsed: ParsedCsv, out: Path, *, replace: bool = False,
                 merge: bool = False) -> Path:
    """Write ``parsed`` into the store (atomic). An existing dataset needs ``replace`` or
    ``merge`` (a new part that wins over older bars at equal timestamps)."""
    target = target_path(out, parsed.timeframe, parsed.symbol)
    folder = target.with_suffix("")
    exists = target.exists() or folder.is_dir()
    meta = {"source": "import", "layout": parsed.layout, "file": parsed.path.name,
            "tz": parsed.tz, "timeframe": parsed.timeframe, "symbol": parsed.symbol}
    if exists and not (replace or merge):
        raise DataError(
            f"{parsed.symbol} {parsed.timeframe} already exists "
            f"({target if target.exists() else folder}): pass --replace to overwrite it or "
            "--merge to add these bars to it"
        )
    if exists and merge:
        stamp = pd.Timestamp.now(tz="UTC").strftime("%Y%m%dT%H%M%S%f")
        return append_bars(folder, parsed.frame, f"import-{stamp}", metadata=meta)
    write_bars(target, parsed.frame, metadata=meta)
    if folder.is_dir():
        # The new file is in place (discover() prefers it); now retire the old part folder.
        retired = folder.with_name(f".{folder.name}.replaced")
        shutil.rmtree(retired, ignore_errors=True)
        folder.rename(retired)
        shutil.rmtree(retired, ignore_errors=True)
    return target


def import_file(path: Path, out: Path, options: ImportOptions, *, replace: bool = False,
                merge: bool = False) -> ImportResult:
    """Parse, validate and write one CSV file."""
    parsed = parse_csv(path, options)
    target = write_import(parsed, out, replace=replace, merge=merge)
    f = parsed.frame
    return ImportResult(
        source=Path(path), target=target, symbol=parsed.symbol, timeframe=parsed.timeframe,
        layout=parsed.layout, bars=len(f),
        first=f["timestamp"].iloc[0] if len(f) else None,
        last=f["timestamp"].iloc[-1] if len(f) else None,
        dropped=parsed.dropped, tz=parsed.tz, notes=tuple(parsed.notes),
    )
