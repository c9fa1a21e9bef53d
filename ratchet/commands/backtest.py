"""``python cli.py backtest``: the Strategy over Parquet bars, leaving a run folder.

The command parses flags into ``Settings`` (``ratchet.engine.datasets.plan_backtest``), runs
``ratchet.engine.backtest.run_backtest`` with a progress bar and prints the summary. The
strategy flags (``strategy_options``) are shared with ``paper`` and ``show-config``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click
import numpy as np

from ratchet.common.config import INTERVAL_SECONDS, Settings, load_settings_with_sources
from ratchet.common.dates import UTC_DAYS, parse_when
from ratchet.common.errors import ConfigError
from ratchet.common.logs import setup_logging
from ratchet.common.nytime import unique_inverse
from ratchet.engine.backtest import BacktestResult, run_backtest
from ratchet.engine.datasets import load_datasets, plan_backtest


def _parse_when(text: str | None, end: bool = False) -> datetime | None:
    """A ``--start``/``--end`` value as an aware UTC datetime (``ratchet.common.dates.UTC_DAYS``:
    naive = UTC; a bare date as ``--end`` means the whole day)."""
    if text is None:
        return None
    return parse_when(text, UTC_DAYS, end=end)


# ------------------------------------------------------------------------------- the command


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:,.2f}%"


def _spct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:+,.2f}%"


def _num(x: float | None, fmt: str = "{:,.2f}") -> str:
    return "n/a" if x is None else fmt.format(x)


NY_TZ = "America/New_York"


def _ny(text: object) -> str:
    """A stats.json time as New York wall time (the zone is named once, in the heading)."""
    if not text:
        return "?"
    ts = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts
    ts = ts.astimezone(ZoneInfo(NY_TZ))
    return ts.strftime("%Y-%m-%d" if (ts.hour, ts.minute) == (0, 0) else "%Y-%m-%d %H:%M")


def summary_lines(result: BacktestResult, width: int | None) -> list[str]:
    """The end-of-run summary as plain lines that fit ``width`` (None: no limit)."""
    from ratchet.commands.output import fit, kv_lines, table_lines

    s = result.stats
    bh_all, bh_traded = s.get("buy_hold_return"), s.get("buy_hold_traded_return")
    pairs = [
        ("Period", f"{_ny(s.get('start'))} -> {_ny(s.get('end'))}"),
        ("Bars processed", f"{result.bars:,} in {result.seconds:.1f}s "
                           f"({result.bars / max(result.seconds, 1e-9):,.0f} bars/s)"),
        ("Start value", _num(s.get("start_value"))),
        ("End value", _num(s.get("end_value"))),
        ("Total return", _spct(s.get("total_return"))),
        ("Buy and hold", f"{_spct(bh_traded)} traded symbols, {_spct(bh_all)} all symbols"
         if bh_traded is not None else f"{_spct(bh_all)} all symbols (none traded)"),
        ("CAGR", _spct(s.get("cagr"))),
        ("Sharpe", _num(s.get("sharpe"))),
        ("Sortino", _num(s.get("sortino"))),
        ("Max drawdown", _pct(s.get("max_drawdown"))),
        ("Max DD duration", f"{_num(s.get('max_drawdown_duration_days'))} days"),
        ("Trades", str(s.get("trade_count", 0))),
        ("Win rate", _pct(s.get("win_rate"))),
        ("Profit factor", _num(s.get("profit_factor"))),
        ("Exposure", _pct(s.get("exposure"))),
    ]
    lines = ["Backtest summary (times are New York time)", *kv_lines(pairs, width), ""]
    per = s.get("symbols") or {}
    if per:
        rows = [[sym, str(r["trades"]), _pct(r["win_rate"]), f"{r['pnl']:+,.2f}",
                 _pct(r["exposure"]), _spct(r["buy_hold_return"])] for sym, r in per.items()]
        lines += table_lines(["symbol", "trades", "win rate", "P&L", "exposure",
                              "buy & hold"], rows, width, right=(1, 2, 3, 4, 5))
        lines.append("")
    closed = result.strategy.closed_trades
    if closed:
        by: dict[str, list[float]] = {}
        for t in closed:
            by.setdefault(str(t["exit_reason"]), []).append(float(t["pnl"]))
        reasons = ", ".join(f"{r}: {len(v)} ({math.fsum(v):+,.2f})"
                            for r, v in sorted(by.items()))
        lines += fit(f"Exit reasons: {reasons}", width, "  ")
    if s.get("open_positions"):
        held = ", ".join(f"{sym} {qty:g} shares" for sym, qty in s["open_positions"].items())
        lines += fit(f"Open at the end (not counted as trades): {held}", width, "  ")
    if result.run_dir is not None:
        # The path on a line of its own: it never wraps mid-name and copies whole.
        load = f"  run = load_run({str(result.run_dir)!r})"
        if width is not None and len(load) > width:
            load = "  run = load_run('<the run folder above>')"
        lines += ["Run folder:", f"  {result.run_dir}",
                  "In Python: from analyzers import load_run", load]
    return lines


def print_summary(result: BacktestResult, console: object = None) -> None:
    """Print the end-of-run summary to stdout (fits the terminal; complete when piped)."""
    from ratchet.commands.output import echo_lines, out_width

    echo_lines(summary_lines(result, out_width()))


STRATEGY_OPTIONS: list[tuple[str, click.ParamType | type, str]] = [
    # flag (= setting name, see ratchet.common.config.PARAMS), click type, help
    ("--signal", click.Choice(["ma", "ml"]), "Signal: MA crossover or ML model [ma]."),
    ("--model", click.Path(dir_okay=False), "Model file for --signal ml."),
    ("--fast", int, "Fast SMA period, bars [10]."),
    ("--slow", int, "Slow SMA period, bars [30]."),
    ("--ml-enter", float, "ML: buy when p >= this [0.55]."),
    ("--ml-exit", float, "ML: sell when p <= this [0.45]."),
    ("--max-position-pct", float, "Cap per position, PERCENT of equity [10]."),
    ("--max-positions", int, "Most open positions + working entries [5]."),
    ("--atr-period", int, "ATR period, bars [14]."),
    ("--atr-mult", float, "Fixed stop distance in ATRs [2]."),
    ("--trail-pct", float, "Trailing stop, PERCENT below the highest high [3]."),
    ("--limit-timeout", float, "Seconds a limit entry may rest before the market "
                               "fallback [30]."),
    ("--strategy-id", str, "Prefix of every client order id [ratchet]."),
]


def strategy_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add every SPEC parameter as a flag (shared by backtest, paper and show-config).

    A flag's destination is the setting's public name (``--risk-pct`` -> ``risk_pct``),
    which is also its config-file key and ``RATCHET_`` variable.
    """
    func = click.option("--limit-orders/--market-orders", "limit_orders", default=None,
                        help="Limit entries with market fallback, or market at once "
                             "[limit].")(func)
    func = click.option("--fractional/--no-fractional", "fractional", default=None,
                        help="Allow fractional shares [no].")(func)
    func = click.option("--extended-hours/--regular-hours", "extended_hours", default=None,
                        help="Also trade the extended session (04:00-20:00 New York): limit "
                             "orders only, the stop enforced on each bar [regular hours "
                             "only; other bars are dropped].")(func)
    func = click.option("--trail", "trail", type=float, default=None, hidden=True,
                        help="Deprecated: --trail-pct (percent).")(func)
    for flag, typ, helptext in reversed(STRATEGY_OPTIONS):
        func = click.option(flag, flag[2:].replace("-", "_"), type=typ, default=None,
                            help=helptext)(func)
    func = click.option("--risk", "risk", type=float, default=None, hidden=True,
                        help="Deprecated: --risk-pct.")(func)
    func = click.option("--risk-pct", "risk_pct", type=float, default=None,
                        help="Risk per trade, PERCENT of equity [2].")(func)
    func = click.option("--interval", "interval", type=click.Choice(list(INTERVAL_SECONDS)),
                        default=None, help="Bar interval; finer bars are resampled [1Min].")(func)
    func = click.option("--symbols", type=str, default=None,
                        help="Comma-separated symbols [every symbol in --data].")(func)
    func = click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
                        default=None, help="TOML/JSON settings file (flags override it; "
                                           "see config.example.toml).")(func)
    return func


