"""``python cli.py paper``: the backtest's Strategy, unchanged, on Alpaca paper trading.

Without ``--live`` it is a DRY RUN: live bars, every decision logged and audited, orders
filled by a local shadow book with the backtest's fill rules, nothing sent to Alpaca. With
``--live`` it sends orders to the Alpaca PAPER account after a typed ``YES`` (or
``--confirm-live`` for non-interactive use). A real-money endpoint is refused unless
``--i-understand-real-money`` names it explicitly. ``--sim`` rehearses offline against the
loopback Alpaca (``brokers.alpaca_sim``) started in this process.

``run_paper`` is the reusable runner (tests and the benchmark call it); the click command
parses flags, asks for the confirmation, prints the banner, the dashboard and the summary.

A state directory belongs to one account at one endpoint (recorded in the state file and the
journal; another account's files are refused). ``--sim`` rehearsals use their own directories
(``data/realtime-sim/<run>``, ``logs/realtime-sim/<run>``): each rehearsal is a new simulated
account. ``--once`` leaves its working entries (DAY limits) at Alpaca; the next run adopts
them, so the limit timeout and the market fallback still apply.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlparse

import backtrader as bt
import click

from alerts.sources import AuditAlerts, SessionMonitor, stopping_event
from analyzers.recorder import RunRecorder, write_parquet, write_run_folder
from analyzers.runfolder import make_run_dir
from brokers.alpaca.bars import BarRecorder
from brokers.alpaca.broker import AlpacaBroker
from brokers.alpaca.client import LIVE_URL, PAPER_URL, AlpacaClient
from brokers.alpaca.clock import NEW_YORK
from brokers.alpaca.credentials import Credentials, load_credentials, mask
from brokers.alpaca.data import AlpacaData
from brokers.alpaca.journal import Journal
from brokers.alpaca.orders import OrderGateway
from brokers.alpaca.ports import PositionOwner, as_owner
from brokers.alpaca.state import (
    DRY_RUN,
    LIVE,
    ModeAudit,
    StateDirLock,
    check_owner,
    last_bars,
    load_state,
    make_dry_run_broker,
    open_journal,
    read_state_any_mode,
    save_state,
)
from brokers.alpaca.store import AlpacaStore, LatencyProbe
from commands.backtest import settings_from_flags, strategy_options
from common.clock import SYSTEM_CLOCK, Clock
from common.config import DEFAULT_SYMBOLS, INTERVAL_SECONDS, Settings
from common.errors import BrokerError, ConfigError, RetryableError, UnknownStateError, UserError
from common.logs import REDACTOR, setup_logging
from common.paths import BUNDLED_BARS
from common.perms import private_dir
from strategies.ratchet import RatchetStrategy
from strategies.signals import make_signal

logger = logging.getLogger(__name__)

DEFAULT_SIM_DATA = BUNDLED_BARS
REAL_MONEY_HOSTS = ("api.alpaca.markets",)
DEFAULT_STATE_DIR = Path("data/realtime")
DEFAULT_LOG_DIR = Path("logs/realtime")
SIM_STATE_DIR = Path("data/realtime-sim")
SIM_LOG_DIR = Path("logs/realtime-sim")


class RealMoneyError(UserError):
    """A real-money endpoint without ``--i-understand-real-money``."""


class NotConfirmedError(UserError):
    """``--live`` without the typed YES."""


@dataclass
class PaperOptions:
    """Everything ``run_paper`` needs (the command builds it from flags)."""

    settings: Settings
    credentials: Credentials
    live: bool = False
    once: bool = False
    base_url: str = PAPER_URL
    data_url: str | None = None
    data_stream_url: str | None = None
    trading_stream_url: str | None = None
    feed: str = "iex"
    state_dir: Path = Path("data/realtime")
    log_dir: Path = Path("logs/realtime")
    out: Path | None = Path("runs")
    warmup_days: float = 5.0
    max_steps: int | None = None
    silence: float | None = None
    grace: float = 2.0
    clock_poll: float = 30.0
    cancel_entries_on_exit: bool = True
    rate_limit_max_wait: float = 60.0
    #: trading/data request budget per minute (Alpaca: 200); replays run many times faster
    #: than real time against a loopback server that has no limit, and raise it
    requests_per_minute: float = 200.0
    dashboard: Callable[[Any], None] | None = None
    on_idle: Callable[[], None] | None = None
    on_store: Callable[[AlpacaStore], None] | None = None
    install_signals: bool = True
    #: tests: another Strategy class / extra params, the broker's fill fence (None: off)
    strategy_cls: Any = RatchetStrategy
    strategy_kwargs: dict[str, Any] = field(default_factory=dict)
    fence_s: float | None = 0.5
    #: broker clock speed vs the local monotonic clock; None: 1 for Alpaca hosts, 0 for a
    #: loopback simulator (its replayed time may run at any speed: bar closes + clock reads)
    clock_rate: float | None = None
    #: a position without a live stop gets one from the broker after this long (None: one
    #: bar + 15 s; the Strategy re-places its own stop on its next bar)
    stop_grace_s: float | None = None
    #: seconds between checks that the tracked stops are still open at Alpaca
    stop_audit_s: float = 60.0
    #: test hook: the local clock of the store, streams and broker (``common.clock``)
    clock: Clock = SYSTEM_CLOCK
    #: ``--once``: seconds a just-sent market fallback may take to fill before exit
    once_fill_wait_s: float = 5.0
    #: ``--rebuild-journal``: a missing, empty or corrupt journal is moved aside and rebuilt
    #: from Alpaca's orders instead of stopping the start
    rebuild_journal: bool = False
    #: where alert events go (``alerts.AlertSink``; the caller starts and closes it); None: off
    alerts: Any = None
    #: a stream down this long (seconds) is an alert
    alert_stream_down_s: float = 60.0


@dataclass
class PaperResult:
    """What a paper session produced."""

    mode: str
    run_dir: Path | None
    steps: int
    orders_sent: int
    start_value: float
    end_value: float
    positions: dict[str, dict[str, float]]
    stops: dict[str, dict[str, Any]]
    latency: list[float]
    state_path: Path
    audit_path: Path
    reconcile: str = ""
    streams: list[Any] = field(default_factory=list)
    backfilled: int = 0
    #: False when the shutdown could not reconcile with the broker (state NOT verified)
    reconciled: bool = True
    #: (event kind, seconds) from a fill/cancel event's arrival to its stop's acceptance
    stop_latency: list[tuple[str, float]] = field(default_factory=list)


# ------------------------------------------------------------------------------- endpoints


def is_real_money(url: str) -> bool:
    """True for Alpaca's real-money trading host."""
    return (urlparse(url).hostname or "") in REAL_MONEY_HOSTS


