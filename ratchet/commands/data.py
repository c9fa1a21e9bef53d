"""``python cli.py data``: download bars from Alpaca, import CSV files, inspect the store.

Thin wiring: the work is in ``feeds/download.py`` (with ``feeds/download_plan.py``,
``feeds/parts.py`` and the Alpaca transport of ``brokers/alpaca``), ``feeds/importers.py`` and
``feeds/coverage.py``; this module parses flags, shows progress and prints results.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click
import pandas as pd
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ratchet.common.dates import NY_DAYS, parse_when
from ratchet.common.errors import ConfigError, DataError
from ratchet.common.logs import setup_logging
from ratchet.common.paths import BUNDLED_BARS

if TYPE_CHECKING:
    from feeds.download_plan import Timeframe

logger = logging.getLogger(__name__)

DEFAULT_BARS = BUNDLED_BARS
DATA_URL_ENV = "APCA_API_DATA_URL"
FEEDS: tuple[str, ...] = ("iex", "sip")
ADJUSTMENTS: tuple[str, ...] = ("raw", "split", "dividend", "all")


# --------------------------------------------------------------------------- flags


def parse_timeframe(text: str) -> Timeframe:
    """The ``Timeframe`` for ``--timeframe``; an unknown name is a ``ConfigError``."""
    from feeds.download_plan import TIMEFRAMES

    for name, tf in TIMEFRAMES.items():
        if text.strip().lower() == name.lower():
            return tf
    raise ConfigError(
        f"--timeframe {text!r} is not supported: use one of {', '.join(TIMEFRAMES)}"
    )


def parse_symbols(values: Sequence[str]) -> list[str]:
    """Upper-cased, de-duplicated symbols from ``--symbols A,B --symbols C``."""
    from feeds.store import is_valid_symbol

    out: list[str] = []
    for value in values:
        for raw in value.split(","):
            sym = raw.strip().upper()
            if not sym:
                continue
            if not is_valid_symbol(sym):
                raise ConfigError(
                    f"--symbols: {raw.strip()!r} is not a ticker symbol (letters, digits, "
                    "'.' or '-', e.g. AAPL or BRK.B)"
                )
            if sym not in out:
                out.append(sym)
    if not out:
        raise ConfigError("--symbols is empty: name at least one symbol, e.g. --symbols AAPL,MSFT")
    return out


def parse_range(start: str, end: str | None, now: pd.Timestamp) -> tuple[pd.Timestamp,
                                                                          pd.Timestamp]:
    """Validated download range [start, end) in UTC (``ratchet.common.dates.NY_DAYS``: New York
    dates, ``--end`` inclusive of its day); ``end`` defaults to (and is clipped at) ``now``."""
    t0 = pd.Timestamp(parse_when(start, NY_DAYS, option="--start", now=now))
    t1 = pd.Timestamp(parse_when(end, NY_DAYS, end=True, option="--end", now=now)) if end \
        else now
    if t0 >= now:
        raise ConfigError(f"--start {start} is in the future: Alpaca only has past bars")
    if t0 >= t1:
        raise ConfigError(
            f"--start {start} is not before --end {end or 'now'}: give a start earlier than "
            "the end (dates are inclusive New York dates)"
        )
    if t1 > now:
        logger.info("--end %s is in the future; downloading up to now", end)
        t1 = now
    return t0, t1


def parse_choice(value: str, option: str, choices: Sequence[str]) -> str:
    """``value`` lower-cased if it is one of ``choices``, else a ``ConfigError``."""
    v = value.strip().lower()
    if v not in choices:
        raise ConfigError(f"{option} {value!r} is not valid: use one of {', '.join(choices)}")
    return v


def resolve_data_url(option: str | None, environ: Mapping[str, str]) -> str | None:
    """Market-data base URL from ``--data-url`` or ``APCA_API_DATA_URL`` (None: Alpaca's)."""
    url = option or environ.get(DATA_URL_ENV) or None
    if url is None:
        return None
    url = url.strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", url):
        raise ConfigError(
            f"--data-url {url!r} is not an http(s) URL: use e.g. https://data.alpaca.markets"
        )
    # alpaca-py appends /v2/... itself; a pasted ".../v2" would double it.
    return url.removesuffix("/v2")


def _fmt(ts: pd.Timestamp | None, daily: bool = False) -> str:
    """A bar time as New York wall time (the one zone the CLI shows)."""
    if ts is None:
        return "-"
    if daily:
        return ts.tz_convert("America/New_York").strftime("%Y-%m-%d")
    return ts.tz_convert("America/New_York").strftime("%Y-%m-%d %H:%M")


@contextmanager
def _progress(quiet: bool, label: str) -> Iterator[Progress]:
    """A rich progress bar on stderr, silent when not a terminal or under --quiet."""
    err = Console(stderr=True)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[bars]:>10,} bars"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=quiet or not err.is_terminal,
        transient=False,
    )
    with progress:
        yield progress


