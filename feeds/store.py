"""The Parquet bar store: layout, validation, reading, atomic writing, resampling.

Layout (one dataset per symbol and interval)::

    <root>/<interval>/<SYMBOL>.parquet          a single file, or
    <root>/<interval>/<SYMBOL>/<part>.parquet   a folder of part files (appended live bars,
                                                incremental downloads); later parts win
                                                when two parts hold the same timestamp

Columns: ``timestamp`` (bar start, UTC), ``open, high, low, close, volume`` and optionally
``trade_count, vwap``. Rows sorted by timestamp, timestamps unique, prices positive,
``low <= open, close <= high``. A bad row is a ``DataError`` naming the file and the row,
unless the caller asks for bad rows to be dropped (then each is logged as a warning).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ratchet.common.atomic import atomic_path
from ratchet.common.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS: tuple[str, ...] = ("timestamp", "open", "high", "low", "close", "volume")
OPTIONAL_COLUMNS: tuple[str, ...] = ("trade_count", "vwap")
PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")
_SYMBOL_RE = re.compile(r"^[A-Z0-9][A-Z0-9.\-]{0,14}$")
_NS_PER_S = 1_000_000_000

#: Arrow schema of a stored bar file.
BAR_SCHEMA = pa.schema(
    [
        ("timestamp", pa.timestamp("ns", tz="UTC")),
        ("open", pa.float64()),
        ("high", pa.float64()),
        ("low", pa.float64()),
        ("close", pa.float64()),
        ("volume", pa.float64()),
        ("trade_count", pa.float64()),
        ("vwap", pa.float64()),
    ]
)


@dataclass(frozen=True)
class BarArrays:
    """Validated bars as contiguous numpy arrays: the fast path into Backtrader.

    ``ts`` is int64 nanoseconds since the epoch (UTC, bar start).
    """

    symbol: str
    ts: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    source: str = ""

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    def to_frame(self) -> pd.DataFrame:
        """The same bars as a DataFrame with a ``timestamp`` column (UTC)."""
        import pandas as pd

        return pd.DataFrame(
            {
                "timestamp": pd.to_datetime(self.ts, utc=True),
                "open": self.open,
                "high": self.high,
                "low": self.low,
                "close": self.close,
                "volume": self.volume,
            }
        )

    def take(self, mask: np.ndarray) -> BarArrays:
        """The rows where ``mask`` is true, as a new ``BarArrays`` (copies)."""
        return BarArrays(self.symbol, self.ts[mask], self.open[mask], self.high[mask],
                         self.low[mask], self.close[mask], self.volume[mask], self.source)

    def slice(self, start: int, stop: int) -> BarArrays:
        """Rows ``start:stop`` as a new ``BarArrays`` (views, no copy)."""
        return BarArrays(
            self.symbol,
            self.ts[start:stop],
            self.open[start:stop],
            self.high[start:stop],
            self.low[start:stop],
            self.close[start:stop],
            self.volume[start:stop],
            self.source,
        )


def symbol_from_path(path: Path) -> str:
    """The symbol a dataset path stands for: ``AAPL.parquet`` or ``AAPL/`` -> ``AAPL``."""
    name = path.name[: -len(".parquet")] if path.name.endswith(".parquet") else path.name
    return name.upper()


def discover(directory: Path) -> dict[str, Path]:
    """Map symbol -> dataset path for every dataset directly inside ``directory``."""
    directory = Path(directory)
    if not directory.exists():
        raise DataError(f"data folder {directory} does not exist: check --data")
    if directory.is_file():
        if _is_text_bars(directory):
            raise DataError(_csv_hint(directory))
        return {symbol_from_path(directory): directory}
    found: dict[str, Path] = {}
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.suffix == ".parquet":
            sym = symbol_from_path(entry)
            if not (directory / sym).is_dir() and not (directory / entry.stem).is_dir():
                found[sym] = entry
        elif entry.is_dir() and any(entry.glob("*.parquet")):
            found[symbol_from_path(entry)] = entry  # the folder wins over a stale single file
    return found


_TEXT_SUFFIXES = (".csv", ".txt", ".csv.gz", ".txt.gz", ".tsv")


def _is_text_bars(path: Path) -> bool:
    return path.name.lower().endswith(_TEXT_SUFFIXES)


def _csv_hint(path: Path) -> str:
    return (f"{path} is a CSV file, not Parquet bars: import it with `python cli.py data "
            f"import {path}` first, then backtest with --data data/bars/<interval>")


def resolve_datasets(data: Path, symbols: Iterable[str] | None) -> dict[str, Path]:
    """Datasets to load: all of ``data`` when ``symbols`` is None, else exactly those symbols.

    An unknown symbol is a ``DataError`` listing what the folder holds.
    """
    available = discover(data)
    if not available and Path(data).is_dir():
        texts = sorted(p for p in Path(data).iterdir() if _is_text_bars(p))
        if texts:
            raise DataError(
                f"{data} holds CSV files ({texts[0].name}...), not Parquet bars: import them "
                f"with `python cli.py data import {Path(data) / '*.csv'}` first, then "
                "backtest with --data data/bars/<interval>")
    if not available:
        raise DataError(
            f"no Parquet bar files in {data}: expected <SYMBOL>.parquet files "
            "(see README, 'Bar data')"
        )
    if symbols is None:
        return available
    wanted = [s.upper() for s in symbols]
    missing = [s for s in wanted if s not in available]
    if missing:
        raise DataError(
            f"no bars for {', '.join(missing)} in {data}: available symbols are "
            f"{', '.join(sorted(available))} (fix --symbols or --data)"
        )
    return {s: available[s] for s in wanted}


def _part_files(path: Path) -> list[Path]:
    if path.is_dir():
        parts = sorted(p for p in path.glob("*.parquet") if not p.name.startswith("."))
        if not parts:
            raise DataError(f"{path} holds no .parquet part files")
        return parts
    if not path.exists():
        raise DataError(f"bar file {path} does not exist: check --data and --symbols")
    return [path]


def _utc_ns(values: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    """int64 nanoseconds since the epoch of timezone-aware (or UTC-naive) timestamps."""
    import pandas as pd

    idx = pd.DatetimeIndex(pd.to_datetime(values, utc=True)).as_unit("ns")
    return np.asarray(idx.asi8, dtype=np.int64)


def _plain_numpy(col: pa.ChunkedArray, dtype: type) -> np.ndarray | None:
    """A copy of a null-free fixed-width column's values, read straight from its buffer.

    ``to_numpy`` imports pandas inside pyarrow (~0.4 s of CPU the backtest path does not
    otherwise need); None when the column has nulls (then the caller takes that path).
    """
    arr = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    if arr.null_count:
        return None
    size = np.dtype(dtype).itemsize
    if len(arr) == 0:
        return np.empty(0, dtype=dtype)
    return np.frombuffer(arr.buffers()[1], dtype=dtype, count=len(arr),
                         offset=arr.offset * size).copy()


def _to_utc_ns(col: pa.ChunkedArray, path: Path) -> np.ndarray:
    tp = col.type
    if pa.types.is_timestamp(tp):
        if tp.tz is None:
            logger.warning("%s: timestamps have no timezone; reading them as UTC", path)
        if tp != pa.timestamp("ns", tz="UTC"):
            col = col.cast(pa.timestamp("ns", tz="UTC"))
        fast = _plain_numpy(col, np.int64)
        if fast is not None:
            return fast
        return np.ascontiguousarray(col.cast(pa.int64()).to_numpy(zero_copy_only=False))
    if pa.types.is_string(tp) or pa.types.is_large_string(tp):
        import pandas as pd

        try:
            return _utc_ns(pd.to_datetime(col.to_pandas(), utc=True, format="ISO8601"))
        except (ValueError, TypeError) as exc:
            raise DataError(f"{path}: column 'timestamp' has unparseable values: {exc}") from None
    raise DataError(
        f"{path}: column 'timestamp' has type {tp}; expected a UTC timestamp "
        "(convert it, or import the file with `cli.py data import`)"
    )


def _read_one(path: Path, start_ns: int | None, end_ns: int | None) -> dict[str, np.ndarray]:
    try:
        pf = pq.ParquetFile(path)
        names = set(pf.schema_arrow.names)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(
            f"{path} is not a readable Parquet file ({exc.__class__.__name__}: {exc}); "
            "re-download or re-import it"
        ) from None
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; a bar file needs "
            f"{', '.join(REQUIRED_COLUMNS)}"
        )
    cols = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in names]
    try:
        table = pf.read(columns=cols)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path}: cannot read bars ({exc}); the file may be corrupt") from None
    out: dict[str, np.ndarray] = {"timestamp": _to_utc_ns(table.column("timestamp"), path)}
    for c in cols[1:]:
        col = table.column(c)
        if col.type == pa.float64():
            fast = _plain_numpy(col, np.float64)
            if fast is not None:
                out[c] = fast
                continue
        try:
            arr = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
        except pa.ArrowException as exc:
            raise DataError(f"{path}: column {c!r} is not numeric ({exc})") from None
        out[c] = np.ascontiguousarray(arr, dtype=np.float64)
    if start_ns is not None or end_ns is not None:
        ts = out["timestamp"]
        mask = np.ones(ts.shape[0], dtype=bool)
        if start_ns is not None:
            mask &= ts >= start_ns
        if end_ns is not None:
            mask &= ts <= end_ns
        if not mask.all():
            out = {k: v[mask] for k, v in out.items()}
    return out


def _bad_rows(cols: dict[str, np.ndarray]) -> list[tuple[int, str]]:
    """(row, reason) for every invalid row, in row order."""
    ts = cols["timestamp"]
    o, h, lo, c, v = (cols[k] for k in ("open", "high", "low", "close", "volume"))
    n = ts.shape[0]
    reasons: list[tuple[np.ndarray, str]] = [
        (np.isnan(o) | np.isnan(h) | np.isnan(lo) | np.isnan(c) | np.isnan(v), "NaN value"),
        ((o <= 0) | (h <= 0) | (lo <= 0) | (c <= 0), "non-positive price"),
        (h < lo, "high < low"),
        ((o > h) | (o < lo) | (c > h) | (c < lo), "open/close outside [low, high]"),
        (v < 0, "negative volume"),
    ]
    if n > 1:
        d = np.diff(ts)
        dup = np.zeros(n, dtype=bool)
        dup[1:] = d == 0
        uns = np.zeros(n, dtype=bool)
        uns[1:] = d < 0
        reasons.append((dup, "duplicate timestamp"))
        reasons.append((uns, "timestamp earlier than the row before (unsorted)"))
    bad: dict[int, str] = {}
    for mask, why in reasons:
        for i in np.flatnonzero(mask):
            bad.setdefault(int(i), why)
    return sorted(bad.items())


def _fmt_ts(ns: int) -> str:
    import pandas as pd

    return pd.Timestamp(int(ns), tz="UTC").isoformat()


def validate_columns(
    cols: dict[str, np.ndarray], path: Path, drop_bad: bool = False
) -> dict[str, np.ndarray]:
    """Check SPEC's rules on one file's columns; raise on the first bad row or drop bad rows."""
    bad = _bad_rows(cols)
    if not bad:
        return cols
    if not drop_bad:
        row, why = bad[0]
        more = f" (and {len(bad) - 1} more bad rows)" if len(bad) > 1 else ""
        raise DataError(
            f"{path}: row {row} ({_fmt_ts(cols['timestamp'][row])}): {why}{more}; fix the file "
            "or pass --drop-bad-rows to skip bad rows"
        )
    for row, why in bad[:20]:
        when = _fmt_ts(cols["timestamp"][row])
        logger.warning("%s: dropping row %d (%s): %s", path, row, when, why)
    if len(bad) > 20:
        logger.warning("%s: dropped %d bad rows in all", path, len(bad))
    keep = np.ones(cols["timestamp"].shape[0], dtype=bool)
    keep[[r for r, _ in bad]] = False
    cols = {k: v[keep] for k, v in cols.items()}
    # Dropping a duplicate can leave an unsorted remainder only if the file was unsorted.
    order = np.argsort(cols["timestamp"], kind="stable")
    return {k: v[order] for k, v in cols.items()}


def _to_ns(when: datetime | str | pd.Timestamp | None) -> int | None:
    if when is None:
        return None
    if isinstance(when, datetime) and not hasattr(when, "value"):  # not a pd.Timestamp
        from ratchet.common.arrow import micros

        return micros(when) * 1000  # naive = UTC
    import pandas as pd

    ts = pd.Timestamp(when)
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    return int(ts.tz_convert("UTC").value)


def read_columns(
    path: Path,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    drop_bad: bool = False,
) -> dict[str, np.ndarray]:
    """Read and validate one dataset (file or folder of parts) as numpy columns."""
    path = Path(path)
    start_ns, end_ns = _to_ns(start), _to_ns(end)
    parts = _part_files(path)
    if len(parts) == 1:
        return validate_columns(_read_one(parts[0], start_ns, end_ns), parts[0], drop_bad)
    pieces = [validate_columns(_read_one(p, start_ns, end_ns), p, drop_bad) for p in parts]
    keys = set.intersection(*(set(p) for p in pieces))
    merged = {k: np.concatenate([p[k] for p in pieces]) for k in keys}
    # Later parts win on equal timestamps: stable sort, then keep the last of each run.
    order = np.argsort(merged["timestamp"], kind="stable")
    merged = {k: v[order] for k, v in merged.items()}
    ts = merged["timestamp"]
    if ts.shape[0] > 1:
        keep = np.ones(ts.shape[0], dtype=bool)
        keep[:-1] = ts[1:] != ts[:-1]
        if not keep.all():
            merged = {k: v[keep] for k, v in merged.items()}
    return merged


def typical_spacing(path: Path, sample: int = 5000) -> int | None:
    """Median seconds between the first ``sample`` timestamps of a dataset (no validation)."""
    try:
        first = _part_files(Path(path))[0]
        col = pq.read_table(first, columns=["timestamp"]).column(0)
        ts = _to_utc_ns(col.slice(0, sample), first)
    except (DataError, OSError, pa.ArrowException, KeyError):
        return None
    if ts.shape[0] < 3:
        return None
    return int(np.median(np.diff(ts)) // _NS_PER_S)


def read_arrays(
    path: Path,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    drop_bad: bool = False,
    symbol: str | None = None,
) -> BarArrays:
    """Read one dataset into ``BarArrays`` (the fast path, no pandas)."""
    cols = read_columns(path, start, end, drop_bad)
    return BarArrays(
        symbol or symbol_from_path(Path(path)),
        cols["timestamp"],
        cols["open"],
        cols["high"],
        cols["low"],
        cols["close"],
        cols["volume"],
        str(path),
    )


def read_bars(
    path: Path,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    drop_bad: bool = False,
) -> pd.DataFrame:
    """Read one dataset as a DataFrame: ``timestamp`` (UTC) + OHLCV (+ optional columns)."""
    import pandas as pd

    cols = read_columns(path, start, end, drop_bad)
    frame = pd.DataFrame({k: cols[k] for k in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if k in cols})
    frame["timestamp"] = pd.to_datetime(cols["timestamp"], utc=True)
    return frame


def normalize_frame(frame: pd.DataFrame, source: str = "bars") -> pa.Table:
    """A DataFrame with a ``timestamp`` column (or DatetimeIndex) as a validated Arrow table."""
    import pandas as pd

    df = frame
    if "timestamp" not in df.columns:
        if isinstance(df.index, pd.DatetimeIndex):
            df = df.rename_axis("timestamp").reset_index()
        else:
            raise DataError(f"{source}: no 'timestamp' column or DatetimeIndex")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {', '.join(missing)}")
    cols: dict[str, np.ndarray] = {"timestamp": _utc_ns(df["timestamp"])}
    for c in (*REQUIRED_COLUMNS[1:], *OPTIONAL_COLUMNS):
        if c in df.columns:
            cols[c] = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float64)
    cols = validate_columns(cols, Path(source))
    arrays = [pa.array(cols["timestamp"].view("datetime64[ns]"), pa.timestamp("ns", tz="UTC"))]
    names = ["timestamp"]
    for c in (*REQUIRED_COLUMNS[1:], *OPTIONAL_COLUMNS):
        if c in cols:
            arrays.append(pa.array(cols[c], pa.float64()))
            names.append(c)
    return pa.Table.from_arrays(arrays, names=names)


def write_bars(path: Path, frame: pd.DataFrame, metadata: dict[str, str] | None = None) -> Path:
    """Validate ``frame`` and write it to ``path`` atomically (temp file, fsync, rename)."""
    path = Path(path)
    table = normalize_frame(frame, str(path))
    meta = {b"ratchet.schema": b"bars/1"}
    for k, v in (metadata or {}).items():
        meta[f"ratchet.{k}".encode()] = str(v).encode()
    table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


def append_bars(dataset_dir: Path, frame: pd.DataFrame, part: str,
                metadata: dict[str, str] | None = None) -> Path:
    """Add ``frame`` as a new part file ``<dataset_dir>/<part>.parquet`` (atomic).

    If the symbol is stored as a single ``<SYMBOL>.parquet`` file, it is first moved into
    the folder as the part ``0000-base.parquet`` so the dataset stays one dataset.
    """
    dataset_dir = Path(dataset_dir)
    single = dataset_dir.parent / f"{dataset_dir.name}.parquet"
    if single.is_file() and not dataset_dir.exists():
        # Crash-safe move: build the folder aside with a hard link to the file, rename the
        # folder into place, then drop the file. A crash at any point leaves every bar
        # readable (discover() prefers the folder when both exist).
        staging = dataset_dir.parent / f".{dataset_dir.name}.staging"
        if staging.exists():
            for leftover in staging.iterdir():
                leftover.unlink()
            staging.rmdir()
        staging.mkdir(parents=True)
        os.link(single, staging / "0000-base.parquet")
        staging.rename(dataset_dir)
        single.unlink()
    elif single.is_file() and dataset_dir.is_dir():
        single.unlink()  # finish a move a crash interrupted (the folder holds the base part)
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", part):
        raise ValueError(f"bad part name {part!r}")
    return write_bars(dataset_dir / f"{part}.parquet", frame, metadata)


def is_valid_symbol(symbol: str) -> bool:
    """True for ticker-like symbols (``AAPL``, ``BRK.B``)."""
    return bool(_SYMBOL_RE.match(symbol))


_RULES = {"Min": "min", "Hour": "h"}


def resample_bars(frame: pd.DataFrame, interval: str) -> pd.DataFrame:
    """Aggregate bars to a coarser ``interval`` (``5Min``, ``1Hour``, ``1Day``...).

    Intraday buckets start on the clock (09:30, 09:35...); the label is the bucket start.
    Daily bars are grouped by New York trading date and stamped at New York midnight, in
    UTC, as Alpaca stamps its daily bars.
    """
    import pandas as pd

    if frame.empty:
        return frame.copy()
    df = frame.set_index(pd.DatetimeIndex(frame["timestamp"]).tz_convert("UTC"))
    agg: dict[str, str] = {"open": "first", "high": "max", "low": "min", "close": "last",
                           "volume": "sum"}
    if "trade_count" in df.columns:
        agg["trade_count"] = "sum"
    m = re.fullmatch(r"(\d+)(Min|Hour|Day)", interval)
    if not m:
        raise DataError(f"cannot resample to {interval!r}: use NMin, NHour or 1Day")
    n, unit = int(m.group(1)), m.group(2)
    if "vwap" in df.columns:
        df = df.assign(_pv=df["vwap"].fillna(df["close"]) * df["volume"])
        agg["_pv"] = "sum"
    if unit == "Day":
        if n != 1:
            raise DataError("only 1Day daily bars are supported")
        local = df.index.tz_convert("America/New_York")
        keys = local.normalize()
        out = df.drop(columns=["timestamp"]).groupby(keys).agg(agg)
        out.index = pd.DatetimeIndex(out.index).tz_convert("UTC")
    else:
        rule = f"{n}{_RULES[unit]}"
        out = df.drop(columns=["timestamp"]).resample(rule, label="left", closed="left").agg(agg)
        out = out.dropna(subset=["open"])
    if "_pv" in out.columns:
        with np.errstate(invalid="ignore", divide="ignore"):
            out["vwap"] = np.where(out["volume"] > 0, out["_pv"] / out["volume"], out["close"])
        out = out.drop(columns=["_pv"])
    out.index.name = "timestamp"
    return out.reset_index()


def arrays_from_frame(symbol: str, frame: pd.DataFrame) -> BarArrays:
    """``BarArrays`` from a validated DataFrame with a ``timestamp`` column."""
    return BarArrays(
        symbol,
        _utc_ns(frame["timestamp"]),
        frame["open"].to_numpy(np.float64),
        frame["high"].to_numpy(np.float64),
        frame["low"].to_numpy(np.float64),
        frame["close"].to_numpy(np.float64),
        frame["volume"].to_numpy(np.float64),
    )


__all__ = [
    "BAR_SCHEMA",
    "BarArrays",
    "DataError",
    "append_bars",
    "arrays_from_frame",
    "discover",
    "is_valid_symbol",
    "read_arrays",
    "read_bars",
    "read_columns",
    "resample_bars",
    "resolve_datasets",
    "symbol_from_path",
    "write_bars",
]
