"""The audit trail: every decision and order event, with SPEC's reasons.

One ``Audit`` object is passed to the Strategy (and the broker, in paper trading). Rows are
kept in memory for the run folder's ``audit.csv``; with ``live_path`` each row is also
appended to a CSV file at once (flushed), so a crash loses nothing already decided.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)

AUDIT_COLUMNS: tuple[str, ...] = (
    "time", "kind", "symbol", "action", "reason", "qty", "price", "client_order_id", "detail",
)  # fmt: skip


#: ``json.dumps(detail, default=str, sort_keys=True)``, without building an encoder per row.
_DETAIL = json.JSONEncoder(default=str, sort_keys=True)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    if value is None:
        return ""
    return value


class Audit:
    """Collects audit rows; optionally appends each to a live CSV file."""

    def __init__(self, live_path: Path | None = None,
                 redact: Callable[[str], str] | None = None) -> None:
        self.rows: list[tuple[Any, ...]] = []
        #: called with each new row (e.g. ``alerts.sources.AuditAlerts``); must return fast
        self.listeners: list[Callable[[tuple[Any, ...]], None]] = []
        self._stamps: dict[datetime, str] = {}
        self._redact = redact
        self._fh: IO[str] | None = None
        self._writer: Any = None
        if live_path is not None:
            live_path = Path(live_path)
            live_path.parent.mkdir(parents=True, exist_ok=True)
            new = not live_path.exists() or live_path.stat().st_size == 0
            self._fh = live_path.open("a", newline="", encoding="utf-8")
            self._writer = csv.writer(self._fh)
            if new:
                self._writer.writerow(AUDIT_COLUMNS)
                self._fh.flush()

    def record(
        self,
        time: datetime | None,
        kind: str,
        symbol: str = "",
        action: str = "",
        reason: str = "",
        qty: float | None = None,
        price: float | None = None,
        client_order_id: str = "",
        **detail: Any,
    ) -> None:
        """Add one row. ``time`` is the bar or event time (UTC); ``detail`` becomes JSON."""
        when = (time or datetime.now(UTC))
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        text = _DETAIL.encode(detail) if detail else ""
        if self._redact is not None and text:
            text = self._redact(text)
        if when.tzinfo is UTC:  # bar times repeat across symbols and rows: format each once
            stamp = self._stamps.get(when)
            if stamp is None:
                if len(self._stamps) >= 4096:
                    self._stamps.clear()
                stamp = self._stamps[when] = when.isoformat()
        else:
            stamp = when.isoformat()
        row = (stamp, kind, symbol, action, str(reason), _clean(qty), _clean(price),
               client_order_id, text)
        self.rows.append(row)
        if self._writer is not None and self._fh is not None:
            self._writer.writerow(row)
            self._fh.flush()
        logger.debug("audit %s %s %s %s %s", kind, symbol, action, reason, client_order_id)
        for listener in self.listeners:
            try:
                listener(row)
            except Exception:
                logger.exception("audit listener %r failed", listener)

    def write_csv(self, path: Path) -> None:
        """Write every row collected in this process to ``path`` (atomically)."""
        from ratchet.common.atomic import atomic_path

        with atomic_path(Path(path)) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(AUDIT_COLUMNS)
            writer.writerows(self.rows)

    def close(self) -> None:
        """Close the live file, if any."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            self._writer = None
