"""Sweep folders: the results of ``cli.py sweep``, loaded in one line.

    from analyzers import load_sweep
    sweep = load_sweep("runs/sweeps/sweep-1a2b3c4d5e")
    sweep.results.sort_values("objective", ascending=False).head()

Layout (docs/CONTRACTS.md, "Sweep folder"): ``config.json`` (the sweep's definition),
``cells/<key>.parquet`` (one row per finished backtest, written atomically as it finishes:
the crash-safe Parquet dataset), ``results.parquet`` (every row with its objective, written at
the end), and for walk-forward ``walk_forward.json``, ``windows/`` (each test span's frames)
and ``oos/`` (the stitched out-of-sample run folder, a normal run folder).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analyzers.runfolder import Run, load_run
from ratchet.common.errors import DataError

if TYPE_CHECKING:  # pandas loads on use: `from analyzers import load_run` stays light
    import pandas as pd


def read_cells(folder: Path) -> pd.DataFrame:
    """Every finished row in ``folder/cells`` (one file per key: no duplicates by design)."""
    import pandas as pd

    parts = sorted((Path(folder) / "cells").glob("*.parquet"))
    frames = []
    for part in parts:
        try:
            frames.append(pd.read_parquet(part))
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a damaged file
            raise DataError(f"{part} cannot be read ({exc.__class__.__name__}); delete it and "
                            "run the sweep again to recompute that cell") from None
    if not frames:
        return pd.DataFrame()
    frames = [f.dropna(axis=1, how="all") for f in frames]  # all-null columns carry no type
    return pd.concat(frames, ignore_index=True, sort=False)


@dataclass
class Sweep:
    """A sweep folder as pandas objects."""

    path: Path
    config: dict[str, Any]
    results: pd.DataFrame
    walk_forward: dict[str, Any] | None
    oos: Run | None

    @property
    def params(self) -> list[str]:
        """Result columns of the varied settings (``p_<field>``)."""
        return [c for c in self.results.columns if c.startswith("p_")]

    def top(self, n: int = 10) -> pd.DataFrame:
        """The best qualified cells (plain sweep) or training rows (walk-forward)."""
        r = self.results
        if "qualified" not in r.columns:
            return r.head(0)
        r = r[r["qualified"].astype(bool) & r["phase"].isin(["cell", "train"])]
        return r.sort_values("objective", ascending=False).head(n)

    def __repr__(self) -> str:
        return f"Sweep({self.path.name}: {len(self.results)} rows)"


def is_sweep_folder(path: str | Path) -> bool:
    """Whether ``path`` holds a sweep (its config.json says so)."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text(encoding="utf-8")).get("kind") == "sweep"
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def load_sweep(path: str | Path) -> Sweep:
    """Load a sweep folder (finished or interrupted) in one call."""
    import pandas as pd

    path = Path(path)
    if not is_sweep_folder(path):
        raise DataError(f"{path} is not a sweep folder (no config.json with kind=sweep): sweeps "
                        "are written under --out, default runs/sweeps/")
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    results_path = path / "results.parquet"
    results = pd.read_parquet(results_path) if results_path.exists() else read_cells(path)
    if results_path.exists():
        # Cells finished after results.parquet was written (an interrupted resume) count too.
        extra = read_cells(path)
        if not extra.empty:
            new = extra[~extra["key"].isin(results["key"])]
            if not new.empty:
                results = pd.concat([results, new], ignore_index=True, sort=False)
    wf_path = path / "walk_forward.json"
    wf = json.loads(wf_path.read_text(encoding="utf-8")) if wf_path.exists() else None
    oos = load_run(path / "oos") if (path / "oos" / "stats.json").exists() else None
    return Sweep(path, config, results, wf, oos)