def stream_urls(base_url: str, feed: str) -> tuple[str, str]:
    """(market-data stream, trading stream) URLs that go with a trading REST root."""
    parsed = urlparse(base_url)
    host = parsed.hostname or ""
    if host.endswith("alpaca.markets"):
        return (f"wss://stream.data.alpaca.markets/v2/{feed}",
                f"wss://{parsed.netloc}/stream")
    scheme = "wss" if parsed.scheme == "https" else "ws"
    return f"{scheme}://{parsed.netloc}/v2/{feed}", f"{scheme}://{parsed.netloc}/stream"


def check_endpoint(base_url: str, real_money_ok: bool) -> None:
    """Refuse a real-money endpoint unless it was named explicitly."""
    if is_real_money(base_url) and not real_money_ok:
        raise RealMoneyError(
            f"{base_url} trades REAL MONEY: refused. Use the paper endpoint ({PAPER_URL}), or "
            "pass --i-understand-real-money together with --base-url "
            f"{LIVE_URL} if that is really what you want")


# ------------------------------------------------------------------------------- the runner


def _install_signals(store: AlpacaStore, console_note: Callable[[str], None]) -> Callable[[], None]:
    count = {"n": 0}

    def handler(signum: int, frame: FrameType | None) -> None:
        count["n"] += 1
        if count["n"] > 1 and signum == signal.SIGINT:
            raise KeyboardInterrupt
        console_note(f"{signal.Signals(signum).name}: finishing the current step, saving "
                     "state; resting stops stay at the broker (Ctrl+C again to force)")
        store.request_stop()

    wanted = [signal.SIGINT, signal.SIGTERM]
    if hasattr(signal, "SIGHUP"):  # a closed terminal / ssh session: the same clean stop
        wanted.append(signal.SIGHUP)
    old = {s: signal.getsignal(s) for s in wanted}
    for s in old:
        signal.signal(s, handler)

    def restore() -> None:
        for s, h in old.items():
            signal.signal(s, h)

    return restore


def check_paper_settings(settings: Settings) -> None:
    """Settings paper trading cannot honour: refused before anything starts."""
    if settings.bar_seconds >= 86_400:
        raise ConfigError(
            f"--interval {settings.bar_interval} is not supported for paper trading: "
            "Alpaca streams minute bars; use 1Min..1Hour (or backtest daily bars)")
    if settings.fractional_shares:
        raise ConfigError(
            "--fractional is not supported for paper trading: Alpaca takes fractional "
            "quantities only on DAY orders and the resting stop is GTC; drop --fractional")


