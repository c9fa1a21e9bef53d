"""``python cli.py parity RUN``: how far a paper run drifted from the backtest of its bars.

Prints a summary, writes ``parity.json`` into the run folder (``cli.py report`` shows it),
and exits 1 when the order decisions differ by more than ``--tolerance`` percent, so a
deployment can be gated on it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from analyzers.parity import Decision, compare, console_lines, ny_text, write_parity
from analyzers.runfolder import latest_run
from ratchet.commands.output import echo_lines, fit, out_width
from ratchet.common.config import load_settings
from ratchet.common.errors import DataError
from ratchet.common.logs import setup_logging

#: exit code when the decisions differ beyond the tolerance
DIFFERS = 1


@click.command("parity")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--tolerance", type=click.FloatRange(0, 100), default=0.0, show_default=True,
              help="Percent of order decisions allowed to differ before the exit code is 1.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Compare against these settings instead of the run's own "
                                 "(differences are then put down to the changed settings).")
@click.option("--json", "as_json", is_flag=True, help="Print parity.json instead of the "
                                                      "summary.")
@click.option("--verbose", "-v", count=True, help="-v info, -vv debug.")
def parity(run: Path, tolerance: float, config_file: Path | None, as_json: bool,
           verbose: int) -> None:
    """Compare a paper run folder with the backtest of exactly the bars it traded.

    RUN is a paper or dry-run folder (runs/<run id>), or runs/ for the newest of those.
    """
    setup_logging(verbose)
    t0 = time.perf_counter()
    # runs/ (a folder of run folders) stands for its newest run, as in `cli.py report`
    from analyzers.sweepfolder import is_sweep_folder

    path = run if (run / "config.json").exists() or not run.is_dir() else _latest_live(run)
    if is_sweep_folder(path):
        raise DataError(f"{path} is a sweep folder: parity compares a paper or dry-run run "
                        "folder (runs/<run id>) with the backtest of its bars")
    settings = None
    if config_file is not None:
        from analyzers.parity import run_settings

        settings = load_settings(config_file, environ={}, base=run_settings(path))
    report = compare(path, settings)
    out = write_parity(report, path)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        width = out_width()  # wrapped at spaces in a terminal, complete lines when piped
        lines = list(console_lines(report, tolerance))
        lines += [f"  {ny_text(d.time)} {d.symbol:<6} live {_d(d.live)} | backtest "
                  f"{_d(d.backtest)} | {d.cause}: {d.detail}" for d in report.differences[:20]]
        if len(report.differences) > 20:
            lines.append(f"  ... {len(report.differences) - 20} more in {out}")
        echo_lines([part for line in lines for part in fit(line, width, "    ")])
        click.echo("Written:")
        click.echo(f"  {out} ({time.perf_counter() - t0:.1f} s)")
    if not report.passes(tolerance):
        click.echo(f"decisions differ by {100 - report.pct_identical:.1f}% > tolerance "
                   f"{tolerance:g}%", err=True)
        sys.exit(DIFFERS)


def _latest_live(out: Path) -> Path:
    """The newest paper or dry-run folder under ``out`` (a backtest run after it is not what
    `parity runs/` means)."""
    found = []
    for mode in ("paper", "dryrun"):
        try:
            found.append(latest_run(out, mode))
        except DataError:
            continue
    if not found:
        raise DataError(f"no paper or dry-run folder under {out}: run `python cli.py paper` "
                        "(or `paper --sim`) first")
    return max(found, key=lambda p: p.name)


def _d(d: Decision | None) -> str:
    if d is None:
        return "-"
    return f"{d.side.upper()} {d.qty:g} ({d.reason})"
