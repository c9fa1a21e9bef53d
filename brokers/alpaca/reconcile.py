"""Reconciliation: broker positions and open orders vs the journal and the saved state.

Implements the comparison side of Alpaca's account model (GET /v2/positions,
GET /v2/orders?status=open, GET /v2/orders:by_client_order_id; docs.alpaca.markets/reference).
Pure: it takes reads that SUCCEEDED (a failed read raises ``UnknownStateError`` before we get
here, so "unknown" can never look like "flat") and returns a typed report of actions. The
broker (``AlpacaBroker`` in ``broker.py``, not the store) performs them, before any trading and
after every reconnect.

Rules:

* The broker is the truth for positions; the journal for which orders are ours.
* A long position without a resting sell stop gets one (``MissingStop``).
* More than one resting stop for a symbol: keep the highest, cancel the rest.
* A journal order that is not terminal is compared with Alpaca's copy (``OrderUpdate``) or,
  when Alpaca does not know it, reported ``OrderMissing`` (the caller applies the age rule).
* An open order at Alpaca with our strategy's client-order-id prefix but not in the journal is
  adopted; anything else is foreign and left alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from brokers.alpaca.journal import JournalOrder
from brokers.alpaca.parsing import OrderSnapshot, PositionRecord
from strategies.rules import is_ours

_STOP_TYPES = ("stop", "stop_limit", "trailing_stop")


@dataclass(frozen=True)
class OrderUpdate:
    """A journal order found at Alpaca: apply its fills (delta) and status."""

    cid: str
    snapshot: OrderSnapshot


@dataclass(frozen=True)
class OrderMissing:
    """A non-terminal journal order that Alpaca does not know."""

    cid: str
    state: str


@dataclass(frozen=True)
class AdoptOrder:
    """An open order of ours (by cid prefix) that the journal lacks."""

    snapshot: OrderSnapshot


@dataclass(frozen=True)
class ForeignOrder:
    """An open order that is not ours: left alone."""

    snapshot: OrderSnapshot


@dataclass(frozen=True)
class PositionFound:
    """A broker position with no saved state: adopt it."""

    symbol: str
    qty: Decimal
    avg_price: Decimal


@dataclass(frozen=True)
class PositionChanged:
    """The saved quantity differs from the broker's: the broker wins."""

    symbol: str
    saved_qty: Decimal
    broker_qty: Decimal
    avg_price: Decimal


@dataclass(frozen=True)
class PositionClosed:
    """Saved state has a position the broker no longer holds (e.g. the stop filled)."""

    symbol: str
    saved_qty: Decimal


@dataclass(frozen=True)
class PositionUntracked:
    """A broker position in a symbol this run does not trade: warned about only."""

    symbol: str
    qty: Decimal


@dataclass(frozen=True)
class ShortPosition:
    """A short position (the strategy is long-only): warned about only."""

    symbol: str
    qty: Decimal


@dataclass(frozen=True)
class MissingStop:
    """A long position without a resting sell stop: re-create one."""

    symbol: str
    qty: Decimal


@dataclass(frozen=True)
class StopQtyMismatch:
    """The resting stop does not cover exactly the position: resize it."""

    symbol: str
    position_qty: Decimal
    stop_cid: str
    stop_qty: Decimal


@dataclass(frozen=True)
class ExtraStops:
    """Several resting stops for one symbol: keep ``keep``, cancel ``cancel``."""

    symbol: str
    keep: str
    cancel: tuple[str, ...]


Action = (OrderUpdate | OrderMissing | AdoptOrder | ForeignOrder | PositionFound
          | PositionChanged | PositionClosed | PositionUntracked | ShortPosition | MissingStop
          | StopQtyMismatch | ExtraStops)