class PaperSession:
    """One paper session, wired: client, store, feeds, broker, Strategy, audit, state file."""

    def __init__(self, opts: PaperOptions) -> None:
        self.opts = opts
        settings = self.settings = opts.settings
        check_paper_settings(settings)
        self.mode = LIVE if opts.live else DRY_RUN
        check_endpoint(opts.base_url, True)  # the command checks the flag; this never guesses
        state_dir = self.state_dir = Path(opts.state_dir)
        # one process per state dir: refused at once, naming the running one
        self.lock = StateDirLock(state_dir).acquire()
        try:
            self._setup(opts)
        except BaseException:
            self.lock.release()
            raise

    def _setup(self, opts: PaperOptions) -> None:
        settings = self.settings
        state_dir = self.state_dir
        private_dir(Path(opts.log_dir))
        self.state_path = state_dir / "portfolio_state.json"
        self.audit_path = Path(opts.log_dir) / "audit_trail.csv"
        opts.credentials.register()
        self._recovered: list[str] = []  # loud recoveries of broken files, for the audit
        self.saved = load_state(self.state_path, self.mode, self._recovered)
        self.client = AlpacaClient(opts.credentials, base_url=opts.base_url,
                                   data_url=opts.data_url, feed=opts.feed,
                                   rate_limit_max_wait=opts.rate_limit_max_wait,
                                   trading_per_minute=opts.requests_per_minute,
                                   data_per_minute=opts.requests_per_minute)
        data_ws, trading_ws = stream_urls(opts.base_url, opts.feed)
        self.latency = LatencyProbe()
        clock_rate = opts.clock_rate if opts.clock_rate is not None else \
            (1.0 if (urlparse(opts.base_url).hostname or "").endswith("alpaca.markets") else 0.0)
        self.account_id: str | None = None
        self.store = AlpacaStore(
            self.client, opts.credentials, settings, make_signal(settings),
            data_stream_url=opts.data_stream_url or data_ws,
            trading_stream_url=(opts.trading_stream_url or trading_ws) if opts.live else None,
            warmup_days=opts.warmup_days, grace=opts.grace,
            silence_timeout=opts.silence if opts.silence is not None else
            max(120.0, 2.0 * settings.bar_seconds),
            clock_poll_s=opts.clock_poll,
            recorder=BarRecorder(state_dir / "bars", settings.bar_interval, opts.feed),
            max_steps=1 if opts.once else opts.max_steps, on_idle=opts.on_idle,
            latency=self.latency, clock_rate=clock_rate, clock=opts.clock)
        if opts.on_store is not None:
            opts.on_store(self.store)
        if not self.audit_path.exists():  # account activity: this user only
            os.close(os.open(self.audit_path, os.O_CREAT | os.O_WRONLY, 0o600))
        self.audit = ModeAudit(self.mode, live_path=self.audit_path)
        self.store.audit = self.audit
        self.cerebro = cerebro = bt.Cerebro(stdstats=False, quicknotify=False)
        for symbol in settings.symbols:
            cerebro.adddata(AlpacaData(store=self.store, symbol=symbol, name=symbol),  # type: ignore[call-arg] # Backtrader params
                            name=symbol)
        self.journal: Journal | None = None
        self.broker: Any = self._broker()
        for line in self._recovered:
            self.audit.record(None, "recovery", "", "file_recovered", "broken_file",
                              detail=line)
        cerebro.setbroker(self.broker)
        cerebro.addstore(self.store)
        self.store.attach_broker(self.broker)
        kwargs = dict(opts.strategy_kwargs)
        if settings.extended_hours:
            kwargs.setdefault("session", self.store.session)
        cerebro.addstrategy(opts.strategy_cls, settings=settings, audit=self.audit,
                            market_open=self.store.market_open, **kwargs)
        cerebro.addanalyzer(RunRecorder, _name="recorder", ohlc=True)
        self.store.set_state_saver(self.save)
        self.monitor: SessionMonitor | None = None
        if opts.alerts is not None:
            self._wire_alerts(opts.alerts)

    def _wire_alerts(self, sink: Any) -> None:
        """Alerts read what the session records: audit rows, stream status, saved state."""
        self.audit_alerts = AuditAlerts(sink, announce_start=not self.opts.once)
        self.audit.listeners.append(self.audit_alerts)
        clock = self.store.clock
        self.monitor = SessionMonitor(
            sink, self.store.stream_statuses, self.store.broker_time,
            lambda day: (clock.session_bounds(day, extended=False) or (None, None))[1],
            down_after=self.opts.alert_stream_down_s)

    def _broker(self) -> Any:
        opts = self.opts
        if opts.live:
            self.journal = open_journal(Path(opts.state_dir) / "journal.sqlite", self.saved,
                                        opts.rebuild_journal, self._recovered)
            return AlpacaBroker(store=self.store, gateway=OrderGateway(self.client, self.journal),
                                journal=self.journal, settings=self.settings, audit=self.audit,
                                owner=self._owner, fence_s=opts.fence_s,
                                stop_grace_s=opts.stop_grace_s,
                                stop_audit_s=opts.stop_audit_s, clock=opts.clock)
        cash = self.settings.cash
        try:
            cash = float(self.client.get_account().cash)
        except Exception as exc:  # noqa: BLE001 - a dry run may run without a reachable account
            logger.warning("account unavailable (%s): the dry-run book starts with %.2f", exc,
                           cash)
        broker = make_dry_run_broker(cash, self.settings.commission)
        broker.store = self.store
        if self.settings.extended_hours:
            broker.session = self.store.session  # stops sleep outside regular hours
        return broker

    def _owner(self) -> PositionOwner | None:
        strategies = self._strategies()
        return as_owner(strategies[0]) if strategies else None

    def _strategies(self) -> list[Any]:
        return list(getattr(self.cerebro, "runningstrats", []) or [])

    def save(self) -> None:
        """Write portfolio_state.json (atomic) and refresh the dashboard."""
        opts, store = self.opts, self.store
        strategies = self._strategies()
        view = self.broker.view()
        last = {s: store.assembler.last_ts.get(s) for s in self.settings.symbols}
        state = {
            "schema": 1, "mode": self.mode, "endpoint": opts.base_url,
            "account_id": self.account_id, "feed": opts.feed,
            "strategy_id": self.settings.strategy_id, "symbols": list(self.settings.symbols),
            "interval": self.settings.bar_interval,
            "broker_time": store.broker_time().isoformat(),
            "wall_time": datetime.now(UTC).isoformat(),
            "last_bar": {s: t.isoformat() for s, t in last.items() if t is not None},
            "cash": view.cash, "value": view.value, "positions": view.positions,
            "stops": view.stops, "working_orders": view.working, "ambiguous": view.ambiguous,
            "strategy": strategies[0].export_state() if strategies else
            (self.saved or {}).get("strategy", {}),
            "streams": {s.name: s.state.value for s in store.stream_statuses()},
        }
        save_state(self.state_path, state)
        if self.monitor is not None:
            self.monitor.on_state(state)
        if opts.dashboard is not None:
            opts.dashboard(_Snapshot(self.mode, opts.base_url, store, view, state))

    def run(self, note: Callable[[str], None]) -> PaperResult:
        """Connect, reconcile, trade until stopped, then shut down cleanly (and say why)."""
        signals: list[str] = []

        def noted(text: str) -> None:
            if text.startswith("SIG"):
                signals.append(text.split(":", 1)[0])
            note(text)

        try:
            result = self._run(noted)
        except BaseException as exc:
            if self.opts.alerts is not None:
                if self.monitor is not None:
                    self.monitor.stop(final_check=False)
                why = "forced (second Ctrl+C)" if isinstance(exc, KeyboardInterrupt) else \
                    f"error: {exc}"
                self.opts.alerts.emit(stopping_event(why, True, when=self._broker_now()))
            raise
        if self.opts.alerts is not None and self.monitor is not None:
            self.monitor.check_close()  # the daily summary, if the session has closed
            self.audit_alerts.flush()
            why = f"{signals[0]} received" if signals else \
                f"--max-steps {self.opts.max_steps} reached" if self.opts.max_steps and \
                result.steps >= self.opts.max_steps else \
                "end of the rehearsal" if self.opts.on_idle is not None else "stop requested"
            if not self.opts.once:  # cron runs every bar: no message per run
                self.opts.alerts.emit(stopping_event(
                    why, False, result.steps, result.start_value, result.end_value,
                    result.positions, result.stops, when=self._broker_now()))
        return result

    def _broker_now(self) -> datetime | None:
        try:
            return self.store.broker_time()
        except Exception:  # noqa: BLE001 - only a time for the alert
            return None

    def _run(self, note: Callable[[str], None]) -> PaperResult:
        opts, store = self.opts, self.store
        self.audit.record(None, "session", "", "start", self.mode,
                          detail=f"endpoint={opts.base_url} feed={opts.feed} "
                                 f"symbols={','.join(self.settings.symbols)}")
        restore = _install_signals(store, note) if opts.install_signals else (lambda: None)
        report = ""
        try:
            self._check_owner()
            store.connect(last_delivered=last_bars(self.saved))
            if not store.wait_connected(timeout=20.0):
                raise ConfigError(
                    "could not connect the Alpaca streams within 20s: check the keys, the "
                    f"endpoint ({opts.base_url}) and the network")
            if self.monitor is not None:
                self.monitor.start()
            if opts.live:
                report = self.broker.startup(self.saved).summary()
            start_value = self.broker.getvalue()
            self._start_positions = {s: p["qty"] for s, p in self.broker.view().positions.items()}
            self.save()  # the state file holds the reconciled broker state before any bar
            note(f"{'LIVE (paper account)' if opts.live else 'DRY RUN (no orders are sent)'}"
                 f": {store.clock.describe_wait()}")
            strategy = self.cerebro.run()[0]
        except UnknownStateError as exc:
            raise ConfigError(f"not trading: the broker's state is unknown ({exc})") from None
        finally:
            restore()
            if self.monitor is not None:  # the streams close on purpose now: no outage
                self.monitor.stop(final_check=False)
            store.hub.stop()
        return self._finish(strategy, start_value, report)

    def _check_owner(self) -> None:
        """The state dir must belong to the account (and endpoint) traded now."""
        opts = self.opts
        try:
            self.account_id = self.client.get_account().id or None
        except (RetryableError, BrokerError, UnknownStateError) as exc:
            if opts.live:
                raise UnknownStateError(f"account unreadable: {exc}") from None
            logger.warning("account unavailable (%s): the state dir is checked by endpoint "
                           "only", exc)
        owners: list[tuple[str, str | None, str | None]] = []
        saved = read_state_any_mode(self.state_path)
        if saved is not None:
            owners.append(("state file", saved.get("endpoint"), saved.get("account_id")))
        journal = self.journal
        if journal is not None:
            owners.append(("order journal", journal.get_meta("endpoint"),
                           journal.get_meta("account_id")))
        check_owner(self.state_dir, opts.base_url, self.account_id, owners)
        if journal is not None:
            if journal.get_meta("endpoint") is None:
                if not journal.is_empty():
                    logger.warning("journal %s has no owner recorded (older version): it is "
                                   "taken as %s's", journal.path, opts.base_url)
                journal.set_meta("endpoint", opts.base_url)
            if self.account_id and journal.get_meta("account_id") is None:
                journal.set_meta("account_id", self.account_id)

    def _notify_strategy(self, strategy: Any) -> None:
        """Deliver the broker's queued notifications to the Strategy after Cerebro stopped
        (fills that won a cancel race at shutdown): the same path as in the loop, so the
        audit, the trades and the Strategy's stops see them."""
        if strategy is None:
            return
        for _ in range(5):  # the Strategy may answer (e.g. place a stop): deliver that too
            delivered = False
            while (order := self.broker.get_notification()) is not None:
                owner = order.owner if order.owner is not None else strategy
                owner._addnotification(order, quicknotify=False)
                delivered = True
            if not delivered:
                break
            strategy._notify()
            strategy.clear()

    def _finish(self, strategy: Any, start_value: float, report: str) -> PaperResult:
        opts, store = self.opts, self.store
        reconciled = True
        if opts.live:
            self.broker.closing = True  # no new entries or fallbacks from here on
            store.pump_events(0.0)  # trade updates that arrived during the last step
            self.broker.settle_for_shutdown()
            if opts.cancel_entries_on_exit and not opts.once:
                self.broker.cancel_working_entries()
            elif opts.once:
                self.broker.wait_for_market_entries(opts.once_fill_wait_s)
                kept = [w["cid"] for w in self.broker.view().working
                        if w["purpose"] in ("entry", "fallback")]
                if kept:
                    logger.info("--once: working entries stay at Alpaca (DAY orders) for the "
                                "next run to adopt: %s", ", ".join(kept))
            self._notify_strategy(strategy)
            try:  # the state file must end equal to the broker's state
                report = self.broker.reconcile_now("shutdown").summary()
            except Exception as exc:  # noqa: BLE001 - a failed read at exit changes nothing
                logger.error("final reconciliation failed: %s", exc)
                # Never show the startup's "state matches the broker" for a failed check.
                report = (f"NOT reconciled at shutdown: {exc} (positions, orders and stops "
                          "at the broker are unknown; check them before the next run)")
                reconciled = False
            self._notify_strategy(strategy)
            for order in self.broker.undelivered():
                cid = order.info.get("cid", "")
                logger.warning("%s: %s (%s) could not be shown to the Strategy: no bar was "
                               "processed for it in this run", order.data._name, cid,
                               order.getstatusname())
                self.audit.record(None, "broker", order.data._name, "not_notified",
                                  order.getstatusname().lower(), qty=abs(order.executed.size),
                                  price=order.executed.price or None, client_order_id=cid)
        self.save()
        if store.recorder is not None:
            store.recorder.flush()
        view = self.broker.view()
        run_dir = None
        if opts.out is not None and store.status.steps == 0:
            logger.info("no bar was processed: no run folder written")
        elif opts.out is not None:
            run_dir = private_dir(make_run_dir(Path(opts.out), "paper" if opts.live
                                               else "dryrun"))
            meta = {"mode": "paper" if opts.live else "dry_run",
                    "symbols": list(self.settings.symbols),
                    "interval": self.settings.bar_interval, "endpoint": opts.base_url,
                    "feed": opts.feed, "start_value": start_value or self.settings.cash,
                    "open_positions": {s: p["qty"] for s, p in view.positions.items()},
                    "steps": store.status.steps, "data": str(Path(opts.state_dir) / "bars"),
                    "start_positions": getattr(self, "_start_positions", {}),
                    "restored": self.saved is not None}
            write_run_folder(run_dir, strategy.analyzers.recorder, strategy.closed_trades,
                             self.audit, self.settings, meta)
            # the bars the Strategy saw, warm-up included: ``cli.py parity`` replays them
            write_parquet(run_dir / "bars.parquet",
                          strategy.analyzers.recorder.bars_frame(store.warmup_bars))
        self.audit.record(None, "session", "", "stop", self.mode,
                          detail=f"steps={store.status.steps}")
        self.audit.close()
        if self.journal is not None:
            self.journal.close()
        return PaperResult(self.mode, run_dir, store.status.steps, self.client.submit_count,
                           start_value, view.value, view.positions, view.stops,
                           list(self.latency.samples), self.state_path, self.audit_path, report,
                           store.stream_statuses(), store.status.backfilled, reconciled,
                           list(getattr(self.broker, "stop_latency", [])))


