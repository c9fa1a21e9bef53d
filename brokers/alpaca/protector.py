"""The protective stop of an entry fill, placed off the main loop (issue 17, second pass).

The main thread runs the Strategy's bar step; at 60x replay the entry fills land on bar
boundaries, i.e. while that step runs, so a stop placed by the main loop waited ~27 ms per
fill for it. ``StopProtector`` places it from its own thread instead, woken by the
``trade_updates`` stream thread (``on_event``, called before the event is queued for the
main loop).

Thread safety: the helper thread only does venue I/O and the journal
(``OrderGateway.send_then_journal``: one POST, then intent and answer journaled in one synced
write; an ambiguous answer resolved by client order id, never resent; a crash between the
POST and the write is resolved at restart by adopting the stop from Alpaca's open orders).
It never touches a Backtrader object nor the broker's state: the main thread publishes
what the thread may do (``publish``: entries whose fill it may protect, with the rule and the
stop number, and only for symbols without a live, unresolved or selling order),
and takes the results back (``take``) to build the Backtrader order the Strategy adopts.

Exactly one stop: a symbol is either the thread's (a job, from the fill until the main thread
took the result) or the main thread's. Before the main thread sends any sell of a symbol it
``claim``s it (no new job for it until the next ``publish``) and takes a job in flight first;
the thread starts a job only for an entry the last ``publish`` allowed and no ``claim`` has
revoked since. ``paused`` keeps the thread out during reconciliations.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

import backtrader as bt
from alpaca.trading.enums import OrderSide, OrderType

from brokers.alpaca import parsing
from brokers.alpaca.client import OrderSpec
from brokers.alpaca.orders import OrderGateway, Outcome, SubmitResult
from brokers.alpaca.parsing import TradeUpdateRecord
from strategies import rules

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Armed:
    """An entry (or fallback) whose first fill the helper thread may protect: plain data
    copied from the Strategy's ``StopHandoff`` by the main thread."""

    entry_cid: str
    symbol: str
    strategy_id: str
    atr: float
    atr_stop_multiplier: float
    trail_pct: float
    seq: int  # the handoff's last stop number: the stop is ``seq + 1``


@dataclass
class Job:
    """One stop the helper thread places; the main thread takes it (``StopProtector.take``)."""

    armed: Armed
    qty: Decimal
    fill_price: float
    price: float
    spec: OrderSpec
    bar_time: datetime
    arrived: float  # perf_counter when the fill event arrived on the stream
    done: threading.Event = field(default_factory=threading.Event)
    result: SubmitResult | None = None
    finished: float = 0.0  # perf_counter when the venue answered

    @property
    def seq(self) -> int:
        """This stop's number in the position's numbering."""
        return self.armed.seq + 1


