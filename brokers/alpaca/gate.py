"""The broker's time and the gate for new orders (see ``store.py``'s docstring, "Time").

``now``: the larger of Alpaca's last clock answer advanced by the local monotonic seconds
since it was read (times ``clock_rate``) and the close of the newest bar seen. New orders go
out only for a fresh bar while the market is open now (``order_gate``).

A part of ``store.AlpacaStore`` (a mixin; the store owns the state it reads).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from brokers.alpaca.clock import MarketClock
from ratchet.common.clock import Clock
from ratchet.common.config import Settings
from ratchet.common.errors import BrokerError, RetryableError

logger = logging.getLogger(__name__)


class BrokerTime:
    """The broker's time and the gate for new orders."""

    settings: Settings
    clock: MarketClock
    local_clock: Clock
    clock_rate: float
    fresh_grace_s: float
    audit: Any
    _newest_close: datetime | None
    _gate_seen: set[tuple[datetime, str]]
    _last_clock: float

    def now(self) -> datetime:
        """The broker's time now (see the module docstring, "Time")."""
        candidates: list[datetime] = []
        last, read_at = self.clock.last, self.clock.read_at
        if last is not None:
            elapsed = 0.0 if read_at is None else max(0.0, self.local_clock.monotonic() - read_at)
            candidates.append(last.timestamp + timedelta(seconds=elapsed * self.clock_rate))
        if self._newest_close is not None:
            candidates.append(self._newest_close)
        if not candidates:  # before the first clock read (connect reads it first)
            return self.local_clock.now()
        return max(candidates)

    def broker_time(self) -> datetime:
        """The broker's notion of now (``now()``; written to the state file)."""
        return self.now()

    def _saw_close(self, bar_start: datetime, seconds: int) -> None:
        close = bar_start + timedelta(seconds=seconds)
        if self._newest_close is None or close > self._newest_close:
            self._newest_close = close

    def session(self, bar_time: datetime) -> str:
        """The Strategy's ``session`` param (``regular``/``extended``/``closed``)."""
        return self.clock.session(bar_time)

    def market_open(self, bar_time: datetime) -> bool:
        """The Strategy's ``market_open`` param: may a NEW order go out now for a decision on
        the bar starting at ``bar_time``? (``order_gate`` says why not.)"""
        ok, reason = self.order_gate(bar_time)
        if not ok:
            self._record_gate(bar_time, reason)
        return ok

    def order_gate(self, bar_time: datetime) -> tuple[bool, str]:
        """(allowed, reason): the bar lies in the session before its last bar (calendar), it
        is fresh (closed at most one interval + ``fresh_grace_s`` before ``now``), and the
        market is open now. Reasons: ``market_closed``, ``stale_bar``."""
        if not self.clock.market_open(bar_time):
            return False, "market_closed"
        secs = self.settings.bar_seconds
        now = self.now()
        age = (now - (bar_time + timedelta(seconds=secs))).total_seconds()
        if age > secs + self.fresh_grace_s:
            return False, "stale_bar"
        if not self.entries_open(extended=self.clock.session(bar_time) == "extended"):
            return False, "market_closed"
        return True, ""

    def entries_open(self, extended: bool = False) -> bool:
        """Is the market open NOW for a new entry? Alpaca's clock (read again only when
        ``now`` crossed its next open/close); for an extended-hours order, the calendar's
        extended session at ``now``. An unreadable clock counts as closed."""
        now = self.now()
        if extended:
            return bool(self.settings.extended_hours) and self.clock.in_session(now)
        is_open = self.clock.open_at(now)
        if is_open is None:
            try:
                self.clock.refresh()
            except (RetryableError, BrokerError) as exc:
                logger.warning("market clock unavailable (%s): no new entries", exc)
                return False
            self._last_clock = self.local_clock.monotonic()
            is_open = self.clock.open_at(self.now())
            if is_open is None:  # our bar-based now ran past the clock's answer: trust it
                is_open = self.clock.is_open
        return bool(is_open)

    def _record_gate(self, bar_time: datetime, reason: str) -> None:
        key = (bar_time, reason)
        if key in self._gate_seen:
            return  # once per bar time (several symbols may ask)
        self._gate_seen.add(key)
        if len(self._gate_seen) > 4096:
            self._gate_seen.clear()
        now = self.now()
        close = bar_time + timedelta(seconds=self.settings.bar_seconds)
        logger.info("no new orders on the bar of %s: %s (bar closed %s, broker time %s, %s)",
                    bar_time.isoformat(), reason, close.isoformat(), now.isoformat(),
                    self.clock.describe_wait())
        if self.audit is not None:
            self.audit.record(bar_time, "gate", "", "no_new_orders", reason,
                              bar_close=close.isoformat(), broker_time=now.isoformat())
