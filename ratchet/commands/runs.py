"""``python cli.py runs``: past run folders, newest first (name, date, symbols, return)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from analyzers.runfolder import list_runs
from ratchet.common.errors import DataError


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
    from ratchet.commands.output import echo_lines, fit, out_width, table_lines

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