@dataclass
class ReconcileReport:
    """Everything reconciliation found, as actions, plus the merged broker view."""

    actions: list[Action] = field(default_factory=list)
    positions: dict[str, Decimal] = field(default_factory=dict)
    stops: dict[str, OrderSnapshot] = field(default_factory=dict)
    open_orders: list[OrderSnapshot] = field(default_factory=list)

    def of(self, kind: type) -> list[Action]:
        """Actions of one type."""
        return [a for a in self.actions if isinstance(a, kind)]

    @property
    def clean(self) -> bool:
        """Nothing to fix: saved state, journal and broker agree."""
        benign = (OrderUpdate, ForeignOrder, PositionUntracked)
        return all(isinstance(a, benign) for a in self.actions)

    def summary(self) -> str:
        """One line for the log and the session summary, in words."""
        if not self.actions:
            return "reconciled: state matches the broker"
        counts: dict[str, int] = {}
        for a in self.actions:
            counts[type(a).__name__] = counts.get(type(a).__name__, 0) + 1
        return "reconciled: " + ", ".join(
            f"{v} {SUMMARY_WORDS.get(k, k)}" for k, v in sorted(counts.items()))


#: Action type -> words for "reconciled: 2 orders updated, ..." (summary()).
SUMMARY_WORDS: dict[str, str] = {
    "OrderUpdate": "order(s) brought up to date", "OrderMissing": "order(s) unknown to Alpaca",
    "AdoptOrder": "open order(s) of ours adopted", "ForeignOrder": "foreign order(s) left alone",
    "PositionFound": "position(s) found at the broker", "PositionChanged":
    "position size(s) corrected", "PositionClosed": "position(s) closed at the broker",
    "PositionUntracked": "position(s) in untraded symbols", "ShortPosition":
    "short position(s)", "MissingStop": "missing stop(s) to place", "StopQtyMismatch":
    "stop(s) to resize", "ExtraStops": "extra stop(s) to cancel",
}


def _qty(q: Decimal) -> str:
    return f"{q.normalize():f}" if q == q.to_integral_value() else f"{q:f}"


def describe(action: Action) -> str:
    """One sentence about a reconciliation finding (for warnings; never a repr)."""
    if isinstance(action, PositionClosed):
        return (f"{action.symbol}: the saved state held {_qty(action.saved_qty)} shares but "
                "the broker holds none (the stop or a manual order closed it); the broker "
                "wins")
    if isinstance(action, PositionFound):
        return (f"{action.symbol}: the broker holds {_qty(action.qty)} shares at "
                f"{action.avg_price:.2f} that the saved state did not know; adopted")
    if isinstance(action, PositionChanged):
        return (f"{action.symbol}: the saved state held {_qty(action.saved_qty)} shares, the "
                f"broker holds {_qty(action.broker_qty)}; the broker wins")
    if isinstance(action, PositionUntracked):
        return (f"{action.symbol}: the broker holds {_qty(action.qty)} shares of a symbol "
                "this run does not trade; left alone")
    if isinstance(action, ShortPosition):
        return (f"{action.symbol}: the broker holds a short position of "
                f"{_qty(-action.qty)} shares; the strategy is long-only and leaves it alone")
    if isinstance(action, MissingStop):
        return f"{action.symbol}: {_qty(action.qty)} shares have no resting stop; placing one"
    return type(action).__name__


def is_stop(order: OrderSnapshot) -> bool:
    """A resting sell stop (the protective order)."""
    return order.side == "sell" and order.type in _STOP_TYPES


def reconcile(
    symbols: Sequence[str],
    strategy_id: str,
    broker_positions: Iterable[PositionRecord],
    broker_open_orders: Iterable[OrderSnapshot],
    journal_open: Iterable[JournalOrder],
    saved_positions: Mapping[str, Decimal],
    lookups: Mapping[str, OrderSnapshot | None] | None = None,
    journal_cids: Iterable[str] = (),
) -> ReconcileReport:
    """Compare and return the actions that make our state equal the broker's.

    ``lookups``: Alpaca's copy of each non-terminal journal order that is not in
    ``broker_open_orders`` (None = Alpaca says 404). ``journal_cids``: every cid the journal
    knows (terminal ones included), so a known order is never "adopted".
    """
    report = ReconcileReport()
    traded = {s.upper() for s in symbols}
    lookups = dict(lookups or {})
    open_by_cid = {o.client_order_id: o for o in broker_open_orders}
    _orders(report, strategy_id, traded, open_by_cid, list(journal_open), lookups,
            set(journal_cids))
    _positions(report, traded, list(broker_positions), saved_positions)
    _stops(report, strategy_id, traded)
    return report


