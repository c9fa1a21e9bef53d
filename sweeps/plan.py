"""From the command's flags to a ``SweepPlan``: settings, data, cells, windows, folder.

The base settings and the bars are resolved exactly as ``cli.py backtest`` resolves them
(same flags, config file, environment, native interval, ``--start``/``--end``), so a cell is
the backtest of those settings.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ratchet.common.config import Settings
from ratchet.common.errors import ConfigError
from ratchet.common.version import __version__
from sweeps.cell import DataSpec, code_version, fingerprint, load_bars
from sweeps.objective import OBJECTIVES
from sweeps.space import Space, build_space, explain_empty
from sweeps.walkforward import Window, make_windows, parse_walk_forward

SEARCHES = ("grid", "random", "optuna")


@dataclass
class SweepPlan:
    """Everything that defines a sweep (its hash names and guards the sweep folder)."""

    folder: Path
    spec: DataSpec
    base: Settings
    space: Space
    search: str  # grid | random | optuna
    trials: int | None
    seed: int
    objective: str
    min_trades: int
    start_ns: int | None
    cells: list[dict[str, Any]] = field(default_factory=list)  # grid/random
    windows: list[Window] = field(default_factory=list)  # walk-forward


@dataclass
class SweepRequest:
    """The flags of ``cli.py sweep`` (what the user asked for)."""

    grids: Sequence[str]
    ranges: Sequence[str]
    constraints: Sequence[str]
    search: str = "grid"
    trials: int | None = None
    seed: int = 0
    objective: str = "sharpe"
    min_trades: int = 5
    walk_forward: str | None = None
    anchored: bool = False
    data: Path | None = None
    start: str | None = None
    end: str | None = None
    drop_bad_rows: bool = False
    out: Path = Path("runs/sweeps")
    name: str | None = None


def base_settings(config_file: Path | None, flags: dict[str, Any],
                  data: Path | None) -> tuple[Settings, Path, bool]:
    """(settings, data folder, symbols given explicitly), exactly as ``cli.py backtest``
    resolves them (``plan_backtest``: native interval, store root, symbols)."""
    from ratchet.engine.datasets import plan_backtest

    settings, _, data_dir, wanted = plan_backtest(data, config_file, flags)
    return settings, data_dir, wanted is not None


def _check_request(req: SweepRequest) -> None:
    if req.search not in SEARCHES:
        raise ConfigError(f"--search {req.search!r}: use one of {', '.join(SEARCHES)}")
    if req.objective not in OBJECTIVES:
        raise ConfigError(f"--objective {req.objective!r}: use one of {', '.join(OBJECTIVES)}")
    if req.search == "grid" and req.trials is not None:
        raise ConfigError("--trials is the budget of --search random or optuna; a grid runs "
                          "every cell")
    if req.search != "grid" and (req.trials is None or req.trials < 1):
        raise ConfigError(f"--search {req.search} needs a trial budget: --trials N (N >= 1)")
    if req.search == "optuna" and req.walk_forward:
        raise ConfigError("--walk-forward runs the same cells in every window: use --search "
                          "grid or random with it")
    if req.min_trades < 0:
        raise ConfigError("--min-trades must be >= 0")


def build_plan(req: SweepRequest, config_file: Path | None,
               flags: dict[str, Any]) -> tuple[SweepPlan, dict[str, Any], dict[str, int]]:
    """Validate everything and load the bars once here; returns (plan, config, skipped)."""
    from ratchet.common.dates import UTC_DAYS, parse_when

    _check_request(req)
    space = build_space(req.grids, req.ranges, req.constraints)
    windows_spec = parse_walk_forward(req.walk_forward) if req.walk_forward else None
    base, data_dir, explicit = base_settings(config_file, flags, req.data)
    # run_backtest takes datetimes; the sweep's window arithmetic uses pandas Timestamps
    # the backtest's dates (ratchet.common.dates.UTC_DAYS): a sweep is many backtests
    start_ts = None if req.start is None else pd.Timestamp(parse_when(req.start, UTC_DAYS))
    end_ts = None if req.end is None else pd.Timestamp(parse_when(req.end, UTC_DAYS, end=True))
    if start_ts is not None and end_ts is not None and start_ts > end_ts:
        raise ConfigError(f"--start {req.start} is after --end {req.end}")
    data_path = data_dir.resolve() if "://" not in str(data_dir) else data_dir
    end_ns = None if end_ts is None else int(end_ts.value)
    datasets = load_bars(str(data_path), base.symbols if explicit else None, base.bar_interval,
                         end_ns, req.drop_bad_rows)
    base = base.replace(symbols=tuple(datasets))
    spec = DataSpec(str(data_path), tuple(datasets) if explicit else None, base.bar_interval,
                    end_ns, req.drop_bad_rows, fingerprint(datasets), code_version())
    if req.search == "grid":
        cells, skipped = space.grid_cells(base)
    elif req.search == "random":
        cells, skipped = space.random_cells(base, int(req.trials or 0), req.seed)
    else:
        cells, skipped = [], {}
        probe, probe_skipped = space.random_cells(base, 1, req.seed)
        if not probe:
            raise ConfigError(explain_empty(probe_skipped))
    if req.search != "optuna" and not cells:
        raise ConfigError(explain_empty(skipped))
    start_ns = None if start_ts is None else int(start_ts.value)
    windows = []
    if windows_spec is not None:
        firsts = [int(a.ts[np.searchsorted(a.ts, start_ns or a.ts[0])]) for a in
                  datasets.values() if len(a) and (start_ns is None or a.ts[-1] >= start_ns)]
        if not firsts:
            raise ConfigError(f"no bars on or after --start {req.start}")
        first = min(firsts)
        last = max(int(a.ts[-1]) for a in datasets.values())
        windows = make_windows(first, last, *windows_spec, anchored=req.anchored)
    del datasets  # workers load their own copy; the client needs only the fingerprint
    definition = {
        "data": spec.data, "data_fingerprint": spec.fingerprint, "code_version": spec.code_version,
        "symbols": list(base.symbols), "interval": base.bar_interval, "start": req.start,
        "end": req.end, "drop_bad_rows": req.drop_bad_rows, "base_settings": base.to_dict(),
        "space": space.describe(), "search": req.search, "trials": req.trials, "seed": req.seed,
        "objective": req.objective, "min_trades": req.min_trades,
        "walk_forward": req.walk_forward, "anchored": req.anchored,
    }
    digest = hashlib.sha256(json.dumps(definition, sort_keys=True, default=str).encode())
    def_hash = digest.hexdigest()[:16]
    folder = Path(req.out) / (req.name or f"sweep-{def_hash[:10]}")
    config = {"kind": "sweep", "definition_hash": def_hash, "version": __version__,
              "created_at": datetime.now(UTC).isoformat(), **definition,
              "windows": [w.describe() for w in windows]}
    plan = SweepPlan(folder, spec, base, space, req.search, req.trials, req.seed, req.objective,
                     req.min_trades, start_ns, cells, windows)
    return plan, config, skipped