def run_paper(opts: PaperOptions, note: Callable[[str], None] = lambda s: None) -> PaperResult:
    """Run one paper session until stopped (signal, ``--once``, ``max_steps``)."""
    session = PaperSession(opts)
    try:
        return session.run(note)
    finally:
        session.lock.release()


@dataclass
class _Snapshot:
    mode: str
    endpoint: str
    store: AlpacaStore
    view: Any
    state: dict[str, Any]


# ------------------------------------------------------------------------------- step lines


class StepPrinter:
    """One short line per bar step (the default output of ``paper`` without --dashboard):
    bar time (New York), symbols updated on it, orders sent so far, equity, positions."""

    def __init__(self, echo: Callable[[str], None], live: bool) -> None:
        self.echo = echo
        self.live = live
        self._steps = 0

    def __call__(self, snap: _Snapshot) -> None:
        store = snap.store
        steps = store.status.steps
        if steps == self._steps:
            return  # the start or the shutdown save, not a new bar step
        self._steps = steps
        self.echo(self.line(snap))

    def line(self, snap: _Snapshot) -> str:
        """The status line of the newest step."""
        store, view, state = snap.store, snap.view, snap.state
        bars = state.get("last_bar", {})
        newest = max(bars.values()) if bars else None
        updated = sum(1 for t in bars.values() if t == newest)
        when = datetime.fromisoformat(newest).astimezone(NEW_YORK).strftime("%Y-%m-%d %H:%M") \
            if newest else "-"
        sent = f"{store.client.submit_count} orders sent" if self.live else \
            f"{len(view.working)} working (dry run)"
        return (f"{when}  {updated}/{len(bars) or len(snap.state.get('symbols', []))} symbols"
                f"  {sent}  equity {view.value:,.2f}  {len(view.positions)} open")