def settings_from_flags(config_file: Path | None, flags: dict[str, Any],
                        base: Settings | None = None) -> Settings:
    """Settings from defaults < config file < env < these flags (public names)."""
    return settings_and_sources(config_file, flags, base)[0]


def settings_and_sources(config_file: Path | None, flags: dict[str, Any],
                         base: Settings | None = None) -> tuple[Settings, dict[str, str]]:
    """Settings and where each value came from (``show-config``)."""
    overrides = {k: v for k, v in flags.items() if v is not None}
    return load_settings_with_sources(config_file, overrides, base=base)

@click.command("backtest")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Folder of <SYMBOL>.parquet files, one file, or a store root "
                   "(<root>/<interval>/, as `data import` writes) [bundled data/bars].")
@click.option("--start", type=str, default=None, help="First trading day (YYYY-MM-DD).")
@click.option("--end", type=str, default=None, help="Last trading day, inclusive.")
@click.option("--cash", type=float, default=None, help="Starting cash [100000].")
@click.option("--commission", type=float, default=None, help="Commission, fraction of value.")
@click.option("--volume-participation", type=float, default=None,
              help="Most of a bar's volume one order may fill, fraction (partial fills).")
@click.option("--drop-bad-rows", is_flag=True, help="Skip invalid bar rows with a warning "
                                                    "instead of stopping.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"),
              show_default=True, help="Folder the run folder is written under.")
