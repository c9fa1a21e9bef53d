"""The alert event API: a small typed event and the sink protocol the trading path calls."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol
from zoneinfo import ZoneInfo

logger = logging.getLogger(__name__)

NEW_YORK = ZoneInfo("America/New_York")


class Category(StrEnum):
    """What an event is about; ``--alert-level`` selects categories."""

    FILL = "fill"        # an entry or exit filled
    PROBLEM = "problem"  # something the user may have to act on
    INFO = "info"        # session start, daily summary, test messages


#: ``--alert-level`` -> the categories it sends. Problems always go out: someone who wants
#: to hear about fills wants to hear that the bot stopped or a stop is missing even more.
LEVELS: dict[str, frozenset[Category]] = {
    "problems": frozenset({Category.PROBLEM}),
    "fills": frozenset({Category.FILL, Category.PROBLEM}),
    "all": frozenset(Category),
}


@dataclass(frozen=True)
class AlertEvent:
    """One thing worth telling the user.

    ``kind``: ``entry_fill``, ``exit_fill``, ``stop_lost``, ``stop_placed``,
    ``order_rejected``, ``stream_down``, ``stream_up``, ``reconcile``, ``stopping``,
    ``daily_summary``, ``started``, ``test``. ``time`` is the bar or broker time (UTC) the
    event belongs to; ``fields`` the structured values (symbol, qty, price, pnl, ...).
    """

    kind: str
    category: Category
    title: str
    body: str = ""
    time: datetime | None = None
    symbol: str = ""
    fields: Mapping[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        """One line: ``10:31 ET ACME BUY 12 @ 101.23 filled: ...`` (New York time)."""
        when = f"{self.time.astimezone(NEW_YORK):%H:%M} ET " if self.time is not None else ""
        body = f": {self.body}" if self.body else ""
        return f"{when}{self.title}{body}"


class AlertSink(Protocol):
    """Where events go. ``emit`` must return at once (it runs on the trading thread)."""

    def emit(self, event: AlertEvent) -> None:
        """Take one event (never blocks, never raises)."""


class NullSink:
    """The default sink: alerts are off."""

    def emit(self, event: AlertEvent) -> None:
        """Drop the event."""


class ListSink:
    """Keeps events in a list (tests, ``alert-test``)."""

    def __init__(self) -> None:
        self.events: list[AlertEvent] = []

    def emit(self, event: AlertEvent) -> None:
        """Append the event."""
        self.events.append(event)


class FanOut:
    """Emits each event to several sinks."""

    def __init__(self, sinks: Iterable[AlertSink]) -> None:
        self.sinks = list(sinks)

    def emit(self, event: AlertEvent) -> None:
        """Hand the event to every sink; a failing sink never reaches the caller."""
        for sink in self.sinks:
            try:
                sink.emit(event)
            except Exception:
                logger.exception("alert sink %s failed", type(sink).__name__)
