"""``python cli.py sweep``: parameter sweeps and walk-forward optimisation on Dask.

Thin: parse flags, build the plan (``sweeps.plan``), open the cluster (``sweeps.cluster``),
run it (``sweeps.runner``) with a progress bar, print the summary (``sweeps.summary``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ratchet.commands.backtest import strategy_options
from ratchet.common.logs import setup_logging

if TYPE_CHECKING:
    from distributed import Client
    from rich.console import Console

    from sweeps.runner import Sweeper, SweepOutcome, SweepPlan
    from sweeps.store import ResultStore


@click.command("sweep")
@click.option("--grid", "grids", multiple=True, metavar="NAME=V1,V2",
              help="Values of one setting, e.g. --grid fast=5,10,20 (repeatable).")
@click.option("--range", "ranges", multiple=True, metavar="NAME=LO:HI[:STEP]",
              help="A numeric range, e.g. --range slow=30:100:10; without STEP only for "
                   "random/optuna (repeatable).")
@click.option("--constraint", "constraints", multiple=True, metavar="EXPR",
              help="Keep only cells where e.g. 'fast<slow' or 'slow>=2*fast' holds.")
@click.option("--search", type=click.Choice(["grid", "random", "optuna"]), default="grid",
              show_default=True, help="Every cell, N random cells, or Optuna's TPE.")
@click.option("--trials", type=int, default=None, help="Trial budget of random/optuna.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random/optuna seed.")
@click.option("--objective", type=click.Choice(["sharpe", "calmar", "total_return",
                                                "profit_factor", "sortino"]),
              default="sharpe", show_default=True,
              help="What the best cell maximises (calmar = CAGR / max drawdown).")
@click.option("--min-trades", type=int, default=5, show_default=True,
              help="Cells with fewer closed trades do not qualify.")
@click.option("--walk-forward", "walk_forward", default=None, metavar="TRAIN/TEST",
              help="Walk-forward windows, e.g. 12M/3M (units D, W, M, Y).")
@click.option("--anchored", is_flag=True, help="Walk-forward training spans all start at the "
                                               "beginning (default: rolling).")
@click.option("--scheduler", default=None, metavar="tcp://HOST:PORT",
              help="Run on this Dask scheduler [a local cluster on this machine].")
@click.option("--workers", type=click.IntRange(1, 512), default=None,
              help="Local cluster worker processes [one per CPU].")
@click.option("--connect-timeout", type=float, default=10.0, show_default=True,
              help="Seconds to wait for --scheduler.")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Bars folder (every worker must read it) [bundled data/bars].")
@click.option("--start", default=None, help="First trading day (YYYY-MM-DD).")
@click.option("--end", default=None, help="Last trading day, inclusive.")
@click.option("--cash", type=float, default=None, help="Starting cash [100000].")
@click.option("--commission", type=float, default=None, help="Commission, fraction of value.")
@click.option("--volume-participation", type=float, default=None,
              help="Most of a bar's volume one order may fill, fraction.")
@click.option("--drop-bad-rows", is_flag=True, help="Skip invalid bar rows with a warning.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              default=Path("runs/sweeps"), show_default=True,
              help="Folder the sweep folder is written under.")
@click.option("--name", default=None, help="Sweep folder name [sweep-<hash of the sweep>: the "
                                           "same command resumes the same folder].")
@click.option("--top", type=int, default=10, show_default=True, help="Rows in the top table.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("-v", "--verbose", count=True, help="-v info, -vv debug logging.")
@strategy_options
def sweep(grids: tuple[str, ...], ranges: tuple[str, ...], constraints: tuple[str, ...],
          search: str, trials: int | None, seed: int, objective: str, min_trades: int,
          walk_forward: str | None, anchored: bool, scheduler: str | None, workers: int | None,
          connect_timeout: float, data: Path | None, start: str | None, end: str | None,
          cash: float | None, commission: float | None, volume_participation: float | None,
          drop_bad_rows: bool, out: Path, name: str | None, top: int, no_progress: bool,
          verbose: int, config_file: Path | None, **flags: Any) -> None:
    """Backtest many settings at once on Dask and rank them; optionally walk-forward.

    Example: cli.py sweep --grid fast=5,10,20 --grid slow=30,50,100 --objective sharpe
    """
    from ratchet.commands.output import console as make_console
    from sweeps.cluster import open_client
    from sweeps.plan import SweepRequest, build_plan
    from sweeps.runner import Sweeper
    from sweeps.store import ResultStore
    from sweeps.summary import print_outcome

    setup_logging(verbose)
    console: Any = make_console()  # plain, complete text when piped (README "Output")
    flags.update(cash=cash, commission=commission, volume_participation=volume_participation)
    req = SweepRequest(grids, ranges, constraints, search, trials, seed, objective, min_trades,
                       walk_forward, anchored, data, start, end, drop_bad_rows, out, name)
    plan, config, skipped = build_plan(req, config_file, flags)
    store = ResultStore(plan.folder)
    resuming = store.open(config)
    n_cells = len(plan.cells) if plan.search != "optuna" else plan.trials
    per = f" x {len(plan.windows)} windows" if plan.windows else ""
    console.print(f"Sweep of {n_cells} cells{per} over {', '.join(plan.base.symbols)} "
                  f"({plan.base.bar_interval}) from {plan.spec.data}; objective {objective}"
                  + (f"; {sum(skipped.values())} combinations skipped (invalid or against a "
                     "constraint)" if skipped else ""), markup=False)
    if resuming:
        console.print(f"Resuming {plan.folder}: {len(store.done_keys())} backtests already "
                      "done are reused, not run again", markup=False)
    where = scheduler or (f"a local cluster of {workers} worker process"
                          + ("" if workers == 1 else "es") if workers
                          else "a local cluster, one worker process per CPU")
    if not Sweeper(None, plan, store).needs_cluster():
        console.print("Every cell is already done: nothing to run")
        outcome = Sweeper(None, plan, store).run()
    else:
        with open_client(scheduler, workers, connect_timeout) as client:
            now = len(client.scheduler_info()["workers"])
            console.print(f"Running on {where} ({now} worker{'' if now == 1 else 's'} now)",
                          markup=False)
            outcome = _run(Sweeper, client, plan, store, console, no_progress)
    print_outcome(outcome, plan, console, top)


def _run(sweeper: type[Sweeper], client: Client, plan: SweepPlan, store: ResultStore,
         console: Console, no_progress: bool) -> SweepOutcome:
    """Run the sweep with a progress bar (terminal) or progress lines (logs)."""
    from sweeps.summary import TextProgress

    if no_progress or not console.is_terminal:
        progress = None if no_progress else TextProgress(console.print)
        return sweeper(client, plan, store, progress).run()
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("cells"),
                  TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("sweep", total=None)
        return sweeper(client, plan, store,
                       lambda d, t: bar.update(task, completed=d, total=t)).run()