def _orders(report: ReconcileReport, strategy_id: str, traded: set[str],
            open_by_cid: dict[str, OrderSnapshot], journal_open: list[JournalOrder],
            lookups: dict[str, OrderSnapshot | None], known: set[str]) -> None:
    # journal orders vs Alpaca
    for jo in journal_open:
        known.add(jo.cid)
        snap = open_by_cid.get(jo.cid) or lookups.get(jo.cid)
        if snap is None:
            report.actions.append(OrderMissing(jo.cid, jo.state.value))
        else:
            report.actions.append(OrderUpdate(jo.cid, snap))
    # Alpaca open orders the journal lacks
    for cid, snap in open_by_cid.items():
        if cid in known:
            continue
        if is_ours(cid, strategy_id) and snap.symbol in traded:
            report.actions.append(AdoptOrder(snap))
        else:
            report.actions.append(ForeignOrder(snap))
    # the merged view of what is open at Alpaca now
    merged = dict(open_by_cid)
    for snap in lookups.values():
        if snap is not None and not snap.terminal:
            merged[snap.client_order_id] = snap
    report.open_orders = sorted(merged.values(), key=lambda o: o.client_order_id)


def _positions(report: ReconcileReport, traded: set[str], broker_positions: list[PositionRecord],
               saved_positions: Mapping[str, Decimal]) -> None:
    broker = {p.symbol: p for p in broker_positions if p.qty != 0}
    for symbol, pos in sorted(broker.items()):
        if symbol not in traded:
            report.actions.append(PositionUntracked(symbol, pos.qty))
            continue
        if pos.qty < 0:
            report.actions.append(ShortPosition(symbol, pos.qty))
            continue
        report.positions[symbol] = pos.qty
        saved = saved_positions.get(symbol, Decimal(0))
        if saved == 0:
            report.actions.append(PositionFound(symbol, pos.qty, pos.avg_entry_price))
        elif saved != pos.qty:
            report.actions.append(PositionChanged(symbol, saved, pos.qty, pos.avg_entry_price))
    for symbol, saved in sorted(saved_positions.items()):
        if saved != 0 and symbol not in broker and symbol in traded:
            report.actions.append(PositionClosed(symbol, saved))


def _stops(report: ReconcileReport, strategy_id: str, traded: set[str]) -> None:
    # exactly one resting sell stop covering each long position
    stops_by_symbol: dict[str, list[OrderSnapshot]] = {}
    for snap in report.open_orders:
        if is_stop(snap) and is_ours(snap.client_order_id, strategy_id):
            stops_by_symbol.setdefault(snap.symbol, []).append(snap)
    for symbol, qty in sorted(report.positions.items()):
        stops = stops_by_symbol.get(symbol, [])
        if not stops:
            report.actions.append(MissingStop(symbol, qty))
            continue
        stops.sort(key=lambda s: (s.stop_price or Decimal(0), s.client_order_id), reverse=True)
        keep = stops[0]
        report.stops[symbol] = keep
        if len(stops) > 1:
            report.actions.append(
                ExtraStops(symbol, keep.client_order_id,
                           tuple(s.client_order_id for s in stops[1:])))
        if keep.remaining != qty:
            report.actions.append(
                StopQtyMismatch(symbol, qty, keep.client_order_id, keep.remaining))
    for symbol, stops in sorted(stops_by_symbol.items()):
        if symbol not in report.positions and symbol in traded:
            # a stop with nothing to protect would open a short if it triggered
            report.actions.append(ExtraStops(symbol, "", tuple(s.client_order_id for s in stops)))
