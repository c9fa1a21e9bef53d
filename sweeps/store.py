"""The sweep folder on disk: one atomically written Parquet file per finished backtest.

A part's file name is its key (hash of data fingerprint + settings + code version + span),
so a cell finished twice (a rescheduled task, a resumed sweep) still leaves one row, and a
SIGKILL at any moment leaves only complete parts (temp file, fsync, rename).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pandas as pd

from analyzers.audit import AUDIT_COLUMNS
from analyzers.recorder import write_parquet
from analyzers.sweepfolder import read_cells
from ratchet.common.atomic import atomic_path, write_json_atomic
from ratchet.common.errors import ConfigError


class ResultStore:
    """Reads and writes one sweep folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.cells = self.folder / "cells"
        self.windows = self.folder / "windows"

    def open(self, config: dict[str, Any]) -> bool:
        """Create the folder or check it holds this same sweep; True when resuming."""
        cfg_path = self.folder / "config.json"
        if cfg_path.exists():
            try:
                old = json.loads(cfg_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                old = {}
            if old.get("definition_hash") != config["definition_hash"]:
                raise ConfigError(
                    f"{self.folder} holds another sweep (different data, settings, space or "
                    "code): pass another --name or --out, or delete that folder"
                )
            return True
        self.cells.mkdir(parents=True, exist_ok=True)
        write_json_atomic(cfg_path, config)
        return False

    def done_keys(self) -> set[str]:
        """Keys of the finished rows (file names only: cheap for thousands of cells)."""
        return {p.stem for p in self.cells.glob("*.parquet")}

    def write_row(self, row: dict[str, Any]) -> None:
        """Persist one finished row (atomic: a crash leaves it whole or absent)."""
        frames = row.pop("_frames", None)
        if frames is not None:
            self.write_frames(row["key"], frames)
        write_parquet(self.cells / f"{row['key']}.parquet", pd.DataFrame([row]))

    def rows(self) -> dict[str, dict[str, Any]]:
        """Every finished row by key."""
        frame = read_cells(self.folder)
        if frame.empty:
            return {}
        return {r["key"]: r for r in frame.to_dict("records")}

    def window_dir(self, key: str) -> Path:
        """Where a walk-forward test run keeps its frames."""
        return self.windows / key

    def write_frames(self, key: str, frames: dict[str, Any]) -> None:
        """A test run's equity, trades, orders, prices (Parquet) and audit rows (CSV)."""
        d = self.window_dir(key)
        d.mkdir(parents=True, exist_ok=True)
        for name in ("equity", "trades", "orders", "prices"):
            write_parquet(d / f"{name}.parquet", frames[name])
        with atomic_path(d / "audit.csv") as tmp, tmp.open("w", newline="",
                                                            encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(AUDIT_COLUMNS)
            writer.writerows(frames["audit"])

    def read_frames(self, key: str) -> dict[str, Any]:
        """Frames written by ``write_frames``."""
        d = self.window_dir(key)
        out: dict[str, Any] = {n: pd.read_parquet(d / f"{n}.parquet")
                               for n in ("equity", "trades", "orders", "prices")}
        with (d / "audit.csv").open(newline="", encoding="utf-8") as fh:
            out["audit"] = [tuple(r) for r in list(csv.reader(fh))[1:]]
        return out

    def write_results(self, frame: pd.DataFrame) -> Path:
        """``results.parquet``: every row with its objective (atomic)."""
        path = self.folder / "results.parquet"
        write_parquet(path, frame)
        return path
