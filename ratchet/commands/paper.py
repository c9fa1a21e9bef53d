"""``python cli.py paper``: the backtest's Strategy, unchanged, on Alpaca paper trading.

Without ``--live`` it is a DRY RUN: live bars, every decision logged and audited, orders
filled by a local shadow book with the backtest's fill rules, nothing sent to Alpaca. With
``--live`` it sends orders to the Alpaca PAPER account after a typed ``YES`` (or
``--confirm-live`` for non-interactive use). A real-money endpoint is refused unless
``--i-understand-real-money`` names it explicitly. ``--sim`` rehearses offline against the
loopback Alpaca (``brokers.alpaca_sim``) started in this process.

This module is the command only: it parses flags into a ``PaperRun`` (``Settings`` +
``AlpacaConfig``, each defaults < ``--config`` < environment < flags), asks for the
confirmation, prints the banner, then calls ``ratchet.engine.paper.run_paper`` with the view
(``ratchet.commands.paper_view``) and prints the summary.

``--sim`` rehearsals use their own directories (``data/realtime-sim/<run>``,
``logs/realtime-sim/<run>``): each rehearsal is a new simulated account.
"""

from __future__ import annotations

import os
import secrets
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from brokers.alpaca.clock import NEW_YORK
from brokers.alpaca.credentials import load_credentials, mask
from ratchet.commands.backtest import settings_from_flags, strategy_options
from ratchet.commands.paper_view import Dashboard, StepPrinter
from ratchet.common.alpaca_config import FEEDS, PAPER_URL, load_alpaca_config
from ratchet.common.config import DEFAULT_SYMBOLS, INTERVAL_SECONDS
from ratchet.common.errors import ConfigError, UnknownStateError, UserError
from ratchet.common.logs import setup_logging
from ratchet.common.paths import BUNDLED_BARS
from ratchet.engine.endpoints import check_endpoint, is_real_money
from ratchet.engine.paper import run_paper
from ratchet.engine.paper_run import (
    DEFAULT_LOG_DIR,
    DEFAULT_STATE_DIR,
    PaperResult,
    PaperRun,
    check_paper_settings,
)
from ratchet.engine.rehearsal import start_rehearsal

if TYPE_CHECKING:
    from rich.console import Console

    from alerts.dispatch import AlertDispatcher

DEFAULT_SIM_DATA = BUNDLED_BARS
SIM_STATE_DIR = Path("data/realtime-sim")
SIM_LOG_DIR = Path("logs/realtime-sim")


class NotConfirmedError(UserError):
    """``--live`` without the typed YES."""


def _confirm_live(base_url: str, confirmed: bool) -> None:
    if confirmed:
        return
    if not sys.stdin.isatty():
        raise NotConfirmedError(
            "--live sends orders: type YES at the prompt, or pass --confirm-live when running "
            "non-interactively")
    money = "REAL MONEY" if is_real_money(base_url) else "the Alpaca PAPER account"
    answer = click.prompt(f"Orders will be sent to {money} at {base_url}. Type YES to go on",
                          default="", show_default=False)
    if answer.strip() != "YES":
        raise NotConfirmedError("not confirmed (you must type YES): nothing was sent")


@click.command("paper")
@strategy_options
@click.option("--live", is_flag=True,
              help="Send orders (to the Alpaca PAPER account). Without it: a DRY RUN.")
@click.option("--confirm-live", is_flag=True,
              help="Non-interactive confirmation for --live (instead of typing YES).")
@click.option("--once", is_flag=True,
              help="Reconcile, decide on the latest closed bar, save, exit.")
@click.option("--dashboard", is_flag=True, help="Live console view.")
@click.option("--verbose", "-v", count=True, help="-v info, -vv debug (the log file is always "
                                                  "debug).")
@click.option("--keys-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File with key_id / secret_key [APCA_API_KEY_ID / APCA_API_SECRET_KEY].")
@click.option("--base-url", default=None,
              help=f"Trading REST root [{PAPER_URL}]; a loopback server: http://127.0.0.1:PORT. "
                   "These URLs, --feed, --warmup-days, --stream-silence, --clock-poll and "
                   "--alert-stream-down may also be set in --config's [alpaca] table or as "
                   "RATCHET_ALPACA_<NAME>.")
@click.option("--data-url", default=None, help="Market-data REST root [from --base-url].")
@click.option("--data-stream-url", default=None, help="Market-data WebSocket URL.")
@click.option("--trading-stream-url", default=None, help="trade_updates WebSocket URL.")
@click.option("--feed", type=click.Choice(list(FEEDS)), default=None,
              help="Market-data feed (recorded with the bars) [iex].")
@click.option("--i-understand-real-money", "real_money", is_flag=True,
              help="Allow a real-money endpoint (https://api.alpaca.markets).")
@click.option("--sim", is_flag=True,
              help="Offline rehearsal: start the loopback Alpaca on bundled bars in-process.")
