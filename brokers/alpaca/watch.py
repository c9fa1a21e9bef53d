"""Signals from the ``trade_updates`` stream thread to the main thread: "order X ended".

A confirmed cancel used to read the order back (GET /v2/orders/{id}) after the DELETE's
answer, although the stream's ``canceled`` event had usually arrived already: at 60x that
read cost each exit 3-27 ms between the stop's cancel and the exit's POST (issue 11).

``OrderWatch`` only SIGNALS: the stream thread, after queuing a trade update for the main
loop as always, sets the event of a watched order when the update says the order is
terminal, and keeps that update's order snapshot. The main thread waits on it (bounded) and
applies the snapshot exactly as it would apply the GET's answer; the update itself stays in
the queue and is routed in its turn (applying it again is a no-op: fills count from the
cumulative quantity). Nothing is routed, reordered or applied on the stream thread.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from brokers.alpaca.parsing import OrderSnapshot, TradeUpdateRecord


@dataclass
class Watched:
    """One watched order: ``ended`` is set once a terminal update of it was queued."""

    ended: threading.Event = field(default_factory=threading.Event)
    snapshot: OrderSnapshot | None = None


class OrderWatch:
    """Terminal trade updates of watched Alpaca order ids (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: dict[str, Watched] = {}

    def watch(self, alpaca_id: str) -> Watched:
        """Start watching ``alpaca_id`` (main thread; before the request that ends it)."""
        with self._lock:
            w = self._watched.get(alpaca_id)
            if w is None:
                w = self._watched[alpaca_id] = Watched()
            return w

    def unwatch(self, alpaca_id: str) -> None:
        """Stop watching ``alpaca_id``."""
        with self._lock:
            self._watched.pop(alpaca_id, None)

    def seen(self, update: TradeUpdateRecord) -> None:
        """A trade update was queued for the main loop (stream thread): signal it if it ends
        a watched order."""
        if not self._watched or not update.order.terminal:
            return
        with self._lock:
            w = self._watched.get(update.order.id)
            if w is None or w.ended.is_set():
                return
            w.snapshot = update.order
        w.ended.set()
