"""The order journal's schema and rows (``journal.Journal`` reads and writes them).

``JournalOrder`` is one order row (intent, state, Alpaca id and status, what was filled),
``Fill`` one applied fill; ``journal_row`` builds a ``JournalOrder`` from an SQLite row.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from brokers.alpaca.parsing import status_rule

SCHEMA_VERSION = 1

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS orders (
    cid TEXT PRIMARY KEY,
    symbol TEXT NOT NULL,
    side TEXT NOT NULL,
    type TEXT NOT NULL,
    qty TEXT NOT NULL,
    purpose TEXT NOT NULL DEFAULT '',
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    alpaca_id TEXT UNIQUE,
    alpaca_status TEXT,
    filled_qty TEXT NOT NULL DEFAULT '0',
    filled_value TEXT NOT NULL DEFAULT '0',
    replaces TEXT,
    reason TEXT NOT NULL DEFAULT '',
    decision_time TEXT,
    created_wall REAL NOT NULL,
    updated_wall REAL NOT NULL,
    lookups INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS fills (
    cid TEXT NOT NULL,
    key TEXT NOT NULL,
    qty TEXT NOT NULL,
    price TEXT NOT NULL,
    ts TEXT NOT NULL,
    PRIMARY KEY (cid, key)
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    wall REAL NOT NULL,
    cid TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL
);
"""


class JournalState(StrEnum):
    """Our knowledge of one order."""

    INTENT = "intent"  # written before the POST; outcome not yet known
    ACCEPTED = "accepted"  # Alpaca has it (alpaca_status tells the rest)
    AMBIGUOUS = "ambiguous"  # the POST may or may not have created it: look it up
    REJECTED = "rejected"  # Alpaca definitely refused it
    LOST = "lost"  # never found at Alpaca after lookups and an age threshold


class JournalCorruptError(Exception):
    """The journal file is not a readable SQLite database (corrupt pages, not a database)."""


class DuplicateIntentError(Exception):
    """The client order id is already in the journal: it must not be sent again."""


@dataclass(frozen=True)
class JournalOrder:
    """One journal row."""

    cid: str
    symbol: str
    side: str
    type: str
    qty: Decimal
    purpose: str
    spec: dict[str, Any]
    state: JournalState
    alpaca_id: str | None
    alpaca_status: str | None
    filled_qty: Decimal
    filled_value: Decimal
    replaces: str | None
    reason: str
    decision_time: str | None
    created_wall: float
    updated_wall: float
    lookups: int

    @property
    def unresolved(self) -> bool:
        """Sent (or about to be) but not known at Alpaca: INTENT or AMBIGUOUS."""
        return self.state in (JournalState.INTENT, JournalState.AMBIGUOUS)

    @property
    def terminal(self) -> bool:
        """Nothing more can happen to this order."""
        if self.state in (JournalState.REJECTED, JournalState.LOST):
            return True
        if self.state is JournalState.ACCEPTED and self.alpaca_status:
            return status_rule(self.alpaca_status).terminal
        return False

    @property
    def open(self) -> bool:
        """Not terminal: working at Alpaca or not yet resolved."""
        return not self.terminal

    @property
    def avg_price(self) -> Decimal | None:
        """Average price of the fills applied so far."""
        return self.filled_value / self.filled_qty if self.filled_qty > 0 else None


@dataclass(frozen=True)
class Fill:
    """A fill applied by ``apply_fill`` (``qty`` is this fill's quantity, unsigned)."""

    cid: str
    key: str
    qty: Decimal
    price: Decimal
    ts: datetime
    cum_qty: Decimal


def as_decimal(value: Any) -> Decimal:
    return Decimal(str(value)) if value not in (None, "") else Decimal(0)


def journal_row(row: sqlite3.Row) -> JournalOrder:
    return JournalOrder(
        cid=row["cid"],
        symbol=row["symbol"],
        side=row["side"],
        type=row["type"],
        qty=as_decimal(row["qty"]),
        purpose=row["purpose"],
        spec=json.loads(row["spec"]),
        state=JournalState(row["state"]),
        alpaca_id=row["alpaca_id"],
        alpaca_status=row["alpaca_status"],
        filled_qty=as_decimal(row["filled_qty"]),
        filled_value=as_decimal(row["filled_value"]),
        replaces=row["replaces"],
        reason=row["reason"],
        decision_time=row["decision_time"],
        created_wall=float(row["created_wall"]),
        updated_wall=float(row["updated_wall"]),
        lookups=int(row["lookups"]),
    )
