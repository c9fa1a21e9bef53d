"""``python cli.py report RUN [RUN...]``: a self-contained HTML report of run folders."""

from __future__ import annotations

from pathlib import Path

import click

from analyzers.report import write_report


@click.command("report")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="HTML file to write. Default: report.html inside the first run folder.")
@click.option("--title", default=None, help="Page title (default: the run id).")
@click.option("--max-symbols", default=3, show_default=True, type=click.IntRange(1, 12),
              help="Symbols plotted with their trades (the most traded ones).")
def report(runs: tuple[Path, ...], output: Path | None, title: str | None,
           max_symbols: int) -> None:
    """Write an HTML report of one or more run folders (several: compared side by side).

    RUN is a run folder (runs/<run id>) or an output folder such as runs/, which stands for
    its newest run. A sweep folder (runs/sweeps/<sweep>) gets the sweep report: heatmaps of the
    objective, the top cells and, for walk-forward, in-sample vs out-of-sample.
    The file is self-contained (charts embedded) and opens offline.
    """
    from analyzers.report import resolve_run_path
    from analyzers.sweepfolder import is_sweep_folder

    # runs/sweeps (a folder of sweeps) stands for its newest sweep, as runs/ for its newest run
    first = (_newest_sweep(runs[0]) or resolve_run_path(runs[0])) if len(runs) == 1 \
        else runs[0]
    if len(runs) == 1 and is_sweep_folder(first):
        from analyzers.sweep_report import write_sweep_report

        click.echo(str(write_sweep_report(first, output)))
        return
    out = write_report(list(runs), output, title=title, max_symbols=max_symbols)
    click.echo(str(out))


def _newest_sweep(folder: Path) -> Path | None:
    """The most recently created sweep folder directly under ``folder`` (sweep folders are
    named by hash, so by their config.json's created_at), or None."""
    import json

    from analyzers.sweepfolder import is_sweep_folder

    if not folder.is_dir() or (folder / "config.json").exists():
        return None
    sweeps = [p for p in folder.iterdir() if p.is_dir() and is_sweep_folder(p)]
    if not sweeps or any((p / "stats.json").exists() for p in folder.iterdir() if p.is_dir()):
        return None  # a folder of runs (or mixed): the newest run, as before

    def created(p: Path) -> str:
        return str(json.loads((p / "config.json").read_text(encoding="utf-8"))
                   .get("created_at") or "")

    return max(sweeps, key=created)
