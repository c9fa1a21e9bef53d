"""``PaperSession``: the backtest's Strategy, unchanged, wired to Alpaca for one session.

The wiring (client, store, feeds, broker, Strategy, audit, state file), the run loop
(connect, reconcile, Cerebro until stopped) and the clean shutdown (settle, cancel or keep
entries, final reconciliation, run folder). ``run_paper`` is the entry point ``cli.py paper``,
tests and benchmarks call. Without ``PaperRun.live`` it is a DRY RUN: live bars, every
decision logged and audited, orders filled by a local shadow book with the backtest's fill
rules, nothing sent to Alpaca.

A state directory belongs to one account at one endpoint (recorded in the state file and the
journal; another account's files are refused). ``once`` leaves its working entries (DAY
limits) at Alpaca; the next run adopts them, so the limit timeout and the market fallback
still apply.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import backtrader as bt

from alerts.events import AlertSink
from alerts.sources import AuditAlerts, SessionMonitor, stopping_event
from analyzers.recorder import RunRecorder, write_parquet, write_run_folder
from analyzers.runfolder import make_run_dir
from brokers.alpaca.bars import BarRecorder
from brokers.alpaca.broker import AlpacaBroker, BrokerView
from brokers.alpaca.client import AlpacaClient
from brokers.alpaca.data import AlpacaData
from brokers.alpaca.journal import Journal
from brokers.alpaca.orders import OrderGateway
from brokers.alpaca.ports import PositionOwner, as_owner
from brokers.alpaca.state import (
    DRY_RUN,
    LIVE,
    DryRunBroker,
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
from ratchet.common.errors import BrokerError, ConfigError, RetryableError, UnknownStateError
from ratchet.common.perms import private_dir
from ratchet.engine.endpoints import check_endpoint, is_alpaca_host, stream_urls
from ratchet.engine.paper_run import PaperResult, PaperRun, SessionHooks, check_paper_settings
from strategies.signals import make_signal

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """What a view (the dashboard, the step lines) gets after each save."""

    mode: str
    endpoint: str
    store: AlpacaStore
    view: BrokerView
    state: dict[str, Any]


def install_signals(store: AlpacaStore, console_note: Callable[[str], None]) -> Callable[[], None]:
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


class PaperSession:
    """One paper session, wired: client, store, feeds, broker, Strategy, audit, state file."""

    def __init__(self, run: PaperRun, hooks: SessionHooks | None = None, *,
                 view: Callable[[Snapshot], None] | None = None,
                 alerts: AlertSink | None = None,
                 on_idle: Callable[[AlpacaStore], None] | None = None) -> None:
        self.run_opts = run
        self.cfg = run.alpaca
        self.hooks = hooks or SessionHooks()
        self.view = view
        self.alerts = alerts
        self.on_idle = on_idle
        settings = self.settings = run.settings
        check_paper_settings(settings)
        self.mode = LIVE if run.live else DRY_RUN
        check_endpoint(self.cfg.base_url, True)  # the command checks the flag; never guesses
        state_dir = self.state_dir = Path(run.state_dir)
        # one process per state dir: refused at once, naming the running one
        self.lock = StateDirLock(state_dir).acquire()
        try:
            self._setup()
        except BaseException:
            self.lock.release()
            raise

    def _setup(self) -> None:
        run, cfg, hooks = self.run_opts, self.cfg, self.hooks
        settings = self.settings
        state_dir = self.state_dir
        private_dir(Path(run.log_dir))
        self.state_path = state_dir / "portfolio_state.json"
        self.audit_path = Path(run.log_dir) / "audit_trail.csv"
        run.credentials.register()
        self._recovered: list[str] = []  # loud recoveries of broken files, for the audit
        self.saved = load_state(self.state_path, self.mode, self._recovered)
        self.client = AlpacaClient(run.credentials, base_url=cfg.base_url,
                                   data_url=cfg.data_url, feed=cfg.feed,
                                   rate_limit_max_wait=cfg.rate_limit_max_wait,
                                   trading_per_minute=cfg.requests_per_minute,
                                   data_per_minute=cfg.requests_per_minute)
        data_ws, trading_ws = stream_urls(cfg.base_url, cfg.feed)
        self.latency = LatencyProbe()
        clock_rate = hooks.clock_rate if hooks.clock_rate is not None else \
            (1.0 if is_alpaca_host(cfg.base_url) else 0.0)
        self.account_id: str | None = None
        if not self.audit_path.exists():  # account activity: this user only
            os.close(os.open(self.audit_path, os.O_CREAT | os.O_WRONLY, 0o600))
        self.audit = ModeAudit(self.mode, live_path=self.audit_path)
        idle = self.on_idle
        self.store = AlpacaStore(
            self.client, run.credentials, settings, make_signal(settings),
            data_stream_url=cfg.data_stream_url or data_ws,
            trading_stream_url=(cfg.trading_stream_url or trading_ws) if run.live else None,
            warmup_days=cfg.warmup_days, grace=cfg.bar_grace,
            silence_timeout=cfg.silence_for(settings.bar_seconds),
            clock_poll_s=cfg.clock_poll,
            recorder=BarRecorder(state_dir / "bars", settings.bar_interval, cfg.feed),
            max_steps=1 if run.once else run.max_steps,
            on_idle=None if idle is None else (lambda: idle(self.store)),
            on_step_done=StepCollector(),
            latency=self.latency, clock_rate=clock_rate, audit=self.audit,
            clock=hooks.clock)
        if hooks.on_store is not None:
            hooks.on_store(self.store)
        self.cerebro = cerebro = bt.Cerebro(stdstats=False, quicknotify=False)
        for symbol in settings.symbols:
            cerebro.adddata(AlpacaData(store=self.store, symbol=symbol, name=symbol),  # type: ignore[call-arg] # Backtrader params
                            name=symbol)
        self.journal: Journal | None = None
        self.broker: AlpacaBroker | DryRunBroker = self._broker()
        for line in self._recovered:
            self.audit.record(None, "recovery", "", "file_recovered", "broken_file",
                              detail=line)
        cerebro.setbroker(self.broker)
        cerebro.addstore(self.store)
        self.store.attach_broker(self.broker)
        kwargs = dict(hooks.strategy_kwargs)
        if settings.extended_hours:
            kwargs.setdefault("session", self.store.session)
        cerebro.addstrategy(hooks.strategy_cls, settings=settings, audit=self.audit,
                            market_open=self.store.market_open, **kwargs)
        cerebro.addanalyzer(RunRecorder, _name="recorder", ohlc=True)
        self.store.set_state_saver(self.save)
        self.monitor: SessionMonitor | None = None
        if self.alerts is not None:
            self._wire_alerts(self.alerts)

    def _wire_alerts(self, sink: AlertSink) -> None:
        """Alerts read what the session records: audit rows, stream status, saved state."""
        self.audit_alerts = AuditAlerts(sink, announce_start=not self.run_opts.once)
        self.audit.listeners.append(self.audit_alerts)
        clock = self.store.clock
        self.monitor = SessionMonitor(
            sink, self.store.stream_statuses, self.store.broker_time,
            lambda day: (clock.session_bounds(day, extended=False) or (None, None))[1],
            down_after=self.cfg.alert_stream_down)

    def _broker(self) -> AlpacaBroker | DryRunBroker:
        run, cfg = self.run_opts, self.cfg
        if run.live:
            self.journal = open_journal(Path(run.state_dir) / "journal.sqlite", self.saved,
                                        run.rebuild_journal, self._recovered)
            return AlpacaBroker(store=self.store, gateway=OrderGateway(self.client, self.journal),
                                journal=self.journal, settings=self.settings, audit=self.audit,
                                owner=self._owner, fence_s=self.hooks.fence_s,
                                stop_grace_s=cfg.stop_grace, stop_audit_s=cfg.stop_audit,
                                clock=self.hooks.clock)
        cash = self.settings.cash
        try:
            cash = float(self.client.get_account().cash)
        except Exception as exc:  # noqa: BLE001 - a dry run may run without a reachable account
            logger.warning("account unavailable (%s): the dry-run book starts with %.2f", exc,
                           cash)
        # extended hours: stops sleep outside regular hours
        return make_dry_run_broker(cash, self.settings.commission, self.store,
                                   self.store.session if self.settings.extended_hours else None)

    def _owner(self) -> PositionOwner | None:
        """The Strategy that owns the positions (the broker asks it for stop levels)."""
        strategies = self._strategies()
        return as_owner(strategies[0]) if strategies else None

    def _strategies(self) -> list[bt.Strategy]:
        return list(getattr(self.cerebro, "runningstrats", []) or [])

    def save(self) -> None:
        """Write portfolio_state.json (atomic) and refresh the dashboard."""
        cfg, store = self.cfg, self.store
        strategies = self._strategies()
        view = self.broker.view()
        last = {s: store.assembler.last_ts.get(s) for s in self.settings.symbols}
        state = {
            "schema": 1, "mode": self.mode, "endpoint": cfg.base_url,
            "account_id": self.account_id, "feed": cfg.feed,
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
        if self.view is not None:
            self.view(Snapshot(self.mode, cfg.base_url, store, view, state))

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
            if self.alerts is not None:
                if self.monitor is not None:
                    self.monitor.stop(final_check=False)
                why = "forced (second Ctrl+C)" if isinstance(exc, KeyboardInterrupt) else \
                    f"error: {exc}"
                self.alerts.emit(stopping_event(why, True, when=self._broker_now()))
            raise
        run = self.run_opts
        if self.alerts is not None and self.monitor is not None:
            self.monitor.check_close()  # the daily summary, if the session has closed
            self.audit_alerts.flush()
            why = f"{signals[0]} received" if signals else \
                f"--max-steps {run.max_steps} reached" if run.max_steps and \
                result.steps >= run.max_steps else \
                "end of the rehearsal" if self.on_idle is not None else "stop requested"
            if not run.once:  # cron runs every bar: no message per run
                self.alerts.emit(stopping_event(
                    why, False, result.steps, result.start_value, result.end_value,
                    result.positions, result.stops, when=self._broker_now()))
        return result

    def _broker_now(self) -> datetime | None:
        try:
            return self.store.broker_time()
        except Exception:  # noqa: BLE001 - only a time for the alert
            return None

    def _run(self, note: Callable[[str], None]) -> PaperResult:
        run, cfg, store = self.run_opts, self.cfg, self.store
        self.audit.record(None, "session", "", "start", self.mode,
                          detail=f"endpoint={cfg.base_url} feed={cfg.feed} "
                                 f"symbols={','.join(self.settings.symbols)}")
        restore = install_signals(store, note) if self.hooks.install_signals else \
            (lambda: None)
        report = ""
        # the broker shortens the GIL switch interval for its helper thread; the process
        # (a notebook, a test worker) gets its own back when the session ends
        switch_interval = sys.getswitchinterval()
        try:
            self._check_owner()
            store.connect(last_delivered=last_bars(self.saved))
            if not store.wait_connected(timeout=cfg.connect_timeout):
                raise ConfigError(
                    f"could not connect the Alpaca streams within {cfg.connect_timeout:g}s: "
                    f"check the keys, the endpoint ({cfg.base_url}) and the network")
            if self.monitor is not None:
                self.monitor.start()
            if isinstance(self.broker, AlpacaBroker):
                report = self.broker.startup(self.saved).summary()
            start_value = self.broker.getvalue()
            self._start_positions = {s: p["qty"] for s, p in self.broker.view().positions.items()}
            self.save()  # the state file holds the reconciled broker state before any bar
            note(f"{'LIVE (paper account)' if run.live else 'DRY RUN (no orders are sent)'}"
                 f": {store.clock.describe_wait()}")
            # what startup built (imports, clients, warm-up history) lives to the end: later
            # collections skip it (a full collection walking it inside a step cost 30-140 ms
            # of bar arrival -> order at 60x; issue 11); the rest between steps
            gc.collect()
            gc.freeze()
            strategy = self.cerebro.run()[0]
        except UnknownStateError as exc:
            raise ConfigError(f"not trading: the broker's state is unknown ({exc})") from None
        finally:
            gc.unfreeze()  # collected again from here on (a process may run more sessions)
            sys.setswitchinterval(switch_interval)
            restore()
            if self.monitor is not None:  # the streams close on purpose now: no outage
                self.monitor.stop(final_check=False)
            store.hub.stop()
        return self._finish(strategy, start_value, report)

    def _check_owner(self) -> None:
        """The state dir must belong to the account (and endpoint) traded now."""
        endpoint = self.cfg.base_url
        try:
            self.account_id = self.client.get_account().id or None
        except (RetryableError, BrokerError, UnknownStateError) as exc:
            if self.run_opts.live:
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
        check_owner(self.state_dir, endpoint, self.account_id, owners)
        if journal is not None:
            if journal.get_meta("endpoint") is None:
                if not journal.is_empty():
                    logger.warning("journal %s has no owner recorded (older version): it is "
                                   "taken as %s's", journal.path, endpoint)
                journal.set_meta("endpoint", endpoint)
            if self.account_id and journal.get_meta("account_id") is None:
                journal.set_meta("account_id", self.account_id)

    def _notify_strategy(self, strategy: bt.Strategy | None) -> None:
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

    def _finish(self, strategy: bt.Strategy, start_value: float, report: str) -> PaperResult:
        run, cfg, store = self.run_opts, self.cfg, self.store
        reconciled = True
        if isinstance(self.broker, AlpacaBroker):
            self.broker.closing = True  # no new entries or fallbacks from here on
            store.pump_events(0.0)  # trade updates that arrived during the last step
            self.broker.settle_for_shutdown()
            if cfg.cancel_entries_on_exit and not run.once:
                self.broker.cancel_working_entries()
            elif run.once:
                self.broker.wait_for_market_entries(cfg.once_fill_wait)
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
            self.broker.withdraw_unsent()
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
        if run.out is not None and store.status.steps == 0:
            logger.info("no bar was processed: no run folder written")
        elif run.out is not None:
            run_dir = private_dir(make_run_dir(Path(run.out), "paper" if run.live
                                               else "dryrun"))
            meta = {"mode": "paper" if run.live else "dry_run",
                    "symbols": list(self.settings.symbols),
                    "interval": self.settings.bar_interval, "endpoint": cfg.base_url,
                    "feed": cfg.feed, "start_value": start_value or self.settings.cash,
                    "open_positions": {s: p["qty"] for s, p in view.positions.items()},
                    "steps": store.status.steps, "data": str(Path(run.state_dir) / "bars"),
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


class StepCollector:
    """The store's ``on_step_done``: the cyclic garbage collector runs right after each step
    (the youngest generations; all of them every ``full_every`` steps), when the next bar is
    furthest away, so the collections the interpreter would start by itself (allocation
    counts) rarely fall inside a step, between a bar's arrival and its orders."""

    def __init__(self, full_every: int = 5) -> None:
        self.full_every = full_every
        self.steps = 0

    def __call__(self) -> None:
        self.steps += 1
        gc.collect(2 if self.steps % self.full_every == 0 else 1)


def run_paper(run: PaperRun, note: Callable[[str], None] = lambda s: None, *,
              hooks: SessionHooks | None = None,
              view: Callable[[Snapshot], None] | None = None,
              alerts: AlertSink | None = None,
              on_idle: Callable[[AlpacaStore], None] | None = None) -> PaperResult:
    """Run one paper session until stopped (signal, ``once``, ``max_steps``).

    ``note`` gets the console messages (signals, the market wait); ``view`` a ``Snapshot``
    after each save (the dashboard); ``alerts`` the session's alert events (the caller starts
    and closes the sink); ``on_idle`` the store whenever no step is waiting (a lockstep
    rehearsal advances the loopback's clock there). ``hooks``: tests and benchmarks only.
    """
    session = PaperSession(run, hooks or SessionHooks(), view=view, alerts=alerts,
                           on_idle=on_idle)
    try:
        return session.run(note)
    finally:
        session.lock.release()