@click.group(name="data")
def data() -> None:
    """Download bars from Alpaca, import CSV files, and inspect the Parquet bar store."""


# --------------------------------------------------------------------------- download


@data.command("download")
@click.option("--symbols", "-s", multiple=True, required=True,
              help="Symbols, comma separated or repeated (AAPL,MSFT).")
@click.option("--start", required=True,
              help="First day (YYYY-MM-DD, New York) or an ISO time (naive = New York).")
@click.option("--end", default=None, help="Last day, inclusive (default: now).")
@click.option("--timeframe", "-t", default="1Min", show_default=True,
              help="Bar interval: 1Min, 5Min, 15Min, 1Hour or 1Day.")
@click.option("--feed", default="iex", show_default=True, help="Alpaca data feed: iex or sip.")
@click.option("--adjustment", default="raw", show_default=True,
              help="Corporate-action adjustment: raw, split, dividend or all.")
@click.option("--out", "out", type=click.Path(path_type=Path), default=DEFAULT_BARS,
              show_default="data/bars", help="Bar store root (<out>/<timeframe>/<SYMBOL>).")
@click.option("--keys-file", type=click.Path(path_type=Path), default=None,
              help="File with the API key id and secret (two lines, KEY=VALUE lines, TOML or "
                   "JSON; the same file as paper --keys-file). Default: APCA_API_KEY_ID / "
                   "APCA_API_SECRET_KEY from the environment.")
@click.option("--data-url", default=None,
              help="Market-data base URL (default: env APCA_API_DATA_URL, else Alpaca's).")
@click.option("--full", is_flag=True, help="Fetch the whole range again, ignoring what is stored.")
@click.option("--window-days", type=click.IntRange(1, 36500), default=None,
              help="Days per request window (default depends on --timeframe).")
@click.option("--rate-limit", type=click.FloatRange(min=0.1), default=200.0, show_default=True,
              help="Requests per minute (Alpaca's free plan: 200).")
@click.option("--retries", type=click.IntRange(0, 20), default=4, show_default=True,
              help="Retries of a failed request (429, 5xx, network) before giving up.")
@click.option("--backoff", type=click.FloatRange(min=0.0), default=1.0, show_default=True,
              help="First back-off pause in seconds after a failure (doubles each time).")
@click.option("--max-wait", type=click.FloatRange(min=0.0), default=65.0, show_default=True,
              help="Longest single pause for a server rate limit (X-RateLimit-Reset).")