# ------------------------------------------------------------------------------- dashboard


class Dashboard:
    """A live console view (rich): positions, stops, P&L, working orders, last bar, streams."""

    def __init__(self, console: Any, start_value: float | None = None) -> None:
        from rich.live import Live

        self.console = console
        self.start_value = start_value
        self.live = Live(console=console, auto_refresh=False, transient=False)
        self._last = 0.0

    def __enter__(self) -> Dashboard:
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.stop()

    def __call__(self, snap: _Snapshot) -> None:
        self.live.update(self.render(snap), refresh=True)

    def render(self, snap: _Snapshot) -> Any:
        """The dashboard as one rich renderable."""
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        view, store = snap.view, snap.store
        if self.start_value is None:
            self.start_value = view.value
        label = "LIVE (paper account)" if snap.mode == LIVE else "DRY RUN - no orders are sent"
        pnl = view.value - (self.start_value or view.value)
        last = store.status.last_bar
        streams = ", ".join(f"{s.name} {s.state.value} ({s.connects}x)"
                            for s in store.stream_statuses())
        # one short fact per line: the header fits an 80-column terminal without wrapping
        lines = [
            f"[bold]{label}[/bold]  {snap.endpoint}",
            f"value {view.value:,.2f}   cash {view.cash:,.2f}   P&L {pnl:+,.2f}",
            f"last bar {last.astimezone(NEW_YORK):%Y-%m-%d %H:%M} NY   steps "
            f"{store.status.steps}   "
            f"data {store.status.state}" if last is not None else
            f"last bar -   steps {store.status.steps}   data {store.status.state}",
            _clock_line(store),
            f"streams: {streams}",
        ]
        texts = [Text.from_markup(line, overflow="ellipsis") for line in lines]
        for text in texts:
            text.no_wrap = True
        head = Group(*texts)
        pos = Table(title="positions", title_justify="left")
        for col in ("symbol", "qty", "avg", "last", "unrealized", "stop"):
            pos.add_column(col, justify="right")
        for sym, p in view.positions.items():
            stop = view.stops.get(sym, {}).get("price")
            pos.add_row(sym, f"{p['qty']:g}", f"{p['avg_price']:.2f}", f"{p.get('last', 0):.2f}",
                        f"{p.get('unrealized_pnl', 0):+,.2f}",
                        f"{stop:.2f}" if stop else "[red]none[/red]")
        work = Table(title="working orders", title_justify="left")
        for col in ("client order id", "side", "type", "qty", "price", "state"):
            work.add_column(col)
        for w in view.working + list(view.stops.values()):
            work.add_row(w["cid"], w["side"], w["type"], f"{w['qty']:g}",
                         f"{w['price']:.2f}" if w.get("price") else "", w["state"])
        return Group(head, pos, work)


