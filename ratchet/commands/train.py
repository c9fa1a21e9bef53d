"""``python cli.py train``: label, validate walk-forward, backtest out of sample, save a model.

Steps: read bars (resampled to ``--interval`` if asked), compute the shared features, label
each bar "close rises over the next H bars", validate on expanding time-ordered folds with a
purged gap, backtest every fold's model on its own test span with the real Strategy
(``ratchet.engine.backtest.run_backtest``), then fit on all bars and save the model with its
metadata.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import pandas as pd

from ratchet.common.config import INTERVAL_SECONDS, load_settings
from ratchet.common.dates import UTC_DAYS, parse_when
from ratchet.common.errors import ConfigError
from ratchet.common.logs import setup_logging
from ratchet.common.paths import BUNDLED_BARS
from strategies.ml import (
    DEFAULT_HORIZONS,
    DEFAULT_PARAMS,
    Validation,
    load_training_bars,
    save_model,
)
from strategies.ml.training import BacktestFn, FoldBacktest, run_training

DEFAULT_OUT = Path("models") / "model.rmodel"


def _when(text: str | None, end: bool = False) -> pd.Timestamp | None:
    """A UTC timestamp from ``YYYY-MM-DD`` or ISO text (``ratchet.common.dates.UTC_DAYS``: naive =
    UTC; a bare end date means the whole day)."""
    return None if text is None else pd.Timestamp(parse_when(text, UTC_DAYS, end=end))


# ------------------------------------------------------------------------------- printing


def _f(x: Any, fmt: str = "{:.3f}") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else fmt.format(x)


def _pct(x: Any, sign: bool = True) -> str:
    return _f(None if x is None else x * 100, "{:+.2f}%" if sign else "{:.1f}%")


def _span(a: pd.Timestamp, b: pd.Timestamp) -> str:
    """Compact test span in New York time: dates only for long spans, else month-day and
    time."""
    a, b = (t.tz_convert("America/New_York") if t.tzinfo is not None else t for t in (a, b))
    fmt = "%Y-%m-%d" if b - a > pd.Timedelta(days=7) or a.year != b.year else "%m-%d %H:%M"
    return f"{a.strftime(fmt)} > {b.strftime(fmt)}"


def _table(title: str, columns: tuple[str, ...]) -> Any:
    from rich import box
    from rich.table import Table

    # no padding: the box's own divider is the one space between columns, so the tables fit
    # 80 columns (with padding they took 83 and folded '17,490' into '17,49' + '0'); a
    # narrower terminal folds a value onto the next line rather than cutting it ("2,9…")
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
              padding=(0, 0, 0, 0))
    for col in columns:
        span = col.startswith("test span")
        t.add_column(col, justify="left" if span else "right", overflow="fold",
                     no_wrap=span, min_width=23 if span else None)
    return t


def validation_table(validation: Validation) -> Any:
    """Per-fold and overall out-of-sample metrics as a rich table.

    Columns: training rows, test span, test rows, share of test rows whose close rose (the
    accuracy of always guessing "up" is max(up, 1 - up)), accuracy at p >= 0.5, AUC, share of
    test rows with p >= enter, and how often those rose.
    """
    t = _table("Walk-forward validation, out of sample",
               ("fold", "train", "test span (NY)", "test", "up", "acc", "AUC", "buy",
                "buy hit"))

    def row(label: str, train: str, span: str, m: dict[str, float]) -> None:
        t.add_row(label, train, span, f"{m.get('rows', 0):,}", _f(m.get("base_rate")),
                  _f(m.get("accuracy")), _f(m.get("auc")), _f(m.get("buy_share")),
                  _f(m.get("buy_hit_rate")))

    for r in validation.folds:
        row(str(r.fold.index), f"{r.train_rows:,}", _span(r.test_start, r.test_end), r.metrics)
    first, last = validation.folds[0], validation.folds[-1]
    row("all", "", _span(first.test_start, last.test_end), validation.overall)
    return t


def backtest_table(results: list[FoldBacktest]) -> Any:
    """Per-fold Strategy results on the test spans, with equal-weight buy-and-hold."""
    t = _table("Backtest of the signal on each test span (that fold's model)",
               ("fold", "test span (NY)", "trades", "win", "return", "max DD", "Sharpe",
                "buy&hold"))
    growth, hold = 1.0, 1.0
    trades = 0
    for r in results:
        s = r.stats
        t.add_row(str(r.fold), _span(r.start, r.end), str(s.get("trade_count", 0)),
                  _pct(s.get("win_rate"), sign=False), _pct(s.get("total_return")),
                  _pct(s.get("max_drawdown")), _f(s.get("sharpe"), "{:.2f}"), _pct(r.buy_hold))
        growth *= 1.0 + (s.get("total_return") or 0.0)
        hold *= 1.0 + (r.buy_hold if math.isfinite(r.buy_hold) else 0.0)
        trades += int(s.get("trade_count") or 0)
    if results:
        t.add_row("all", _span(results[0].start, results[-1].end), str(trades), "",
                  _pct(growth - 1.0), "", "", _pct(hold - 1.0))
    return t


@contextmanager
def _progress(enabled: bool, console: Any) -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress bar driven by ``(description, done, total)`` calls (or a no-op)."""
    if not enabled:
        yield lambda _d, _n, _t: None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description:<28}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("starting", total=1)

        def update(desc: str, done: int, total: int) -> None:
            bar.update(task, description=desc, completed=done, total=max(total, 1))

        yield update