@click.option("--drop-bad-rows", is_flag=True, help="Drop invalid bars (with a warning).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--verbose", "-v", count=True, help="More logging (-v info, -vv debug).")
def download_cmd(symbols: Sequence[str], start: str, end: str | None, timeframe: str, feed: str,
                 adjustment: str, out: Path, keys_file: Path | None, data_url: str | None,
                 full: bool, window_days: int | None, rate_limit: float, retries: int,
                 backoff: float, max_wait: float, drop_bad_rows: bool, quiet: bool,
                 verbose: int) -> None:
    """Download bars from Alpaca into the Parquet store; only what is missing is fetched.

    A re-run after an interruption resumes where it stopped.
    """
    from brokers.alpaca.credentials import load_credentials
    from brokers.alpaca.throttle import RateLimiter
    from feeds import download as dl

    setup_logging(verbose)
    out = _check_root(out)
    now = pd.Timestamp.now(tz="UTC")
    syms = parse_symbols(symbols)
    tf = parse_timeframe(timeframe)
    feed = parse_choice(feed, "--feed", FEEDS)
    adjustment = parse_choice(adjustment, "--adjustment", ADJUSTMENTS)
    t0, t1 = parse_range(start, end, now)
    credentials = load_credentials(keys_file, os.environ)
    url = resolve_data_url(data_url, os.environ)
    limiter = RateLimiter(per_minute=rate_limit, backoff=backoff, max_wait=max_wait)
    client = dl.make_client(credentials, url, limiter)
    done = {"chunks": 0, "total": 0}

    with _progress(quiet, "download") as progress:
        task = progress.add_task("planning", total=None, bars=0)

        def on_plan(plan: dl.DownloadPlan) -> None:
            done["total"] = len(plan.chunks)
            progress.update(task, total=plan.total, description=f"{tf.name} {feed}")

        def on_chunk(chunk: dl.Chunk, bars: int) -> None:
            done["chunks"] += 1
            bars_so_far = progress.tasks[0].fields["bars"] + bars
            more = f"+{len(chunk.symbols) - 1}" if len(chunk.symbols) > 1 else ""
            progress.update(task, advance=len(chunk.symbols), bars=bars_so_far,
                            description=f"{chunk.symbols[0]}{more} {chunk.start:%Y-%m-%d}")

        try:
            result = dl.download(
                client, out, syms, tf, t0, t1, feed=feed, adjustment=adjustment, full=full,
                window_days=window_days, limiter=limiter, retries=retries,
                drop_bad=drop_bad_rows, now=now, on_plan=on_plan, on_chunk=on_chunk,
            )
        except dl.DownloadFailed as exc:
            raise dl.DownloadFailed(
                f"{exc} [{done['chunks']} of {done['total']} windows saved]"
            ) from None

    from ratchet.commands.output import echo_lines, fit, out_width

    width = out_width()
    daily = tf.name == "1Day"
    lines: list[str] = []
    for sym, r in result.symbols.items():
        if sym in result.unknown:
            continue
        if r.bars:
            lines += fit(f"{sym} {tf.name}: +{r.bars} bars ({_fmt(r.first, daily)} .. "
                         f"{_fmt(r.last, daily)}{'' if daily else ' New York'}) in "
                         f"{r.windows} window(s)", width, "  ")
        elif r.windows:
            lines.append(f"{sym} {tf.name}: no new bars in {r.windows} window(s)")
        else:
            lines.append(f"{sym} {tf.name}: up to date")
    lines += fit(
        f"{result.bars} bars in {result.requests} request(s)"
        + (f", {result.throttled} rate-limited, waited {result.waited:.1f}s"
           if result.throttled or result.waited >= 1 else "")
        + f" -> {Path(out) / tf.name}", width, "  ")
    echo_lines(lines)
    if result.unknown:
        names = ", ".join(sorted(result.unknown))
        detail = "; ".join(f"{s}: {m}" for s, m in sorted(result.unknown.items()) if m != "no bars")
        raise dl.UnknownSymbolError(
            f"unknown symbol {names}: Alpaca has no {feed} {tf.name} bars for it from "
            f"{start} to {end or 'now'}{f' ({detail})' if detail else ''}; check the "
            "spelling or the dates (the other symbols were saved)"
        )


# --------------------------------------------------------------------------- import


def _check_root(out: Path) -> Path:
    """``--out`` is the store root; an interval folder there would nest ``1Min/1Min``."""
    from feeds.coverage import is_interval_name

    if is_interval_name(Path(out).name):
        raise ConfigError(f"--out {out} is an interval folder: pass the store root "
                          f"({Path(out).parent}); bars go to <root>/<timeframe>/<SYMBOL>")
    return Path(out)


