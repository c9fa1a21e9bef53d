"""``python cli.py runs``: past run folders, newest first (name, date, symbols, return)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from common.errors import DataError


def _read(path: Path) -> dict[str, Any]:
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
        config, stats = _read(p / "config.json"), _read(p / "stats.json")
        symbols = config.get("symbols") or config.get("settings", {}).get("symbols") or []
        rows.append({"id": p.name, "name": config.get("name"), "mode": config.get("mode"),
                     "created": config.get("created_at"), "symbols": list(symbols),
                     "total_return": stats.get("total_return"),
                     "trade_count": stats.get("trade_count"), "path": str(p)})
    rows.sort(key=lambda r: (r["created"] or "", r["id"]), reverse=True)
    return rows


def _when(created: str | None) -> str:
    import pandas as pd

    if not created:
        return "?"
    return pd.Timestamp(created).tz_convert("America/New_York").strftime("%Y-%m-%d %H:%M")


@click.command("runs")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"),
              show_default=True, help="Folder the run folders are under.")
@click.option("--limit", "-n", type=click.IntRange(1), default=20, show_default=True,
              help="Show at most this many runs.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (all runs).")
def runs(out: Path, limit: int, as_json: bool) -> None:
    """List past runs, newest first: name, date (New York time), symbols, return, trades."""
    from commands.output import echo_lines, fit, out_width, table_lines

    rows = list_runs(out)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        raise DataError(f"no run folders under {out}: run `python cli.py backtest` first")
    table = []
    for r in rows[:limit]:
        syms = r["symbols"]
        sym_text = ",".join(syms[:2]) + (f" +{len(syms) - 2}" if len(syms) > 2 else "")
        ret = r["total_return"]
        table.append([r["id"], r["name"] or "-", _when(r["created"]), sym_text,
                      "?" if ret is None else f"{ret * 100:+.2f}%",
                      "?" if r["trade_count"] is None else str(r["trade_count"])])
    lines = table_lines(["run", "name", "date (NY)", "symbols", "return", "trades"], table,
                        out_width(), right=(4, 5), key_cols=2)
    more = f" (newest {limit} of {len(rows)}; -n to see more)" if len(rows) > limit else ""
    echo_lines([*fit(f"Runs under {out}{more}:", out_width(), "  "), *lines])
