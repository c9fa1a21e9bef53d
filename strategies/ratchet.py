"""The one Strategy: signal entries, ATR sizing, limit-then-market entries, a ratcheting stop.

The same class runs in a backtest (``brokers.backtest.SimBroker``) and on Alpaca
(``brokers.alpaca``). It reads two extra lines from every data feed, ``signal`` and ``atr``,
computed by the feed with ``strategies.signals`` and ``strategies.rules.atr_wilder``; every
rule it applies is a plain function in ``strategies.rules``. Time comes from the bars, except
where a live broker acts before a symbol's first bar: a position adopted at startup is dated
by the wall clock (its real entry time is unknown), and so is an order notification then.
A backtest never takes those paths, so its results never depend on the wall clock.

Broker contract beyond Backtrader's: ``broker.replace_stop_order(order, price, cid, size=None)``
moves the resting stop (Alpaca: one PATCH; backtest: cancel + new in the same step).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import backtrader as bt

from analyzers.audit import Audit
from feeds import sessions
from ratchet.common.config import Settings
from strategies import rules
from strategies.rules import Purpose, Reason, StopState

logger = logging.getLogger(__name__)

_STATUS = {
    bt.Order.Created: "created",
    bt.Order.Submitted: "submitted",
    bt.Order.Accepted: "accepted",
    bt.Order.Partial: "partially_filled",
    bt.Order.Completed: "filled",
    bt.Order.Canceled: "canceled",
    bt.Order.Expired: "expired",
    bt.Order.Margin: "margin",
    bt.Order.Rejected: "rejected",
}


def _same(order: bt.Order, tracked: bt.Order | None) -> bool:
    """Is a notified order the tracked one? Brokers notify with clones: compare refs."""
    return tracked is not None and order.ref == tracked.ref


def _covers(stop: bt.Order, position: float, level: float) -> bool:
    """Does the resting ``stop`` sell exactly ``position`` at ``level``?"""
    return (abs(abs(stop.executed.remsize) - position) < 1e-9
            and abs(float(stop.created.price or 0.0) - level) < 1e-6)


def status_name(order: bt.Order) -> str:
    """Lower-case status name of a Backtrader order."""
    return _STATUS.get(order.status, str(order.status))


@dataclass
class OpenTrade:
    """Fills of the position currently open in one symbol."""

    entry_time: datetime
    entry_bar: int
    entry_cid: str
    entry_qty: float = 0.0
    entry_value: float = 0.0
    exit_qty: float = 0.0
    exit_value: float = 0.0
    commission: float = 0.0
    exit_time: datetime | None = None
    exit_cid: str = ""
    exit_reason: str = ""
    #: shares sold per exit reason, in the order the reasons first sold (a stop may sell part
    #: of a position and a SELL signal the rest)
    exit_by_reason: dict[str, float] = field(default_factory=dict)


@dataclass
class Book:
    """Per-symbol working state of the Strategy (plain data; exported for restarts)."""

    symbol: str
    entry: bt.Order | None = None
    entry_placed: datetime | None = None
    entry_cancel_reason: str = ""
    fallback: bt.Order | None = None
    stop: bt.Order | None = None
    exit: bt.Order | None = None
    exit_reason: str = ""
    stop_state: StopState | None = None
    entry_atr: float = math.nan
    stop_seq: int = 0
    trade: OpenTrade | None = None
    warm: bool = False
    seen_len: int = 0
    fills_seen: dict[int, int] = field(default_factory=dict)
    #: the position's stop as handed to a live broker (placed at the fill; adopted here)
    handoff: rules.StopHandoff | None = None

    def working_entry(self) -> bool:
        """An entry or fallback order is still working."""
        return any(o is not None and o.alive() for o in (self.entry, self.fallback))

    def working_any(self) -> bool:
        """Any entry, fallback or exit order is working (the duplicate-order guard)."""
        return self.working_entry() or (self.exit is not None and self.exit.alive())


class RatchetStrategy(bt.Strategy):
    """SPEC's strategy.

    Params: ``settings`` (Settings), ``audit`` (Audit), ``market_open`` (callable(bar_time) ->
    bool; None = the feed's ``session`` line decides, see ``feeds.sessions``, or always
    open without one), ``session`` (callable(bar_time) -> ``"regular"``, ``"extended"`` or
    ``"closed"``; None = the feed's ``session`` line, or every bar regular without one).

    Each symbol is decided on its own bars from its own warm-up on: ``prenext`` (some feed
    has no bar yet) runs the same loop as ``next``, and a feed without a new bar in a step
    (not started yet, ended, or a gap) is skipped in that step.
    """

    params = (
        ("settings", None),
        ("audit", None),
        ("market_open", None),
        ("session", None),
    )

    def __init__(self) -> None:
        self.cfg: Settings = self.p.settings or Settings()
        self.audit: Audit = self.p.audit or Audit()
        self._market_open: Callable[[datetime], bool] | None = self.p.market_open
        self._session: Callable[[datetime], str] | None = self.p.session
        self.books: dict[str, Book] = {d._name: Book(d._name) for d in self.datas}
        self.closed_trades: list[dict[str, Any]] = []
        self.bar_count = 0
        self._times: dict[float, datetime] = {}
        self._positions: dict[Any, Any] | None = None
        self._busy_count: tuple[int, int] | None = None

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def bar_time(data: bt.DataBase) -> datetime:
        """Start time (UTC) of ``data``'s current bar."""
        return data.datetime.datetime(0).replace(tzinfo=UTC)

    def _utc(self, num: float) -> datetime:
        """``bt.num2date(num)`` in UTC, each distinct bar time converted once (every symbol
        shares the bar times; ``num2date`` is slow). The cache is kept small."""
        got = self._times.get(num)
        if got is None:
            if len(self._times) >= 4096:
                self._times.clear()
            got = self._times[num] = bt.num2date(num).replace(tzinfo=UTC)
        return got

    def _now(self, data: bt.DataBase) -> datetime:
        """``bar_time(data)`` through the cache (feeds without their own time zone)."""
        line = data.lines.datetime
        if line._tz is not None:
            return self.bar_time(data)
        return self._utc(line.array[line._idx])

    def _book(self, order: bt.Order) -> Book:
        return self.books[order.p.data._name]  # .p: Order attributes go through __getattr__

    def _stop_cid(self, book: Book, when: datetime) -> str:
        h = book.handoff
        if h is not None:  # one numbering with the stops a live broker placed for us
            book.stop_seq = max(book.stop_seq, h.seq)
        book.stop_seq += 1
        if h is not None:
            h.seq = book.stop_seq
        return rules.client_order_id(self.cfg.strategy_id, book.symbol, when, Purpose.STOP,
                                     seq=book.stop_seq)

    def _reserved_cash(self) -> float:
        # Cash promised to working entries: sizing must not spend it twice.
        total = 0.0
        for b in self.books.values():
            for o in (b.entry, b.fallback):
                if o is not None and o.alive():
                    price = o.created.price or o.data.close[0]
                    total += abs(o.executed.remsize) * price
        return total

    def open_positions(self) -> int:
        """Symbols with a non-zero position."""
        return sum(1 for d in self.datas if self.getposition(d).size != 0)

    def working_entries(self) -> int:
        """Symbols with a working entry but no position yet."""
        return sum(
            1 for d in self.datas
            if self.books[d._name].working_entry() and self.getposition(d).size == 0
        )

    def _busy(self) -> tuple[int, int]:
        """(``open_positions()``, ``working_entries()``), counted once per step on the
        backtest broker: its positions change only between steps, and the working entries
        only through this Strategy's buy/sell/cancel, which drop the count."""
        if self._positions is None:
            return self.open_positions(), self.working_entries()
        if self._busy_count is None:
            positions = self._positions
            held = working = 0
            for data, book, _dt, _sig in self._lines:
                if positions[data].size != 0:
                    held += 1
                elif book.working_entry():
                    working += 1
            self._busy_count = (held, working)
        return self._busy_count

    def buy(self, *args: Any, **kwargs: Any) -> bt.Order:
        self._busy_count = None
        return super().buy(*args, **kwargs)

    def sell(self, *args: Any, **kwargs: Any) -> bt.Order:
        self._busy_count = None
        return super().sell(*args, **kwargs)

    def cancel(self, order: bt.Order) -> None:
        self._busy_count = None
        super().cancel(order)

    # ------------------------------------------------------------------ the bar loop

    def start(self) -> None:
        # Direct references to each feed's line buffers: next() runs once per bar per
        # symbol, and Backtrader's attribute chains are its slowest part.
        self._lines = [
            (data, self.books[data._name], data.lines.datetime, data.lines.signal)
            for data in self.datas
        ]
        # The backtest feed carries a precomputed session code per bar (feeds.sessions).
        self._session_lines = {
            data._name: getattr(data.lines, "session", None) for data in self.datas
        }
        # Held symbols with nothing to do are skipped in next(); that needs each bar's high
        # and session, and Backtrader's own positions (the backtest broker's are objects
        # updated in place; other brokers are asked through getposition).
        self._held_lines = {
            data._name: (data.lines.high, self._session_lines[data._name])
            for data in self.datas
        }
        self._positions = self.broker.positions \
            if isinstance(self.broker, bt.brokers.BackBroker) else None

    def _getminperstatus(self) -> int:
        # Backtrader recomputes max(minimum period - len) over every feed on every step, but
        # reads only its sign (< 0 next, 0 nextstart, > 0 prenext). Lengths only grow, so
        # once it is negative it stays negative: stop recomputing it.
        if self._minperstatus < 0:
            return self._minperstatus
        return int(super()._getminperstatus())

    def prenext(self) -> None:
        # Some feed has no bar yet (a later listing, a symbol whose history is still empty):
        # the others are decided all the same, each from its own warm-up.
        self.next()

    def next(self) -> None:
        self.bar_count += 1
        self._busy_count = None  # fills between steps change the positions
        positions = self._positions
        getposition = self.getposition if positions is None else positions.__getitem__
        for data, book, dtbuf, sigbuf in self._lines:
            n = dtbuf.lencount
            if n == book.seen_len:
                continue  # no new bar for this symbol in this step (a gap in its data)
            book.seen_len = n
            if (book.warm and sigbuf.array[sigbuf._idx] == 0.0 and book.entry is None
                    and book.fallback is None):
                size = getposition(data).size
                if size == 0:
                    continue  # flat, nothing working, no signal: nothing to decide
                if size > 0 and self._idle_hold(book):
                    continue  # held, no signal, no new high: the stop stays where it is
            self._on_bar(data, book)

    def _idle_hold(self, book: Book) -> bool:
        """Would ``_on_bar`` do nothing for this held symbol (no signal, no working entry)?
        True on a regular-hours bar whose high does not lift the stop: ``_ratchet`` would
        leave the level as it is, and nothing else acts without a signal."""
        if self._session is not None:
            return False  # a session callable: let _on_bar ask it
        high, session = self._held_lines[book.symbol]
        if session is not None and int(session.array[session._idx]) & 3 != sessions.REGULAR:
            return False  # outside regular hours the strategy enforces the stop itself
        st = book.stop_state
        if st is None:
            return True  # _ratchet has nothing to move
        return (high.array[high._idx] <= st.highest_high and st.level >= st.fixed_stop
                and st.level >= st.trail_stop)

    def session_of(self, when: datetime) -> str:
        """``regular``, ``extended`` or ``closed`` for a bar time (the ``session`` param)."""
        return self._session(when) if self._session is not None else "regular"

    def _session_at(self, data: bt.DataBase, now: datetime) -> str:
        """Session of ``data``'s current bar: the ``session`` param if given, else the
        feed's ``session`` line, else ``regular``."""
        line = self._session_lines.get(data._name) if self._session is None else None
        if line is None:
            return self.session_of(now)
        return sessions.name_of(line.array[line._idx])

    def _may_open(self, data: bt.DataBase, now: datetime) -> bool:
        """May a NEW order go out for a decision on ``data``'s current bar? The
        ``market_open`` param if given (paper), else the feed's ``session`` line (not closed,
        not the last bar of the session window), else yes."""
        if self._market_open is not None:
            return self._market_open(now)
        line = self._session_lines.get(data._name)
        return True if line is None else sessions.may_open(line.array[line._idx])

    def _on_bar(self, data: bt.DataBase, book: Book) -> None:
        now = self._now(data)
        position = self.getposition(data).size
        extended = self._session_at(data, now) == "extended"
        if position > 0 and extended and self._stop_breached(data, book):
            # Alpaca's resting stops sleep outside regular hours: enforce the stop here.
            reason = book.stop_state.binding if book.stop_state else Reason.STOP.value
            self._exit(data, book, now, reason, extended=True)
            if book.stop_state is not None:  # the trail still counts this bar's high
                book.stop_state = book.stop_state.advance(float(data.high[0]))
        elif position > 0:
            self._ratchet(data, book, now)
        entry_working = book.entry is not None and book.entry.alive()
        if entry_working and book.entry_placed is not None and rules.limit_timed_out(
            book.entry_placed, now, self.cfg.limit_order_timeout, self.cfg.bar_seconds
        ):
            self._cancel_entry(data, book, now, Reason.LIMIT_TIMEOUT)
        signal = data.signal[0]
        if math.isnan(signal) or math.isnan(data.atr[0]):
            if not book.warm and len(data) == 1:
                self.audit.record(now, "decision", book.symbol, "wait", Reason.INSUFFICIENT_DATA)
            return
        if not book.warm:
            book.warm = True
            self.audit.record(now, "decision", book.symbol, "ready", "warmup_complete")
        if signal > 0:
            self._on_buy(data, book, now)
        elif signal < 0:
            self._on_sell(data, book, now)

    def _stop_breached(self, data: bt.DataBase, book: Book) -> bool:
        if book.stop_state is None or (book.exit is not None and book.exit.alive()):
            return False
        return float(data.low[0]) <= rules.round_price(book.stop_state.level)

    def _on_buy(self, data: bt.DataBase, book: Book, now: datetime) -> None:
        market_open = self._may_open(data, now)
        extended = self._session_at(data, now) == "extended"
        if extended and not self.cfg.extended_hours:
            market_open = False
        has_position = self.getposition(data).size != 0
        has_working_order = book.working_any()
        if market_open and not has_position and not has_working_order:
            open_positions, working_entries = self._busy()
        else:
            open_positions = working_entries = 0  # check_entry refuses before reading them
        guard = rules.check_entry(
            has_position=has_position,
            has_working_order=has_working_order,
            open_positions=open_positions,
            working_entries=working_entries,
            max_positions=self.cfg.max_positions,
            market_open=market_open,
        )
        price = float(data.close[0])
        atr = float(data.atr[0])
        if not guard.ok:
            self.audit.record(now, "decision", book.symbol, "skip_buy", guard.reason or "",
                              price=price)
            return
        equity = self.broker.getvalue()
        cash = self.broker.getcash() - self._reserved_cash()
        size = rules.position_size(
            equity, cash, price, atr,
            risk_per_trade_pct=self.cfg.risk_per_trade_pct,
            atr_stop_multiplier=self.cfg.atr_stop_multiplier,
            max_position_pct=self.cfg.max_position_pct,
            fractional=self.cfg.fractional_shares,
        )
        if size.shares <= 0:
            self.audit.record(now, "decision", book.symbol, "skip_buy", Reason.SIZE_ZERO,
                              price=price, atr=atr, equity=round(equity, 2),
                              cash=round(cash, 2), binding=size.binding)
            return
        cid = rules.client_order_id(self.cfg.strategy_id, book.symbol, now, Purpose.ENTRY)
        # what a live broker needs to protect the fill the moment it happens (our own rule)
        book.handoff = rules.StopHandoff(book.symbol, self.cfg.strategy_id, atr,
                                         self.cfg.atr_stop_multiplier, self.cfg.trail_stop_pct,
                                         seq=book.stop_seq)
        if self.cfg.use_limit_orders or extended:  # extended hours accept only limits
            limit = rules.round_limit_buy(price)
            order = self.buy(data=data, size=size.shares, exectype=bt.Order.Limit, price=limit,
                             cid=cid, purpose=Purpose.ENTRY.value, extended_hours=extended,
                             handoff=book.handoff)
        else:
            limit = None
            order = self.buy(data=data, size=size.shares, exectype=bt.Order.Market,
                             cid=cid, purpose=Purpose.ENTRY.value, handoff=book.handoff)
        book.entry, book.entry_placed, book.entry_cancel_reason = order, now, ""
        book.entry_atr = atr
        book.fallback = None
        self.audit.record(now, "decision", book.symbol, "buy", Reason.SIGNAL, qty=size.shares,
                          price=limit if limit is not None else price, client_order_id=cid,
                          atr=atr, binding=size.binding, equity=round(equity, 2),
                          order_type="limit" if limit is not None else "market")

    def _on_sell(self, data: bt.DataBase, book: Book, now: datetime) -> None:
        position = self.getposition(data).size
        if book.working_entry():
            self._cancel_entry(data, book, now, Reason.SIGNAL)
        if position <= 0:
            self.audit.record(now, "decision", book.symbol, "skip_sell", Reason.NO_POSITION)
            return
        if book.exit is not None and book.exit.alive():
            self.audit.record(now, "decision", book.symbol, "skip_sell", Reason.DUPLICATE_ORDER)
            return
        self._exit(data, book, now, Reason.SIGNAL.value,
                   extended=self._session_at(data, now) == "extended")

    def _exit(self, data: bt.DataBase, book: Book, now: datetime, reason: str,
              extended: bool) -> None:
        """Cancel the resting stop and sell the whole position (a limit at the close in
        extended hours, where Alpaca takes only limit orders; market otherwise)."""
        position = self.getposition(data).size
        if book.working_entry():
            self._cancel_entry(data, book, now,
                               Reason.SIGNAL if reason == Reason.SIGNAL else Reason.STOP)
        self._adopt_broker_stop(book)  # a live broker may have protected a fill meanwhile
        # The sell goes first, then the stop's cancel: Alpaca's broker cancels the resting
        # stop itself before the exit (it holds the shares) and journals the exit meanwhile;
        # the backtest cancels the stop in this same step either way.
        stop, book.stop = book.stop, None
        cid = rules.client_order_id(self.cfg.strategy_id, book.symbol, now, Purpose.EXIT)
        close = float(data.close[0])
        if extended:
            book.exit = self.sell(data=data, size=position, exectype=bt.Order.Limit,
                                  price=rules.round_limit_sell(close), cid=cid,
                                  purpose=Purpose.EXIT.value, extended_hours=True)
        else:
            book.exit = self.sell(data=data, size=position, exectype=bt.Order.Market, cid=cid,
                                  purpose=Purpose.EXIT.value)
        if stop is not None and stop.alive():
            self.cancel(stop)
        book.exit_reason = reason
        self.audit.record(now, "decision", book.symbol, "sell", reason, qty=position,
                          price=close, client_order_id=cid,
                          order_type="limit" if extended else "market")

    def _cancel_entry(self, data: bt.DataBase, book: Book, now: datetime, reason: Reason) -> None:
        for order in (book.entry, book.fallback):
            if order is None or not order.alive():
                continue
            book.entry_cancel_reason = reason.value
            self.audit.record(now, "decision", book.symbol, "cancel_entry", reason,
                              qty=abs(order.executed.remsize),
                              client_order_id=order.info.get("cid", ""))
            self.cancel(order)
            if not order.alive():
                # A synchronous broker (the backtest) cancels at once: act on it now.
                self._after_entry_closed(order, book, now)

    # ------------------------------------------------------------------ stops

    def _ratchet(self, data: bt.DataBase, book: Book, now: datetime) -> None:
        if book.stop_state is None:
            return
        new_state = book.stop_state.advance(float(data.high[0]))
        old_level = rules.round_price(book.stop_state.level)
        new_level = rules.round_price(new_state.level)
        book.stop_state = new_state
        if book.handoff is not None:
            book.handoff.state = new_state
        if new_level <= old_level or book.stop is None or not book.stop.alive():
            return
        if new_level >= float(data.close[0]):
            # The raised stop is already through the market (the bar fell more than the trail
            # from its high): it is hit. Alpaca refuses such a stop, so sell now.
            self._exit(data, book, now, new_state.binding,
                       extended=self._session_at(data, now) == "extended")
            return
        cid = self._stop_cid(book, now)
        book.stop = self.broker.replace_stop_order(book.stop, new_level, cid)
        self.audit.record(now, "decision", book.symbol, "raise_stop", Reason.RATCHET,
                          price=new_level, client_order_id=cid, previous=old_level,
                          binding=new_state.binding)

    def _protect(self, data: bt.DataBase, book: Book, now: datetime, fill_price: float) -> None:
        """Place or resize the resting stop so it covers the whole position."""
        position = self.getposition(data).size
        if position <= 0 or (book.exit is not None and book.exit.alive()):
            return  # flat, or an exit is already selling the position
        adopted = self._adopt_broker_stop(book)
        if book.stop_state is None:
            atr = book.entry_atr if math.isfinite(book.entry_atr) else float(data.atr[0])
            book.stop_state = rules.initial_stop(fill_price, atr, self.cfg.atr_stop_multiplier,
                                                 self.cfg.trail_stop_pct)
        if book.handoff is not None:
            book.handoff.state = book.stop_state
        level = rules.round_price(book.stop_state.level)
        if rules.stop_through_market(level, float(data.close[0])):
            # Already through the market: a stop order would be refused (Alpaca) or fire at
            # the next open anyway (backtest). Exit at once instead.
            self._exit(data, book, now, book.stop_state.binding,
                       extended=self._session_at(data, now) == "extended")
            return
        if adopted and book.stop is not None and _covers(book.stop, position, level):
            # The live broker placed exactly this stop at the fill (our rule, our id): the
            # decision is ours, already carried out; nothing to send.
            cid = book.stop.info.get("cid", "")
            expected = rules.client_order_id(self.cfg.strategy_id, book.symbol, now,
                                             Purpose.STOP, seq=book.stop_seq)
            if cid != expected:
                logger.warning("%s: adopted stop %s; this bar would have named it %s",
                               book.symbol, cid, expected)
            action = "resize_stop" if book.stop.info.get("replaces") else "place_stop"
            self.audit.record(now, "decision", book.symbol, action, book.stop_state.binding,
                              qty=position, price=level, client_order_id=cid,
                              fixed=round(book.stop_state.fixed_stop, 4),
                              trail=round(book.stop_state.trail_stop, 4),
                              placed_by="broker_at_event")
            return
        cid = self._stop_cid(book, now)
        if book.stop is not None and book.stop.alive():
            book.stop = self.broker.replace_stop_order(book.stop, level, cid, size=position)
            action = "resize_stop"
        else:
            book.stop = self.sell(data=data, size=position, exectype=bt.Order.Stop, price=level,
                                  cid=cid, purpose=Purpose.STOP.value, handoff=book.handoff)
            action = "place_stop"
        self.audit.record(now, "decision", book.symbol, action, book.stop_state.binding,
                          qty=position, price=level, client_order_id=cid,
                          fixed=round(book.stop_state.fixed_stop, 4),
                          trail=round(book.stop_state.trail_stop, 4))

    def _adopt_broker_stop(self, book: Book) -> bool:
        """Take over the stop a live broker placed for this position at a fill or after a
        lost stop (``StopHandoff.placed``), instead of sending a second one."""
        h = book.handoff
        placed = h.placed if h is not None else None
        if h is None or not isinstance(placed, bt.Order):
            return False
        h.placed = None
        if not placed.alive():
            return False
        book.stop = placed
        if book.stop_state is None and h.state is not None:
            book.stop_state = h.state
        book.stop_seq = max(book.stop_seq, h.seq)
        return True

    # ------------------------------------------------------------------ notifications

    def notify_order(self, order: bt.Order) -> None:
        book = self._book(order)
        purpose = order.info.get("purpose", "")
        cid = order.info.get("cid", "")
        data = order.p.data
        now = self._now(data) if len(data) else datetime.now(UTC)
        new_fills = self._new_fills(order, book)
        for dt_num, size, price in new_fills:
            fill_time = self._utc(dt_num) if dt_num else now
            extra = {} if size > 0 else {"exit_reason": self._exit_reason(book, purpose)}
            self.audit.record(fill_time, "fill", book.symbol, "buy" if size > 0 else "sell",
                              purpose, qty=abs(size), price=price, client_order_id=cid,
                              **extra)
            self._apply_fill(order, book, fill_time, size, price, purpose)
        if order.status in (bt.Order.Submitted, bt.Order.Partial, bt.Order.Completed) or \
                (order.status == bt.Order.Accepted and not new_fills):
            self.audit.record(now, "order", book.symbol, status_name(order), purpose,
                              qty=abs(order.size), price=order.created.price,
                              client_order_id=cid)
        elif order.status in (bt.Order.Canceled, bt.Order.Expired, bt.Order.Margin,
                              bt.Order.Rejected):
            self.audit.record(now, "order", book.symbol, status_name(order), purpose,
                              qty=abs(order.executed.remsize), client_order_id=cid)
        if purpose in (Purpose.ENTRY, Purpose.FALLBACK):
            if new_fills:
                self._protect(data, book, now, new_fills[-1][2])
            if not order.alive():
                self._after_entry_closed(order, book, now)
        elif purpose == Purpose.STOP:
            # The tracked stop died without filling (refused, expired, or cancelled by someone
            # else, e.g. in Alpaca's dashboard): a position must never sit unprotected.
            if order.status in (bt.Order.Rejected, bt.Order.Margin, bt.Order.Expired,
                                bt.Order.Canceled) and _same(order, book.stop) \
                    and self._adopt_broker_stop(book):
                # a live broker already replaced it (someone else canceled it): ours now
                adopted: bt.Order = book.stop  # set by _adopt_broker_stop
                self.audit.record(now, "decision", book.symbol, "adopt_stop",
                                  status_name(order), qty=abs(adopted.executed.remsize),
                                  price=adopted.created.price,
                                  client_order_id=adopted.info.get("cid", ""), replaces=cid)
            elif order.status in (bt.Order.Rejected, bt.Order.Margin, bt.Order.Expired,
                                  bt.Order.Canceled) and _same(order, book.stop):
                logger.error("%s: protective stop %s is %s; re-placing it", book.symbol, cid,
                             status_name(order))
                self.audit.record(now, "decision", book.symbol, "replace_lost_stop",
                                  status_name(order), client_order_id=cid)
                book.stop = None
                self._protect(data, book, now, float(data.close[0]))
        elif purpose == Purpose.EXIT and not order.alive():
            # Done, or did not happen (e.g. the stop filled first): protect whatever is left.
            book.exit = None
            if self.getposition(data).size > 0 and (book.stop is None or not book.stop.alive()):
                self._protect(data, book, now, float(data.close[0]))

    def _new_fills(self, order: bt.Order, book: Book) -> list[tuple[float, float, float]]:
        bits = order.executed.exbits
        seen = book.fills_seen.get(order.ref, 0)
        book.fills_seen[order.ref] = len(bits)
        return [(b.dt, b.size, b.price) for b in list(bits)[seen:]]

    def _after_entry_closed(self, order: bt.Order, book: Book, now: datetime) -> None:
        """An entry or fallback order is done: send the fallback for a timed-out remainder."""
        if _same(order, book.entry):
            book.entry = None
            book.entry_placed = None
        if _same(order, book.fallback):
            book.fallback = None
        if order.info.get("purpose") != Purpose.ENTRY or order.status == bt.Order.Completed:
            return
        if book.entry_cancel_reason != Reason.LIMIT_TIMEOUT:
            return
        if order.info.get("extended_hours"):
            # No market orders outside regular hours: the entry simply lapses.
            self.audit.record(now, "decision", book.symbol, "skip_buy", Reason.LIMIT_TIMEOUT,
                              client_order_id=order.info.get("cid", ""),
                              note="no market fallback in extended hours")
            book.entry_cancel_reason = ""
            return
        market_open = self._may_open(order.data, now)
        if not market_open:
            # A market order now would wait for the next open and fill on its gap.
            self.audit.record(now, "decision", book.symbol, "skip_buy", Reason.MARKET_CLOSED,
                              client_order_id=order.info.get("cid", ""), note="no fallback")
            book.entry_cancel_reason = ""
            return
        remainder = rules.remaining_qty(abs(order.size), abs(order.executed.size))
        if not self.cfg.fractional_shares:
            remainder = math.floor(remainder + 1e-9)
        if remainder <= 0:
            return
        # The cash was promised at the limit price; the market order pays whatever the market
        # asks now. Size it to what the cash affords at the last close, so the broker does not
        # refuse it for margin and the entry does not vanish silently.
        price = float(order.data.close[0])
        cash = self.broker.getcash() - self._reserved_cash()
        affordable = rules.affordable_qty(cash, price, self.cfg.commission,
                                          self.cfg.fractional_shares)
        if affordable < remainder:
            logger.info("%s: fallback cut from %s to %s shares (cash %.2f at %.4f)",
                        book.symbol, remainder, affordable, cash, price)
            if affordable <= 0:
                self.audit.record(now, "decision", book.symbol, "skip_buy", Reason.SIZE_ZERO,
                                  qty=remainder, price=price,
                                  client_order_id=order.info.get("cid", ""),
                                  cash=round(cash, 2), note="fallback: cash affords no share")
                book.entry_cancel_reason = ""
                return
            remainder = affordable
        cid = rules.client_order_id(self.cfg.strategy_id, book.symbol, now, Purpose.FALLBACK)
        book.fallback = self.buy(data=order.data, size=remainder, exectype=bt.Order.Market,
                                 cid=cid, purpose=Purpose.FALLBACK.value, handoff=book.handoff)
        book.entry_cancel_reason = ""
        self.audit.record(now, "decision", book.symbol, "buy", Reason.FALLBACK, qty=remainder,
                          client_order_id=cid, filled=abs(order.executed.size))

    @staticmethod
    def _exit_reason(book: Book, purpose: str) -> str:
        """Why a sell fill happened: ``stop``/``trail`` (whichever stop was binding) for the
        resting stop, else the reason of the exit order (``signal``, or the stop enforced
        by the strategy)."""
        if purpose == Purpose.STOP:
            return rules.stop_exit_reason(book.stop_state) if book.stop_state \
                else Reason.STOP.value
        return book.exit_reason or Reason.SIGNAL.value

    def _apply_fill(self, order: bt.Order, book: Book, when: datetime, size: float,
                    price: float, purpose: str) -> None:
        data = order.data
        comm = abs(size) * price * self.cfg.commission
        if size > 0:
            if book.trade is None:
                book.trade = OpenTrade(when, len(data), order.info.get("cid", ""))
            book.trade.entry_qty += size
            book.trade.entry_value += size * price
            book.trade.commission += comm
            return
        trade = book.trade
        if trade is None:  # an exit of a position adopted from the broker
            trade = book.trade = OpenTrade(when, len(data), "", entry_qty=abs(size),
                                           entry_value=abs(size) * price)
        trade.exit_qty += -size
        trade.exit_value += -size * price
        trade.commission += comm
        trade.exit_time = when
        trade.exit_cid = order.info.get("cid", "")
        reason = self._exit_reason(book, purpose)
        trade.exit_by_reason[reason] = trade.exit_by_reason.get(reason, 0.0) - size
        # The trade's reason: the one that sold the most shares (the first one on a tie).
        trade.exit_reason = max(trade.exit_by_reason, key=lambda r: trade.exit_by_reason[r])
        if self.getposition(data).size <= 0:
            self._close_trade(data, book)

    def _close_trade(self, data: bt.DataBase, book: Book) -> None:
        t = book.trade
        if t is None:
            return
        entry_price = t.entry_value / t.entry_qty if t.entry_qty else math.nan
        exit_price = t.exit_value / t.exit_qty if t.exit_qty else math.nan
        pnl = t.exit_value - t.entry_value - t.commission
        self.closed_trades.append({
            "symbol": book.symbol,
            "entry_time": t.entry_time,
            "exit_time": t.exit_time,
            "entry_price": entry_price,
            "exit_price": exit_price,
            "qty": t.entry_qty,
            "pnl": pnl,
            "return_pct": pnl / t.entry_value if t.entry_value else math.nan,
            "exit_reason": t.exit_reason,
            "exit_reasons": ",".join(f"{r}:{q:g}" for r, q in t.exit_by_reason.items()),
            "bars_held": max(0, len(data) - t.entry_bar),
            "entry_order_id": t.entry_cid,
            "exit_order_id": t.exit_cid,
        })
        self.audit.record(t.exit_time, "trade", book.symbol, "close", t.exit_reason,
                          qty=t.entry_qty, price=exit_price, client_order_id=t.exit_cid,
                          pnl=round(pnl, 2))
        book.trade = None
        book.stop_state = None
        book.entry_atr = math.nan
        book.stop_seq = 0
        book.handoff = None
        book.exit_reason = ""
        if book.stop is not None and book.stop.alive():
            self.cancel(book.stop)
        book.stop = None
        book.exit = None

    # ------------------------------------------------------------------ state for restarts

    def export_state(self) -> dict[str, Any]:
        """Per-symbol stop and trade state, JSON-able (portfolio_state.json)."""
        out: dict[str, Any] = {}
        for sym, b in self.books.items():
            if b.stop_state is None and b.trade is None:
                continue
            st = b.stop_state
            out[sym] = {
                "stop": None if st is None else {
                    "fill_price": st.fill_price, "fixed_stop": st.fixed_stop,
                    "trail_pct": st.trail_pct, "highest_high": st.highest_high,
                    "level": st.level,
                },
                "entry_atr": None if math.isnan(b.entry_atr) else b.entry_atr,
                "stop_seq": b.stop_seq,
                "stop_cid": b.stop.info.get("cid") if b.stop is not None else None,
                "trade": None if b.trade is None else {
                    "entry_time": b.trade.entry_time.isoformat(),
                    "entry_cid": b.trade.entry_cid,
                    "entry_qty": b.trade.entry_qty,
                    "entry_value": b.trade.entry_value,
                },
            }
        return out

    def restore_state(self, state: dict[str, Any]) -> None:
        """Load ``export_state`` output (before the first bar)."""
        for sym, s in state.items():
            book = self.books.get(sym)
            if book is None:
                logger.warning("saved state for %s, which this run does not trade", sym)
                continue
            if s.get("stop"):
                book.stop_state = StopState(**s["stop"])
            book.entry_atr = s.get("entry_atr") or math.nan
            book.stop_seq = int(s.get("stop_seq") or 0)
            tr = s.get("trade")
            if tr:
                book.trade = OpenTrade(datetime.fromisoformat(tr["entry_time"]), 0,
                                       tr.get("entry_cid", ""), tr["entry_qty"],
                                       tr["entry_value"])

    # ------------------------------------------------------------------ brokers.alpaca.ports

    def stop_level(self, symbol: str) -> float | None:
        """The current (ratcheted) stop level of ``symbol``'s position; None if none."""
        book = self.books.get(symbol)
        st = book.stop_state if book is not None else None
        return None if st is None else st.level

    def notifications_pending(self, symbol: str) -> bool:
        """Notifications of ``symbol`` Backtrader queued for this Strategy that its next bar
        has yet to process (Backtrader's own queue of this Strategy)."""
        return any(o.data._name == symbol for o in self._orderspending)

    def adopt_position(self, data: bt.DataBase, qty: float, avg_price: float,
                       stop_order: bt.Order | None = None, atr: float | None = None) -> None:
        """Take over a position found at the broker (restart, reconciliation).

        Keeps a saved stop state if there is one; otherwise builds one from the average
        entry price and ``atr``. ``stop_order`` is the resting stop found at the broker; when
        there is none, the broker's stop-presence check places one (brokers/alpaca).
        """
        book = self.books[data._name]
        if book.stop_state is None:
            book.stop_state = rules.initial_stop(avg_price, math.nan if atr is None else atr,
                                                 self.cfg.atr_stop_multiplier,
                                                 self.cfg.trail_stop_pct)
        if book.trade is None:
            book.trade = OpenTrade(datetime.now(UTC), 0, "", qty, qty * avg_price)
        book.stop = stop_order
        if book.handoff is None:
            book.handoff = rules.StopHandoff(book.symbol, self.cfg.strategy_id,
                                             book.entry_atr, self.cfg.atr_stop_multiplier,
                                             self.cfg.trail_stop_pct, seq=book.stop_seq)
        book.handoff.state = book.stop_state
        if stop_order is not None:  # a live broker re-places it at once if it is lost
            stop_order.info["handoff"] = book.handoff

    def adopt_order(self, order: bt.Order) -> None:
        """Track a working order found at the broker at startup (``order.info`` has ``cid``
        and ``purpose``), so the guards, the limit timeout and the stop logic see it.

        An entry's placement time is the decision bar time in its client order id.
        """
        book = self.books[order.data._name]
        purpose = order.info.get("purpose", "")
        if purpose == Purpose.ENTRY:
            book.entry = order
            parsed = rules.parse_client_order_id(order.info.get("cid", ""))
            book.entry_placed = parsed[2] if parsed else None
            book.entry_cancel_reason = ""
        elif purpose == Purpose.FALLBACK:
            book.fallback = order
        elif purpose == Purpose.EXIT:
            book.exit = order
            # a live broker's own exit (a stop refused as through the market) says why
            book.exit_reason = str(order.info.get("exit_reason") or book.exit_reason
                                   or Reason.SIGNAL.value)
        elif purpose == Purpose.STOP:
            book.stop = order
            if book.handoff is not None:
                order.info["handoff"] = book.handoff