def _clock_line(store: AlpacaStore) -> str:
    c = store.clock.last
    if c is None:
        return "market clock unknown"
    if c.is_open:
        return f"market open until {c.next_close.astimezone(NEW_YORK):%H:%M %Z}"
    wait = c.next_open - store.now()
    hours, rem = divmod(max(0, int(wait.total_seconds())), 3600)
    return (f"market closed; opens {c.next_open.astimezone(NEW_YORK):%a %Y-%m-%d %H:%M %Z} "
            f"(in {hours}h {rem // 60:02d}m)")


# ------------------------------------------------------------------------------- the command


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


class _SimDriver:
    """Lockstep replay for ``--sim --sim-speed 0``: one bar per idle loop."""

    def __init__(self, sim: Any, bar_seconds: int, until: datetime | None,
                 store_ref: Callable[[], AlpacaStore | None]) -> None:
        self.sim = sim
        self.bar = bar_seconds
        self.until = until
        self.store_ref = store_ref
        self._steps = -1
        self._at = 0.0

    def __call__(self) -> None:
        store = self.store_ref()
        if store is None:
            return
        now = time.monotonic()
        if store.status.steps == self._steps and now - self._at < 2.0:
            return  # the last advance's bars are not through yet
        if self.until is not None and self.sim.now() >= self.until:
            store.request_stop()
            return
        self._steps, self._at = store.status.steps, now
        self.sim.advance(seconds=self.bar)


