"""``python cli.py backtest``: the Strategy over Parquet bars, leaving a run folder.

``run_backtest`` is the reusable runner (tests, ML validation, benchmarks call it); the click
command parses flags into ``Settings``, shows progress and prints the summary.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import click
import numpy as np

from analyzers.audit import Audit
from analyzers.recorder import RunRecorder, run_stats, trades_frame, write_run_folder
from analyzers.runfolder import make_run_dir
from brokers.backtest import make_backtest_broker
from common.arrow import micros
from common.config import INTERVAL_SECONDS, Settings, load_settings_with_sources
from common.dates import UTC_DAYS, parse_when
from common.errors import ConfigError, DataError
from common.logs import setup_logging
from common.nytime import unique_inverse
from common.paths import BUNDLED_BARS
from feeds.btfeed import ArrayCerebro, make_feed
from feeds.sessions import codes_from_callable, session_codes, tradeable
from feeds.store import (
    BarArrays,
    arrays_from_frame,
    read_arrays,
    read_bars,
    resample_bars,
    resolve_datasets,
    typical_spacing,
)
from strategies.ratchet import RatchetStrategy
from strategies.rules import atr_wilder
from strategies.signals import Signal, make_signal

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_BARS = BUNDLED_BARS


@dataclass
class BacktestResult:
    """What a backtest produced. ``trades`` (a DataFrame) is built on first use, so a run
    that does not ask for it never imports pandas."""

    run_dir: Path | None
    stats: dict[str, Any]
    strategy: RatchetStrategy
    audit: Audit
    recorder: RunRecorder
    seconds: float
    bars: int
    _trades: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def trades(self) -> pd.DataFrame:
        """Closed trades (``analyzers.recorder.TRADE_COLUMNS``)."""
        if self._trades is None:
            self._trades = trades_frame(self.strategy.closed_trades)
        return self._trades


def native_interval(path: Path, arrays: BarArrays | None = None) -> str | None:
    """The bar interval of a dataset folder: its name (``.../1Min``) or the typical spacing."""
    for part in (path.name, path.parent.name):
        if part in INTERVAL_SECONDS:
            return part
    if arrays is not None and len(arrays) > 2:
        return interval_from_spacing(int(np.median(np.diff(arrays.ts[:5000])) // 1_000_000_000))
    return None


def interval_from_spacing(step: int | None) -> str | None:
    """Interval name for a typical spacing in seconds (daily bars: 23-25 h across DST)."""
    if step is None:
        return None
    if step >= 86_400 - 3600:
        return "1Day"
    for name, secs in INTERVAL_SECONDS.items():
        if secs == step:
            return name
    return None


def _folder_interval(data: Path) -> str | None:
    """Native interval of a data folder or file, from its name or its first dataset."""
    named = native_interval(data)
    if named is not None or not data.exists():
        return named
    try:
        first = next(iter(resolve_datasets(data, None).values()))
    except DataError:
        return None  # the real load reports the problem with its proper message
    return interval_from_spacing(typical_spacing(first))


def store_intervals(data: Path) -> list[str]:
    """Interval folders (``1Day``, ``1Min``...) directly under ``data`` when it is a store
    root (``data/bars``, what ``data import/info/download`` and ``alpaca-sim`` take)."""
    if not data.is_dir():
        return []
    return sorted(p.name for p in data.iterdir() if p.is_dir() and p.name in INTERVAL_SECONDS)


def pick_store_interval(data: Path, interval: str | None) -> Path:
    """The dataset folder to read for ``--data``: ``data`` itself, or for a store root its
    ``--interval`` folder, else its only interval folder; several and none asked for: a
    one-line error naming them."""
    present = store_intervals(data)
    if not present:
        return data
    if interval is not None:
        if interval in present:
            return data / interval
        finer = [i for i in present if INTERVAL_SECONDS[i] < INTERVAL_SECONDS[interval]
                 and INTERVAL_SECONDS[interval] % INTERVAL_SECONDS[i] == 0]
        if finer:  # resampled from the finest that divides it (5Min from 1Min)
            return data / max(finer, key=lambda i: INTERVAL_SECONDS[i])
        raise ConfigError(f"{data} is a bar store with {', '.join(present)} bars; none makes "
                          f"{interval} bars (use --interval {' or '.join(present)})")
    if len(present) == 1:
        return data / present[0]
    raise ConfigError(f"{data} is a bar store with several intervals ({', '.join(present)}): "
                      f"pick one with --interval, e.g. --interval {present[-1]}")


def default_data_dir(interval: str) -> Path:
    """Bundled bars at ``interval`` if present, else the bundled 1-minute bars."""
    exact = DEFAULT_BARS / interval
    return exact if exact.is_dir() else DEFAULT_BARS / "1Min"


def _parse_when(text: str | None, end: bool = False) -> datetime | None:
    """A ``--start``/``--end`` value as an aware UTC datetime (``common.dates.UTC_DAYS``:
    naive = UTC; a bare date as ``--end`` means the whole day)."""
    if text is None:
        return None
    return parse_when(text, UTC_DAYS, end=end)


def load_datasets(
    data: Path,
    symbols: tuple[str, ...] | None,
    interval: str,
    end: datetime | None = None,
    drop_bad: bool = False,
) -> dict[str, BarArrays]:
    """Read (and if needed resample) every symbol's bars up to ``end``."""
    datasets = resolve_datasets(data, symbols)
    out: dict[str, BarArrays] = {}
    for sym, path in datasets.items():
        arrays = read_arrays(path, end=end, drop_bad=drop_bad, symbol=sym)
        native = native_interval(Path(data) if Path(data).is_dir() else path, arrays)
        if native is not None and native != interval:
            if INTERVAL_SECONDS[native] > INTERVAL_SECONDS[interval]:
                raise ConfigError(
                    f"{path} holds {native} bars; cannot make {interval} bars from them "
                    f"(use --interval {native} or a finer data set)"
                )
            frame = resample_bars(read_bars(path, end=end, drop_bad=drop_bad), interval)
            arrays = arrays_from_frame(sym, frame)
        if len(arrays) == 0:
            raise DataError(f"{sym}: no bars in {path}" if end is None else
                            f"{sym}: no bars up to {end} in {path} (check --start/--end)")
        out[sym] = arrays
    return out


