"""What the live broker needs from the Strategy that owns the positions, as a typed Protocol.

The broker turns venue messages into Backtrader order updates (as Backtrader's ``IBBroker``
does); it never reads the Strategy's internals. The few things it must ask or tell the
Strategy go through ``PositionOwner``, which ``strategies.ratchet.RatchetStrategy``
implements and the command wiring hands to the broker (a callable, as Cerebro creates the
Strategy only once it runs). A Strategy that does not implement it (a test script) still gets
its notifications: the broker's own orders then have no owner and Backtrader delivers them to
the first Strategy.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import backtrader as bt


@runtime_checkable
class PositionOwner(Protocol):
    """The Strategy as the live broker sees it."""

    def stop_level(self, symbol: str) -> float | None:
        """The current (ratcheted) stop level of ``symbol``'s position; None if none."""
        ...

    def notifications_pending(self, symbol: str) -> bool:
        """Order notifications of ``symbol`` handed to the Strategy that it has not processed
        yet (it reacts to fills and cancels on its next bar)."""
        ...

    def restore_state(self, state: dict[str, Any]) -> None:
        """The stop and trade state saved by an earlier run (before the first bar)."""
        ...

    def adopt_order(self, order: bt.Order) -> None:
        """Take over an order the broker found or placed (``order.info``: ``cid``,
        ``purpose``)."""
        ...

    def adopt_position(self, data: bt.DataBase, qty: float, avg_price: float,
                       stop_order: bt.Order | None = None, atr: float | None = None) -> None:
        """Take over a position found at the broker, with its resting stop if any."""
        ...


def as_owner(strategy: object | None) -> PositionOwner | None:
    """``strategy`` if it implements ``PositionOwner``, else None (the wiring's adapter)."""
    return strategy if isinstance(strategy, PositionOwner) else None