@click.option("--sim-data", type=click.Path(path_type=Path), default=None,
              help="Bars for --sim [data/bars].")
@click.option("--sim-speed", type=float, default=0.0, show_default=True,
              help="--sim replay speed; 0 = lockstep, one bar as soon as the last is done.")
@click.option("--sim-start", default=None, help="--sim replay start (ISO time).")
@click.option("--sim-minutes", type=float, default=None,
              help="--sim: stop after this many replayed minutes [to the session close].")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="State file, journal and recorded bars [data/realtime; with --sim a new "
                   "data/realtime-sim/<run> per rehearsal]. Tied to one account.")
@click.option("--log-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Audit trail and debug log [logs/realtime; with --sim "
                   "logs/realtime-sim/<run>].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"),
              show_default=True, help="Folder the run folder is written under.")
@click.option("--warmup-days", type=float, default=None,
              help="Calendar days of REST history for the indicator warm-up [5].")
@click.option("--max-steps", type=int, default=None, help="Stop after N bar steps.")
@click.option("--stream-silence", type=float, default=None,
              help="Reconnect the data stream after this many silent seconds while the "
                   "market is open [2 bars, at least 120].")
@click.option("--clock-poll", type=float, default=None,
              help="Seconds between market-clock reads [30; 5 with --sim].")
@click.option("--rebuild-journal", is_flag=True,
              help="The order journal is missing, empty or corrupt: move it aside and rebuild "
                   "it from Alpaca's open orders (without this flag such a start is refused "
                   "while the state file lists orders).")
@click.option("--alert", "alert_urls", multiple=True, metavar="URL",
              help="Send alerts to this Apprise URL (repeatable; also RATCHET_ALERTS or "
                   "alerts = [...] in --config; visible in the process list: prefer those).")
@click.option("--alert-level", type=click.Choice(["fills", "problems", "all"]), default=None,
              help="problems: problems only; fills: fills and problems; all: also the daily "
                   "summary and session start [all].")
@click.option("--alert-stream-down", type=float, default=None,
              help="Alert when a stream has been down this many seconds [60].")
def paper(live: bool, confirm_live: bool, once: bool, dashboard: bool, verbose: int,
          keys_file: Path | None, base_url: str | None, data_url: str | None,
          data_stream_url: str | None, trading_stream_url: str | None, feed: str | None,
          real_money: bool, sim: bool, sim_data: Path | None, sim_speed: float,
          sim_start: str | None, sim_minutes: float | None, state_dir: Path | None,
          log_dir: Path | None,
          out: Path, warmup_days: float | None, max_steps: int | None,
          stream_silence: float | None, clock_poll: float | None, rebuild_journal: bool,
          config_file: Path | None, alert_urls: tuple[str, ...], alert_level: str | None,
          alert_stream_down: float | None, **flags: Any) -> None:
    """Run the strategy on Alpaca: a DRY RUN unless --live."""
    from alerts.config import alert_settings
    from ratchet.commands.output import console as make_console
    from ratchet.commands.output import echo_lines as echo
    from ratchet.commands.output import fit, out_width

    os.umask(0o077)  # state, journal, logs, audit, bars and run folders: this user only

    console = make_console()
    width = out_width()
    if sim:  # a rehearsal is a new simulated account: its files never mix with real ones
        run_name = f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
        state_dir = state_dir or SIM_STATE_DIR / run_name
        log_dir = log_dir or SIM_LOG_DIR / run_name
    state_dir, log_dir = state_dir or DEFAULT_STATE_DIR, log_dir or DEFAULT_LOG_DIR
    log_file = Path(log_dir) / f"trading_{datetime.now(UTC):%Y-%m-%d}.log"
    setup_logging(verbose, log_file)
    settings = settings_from_flags(config_file, flags)
    check_paper_settings(settings)  # before a --sim server starts or a banner prints
    cfg, sources = load_alpaca_config(config_file, {
        "base_url": base_url, "data_url": data_url, "data_stream_url": data_stream_url,
        "trading_stream_url": trading_stream_url, "feed": feed, "warmup_days": warmup_days,
        "stream_silence": stream_silence, "clock_poll": clock_poll,
        "alert_stream_down": alert_stream_down})
    urls, level = alert_settings(config_file, alert_urls, alert_level)
    dispatcher = _alert_dispatcher(urls, level, live, sim)  # a bad URL stops us here
    if sim and base_url:
        raise ConfigError("--sim starts its own loopback server: drop --base-url")
    # --sim without --symbols (nor a configured list): every symbol of the sim's data
    sim_symbols = None if sim and flags.get("symbols") is None \
        and settings.symbols == DEFAULT_SYMBOLS else settings.symbols
    base = PAPER_URL if sim else cfg.base_url  # --sim: the loopback's URL is not known yet
    check_endpoint(base, real_money)
    if live:
        _confirm_live(base, confirm_live)
    rehearsal = None
    if sim:
        rehearsal = start_rehearsal(sim_data or DEFAULT_SIM_DATA, sim_speed, sim_start,
                                    sim_minutes, settings, cfg, sim_symbols is None,
                                    sources["clock_poll"] != "default", max_steps)
        settings, cfg, credentials, max_steps = rehearsal.settings, rehearsal.alpaca, \
            rehearsal.credentials, rehearsal.max_steps
        echo(fit(f"OFFLINE REHEARSAL against the loopback Alpaca at {cfg.base_url} (replay "
                 f"from {rehearsal.server.now().astimezone(NEW_YORK):%Y-%m-%d %H:%M}, speed "
                 f"{sim_speed or 'lockstep'})", width, "  "))
    else:
        credentials = load_credentials(keys_file)
    run = PaperRun(settings=settings, credentials=credentials, alpaca=cfg, live=live,
                   once=once, state_dir=state_dir, log_dir=log_dir, out=out,
                   max_steps=max_steps, rebuild_journal=rebuild_journal)
    base = cfg.base_url
    label = "LIVE orders to the PAPER account" if live and not is_real_money(base) else \
        "LIVE orders with REAL MONEY" if live else "DRY RUN: decisions only, no orders sent"
    echo(fit(f"ratchet paper - {label}; symbols {', '.join(settings.symbols)}, "
             f"{settings.bar_interval} bars, feed {cfg.feed}; keys {mask(credentials.key_id)} "
             f"from {credentials.source}", width, "  "))
    echo(["State:", f"  {state_dir}", "Times are New York time."])
    board = Dashboard(console) if dashboard else None
    # without the dashboard: one line per bar step, so a session is never silent
    view = board if board is not None else StepPrinter(lambda line: echo([line]), live)
    sink = None
    if dispatcher is not None:
        echo([f"alerts ({level}) to {', '.join(dispatcher.labels)}"])
        sink = dispatcher.start()
    try:
        if board is not None:
            board.__enter__()
        result = run_paper(run, note=lambda s: console.print(f"[yellow]{s}[/yellow]"),
                           view=view, alerts=sink,
                           on_idle=rehearsal.driver if rehearsal is not None else None)
    finally:
        if board is not None:
            board.__exit__(None, None, None)
        if dispatcher is not None:
            dispatcher.close(timeout=10.0)
        if rehearsal is not None:
            rehearsal.server.stop()
    _print_summary(console, result, live)
    if not result.reconciled:
        raise UnknownStateError(result.reconcile)