# ------------------------------------------------------------------------------- the command


@click.command("train")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Folder of <SYMBOL>.parquet bars [bundled data/bars/<interval>].")
@click.option("--symbols", type=str, default=None,
              help="Comma-separated symbols [every symbol in --data].")
@click.option("--start", type=str, default=None, help="First day of bars to use (YYYY-MM-DD).")
@click.option("--end", type=str, default=None, help="Last day of bars to use, inclusive.")
@click.option("--interval", type=click.Choice(list(INTERVAL_SECONDS)), default=None,
              help="Bar interval to train on; finer bars are resampled [the data's own].")
@click.option("--horizon", type=click.IntRange(min=1), default=None,
              help="Label: does the close rise over the next H bars [15 for 1Min].")
@click.option("--folds", type=click.IntRange(min=1), default=5, show_default=True,
              help="Walk-forward test blocks.")
@click.option("--gap", type=click.IntRange(min=0), default=None,
              help="Bars purged between train and test, >= horizon [horizon].")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_OUT,
              show_default=True, help="Model file to write.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--max-iter", type=click.IntRange(min=1), default=DEFAULT_PARAMS["max_iter"],
              show_default=True, help="Boosting iterations (trees).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="OpenMP threads for fitting (more help only on big data and idle cores).")
@click.option("--ml-enter", type=float, default=None,
              help="Threshold for the validation backtest: buy when p >= this [0.55].")
@click.option("--ml-exit", type=float, default=None,
              help="Threshold for the validation backtest: sell when p <= this [0.45].")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="TOML/JSON settings for the validation backtest.")
