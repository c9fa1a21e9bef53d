"""Run folders: the files every run leaves behind, and the one-line loader for notebooks.

    from analyzers import load_run
    run = load_run("runs/20261124-093000-backtest")
    run.trades.groupby("exit_reason").pnl.sum()

The layout is documented in docs/CONTRACTS.md ("Run folder").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ratchet.common.errors import DataError

if TYPE_CHECKING:
    import pandas as pd


RUN_FILES: tuple[str, ...] = (
    "config.json",
    "trades.parquet",
    "orders.parquet",
    "equity.parquet",
    "prices.parquet",
    "audit.csv",
    "stats.json",
)


def new_run_id(mode: str, now: datetime | None = None) -> str:
    """``YYYYmmdd-HHMMSS-<mode>`` from the wall clock (UTC): names the folder only."""
    now = now or datetime.now(UTC)
    return f"{now.strftime('%Y%m%d-%H%M%S')}-{mode}"


def make_run_dir(out: Path, mode: str) -> Path:
    """Create a fresh run folder under ``out``; never reuses an existing one."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = new_run_id(mode)
    path = out / base
    n = 1
    while path.exists():
        n += 1
        path = out / f"{base}-{n}"
    path.mkdir()
    return path


@dataclass
class Run:
    """Everything a run folder holds, as pandas objects and dicts."""

    path: Path
    config: dict[str, Any]
    stats: dict[str, Any]
    trades: pd.DataFrame
    orders: pd.DataFrame
    equity: pd.DataFrame
    prices: pd.DataFrame
    audit: pd.DataFrame
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The run id (folder name)."""
        return self.path.name

    def __repr__(self) -> str:
        return (
            f"Run({self.name}: {len(self.trades)} trades, {len(self.orders)} orders, "
            f"{len(self.equity)} equity rows)"
        )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} is missing: is {path.parent} a ratchet run folder?") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); the run folder is damaged") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object")
    return data


def _read_parquet(path: Path) -> pd.DataFrame:
    import pandas as pd

    if not path.exists():
        raise DataError(f"{path} is missing: is {path.parent} a complete ratchet run folder?")
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a damaged file
        raise DataError(f"{path} cannot be read ({exc.__class__.__name__}: {exc})") from None


def load_run(path: str | Path) -> Run:
    """Load a run folder (backtest or paper) in one call."""
    import pandas as pd

    path = Path(path)
    if not path.is_dir():
        raise DataError(f"run folder {path} does not exist (runs are written under --out, "
                        "default runs/)")
    audit_path = path / "audit.csv"
    try:
        audit = pd.read_csv(audit_path, parse_dates=["time"]) if audit_path.exists() else \
            pd.DataFrame()
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{audit_path} cannot be read: {exc}") from None
    return Run(
        path=path,
        config=_read_json(path / "config.json"),
        stats=_read_json(path / "stats.json"),
        trades=_read_parquet(path / "trades.parquet"),
        orders=_read_parquet(path / "orders.parquet"),
        equity=_read_parquet(path / "equity.parquet"),
        prices=_read_parquet(path / "prices.parquet"),
        audit=audit,
    )


def latest_run(out: str | Path = "runs", mode: str | None = None) -> Path:
    """The newest run folder under ``out`` (optionally of one mode)."""
    out = Path(out)
    candidates = sorted(
        p for p in out.glob("*") if p.is_dir() and (p / "config.json").exists()
        and (mode is None or p.name.split("-")[2:3] == [mode])
    )
    if not candidates:
        raise DataError(f"no run folders under {out}: run `python cli.py backtest` first")
    return candidates[-1]


def _json_or_empty(path: Path) -> dict[str, Any]:
    """A JSON object file, or {} when missing or unreadable (listing skips nothing)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def list_runs(out: Path) -> list[dict[str, Any]]:
    """One dict per run folder under ``out`` (newest first): id, name, mode, created (ISO
    UTC), symbols, total_return, trade_count, path."""
    rows = []
    for p in Path(out).iterdir() if Path(out).is_dir() else []:
        if not p.is_dir() or not (p / "config.json").exists():
            continue
        config, stats = _json_or_empty(p / "config.json"), _json_or_empty(p / "stats.json")
        symbols = config.get("symbols") or config.get("settings", {}).get("symbols") or []
        rows.append({"id": p.name, "name": config.get("name"), "mode": config.get("mode"),
                     "created": config.get("created_at"), "symbols": list(symbols),
                     "total_return": stats.get("total_return"),
                     "trade_count": stats.get("trade_count"), "path": str(p)})
    rows.sort(key=lambda r: (r["created"] or "", r["id"]), reverse=True)
    return rows