def prepare_lines(
    arrays: BarArrays, signal: Signal, atr_period: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``signal`` and ``atr`` lines of one symbol, in one vectorised pass each."""
    from_close = getattr(signal, "compute_close", None)
    if from_close is not None:  # the MA signal needs the closes only: no DataFrame
        sig = np.asarray(from_close(arrays.close)[0], dtype=np.float64)
    else:
        sig = signal.compute(arrays.to_frame())["signal"].to_numpy(np.float64)
    atr = atr_wilder(arrays.high, arrays.low, arrays.close, atr_period)
    return sig, atr


def _ns(when: datetime) -> int:
    """Epoch nanoseconds of a datetime or pandas Timestamp (naive = UTC)."""
    value = getattr(when, "value", None)  # pd.Timestamp: exact nanoseconds
    return int(value) if value is not None else micros(when) * 1000


def run_backtest(
    settings: Settings,
    datasets: dict[str, BarArrays],
    out: Path | None = Path("runs"),
    start: datetime | None = None,
    signal: Signal | None = None,
    progress: Callable[[int], None] | None = None,
    meta: dict[str, Any] | None = None,
    session: Callable[[Any], str] | None = None,
) -> BacktestResult:
    """Run the Strategy over ``datasets`` (bars up to the end date) and write a run folder.

    Bars before ``start`` only warm up the indicators; trading starts at ``start``.
    ``out=None`` writes nothing (tests, ML validation). Sessions come from the NYSE calendar
    (``feeds.sessions``): bars outside regular hours (outside the extended session with
    ``settings.extended_hours``) are dropped before the indicators, as in paper; ``session``
    (bar time -> ``regular``/``extended``/``closed``) replaces the calendar (tests).
    """
    t0 = time.perf_counter()
    signal = signal or make_signal(settings)
    cerebro = ArrayCerebro(stdstats=False, preload=True, runonce=True)
    cerebro.setbroker(make_backtest_broker(settings, session))
    start_ns = None if start is None else _ns(start)
    total_bars = 0
    for sym, arrays in datasets.items():
        codes = session_codes(arrays.ts, settings.bar_seconds, settings.extended_hours) \
            if session is None else codes_from_callable(arrays.ts, session)
        keep = tradeable(codes, settings.extended_hours)
        if not keep.all():
            # Outside the session: not traded, and not fed to the indicators (as in paper).
            arrays, codes = arrays.take(keep), codes[keep]
            if len(arrays) == 0:
                hours = "extended or regular" if settings.extended_hours else "regular"
                raise DataError(f"{sym}: no bars in {hours} trading hours (NYSE calendar); "
                                "check the data's timestamps (UTC bar starts) or "
                                "--extended-hours")
        sig, atr = prepare_lines(arrays, signal, settings.atr_period)
        if start_ns is not None:
            first = int(np.searchsorted(arrays.ts, start_ns))
            arrays, sig, atr = arrays.slice(first, len(arrays)), sig[first:], atr[first:]
            codes = codes[first:]
        if len(arrays) == 0:
            raise DataError(f"{sym}: no bars on or after {start:%Y-%m-%d %H:%M} UTC "
                            "(check --start/--end)")
        total_bars += len(arrays)
        cerebro.adddata(make_feed(arrays, sig, atr, codes))
    audit = Audit()
    cerebro.addstrategy(RatchetStrategy, settings=settings, audit=audit, session=session)
    cerebro.addanalyzer(RunRecorder, _name="recorder", progress=progress)
    # The bar loop allocates many short-lived objects and almost no reference cycles (a
    # 20 x 21 run leaves ~100 unreachable objects): the cyclic collector's passes over the
    # run's growing heap cost ~5-15% of its CPU. It runs again once the run is over.
    collect = gc.isenabled()
    gc.disable()
    try:
        strategy = cerebro.run()[0]
    finally:
        if collect:
            gc.enable()
    recorder: RunRecorder = strategy.analyzers.recorder
    elapsed = time.perf_counter() - t0
    open_positions = {
        d._name: float(strategy.getposition(d).size)
        for d in strategy.datas if strategy.getposition(d).size
    }
    run_dir = None
    meta = dict(meta or {})
    meta.update(mode="backtest", symbols=list(datasets), interval=settings.bar_interval,
                signal=repr(signal), start_value=settings.cash, open_positions=open_positions,
                seconds=round(elapsed, 3), symbol_bars=total_bars)
    if out is not None:
        run_dir = make_run_dir(Path(out), "backtest")
        stats = write_run_folder(run_dir, recorder, strategy.closed_trades, audit, settings, meta)
    else:
        stats = run_stats(recorder, strategy.closed_trades, settings.cash,
                          list(settings.symbols))
    return BacktestResult(run_dir, stats, strategy, audit, recorder, elapsed, total_bars)


# ------------------------------------------------------------------------------- the command


def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{x * 100:,.2f}%"


def _spct(x: Any) -> str:
    return "n/a" if x is None else f"{x * 100:+,.2f}%"


def _num(x: Any, fmt: str = "{:,.2f}") -> str:
    return "n/a" if x is None else fmt.format(x)


NY_TZ = "America/New_York"


def _ny(text: Any) -> str:
    """A stats.json time as New York wall time (the zone is named once, in the heading)."""
    if not text:
        return "?"
    ts = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts
    ts = ts.astimezone(ZoneInfo(NY_TZ))
    return ts.strftime("%Y-%m-%d" if (ts.hour, ts.minute) == (0, 0) else "%Y-%m-%d %H:%M")


def summary_lines(result: BacktestResult, width: int | None) -> list[str]:
    """The end-of-run summary as plain lines that fit ``width`` (None: no limit)."""
    from commands.output import fit, kv_lines, table_lines

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


def print_summary(result: BacktestResult, console: Any = None) -> None:
    """Print the end-of-run summary to stdout (fits the terminal; complete when piped)."""
    from commands.output import echo_lines, out_width

    echo_lines(summary_lines(result, out_width()))


STRATEGY_OPTIONS: list[tuple[str, Any, str]] = [
    # flag (= setting name, see common.config.PARAMS), click type, help
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


def plan_backtest(data: Path | None, config_file: Path | None, flags: dict[str, Any]
                  ) -> tuple[Settings, dict[str, str], Path, tuple[str, ...] | None]:
    """Settings, their sources, the data folder and the symbols asked for (None: every
    symbol in the folder), resolved as ``backtest`` does before it reads any bars."""
    base = Settings(symbols=("X",))  # symbols default to what the data folder holds
    settings, sources = settings_and_sources(config_file, flags, base=base)
    data_dir = Path(data) if data is not None else default_data_dir(settings.bar_interval)
    interval_asked = flags.get("interval") is not None or \
        settings.bar_interval != Settings.bar_interval
    data_dir = pick_store_interval(data_dir, settings.bar_interval if interval_asked else None)
    if flags.get("interval") is None and settings.bar_interval == Settings.bar_interval:
        # No interval asked for: trade the bars at the interval they are stored in.
        native = _folder_interval(data_dir)
        if native is not None and native != settings.bar_interval:
            settings = settings.replace(bar_interval=native)
            sources["interval"] = f"the bars in {data_dir}"
    explicit = flags.get("symbols") is not None or settings.symbols != ("X",)
    return settings, sources, data_dir, settings.symbols if explicit else None


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
    from commands.output import echo_lines, fit, out_width

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