def _sim_context(data: Path, speed: float, start: str | None,
                 symbols: tuple[str, ...] | None, cash: float) -> Any:
    from brokers.alpaca_sim.testing import SimServer

    key, secret = f"SIM{secrets.token_hex(8)}", f"SIM{secrets.token_hex(16)}"
    REDACTOR.add(key, secret)
    # the rehearsal outruns real time: the loopback reports a budget that fits the replay
    return SimServer(data, key=key, secret=secret, start=start, speed=speed, cash=cash,
                     symbols=symbols, rate_limit=10**6)


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
              help=f"Trading REST root [{PAPER_URL}]; a loopback server: http://127.0.0.1:PORT.")
@click.option("--data-url", default=None, help="Market-data REST root [from --base-url].")
@click.option("--data-stream-url", default=None, help="Market-data WebSocket URL.")
@click.option("--trading-stream-url", default=None, help="trade_updates WebSocket URL.")
@click.option("--feed", type=click.Choice(["iex", "sip"]), default="iex", show_default=True,
              help="Market-data feed (recorded with the bars).")
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
@click.option("--warmup-days", type=float, default=5.0, show_default=True,
              help="Calendar days of REST history for the indicator warm-up.")
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
@click.option("--alert-stream-down", type=float, default=60.0, show_default=True,
              help="Alert when a stream has been down this many seconds.")
