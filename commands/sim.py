"""``python cli.py alpaca-sim``: run the loopback Alpaca-compatible server standalone.

Replays Parquet bars on 127.0.0.1 behind Alpaca's trading REST, market-data REST and both
WebSocket streams, so alpaca-py (and ratchet's paper mode) can rehearse a session offline.
Details: docs/alpaca-sim.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

import click

from brokers.alpaca_sim.bars import BarBook
from brokers.alpaca_sim.market import MarketOptions
from brokers.alpaca_sim.server import ServerOptions, SimApp, parse_start
from common.errors import ConfigError
from common.logs import REDACTOR, setup_logging
from common.paths import BUNDLED_BARS

logger = logging.getLogger(__name__)

DEFAULT_DATA = BUNDLED_BARS
#: Test-only credentials: the server is local, but never reuse real Alpaca keys here.
TEST_KEY, TEST_SECRET = "test-key", "test-secret"


@click.command("alpaca-sim")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="Loopback port (0 picks a free one).")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=DEFAULT_DATA,
              show_default="data/bars",
              help="Bar-store root (<dir>/1Min/<SYMBOL>.parquet, optional <dir>/1Day).")
@click.option("--key", default=TEST_KEY, show_default=True,
              help="API key id clients must send (test-only default).")
@click.option("--secret", default=TEST_SECRET, show_default=True,
              help="API secret clients must send (test-only default).")
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
@click.option("-v", "--verbose", count=True, help="-v info, -vv debug logging.")
def alpaca_sim(port: int, data_dir: Path, key: str, secret: str, speed: float,
               start: str | None, cash: float, symbols: str | None,
               participation: float | None, skip_closed: bool, verbose: int) -> None:
    """Run the loopback Alpaca-compatible server (trading + market data, REST + streams)."""
    setup_logging(verbose)
    REDACTOR.add(secret)
    wanted = [s.strip() for s in symbols.split(",") if s.strip()] if symbols else None
    book = BarBook.load(data_dir, wanted)
    try:
        start_ns = parse_start(start, book)
    except ValueError:
        raise ConfigError(f"--start {start!r} is not a time: use RFC-3339, e.g. "
                          "2025-10-03T13:30:00Z") from None
    app = SimApp(book, start_ns, speed, cash,
                 MarketOptions(volume_participation=participation),
                 ServerOptions(key=key, secret=secret, skip_closed=skip_closed))
    asyncio.run(_serve(app, port, data_dir))


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
    mode = "stepped (POST /_sim/advance)" if app.clock.stepped else f"{app.clock.speed:g}x"
    secret = app.options.secret
    shown = secret if secret == TEST_SECRET else "<your --secret>"
    from commands.output import echo_lines, fit, out_width

    width = out_width()
    # short lines: an 80-column terminal shows each fact (and each URL) whole
    echo_lines([
        *fit(f"alpaca-sim: {len(app.book.symbols)} symbols "
             f"({', '.join(app.book.symbols[:8])}{'...' if len(app.book.symbols) > 8 else ''})"
             f" from {app.book.source}", width, "  "),
        f"  replay from {_ny(app.market.created_at)} New York time at {mode}",
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