def _alert_dispatcher(urls: list[str], level: str, live: bool,
                     sim: bool) -> AlertDispatcher | None:
    """The Apprise dispatcher for ``urls`` (None without any), not started yet."""
    if not urls:
        return None
    from alerts.dispatch import AlertDispatcher

    tag = "SIM" if sim else "PAPER" if live else "DRY RUN"
    return AlertDispatcher(urls, level, prefix=f"ratchet {tag}: ")


class _PaperInterval(click.Choice):
    """``--interval`` for paper: Alpaca streams minute bars, so no ``1Day``."""

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        if isinstance(value, str) and value == "1Day":
            self.fail("1Day is not available for paper trading: Alpaca streams minute bars; "
                      "use 1Min..1Hour (backtest takes daily bars)", param, ctx)
        return super().convert(value, param, ctx)


for _param in paper.params:  # the shared strategy flags, worded for paper
    if _param.name == "symbols" and isinstance(_param, click.Option):
        _param.help = ("Comma-separated symbols [20 liquid US stocks; with --sim: every "
                       "symbol in --sim-data].")
    elif _param.name == "interval" and isinstance(_param, click.Option):
        _param.type = _PaperInterval([i for i in INTERVAL_SECONDS if i != "1Day"])
        _param.help = "Bar interval, 1Min..1Hour (Alpaca streams minute bars) [1Min]."


def _print_summary(console: Console, result: PaperResult, live: bool) -> None:
    from ratchet.commands.output import echo_lines, kv_lines, out_width

    pnl = result.end_value - result.start_value
    rows = [
        ("Bar steps processed", str(result.steps)),
        ("Orders sent to Alpaca", str(result.orders_sent) if live else "0 (dry run)"),
        ("Start / end value", f"{result.start_value:,.2f} / {result.end_value:,.2f} "
                              f"({pnl:+,.2f})"),
        ("Open positions", ", ".join(f"{s} {p['qty']:g}" for s, p in result.positions.items())
         or "none"),
        ("Resting stops left at the broker" if live else "Shadow stops",
         ", ".join(f"{s} @ {v['price']:.2f}" for s, v in result.stops.items()) or "none"),
        ("Reconciliation", result.reconcile or "-"),
        ("State file", str(result.state_path)),
        ("Audit trail", str(result.audit_path)),
        ("Run folder", str(result.run_dir) if result.run_dir else "-"),
    ]
    # long values (paths) go whole on a line of their own rather than being cut
    echo_lines([f"Paper session summary ({'LIVE' if live else 'DRY RUN'})",
                *kv_lines(rows, out_width())])