def paper(live: bool, confirm_live: bool, once: bool, dashboard: bool, verbose: int,
          keys_file: Path | None, base_url: str | None, data_url: str | None,
          data_stream_url: str | None, trading_stream_url: str | None, feed: str,
          real_money: bool, sim: bool, sim_data: Path | None, sim_speed: float,
          sim_start: str | None, sim_minutes: float | None, state_dir: Path | None,
          log_dir: Path | None,
          out: Path, warmup_days: float, max_steps: int | None, stream_silence: float | None,
          clock_poll: float | None, rebuild_journal: bool, config_file: Path | None,
          alert_urls: tuple[str, ...], alert_level: str | None, alert_stream_down: float,
          **flags: Any) -> None:
    """Run the strategy on Alpaca: a DRY RUN unless --live."""
    from alerts.config import alert_settings
    from commands.output import console as make_console
    from commands.output import echo_lines as echo
    from commands.output import fit, out_width

    os.umask(0o077)  # state, journal, logs, audit, bars and run folders: this user only

    console = make_console()
    width = out_width()
    if sim:  # a rehearsal is a new simulated account: its files never mix with real ones
        run = f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
        state_dir = state_dir or SIM_STATE_DIR / run
        log_dir = log_dir or SIM_LOG_DIR / run
    state_dir, log_dir = state_dir or DEFAULT_STATE_DIR, log_dir or DEFAULT_LOG_DIR
    log_file = Path(log_dir) / f"trading_{datetime.now(UTC):%Y-%m-%d}.log"
    setup_logging(verbose, log_file)
    settings = settings_from_flags(config_file, flags)
    check_paper_settings(settings)  # before a --sim server starts or a banner prints
    urls, level = alert_settings(config_file, alert_urls, alert_level)
    dispatcher = _alert_dispatcher(urls, level, live, sim)  # a bad URL stops us here
    if sim and base_url:
        raise ConfigError("--sim starts its own loopback server: drop --base-url")
    # --sim without --symbols (nor a configured list): every symbol of the sim's data
    sim_symbols = None if sim and flags.get("symbols") is None \
        and settings.symbols == DEFAULT_SYMBOLS else settings.symbols
    base = base_url or PAPER_URL
    check_endpoint(base, real_money)
    if live:
        _confirm_live(base, confirm_live)
    sim_server = None
    if sim:
        sim_server = _sim_context(sim_data or DEFAULT_SIM_DATA, sim_speed, sim_start,
                                  sim_symbols, settings.cash).start()
        if sim_symbols is None:
            settings = dataclasses.replace(settings, symbols=tuple(sim_server.book.symbols))
        base = sim_server.base_url
        credentials = Credentials(sim_server.key, sim_server.secret, "loopback simulator")
        echo(fit(f"OFFLINE REHEARSAL against the loopback Alpaca at {base} (replay from "
                 f"{sim_server.now().astimezone(NEW_YORK):%Y-%m-%d %H:%M}, speed "
                 f"{sim_speed or 'lockstep'})", width, "  "))
    else:
        credentials = load_credentials(keys_file)
    store_box: dict[str, AlpacaStore] = {}
    on_idle = None
    if sim_server is not None and sim_speed == 0:
        until = sim_server.now() + timedelta(minutes=sim_minutes) if sim_minutes else \
            _session_close(sim_server)
        on_idle = _SimDriver(sim_server, settings.bar_seconds, until, lambda: store_box.get("s"))
    if sim_server is not None and sim_speed > 0 and sim_minutes and max_steps is None:
        max_steps = max(1, int(sim_minutes * 60 // settings.bar_seconds))
    opts = PaperOptions(
        settings=settings, credentials=credentials, live=live, once=once, base_url=base,
        data_url=data_url, data_stream_url=data_stream_url,
        trading_stream_url=trading_stream_url, feed=feed, state_dir=state_dir,
        log_dir=log_dir, out=out, warmup_days=warmup_days, max_steps=max_steps,
        silence=stream_silence, clock_poll=clock_poll or (5.0 if sim else 30.0),
        on_idle=on_idle, on_store=lambda st: store_box.__setitem__("s", st),
        # a rehearsal replays far faster than real time against a server with no limit
        requests_per_minute=60_000.0 if sim else 200.0, rebuild_journal=rebuild_journal)
    label = "LIVE orders to the PAPER account" if live and not is_real_money(base) else \
        "LIVE orders with REAL MONEY" if live else "DRY RUN: decisions only, no orders sent"
    echo(fit(f"ratchet paper - {label}; symbols {', '.join(settings.symbols)}, "
             f"{settings.bar_interval} bars, feed {feed}; keys {mask(credentials.key_id)} from "
             f"{credentials.source}", width, "  "))
    echo(["State:", f"  {state_dir}", "Times are New York time."])
    board = Dashboard(console) if dashboard else None
    if board is not None:
        opts.dashboard = board
    else:  # one line per bar step, so a session is never silent
        opts.dashboard = StepPrinter(lambda line: echo([line]), live)
    if dispatcher is not None:
        echo([f"alerts ({level}) to {', '.join(dispatcher.labels)}"])
        opts.alerts, opts.alert_stream_down_s = dispatcher.start(), alert_stream_down
    try:
        if board is not None:
            board.__enter__()
        result = run_paper(opts, note=lambda s: console.print(f"[yellow]{s}[/yellow]"))
    finally:
        if board is not None:
            board.__exit__(None, None, None)
        if dispatcher is not None:
            dispatcher.close(timeout=10.0)
        if sim_server is not None:
            sim_server.stop()
    _print_summary(console, result, live)
    if not result.reconciled:
        raise UnknownStateError(result.reconcile)


def _alert_dispatcher(urls: list[str], level: str, live: bool, sim: bool) -> Any:
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


def _session_close(sim_server: Any) -> datetime | None:
    try:
        now = sim_server.now()
        clock = sim_server.app.book.calendar
        close = clock.next_close(int(now.timestamp() * 1e9)) if hasattr(clock, "next_close") \
            else None
        if close is not None:
            return datetime.fromtimestamp(close / 1e9, UTC)
    except Exception:  # noqa: BLE001 - a rehearsal without a known close runs until stopped
        return None
    return None


def _print_summary(console: Any, result: PaperResult, live: bool) -> None:
    from commands.output import echo_lines, kv_lines, out_width

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