def _parse_map(values: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        dest, sep, src = v.partition("=")
        if not sep or not dest.strip() or not src.strip():
            raise ConfigError(f"--map {v!r}: use DEST=SOURCE, e.g. --map close=Last")
        out[dest.strip().lower()] = src.strip()
    return out


@data.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--symbol", default=None, help="Symbol (default: guessed from the file name).")
@click.option("--timeframe", "-t", default=None,
              help="Bar interval (default: inferred; a coarser one resamples).")
@click.option("--tz", default=None,
              help="Zone of timestamps without an offset (default: America/New_York for daily "
                   "bars, UTC otherwise).")
@click.option("--dtformat", default=None, help="strptime format of the date/time column.")
@click.option("--tmformat", default=None, help="strptime format of a separate time column.")
@click.option("--columns", default=None,
              help="Column names in file order (for files without a usable header), e.g. "
                   "timestamp,open,high,low,close,volume.")
@click.option("--map", "mapping", multiple=True,
              help="Map a column: DEST=SOURCE (DEST: timestamp, date, time, open, high, low, "
                   "close, adj_close, volume, trade_count, vwap). Repeatable.")
@click.option("--sep", default=None, help="Field separator (default: sniffed).")
@click.option("--stamp", type=click.Choice(["start", "end"]), default=None,
              help="Whether the file labels a bar by its start or its end (NinjaTrader: end) "
                   "[start, with a note].")
@click.option("--adjusted", is_flag=True, help="Adjust OHLC by Adj Close / Close (Yahoo).")
@click.option("--drop-bad-rows", is_flag=True, help="Drop invalid rows (with a warning).")
@click.option("--out", "out", type=click.Path(path_type=Path), default=DEFAULT_BARS,
              show_default="data/bars", help="Bar store root (<out>/<timeframe>/<SYMBOL>).")
@click.option("--replace", is_flag=True, help="Overwrite an existing dataset.")
@click.option("--merge", is_flag=True,
              help="Add to an existing dataset as a new part (its bars win on equal times).")
@click.option("--verbose", "-v", count=True, help="More logging (-v info, -vv debug).")
def import_cmd(files: Sequence[Path], symbol: str | None, timeframe: str | None, tz: str | None,
               dtformat: str | None, tmformat: str | None, columns: str | None,
               mapping: Sequence[str], sep: str | None, stamp: str | None, adjusted: bool,
               drop_bad_rows: bool, out: Path, replace: bool, merge: bool, verbose: int) -> None:
    """Import CSV bar files (Yahoo, Backtrader generic CSV, Alpaca dumps) into the store."""
    from feeds.importers import ImportOptions, check_tz, import_file
    from ratchet.commands.output import echo_lines, fit, out_width

    setup_logging(verbose)
    out = _check_root(out)
    if replace and merge:
        raise ConfigError("--replace and --merge exclude each other: pick one")
    if symbol and len(files) > 1:
        raise ConfigError("--symbol names one file's symbol: import one file at a time with it")
    options = ImportOptions(
        symbol=symbol,
        timeframe=parse_timeframe(timeframe).name if timeframe else None,
        tz=check_tz(tz) if tz else None,
        dtformat=dtformat, tmformat=tmformat, adjusted=adjusted, drop_bad=drop_bad_rows,
        columns=tuple(c.strip().lower() for c in columns.split(",")) if columns else None,
        mapping=_parse_map(mapping),
        sep=sep.encode().decode("unicode_escape") if sep else None,
        stamp=stamp,
    )
    failures: list[DataError] = []
    for f in files:
        try:
            r = import_file(f, out, options, replace=replace, merge=merge)
        except DataError as exc:
            failures.append(exc)
            if len(files) > 1:
                click.echo(f"error: {exc}", err=True)
            continue
        daily = r.timeframe == "1Day"
        dropped = f", {r.dropped} bad rows dropped" if r.dropped else ""
        width = out_width()
        echo_lines([*fit(f"{r.source} -> {r.target}", width, "  "),
                    *fit(f"  {r.symbol} {r.timeframe} ({r.layout}), {r.bars} bars "
                         f"{_fmt(r.first, daily)} .. {_fmt(r.last, daily)}"
                         f"{'' if daily else ' New York'}", width, "    "),
                    *fit(f"  naive times read as {r.tz}{dropped}", width, "    ")])
        for note in r.notes:
            for line in fit(f"note: {r.symbol}: {note}", out_width(sys.stderr), "  "):
                click.echo(line, err=True)
    if failures:
        if len(files) == 1:
            raise failures[0]
        raise DataError(f"{len(failures)} of {len(files)} files were not imported (see above); "
                        "fix them and import them again")


# --------------------------------------------------------------------------- info


def _gap_text(info: object) -> str:
    gaps = getattr(info, "largest_gaps", [])
    if not gaps:
        return "-"
    g = gaps[0]
    return f"{g.bars} @ {g.start.tz_convert('America/New_York'):%Y-%m-%d %H:%M}"


@data.command("info")
@click.argument("directory", required=False, type=click.Path(path_type=Path), default=None)
@click.option("--symbols", "-s", multiple=True, help="Only these symbols (comma separated).")
@click.option("--timeframe", "-t", multiple=True, help="Only these intervals.")
@click.option("--gaps", "top", type=click.IntRange(0, 1000), default=3, show_default=True,
              help="How many of the largest gaps to list per dataset.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--verbose", "-v", count=True, help="More logging (-v info, -vv debug).")
def info_cmd(directory: Path | None, symbols: Sequence[str], timeframe: Sequence[str], top: int,
             as_json: bool, verbose: int) -> None:
    """Symbols, intervals, ranges, bar counts and gaps beyond normal market closures.

    Expected bars come from the NYSE calendar (exchange_calendars XNYS): regular sessions,
    holidays and early closes. DIRECTORY defaults to data/bars.
    """
    from feeds.coverage import scan, to_json

    setup_logging(verbose)
    root = directory if directory is not None else DEFAULT_BARS
    syms = [s.strip().upper() for v in symbols for s in v.split(",") if s.strip()] or None
    infos = scan(root, syms, list(timeframe) or None, top=top)
    if not infos:
        raise DataError(f"no datasets in {root} match the filters: check --symbols/--timeframe")
    if as_json:
        click.echo(to_json(infos))
    else:
        from ratchet.commands.output import echo_lines, fit, out_width, table_lines

        headers = ["symbol", "interval", "first", "last", "bars", "expected", "missing",
                   "empty sessions", "gaps", "largest gap", "outside RTH", "feed", "parts"]
        rows = []
        for i in infos:
            daily = i.timeframe == "1Day"
            if i.error:
                rows.append([i.symbol, i.timeframe, "error", i.error, *[""] * 9])
                continue
            rows.append([
                i.symbol, i.timeframe, _fmt(i.first, daily), _fmt(i.last, daily), f"{i.bars:,}",
                "-" if i.expected is None else f"{i.expected:,}",
                "-" if i.missing is None else f"{i.missing:,}",
                "-" if i.missing_sessions is None else str(i.missing_sessions),
                "-" if i.gap_count is None else str(i.gap_count), _gap_text(i),
                "-" if i.outside is None else f"{i.outside:,}", i.feed or "-", str(i.parts),
            ])
        width = out_width()
        lines = fit(f"Bar store {root} (times are New York time; largest gap: bars @ start)",
                    width, "  ")
        lines += table_lines(headers, rows, width, right=(4, 5, 6, 7, 8, 10, 12), key_cols=2)
        if top:
            for i in infos:
                if len(i.largest_gaps) > 1:
                    listed = "; ".join(
                        f"{g.start.tz_convert('America/New_York'):%Y-%m-%d %H:%M} "
                        f"({g.bars} bars)" for g in i.largest_gaps)
                    lines += fit(f"{i.symbol} {i.timeframe} largest gaps: {listed}", width,
                                 "  ")
        echo_lines(lines)
    broken = [i for i in infos if i.error]
    if broken:
        print_error = broken[0].error or ""
        raise DataError(f"{len(broken)} dataset(s) unreadable, first: {print_error}")


# The command names users type are "download", "import" and "info"; the functions carry a
# suffix only because "import" is a keyword.
__all__ = ["data"]