class StopProtector:
    """Places the stop of an entry fill from a helper thread (see the module docstring).

    ``bar_time(symbol)``: the bar the Strategy will see the fill with (the stop's client
    order id is built from it); it must only read plain values the main thread sets.
    """

    def __init__(self, gateway: OrderGateway,
                 bar_time: Callable[[str], datetime | None]) -> None:
        self.gateway = gateway
        self._bar_time = bar_time
        self._lock = threading.Lock()
        self._armed: dict[str, Armed] = {}  # by entry client order id
        self._jobs: dict[str, Job] = {}  # by symbol, until the main thread takes it
        self._paused = 0
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------- lifecycle (main thread)

    def start(self) -> None:
        """Start the helper thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="stop-protector",
                                            daemon=True)
            self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """No new jobs; the thread ends after the ones queued (the caller takes them)."""
        with self._lock:
            self._paused += 1
            self._armed.clear()
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    # ------------------------------------------------------------- main thread

    def publish(self, armed: dict[str, Armed]) -> None:
        """What the thread may protect from now on (replaces the last ``publish``)."""
        with self._lock:
            self._armed = dict(armed)

    def claim(self, symbol: str) -> Job | None:
        """The main thread is about to send a sell of ``symbol``: no new job for it until the
        next ``publish``. Returns the symbol's job (in flight or done): take it first."""
        with self._lock:
            self._armed = {k: a for k, a in self._armed.items() if a.symbol != symbol}
            return self._jobs.get(symbol)

    def busy(self, symbol: str) -> bool:
        """A job of ``symbol`` has not been taken yet."""
        with self._lock:
            return symbol in self._jobs

    def in_flight(self) -> bool:
        """A job's request has not been answered yet."""
        with self._lock:
            return any(not job.done.is_set() for job in self._jobs.values())

    def symbols(self) -> list[str]:
        """Symbols with a job not taken yet."""
        with self._lock:
            return sorted(self._jobs)

    def take(self, symbol: str, timeout: float | None = None) -> Job | None:
        """Wait up to ``timeout`` (None: as long as the request takes) for ``symbol``'s job
        and hand it over (removed). None: no job, or not finished in time (still owned by
        the thread: ask again)."""
        with self._lock:
            job = self._jobs.get(symbol)
        if job is None or not job.done.wait(timeout):
            return None
        with self._lock:
            if self._jobs.get(symbol) is job:
                del self._jobs[symbol]
                return job
        return None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No new jobs inside (e.g. a reconciliation reading open orders)."""
        with self._lock:
            self._paused += 1
            self._armed.clear()
        try:
            yield
        finally:
            with self._lock:
                self._paused -= 1

    # ------------------------------------------------------------- stream thread

    def on_event(self, ev: TradeUpdateRecord) -> bool:
        """A ``trade_updates`` event (stream thread): an allowed entry's fill starts a job.
        True if it did (the main thread then leaves this fill's stop to the thread)."""
        if ev.event not in ("fill", "partial_fill") or ev.order.side != "buy" \
                or ev.position_qty is None or ev.position_qty <= 0 or ev.price is None:
            return False
        arrived = ev.arrived or time.perf_counter()
        with self._lock:
            armed = self._armed.get(ev.order.client_order_id)
            if self._paused or armed is None or armed.symbol in self._jobs:
                return False
            job = self._job(armed, ev, arrived)
            if job is None:
                return False
            # one stop per symbol: nothing else of it until the main thread publishes again
            self._armed = {k: a for k, a in self._armed.items() if a.symbol != armed.symbol}
            self._jobs[armed.symbol] = job
        self._queue.put(job)
        return True

    def _job(self, armed: Armed, ev: TradeUpdateRecord, arrived: float) -> Job | None:
        fill_price = float(ev.price or 0)
        price = rules.fill_stop_price(fill_price, armed.atr, armed.atr_stop_multiplier,
                                      armed.trail_pct)
        if price is None:
            return None  # the Strategy's next bar sells at market instead
        when = self._bar_time(armed.symbol)
        if when is None:
            return None
        cid = rules.client_order_id(armed.strategy_id, armed.symbol, when, rules.Purpose.STOP,
                                    seq=armed.seq + 1)
        spec = OrderSpec(cid, armed.symbol, OrderSide.SELL, OrderType.STOP,
                         Decimal(ev.position_qty or 0),
                         parsing.choose_time_in_force(bt.Order.Stop, "stop"),
                         stop_price=Decimal(str(price)))
        return Job(armed, Decimal(ev.position_qty or 0), fill_price, price, spec, when,
                   arrived)

    # ------------------------------------------------------------- helper thread

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                # sent first, journaled right after: its client order id is deterministic,
                # so a crash in between is resolved at restart by adopting it from the open
                # orders, never by sending it again (the fsynced intent cost 7-15 ms a fill)
                job.result = self.gateway.submit(job.spec, "stop", job.bar_time,
                                                 journal_first=False)
            except Exception as exc:  # noqa: BLE001 - the order may exist: resolved by client order id
                logger.warning("%s: stop %s at the fill: %s", job.armed.symbol,
                               job.spec.client_order_id, exc)
                job.result = SubmitResult(Outcome.AMBIGUOUS, job.spec.client_order_id,
                                          reason=str(exc))
            job.finished = time.perf_counter()
            job.done.set()

