"""``python cli.py alpaca-sim``: run the loopback Alpaca-compatible server standalone.

Replays Parquet bars on 127.0.0.1 behind Alpaca's trading REST, market-data REST and both
WebSocket streams, so alpaca-py (and ratchet's paper mode) can rehearse a session offline.
Details: docs/alpaca-sim.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path

import click

from brokers.alpaca_sim.bars import BarBook
from brokers.alpaca_sim.market import MarketOptions
from brokers.alpaca_sim.server import ServerOptions, SimApp, SimStateError, parse_start
from ratchet.common.errors import ConfigError
from ratchet.common.logs import REDACTOR, setup_logging
from ratchet.common.paths import BUNDLED_BARS
from ratchet.common.perms import warn_if_readable_by_others

logger = logging.getLogger(__name__)

DEFAULT_DATA = BUNDLED_BARS
#: Test-only credentials: the server is local, but never reuse real Alpaca keys here.
TEST_KEY, TEST_SECRET = "test-key", "test-secret"
#: environment variable holding the server's secret
SECRET_ENV = "ALPACA_SIM_SECRET"  # noqa: S105 - the variable's name, not a secret


@click.command("alpaca-sim")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="Loopback port (0 picks a free one).")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=DEFAULT_DATA,
              show_default="data/bars",
              help="Bar-store root (<dir>/1Min/<SYMBOL>.parquet, optional <dir>/1Day).")
@click.option("--key", default=TEST_KEY, show_default=True,
              help="API key id clients must send (test-only default).")
@click.option("--secret-file", type=click.Path(path_type=Path), default=None,
              help=f"File holding the API secret clients must send (also ${SECRET_ENV}; "
                   "default: the test-only 'test-secret'). Never on the command line: argv "
                   "shows in ps.")
@click.option("--secret", "secret_argv", default=None, hidden=True)
@click.option("--speed", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Replay speed: N x real time; 0 = stepped via POST /_sim/advance.")
@click.option("--start", default=None,
              help="Replayed start time, RFC-3339 (default: regular open of the 3rd session "
                   "in the data).")
@click.option("--cash", type=click.FloatRange(min=0), default=100_000.0, show_default=True,
              help="Starting cash of the simulated cash account.")
@click.option("--symbols", default=None, help="Comma-separated subset of symbols to serve.")
@click.option("--participation", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Cap fills at this fraction of each bar's volume (default: no cap).")
@click.option("--skip-closed/--no-skip-closed", default=False, show_default=True,
              help="Jump over nights and weekends instead of waiting them out.")
@click.option("--state", "state_path", type=click.Path(path_type=Path), default=None,
              help="Keep account, orders, positions and the replay time in FILE (written "
                   "atomically on every change) and resume from it: a restarted server "
                   "remembers, like Alpaca.")
@click.option("--fill-bar", type=click.Choice(["current", "next"]), default="current",
              show_default=True,
              help="current: an order arriving during bar k may fill against bar k (the "
                   "backtest's assumption for an order sent at bar k-1's close); next: only "
                   "from the first bar that starts after it arrived.")
@click.option("--latency", "latency_ms", type=click.FloatRange(min=0, max=10_000), default=0.0,
              show_default=True,
              help="Simulated network round trip in ms: REST answers and stream messages "
                   "arrive as from a distant Alpaca (real: ~10-80 ms). 0 = loopback speed.")
@click.option("-v", "--verbose", count=True, help="-v info, -vv debug logging.")
def alpaca_sim(port: int, data_dir: Path, key: str, secret_file: Path | None,
               secret_argv: str | None, speed: float, start: str | None, cash: float,
               symbols: str | None, participation: float | None, skip_closed: bool,
               state_path: Path | None, fill_bar: str, latency_ms: float,
               verbose: int) -> None:
    """Run the loopback Alpaca-compatible server (trading + market data, REST + streams)."""
    setup_logging(verbose)
    secret = _secret(secret_file, secret_argv)
    REDACTOR.add(secret)
    wanted = [s.strip() for s in symbols.split(",") if s.strip()] if symbols else None
    book = BarBook.load(data_dir, wanted)
    try:
        start_ns = parse_start(start, book)
    except ValueError:
        raise ConfigError(f"--start {start!r} is not a time: use RFC-3339, e.g. "
                          "2025-10-03T13:30:00Z") from None
    try:
        app = SimApp(book, start_ns, speed, cash,
                     MarketOptions(volume_participation=participation,
                                   fill_current_bar=fill_bar == "current"),
                     ServerOptions(key=key, secret=secret, skip_closed=skip_closed,
                                   state_path=state_path, latency_ms=latency_ms))
    except SimStateError as exc:
        raise ConfigError(f"{exc}: move it aside (or pass another --state) to start a new "
                          "account") from None
    asyncio.run(_serve(app, port, data_dir))


def _secret(secret_file: Path | None, secret_argv: str | None) -> str:
    """The server's secret: ``--secret-file``, else ``$ALPACA_SIM_SECRET``, else the test one.
    A secret on the command line is refused (every user of the machine sees argv in ps)."""
    if secret_argv is not None:
        raise ConfigError(f"--secret on the command line shows in ps: put it in "
                          f"${SECRET_ENV} or a file named by --secret-file")
    if secret_file is not None:
        try:
            value = secret_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"--secret-file {secret_file}: {exc.strerror}") from None
        if not value:
            raise ConfigError(f"--secret-file {secret_file} is empty: write the secret in it")
        warn_if_readable_by_others(secret_file, "--secret-file")
        return value
    return os.environ.get(SECRET_ENV) or TEST_SECRET


async def _serve(app: SimApp, port: int, data_dir: Path) -> None:
    try:
        bound = await app.start("127.0.0.1", port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on 127.0.0.1:{port} ({exc.strerror}): pass a free "
                          "--port (or 0)") from None
    _banner(app, bound, data_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await app.stop()
        click.echo("alpaca-sim stopped")


def _ny(t_ns: int) -> str:
    """A replay time (ns UTC) as New York wall time, the zone the CLI shows."""
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    when = datetime.fromtimestamp(t_ns / 1e9, UTC).astimezone(ZoneInfo("America/New_York"))
    return when.strftime("%Y-%m-%d %H:%M")


def _banner(app: SimApp, port: int, data_dir: Path) -> None:
    base = f"http://127.0.0.1:{port}"
    mode = "stepped by POST /_sim/advance" if app.clock.stepped else f"at {app.clock.speed:g}x"
    secret = app.options.secret
    shown = secret if secret == TEST_SECRET else "<your secret>"
    from ratchet.commands.output import echo_lines, fit, out_width

    width = out_width()
    # short lines: an 80-column terminal shows each fact (and each URL) whole
    echo_lines([
        *fit(f"alpaca-sim: {len(app.book.symbols)} symbols "
             f"({', '.join(app.book.symbols[:8])}{'...' if len(app.book.symbols) > 8 else ''})"
             f" from {app.book.source}", width, "  "),
        f"  replay from {_ny(app.market.now_ns)} New York time, {mode}",
        *([f"  state: {app.options.state_path} ({len(app.market.orders)} orders, "
           f"{len(app.market.positions)} positions kept)"]
          if app.options.state_path is not None else []),
        f"  trading + market-data REST: {base}",
        f"  market-data stream:         ws://127.0.0.1:{port}/v2/iex",
        f"  trading stream:             ws://127.0.0.1:{port}/stream",
        f"  key id: {app.key} (test-only credentials: never reuse real Alpaca keys)",
        *fit(f"how-to: alpaca-py clients take url_override={base!r} (REST) and the ws:// "
             "URLs above; env-driven clients:", width, "  "),
        f"  APCA_API_KEY_ID={app.key}",
        f"  APCA_API_SECRET_KEY={shown}",
        f"  APCA_API_BASE_URL={base}",
        "Ctrl-C stops it.",
    ])
    logger.debug("serving %s", data_dir)