@click.option("--no-backtest", is_flag=True, help="Skip the backtest of the test spans.")
@click.option("--drop-bad-rows", is_flag=True, help="Skip invalid bar rows with a warning.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("-v", "--verbose", count=True, help="-v info, -vv debug logging.")
def train(data: Path | None, symbols: str | None, start: str | None, end: str | None,
          interval: str | None, horizon: int | None, folds: int, gap: int | None, out: Path,
          seed: int, max_iter: int, threads: int, ml_enter: float | None, ml_exit: float | None,
          config_file: Path | None, no_backtest: bool, drop_bad_rows: bool, no_progress: bool,
          verbose: int) -> None:
    """Train the ML signal: walk-forward validation, out-of-sample backtest, saved model.

    With no options it trains on the bundled synthetic 1-minute bars and writes
    models/model.rmodel. Use it with: backtest --signal ml --model models/model.rmodel
    """
    from ratchet.commands.output import console as make_console

    setup_logging(verbose)
    # the terminal's width (or COLUMNS); piped or logged: complete lines, never squeezed
    console = make_console()
    if data is None:
        data = BUNDLED_BARS / (interval or "1Min")
        if not data.is_dir():
            data = BUNDLED_BARS / "1Min"
    start_ts, end_ts = _when(start), _when(end, end=True)
    if start_ts is not None and end_ts is not None and start_ts > end_ts:
        raise ConfigError(f"--start {start} is after --end {end}")
    wanted = [s.strip().upper() for s in symbols.split(",") if s.strip()] if symbols else None
    frames, bar_interval = load_training_bars(
        Path(data), wanted, None if start_ts is None else str(start_ts),
        None if end_ts is None else str(end_ts), interval, drop_bad_rows,
        load_settings(config_file, {}).extended_hours)
    horizon = horizon or DEFAULT_HORIZONS.get(bar_interval, 10)
    gap = horizon if gap is None else gap
    overrides = {"ml_enter_threshold": ml_enter, "ml_exit_threshold": ml_exit,
                 "bar_interval": bar_interval, "symbols": ",".join(frames),
                 "signal": "ml", "model_path": str(out)}
    settings = load_settings(config_file, overrides)
    params = {"max_iter": max_iter}

    n_bars = sum(len(f) for f in frames.values())
    console.print(f"Training on {', '.join(frames)} ({bar_interval}, {n_bars:,} bars) from "
                  f"{data}: label = close rises over the next {horizon} bars; {folds} folds, "
                  f"gap {gap} bars")
    show = not no_progress and console.is_terminal
    backtest_fn: BacktestFn | None = None
    if not no_backtest:
        from ratchet.engine.backtest import run_backtest

        backtest_fn = run_backtest
    with _progress(show, console) as progress:
        run = run_training(frames, bar_interval, settings, horizon=horizon, folds=folds,
                           gap=gap, seed=seed, params=params, threads=threads,
                           run_backtest=backtest_fn,
                           data_label=str(data), progress=progress)
        save_model(run.model, out)
    dataset, validation, backtests = run.dataset, run.validation, run.backtests

    console.print(validation_table(validation))
    if backtests:
        console.print(backtest_table(backtests))
        console.print(f"Thresholds: buy p >= {settings.ml_enter_threshold}, sell p <= "
                      f"{settings.ml_exit_threshold}; risk {settings.risk_per_trade_pct:.2%}, "
                      f"cash {settings.cash:,.0f} per fold.")
    _print_verdict(console, validation, Path(data))
    flag = "" if bar_interval == "1Min" else f" --interval {bar_interval}"
    console.print(f"Model saved to [bold]{out}[/bold] ({len(dataset):,} labeled rows). "
                  f"Use it: python cli.py backtest{flag} --signal ml --model {out}")


def _print_verdict(console: Any, validation: Validation, data: Path) -> None:
    """Say plainly whether the out-of-sample figures show an edge."""
    auc = validation.overall.get("auc", math.nan)
    aucs = [r.metrics.get("auc", math.nan) for r in validation.folds]
    if data.resolve().is_relative_to(BUNDLED_BARS.resolve()):
        console.print("Note: the bundled bars are SYNTHETIC (a random walk with drifting "
                      "regimes). AUC near 0.5 is expected; this run shows the machinery, "
                      "not a trading edge.")
    if not math.isfinite(auc) or auc < 0.55 or min(aucs, default=0.0) < 0.5:
        console.print(f"Out-of-sample AUC {_f(auc)} (folds {_f(min(aucs))}..{_f(max(aucs))}): "
                      "little or no reliable edge; do not expect the signal to beat chance.")
    else:
        console.print(f"Out-of-sample AUC {_f(auc)}, every fold above 0.5.")
