"""Downloaded part files of the bar store: naming, coverage metadata, compaction, locking.

Beside ``feeds/store.py`` (which writes and reads the parts): a symbol's dataset is a folder
``<root>/<interval>/<SYMBOL>/``; ``data download`` names its parts
``dl-<seq>-<window start>.parquet`` (a higher sequence wins on equal timestamps) and records in
each part's Parquet metadata (``ratchet.coverage``) the ranges it is the complete answer for.
``inspect_dataset`` reads that back (metadata only), ``compact_dataset`` merges many parts into
one, ``store_lock`` keeps two downloads out of one store, ``clean_stale_temp`` removes what a
killed download left.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from feeds.download_plan import (
    Range,
    StoredDataset,
    Timeframe,
    extent_end,
    from_ns,
    merge_ranges,
    to_ns,
)
from feeds.store import append_bars, read_bars
from ratchet.common.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

#: Compact a dataset's downloaded parts into one when a run leaves more than this many.
COMPACT_PARTS = 24
PART_PREFIX = "dl-"
PART_RE = re.compile(r"^dl-(\d{6})-")


def dataset_path(root: Path, timeframe: str, symbol: str) -> Path:
    """The dataset folder of ``symbol`` (``<root>/<timeframe>/<SYMBOL>``)."""
    return Path(root) / timeframe / symbol.upper()


def part_files(dataset: Path) -> list[Path]:
    """Existing files of a dataset: the part files of its folder, else its single file."""
    if dataset.is_dir():
        return sorted(p for p in dataset.glob("*.parquet") if not p.name.startswith("."))
    single = dataset.with_suffix(".parquet")
    return [single] if single.is_file() else []


def coverage_json(ranges: Sequence[Range]) -> str:
    """The ``ratchet.coverage`` metadata value of ``ranges`` (ISO pairs, merged)."""
    return json.dumps([[from_ns(a).isoformat(), from_ns(b).isoformat()]
                       for a, b in merge_ranges(ranges)])


def parse_coverage(text: bytes) -> list[Range]:
    """Inverse of ``coverage_json``."""
    return [(to_ns(pd.Timestamp(a)), to_ns(pd.Timestamp(b))) for a, b in json.loads(text)]


def inspect_dataset(dataset: Path, tf: Timeframe) -> StoredDataset:
    """Coverage, feed and part numbering of one dataset (reads metadata, not the bars).

    A downloaded part that cannot be read (which our atomic writes never produce, but a disk
    can) is renamed to ``.corrupt-<name>`` so its range is fetched again.
    """
    info = StoredDataset(dataset)
    for f in part_files(dataset):
        m = PART_RE.match(f.name)
        if m:
            info.max_seq = max(info.max_seq, int(m.group(1)))
        try:
            pf = pq.ParquetFile(f)
            meta = pf.schema_arrow.metadata or {}
            rows = pf.metadata.num_rows
            if b"ratchet.coverage" in meta:
                info.coverage.extend(parse_coverage(meta[b"ratchet.coverage"]))
            elif rows:
                ts = pf.read(columns=["timestamp"]).column("timestamp")
                ts = ts.cast(pa.timestamp("ns", tz="UTC")).cast(pa.int64()).to_numpy()
                info.coverage.append((int(ts.min()), extent_end(int(ts.max()), tf)))
        except (OSError, pa.ArrowException, ValueError, KeyError) as exc:
            if m:
                bad = f.with_name(f".corrupt-{f.name}")
                f.rename(bad)
                logger.warning("%s is unreadable (%s); moved it to %s and will fetch its range "
                               "again", f, exc.__class__.__name__, bad.name)
                info.quarantined.append(bad)
                continue
            raise DataError(
                f"{f} is not a readable Parquet bar file ({exc.__class__.__name__}); remove it "
                "or re-import it, then run the download again"
            ) from None
        info.parts += 1
        info.has_data = info.has_data or rows > 0
        if b"ratchet.feed" in meta:
            info.feeds.add(meta[b"ratchet.feed"].decode())
        if b"ratchet.adjustment" in meta:
            info.adjustments.add(meta[b"ratchet.adjustment"].decode())
    info.coverage = merge_ranges(info.coverage)
    return info


def adopt_single_file(ds: Path) -> None:
    """Finish a half-done move of ``<SYMBOL>.parquet`` into its folder (crash between the
    store's mkdir and rename), so the file and the folder never both hold the symbol."""
    single = ds.with_suffix(".parquet")
    if single.is_file() and ds.is_dir() and not any(ds.glob("*.parquet")):
        single.rename(ds / "0000-base.parquet")


def compact_dataset(ds: Path, tf: Timeframe, seq: int, metadata: dict[str, str],
                    threshold: int = COMPACT_PARTS) -> bool:
    """Merge a folder of downloaded parts into one part once there are more than
    ``threshold``. Only folders whose parts are all ours are compacted. The merged part is
    written (atomically) before the old ones are removed, and it wins on equal timestamps, so
    a crash in between leaves duplicates of equal bars, never a loss."""
    parts = part_files(ds)
    if len(parts) <= threshold or not all(PART_RE.match(p.name) for p in parts):
        return False
    coverage = inspect_dataset(ds, tf).coverage
    merged = read_bars(ds)
    meta = dict(metadata)
    meta["coverage"] = coverage_json(coverage)
    new = append_bars(ds, merged, f"{PART_PREFIX}{seq:06d}-merged", metadata=meta)
    for p in parts:
        if p != new:
            p.unlink()
    logger.info("compacted %d parts of %s into %s", len(parts), ds, new.name)
    return True


@contextlib.contextmanager
def store_lock(folder: Path) -> Iterator[None]:
    """Exclusive lock on ``<root>/<interval>`` so two downloads never write the same store."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / ".download.lock"
    try:
        import fcntl
    except ImportError:  # not on Windows: no locking there
        yield
        return
    fh = lock.open("a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ConfigError(
                f"another download is writing {folder} (lock {lock}): wait for it to finish"
            ) from None
        yield
    finally:
        fh.close()


def clean_stale_temp(root: Path, timeframe: str, symbols: Sequence[str]) -> int:
    """Remove temp files a killed download left behind (only our own part names)."""
    n = 0
    for sym in symbols:
        ds = dataset_path(root, timeframe, sym)
        if ds.is_dir():
            for tmp in ds.glob(f".{PART_PREFIX}*.tmp"):
                tmp.unlink(missing_ok=True)
                n += 1
    return n