@click.option("--name", default=None, help="A label for this run (shown by `cli.py runs` "
                                          "and in the report).")
@click.option("--report", "with_report", is_flag=True,
              help="Also write the HTML report (report.html in the run folder).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("-v", "--verbose", count=True, help="-v info, -vv debug logging.")
@strategy_options
def backtest(data: Path | None, start: str | None, end: str | None, cash: float | None,
             commission: float | None, volume_participation: float | None, drop_bad_rows: bool,
             out: Path, name: str | None, with_report: bool, no_progress: bool, verbose: int,
             config_file: Path | None, **flags: Any) -> None:
    """Run the strategy over historical Parquet bars and write a run folder.

    With no options it runs on the bundled (synthetic) 1-minute sample bars.
    """
    setup_logging(verbose)
    flags.update(cash=cash, commission=commission, volume_participation=volume_participation)
    settings, _, data_dir, wanted = plan_backtest(data, config_file, flags)
    start_ts, end_ts = _parse_when(start), _parse_when(end, end=True)
    if start_ts is not None and end_ts is not None and start_ts > end_ts:
        raise ConfigError(f"--start {start} is after --end {end}")
    datasets = load_datasets(data_dir, wanted, settings.bar_interval, end_ts, drop_bad_rows)
    settings = settings.replace(symbols=tuple(datasets))
    steps = len(unique_inverse(np.concatenate([a.ts for a in datasets.values()]))[0])
    from ratchet.commands.output import echo_lines, fit, out_width

    hours = ", extended hours" if settings.extended_hours else ""
    echo_lines(fit(f"Backtesting {', '.join(datasets)} ({settings.bar_interval} bars{hours}) from "
                   f"{data_dir}: signal {settings.signal}, risk "
                   f"{settings.risk_per_trade_pct * 100:g}% per trade", out_width(), "  "))
    meta = {"data": str(data_dir), "start": start, "end": end, "name": name}
    console = None
    if not no_progress:  # rich (~25 ms of imports) only when a bar may be shown
        from rich.console import Console

        console = Console(stderr=False)
    if console is not None and console.is_terminal:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                      TextColumn("{task.completed:,}/{task.total:,} steps"),
                      TimeRemainingColumn(), console=console, transient=True) as bar:
            task = bar.add_task("backtest", total=steps)
            result = run_backtest(settings, datasets, out, start_ts,
                                  progress=lambda n: bar.update(task, completed=n), meta=meta)
    else:
        result = run_backtest(settings, datasets, out, start_ts, meta=meta)
    print_summary(result)
    if with_report and result.run_dir is not None:
        from analyzers.report import write_report

        page = write_report([result.run_dir], title=name)
        echo_lines(["Report:", f"  {page}"])

