"""The order journal: intents before the POST, fills exactly once, durable across SIGKILL.

Implements our side of Alpaca's idempotency contract ("client_order_id", unique per account,
docs.alpaca.markets/reference/postorder) and of its fill reporting (``trade_updates``
``fill``/``partial_fill`` carry a per-execution ``qty`` and the order's CUMULATIVE
``filled_qty``; docs.alpaca.markets/docs/websocket-streaming).

SQLite in WAL mode with ``synchronous=FULL``: every state change is one committed
transaction, so a process killed at any instruction leaves either the old or the new row.
Intents, fills, rejections and losses are synced to disk before the call returns; an
acceptance and a status are committed without waiting for the disk (``synced=False``, issue
11: one fsync less per order and per event) since Alpaca holds them too: after a power loss
the row is resolved by client order id or refreshed by reconciliation.

* ``record_intent`` is written (and synced) BEFORE the order is sent. A client order id that
  is already in the journal is never sent again (``DuplicateIntentError``).
* ``apply_fill`` applies the difference between the order's cumulative filled quantity and
  what was already applied (persisted in the same transaction). A replayed, duplicated or
  out-of-order event is therefore a no-op; the execution id (when there is one) names the
  fill row.

The schema and the row types are in ``journal_rows.py``.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from brokers.alpaca.journal_rows import (
    SCHEMA_SQL,
    SCHEMA_VERSION,
    DuplicateIntentError,
    Fill,
    JournalCorruptError,
    JournalOrder,
    JournalState,
    as_decimal,
    journal_row,
)
from ratchet.common.perms import private_file

__all__ = ["SCHEMA_VERSION", "DuplicateIntentError", "Fill", "Journal", "JournalCorruptError",
           "JournalOrder", "JournalState"]

logger = logging.getLogger(__name__)


class Journal:
    """The SQLite order journal at ``path`` (created on first use)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        #: called with (cid of the quarantined row, the Alpaca id, cid now holding it) after a
        #: row lost its Alpaca id to another order (the broker audits it)
        self.on_quarantine: Callable[[str, str, str], None] | None = None
        #: every client order id in ``orders`` (rows are never deleted): ``has`` reads it
        #: without the lock; added inside the inserting transaction, dropped on its rollback
        self._cids: set[str] = set()
        self._added: list[str] = []
        if not self.path.exists():  # private from the first byte: -wal/-shm inherit it
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._db = sqlite3.connect(str(self.path), isolation_level=None,
                                   check_same_thread=False, timeout=30.0)
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise JournalCorruptError(f"{self.path}: {exc}") from None
        for suffix in ("", "-wal", "-shm"):
            private_file(Path(f"{self.path}{suffix}"))

    def _open(self) -> None:
        self._db.row_factory = sqlite3.Row
        check = self._db.execute("PRAGMA quick_check").fetchone()
        if check is None or str(check[0]) != "ok":
            raise sqlite3.DatabaseError(f"integrity check failed: {check[0] if check else '?'}")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA_SQL)
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
            elif int(row["value"]) > SCHEMA_VERSION:
                raise RuntimeError(
                    f"journal {self.path} has schema {row['value']}, newer than this code "
                    f"({SCHEMA_VERSION}): upgrade ratchet")
            self._cids = {str(r[0]) for r in db.execute("SELECT cid FROM orders")}

    def close(self) -> None:
        """Close the database (WAL checkpoint)."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self, synced: bool = True) -> Iterator[sqlite3.Connection]:
        # ``synced=False``: committed to the WAL file without waiting for the disk (safe
        # against SIGKILL, not against power loss; the next synced commit makes it durable)
        with self._lock:
            if not synced:
                self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    self._cids.difference_update(self._added)
                    raise
                finally:
                    self._added.clear()
            finally:
                if not synced:
                    self._db.execute("PRAGMA synchronous=FULL")

    def _inserted(self, cid: str) -> None:
        """``cid``'s row was just inserted in the open transaction (see ``has``)."""
        if cid not in self._cids:
            self._cids.add(cid)
            self._added.append(cid)

    def has(self, cid: str) -> bool:
        """``cid`` is journaled, in any state (the never-resend check of an order sent
        before its row is written: ``OrderGateway.send_then_journal``).

        Lock-free: an entry fill's stop is sent from the helper thread while the main thread
        may be inside an fsynced write holding the lock. A row being inserted counts from
        its INSERT (before its COMMIT), so the answer errs towards "journaled" (not sent;
        resolved by client order id), never towards a second order."""
        return cid in self._cids

    def _event(self, db: sqlite3.Connection, cid: str, kind: str, **payload: Any) -> None:
        db.execute("INSERT INTO events (wall, cid, kind, payload) VALUES (?, ?, ?, ?)",
                   (time.time(), cid, kind, json.dumps(payload, default=str, sort_keys=True)))

    # ----------------------------------------------------------------- owner

    def get_meta(self, key: str) -> str | None:
        """A value of the ``meta`` table (``endpoint``, ``account_id``, ``schema_version``)."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    def set_meta(self, key: str, value: str) -> None:
        """Set a value of the ``meta`` table."""
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def is_empty(self) -> bool:
        """No order was ever journaled."""
        with self._lock:
            return self._db.execute("SELECT 1 FROM orders LIMIT 1").fetchone() is None

    # ----------------------------------------------------------------- orders

    def record_intent(self, spec: dict[str, Any], purpose: str = "",
                      decision_time: datetime | None = None, replaces: str | None = None) -> None:
        """Write the intent to send ``spec`` (``OrderSpec.to_json()``) and sync it to disk.

        Raises ``DuplicateIntentError`` if the client order id is already journaled.
        """
        cid = spec["client_order_id"]
        now = time.time()
        try:
            with self._tx() as db:
                db.execute(
                    "INSERT INTO orders (cid, symbol, side, type, qty, purpose, spec, state, "
                    "replaces, decision_time, created_wall, updated_wall) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (cid, spec["symbol"], spec["side"], spec["type"], spec["qty"], purpose,
                     json.dumps(spec, sort_keys=True), JournalState.INTENT.value, replaces,
                     decision_time.isoformat() if decision_time else None, now, now))
                self._inserted(cid)
                self._event(db, cid, "intent", spec=spec, purpose=purpose)
        except sqlite3.IntegrityError:
            raise DuplicateIntentError(cid) from None

    def record_sent(self, spec: dict[str, Any], purpose: str, decision_time: datetime | None,
                    alpaca_id: str, alpaca_status: str, replaces: str | None = None) -> None:
        """Journal an order sent BEFORE its intent was written, with Alpaca's answer: intent
        and acceptance in one synced transaction. Only for an order whose client order id is
        deterministic and found at Alpaca by startup reconciliation if the process dies
        between the request and this write (the protective stop of a fill and the PATCH of
        a stop, issues 11 and 17).

        Raises ``DuplicateIntentError`` if the client order id is already journaled.
        """
        cid = spec["client_order_id"]
        now = time.time()
        try:
            with self._tx() as db:
                quarantined = self._free_alpaca_id(db, alpaca_id, cid)
                db.execute(
                    "INSERT INTO orders (cid, symbol, side, type, qty, purpose, spec, state, "
                    "alpaca_id, alpaca_status, replaces, decision_time, created_wall, "
                    "updated_wall) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (cid, spec["symbol"], spec["side"], spec["type"], spec["qty"], purpose,
                     json.dumps(spec, sort_keys=True), JournalState.ACCEPTED.value, alpaca_id,
                     alpaca_status, replaces,
                     decision_time.isoformat() if decision_time else None, now, now))
                self._inserted(cid)
                self._event(db, cid, "intent", spec=spec, purpose=purpose, sent_first=True)
                self._event(db, cid, "accepted", state=JournalState.ACCEPTED.value,
                            alpaca_id=alpaca_id, alpaca_status=alpaca_status)
        except sqlite3.IntegrityError:
            raise DuplicateIntentError(cid) from None
        self._report_quarantine(quarantined, alpaca_id, cid)

    def adopt(self, cid: str, symbol: str, side: str, type_: str, qty: Decimal,
              purpose: str, alpaca_id: str, alpaca_status: str, filled_qty: Decimal,
              filled_value: Decimal) -> None:
        """Record an order found at Alpaca that the journal did not know (reconciliation).

        Its existing fills count as already applied (the position read from Alpaca holds them).
        """
        now = time.time()
        spec = {"client_order_id": cid, "symbol": symbol, "side": side, "type": type_,
                "qty": str(qty), "adopted": True}
        with self._tx() as db:
            quarantined = self._free_alpaca_id(db, alpaca_id, cid)
            db.execute(
                "INSERT OR IGNORE INTO orders (cid, symbol, side, type, qty, purpose, spec, "
                "state, alpaca_id, alpaca_status, filled_qty, filled_value, created_wall, "
                "updated_wall) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (cid, symbol, side, type_, str(qty), purpose, json.dumps(spec),
                 JournalState.ACCEPTED.value, alpaca_id, alpaca_status, str(filled_qty),
                 str(filled_value), now, now))
            self._inserted(cid)
            self._event(db, cid, "adopted", alpaca_id=alpaca_id, status=alpaca_status,
                        filled_qty=str(filled_qty))
        self._report_quarantine(quarantined, alpaca_id, cid)

    def _set(self, cid: str, kind: str, synced: bool = True, **fields: Any) -> None:
        fields["updated_wall"] = time.time()
        cols = ", ".join(f"{k} = ?" for k in fields)
        quarantined: list[str] = []
        with self._tx(synced) as db:
            if fields.get("alpaca_id"):
                quarantined = self._free_alpaca_id(db, str(fields["alpaca_id"]), cid)
            cur = db.execute(f"UPDATE orders SET {cols} WHERE cid = ?",  # noqa: S608 - our column names
                             (*fields.values(), cid))
            if cur.rowcount != 1:
                raise KeyError(f"journal has no order {cid}")
            self._event(db, cid, kind, **fields)
        self._report_quarantine(quarantined, str(fields.get("alpaca_id")), cid)

    def _free_alpaca_id(self, db: sqlite3.Connection, alpaca_id: str, cid: str) -> list[str]:
        """Quarantine any OTHER row that holds ``alpaca_id``: Alpaca says the id belongs to
        ``cid`` (reconciliation goes by client order id), so the other row's link is stale
        (a server that reused ids after a restart). Its Alpaca id is cleared and, if it was
        still open, it becomes AMBIGUOUS so it is resolved by its own client order id. One bad
        row never stops the bot (issue 11: a UNIQUE constraint crash-looped the startup)."""
        rows = db.execute("SELECT cid, state, alpaca_status FROM orders "
                          "WHERE alpaca_id = ? AND cid != ?", (alpaca_id, cid)).fetchall()
        out = []
        for row in rows:
            old = journal_row(db.execute("SELECT * FROM orders WHERE cid = ?",
                                  (row["cid"],)).fetchone())
            new_state = JournalState.AMBIGUOUS.value if old.open else old.state.value
            reason = f"quarantined: Alpaca id {alpaca_id} now belongs to {cid}"
            db.execute("UPDATE orders SET alpaca_id = NULL, state = ?, reason = ?, "
                       "updated_wall = ? WHERE cid = ?",
                       (new_state, reason[:300], time.time(), old.cid))
            self._event(db, old.cid, "quarantine", alpaca_id=alpaca_id, taken_by=cid,
                        old_state=old.state.value, old_status=old.alpaca_status,
                        new_state=new_state)
            out.append(old.cid)
        return out

    def _report_quarantine(self, cids: list[str], alpaca_id: str, taken_by: str) -> None:
        for old in cids:
            logger.warning("JOURNAL CONFLICT: row %s held Alpaca id %s, which Alpaca reports "
                           "for %s: the old row is quarantined (Alpaca id cleared, resolved "
                           "by its client order id); trading and stops continue",
                           old, alpaca_id, taken_by)
            if self.on_quarantine is not None:
                self.on_quarantine(old, alpaca_id, taken_by)

    def quarantined(self) -> list[dict[str, Any]]:
        """Quarantine events (rows that lost their Alpaca id to another order)."""
        return [e for e in self.events() if e["kind"] == "quarantine"]

    def revise_intent(self, cid: str, spec: dict[str, Any]) -> None:
        """An intent not POSTed yet now stands for ``spec`` (an exit journaled while the
        stop's cancel was out, clipped to what that stop's partial fill left): the row says
        what is sent. Only a row still at INTENT is revised."""
        with self._tx() as db:
            cur = db.execute("UPDATE orders SET qty = ?, spec = ?, updated_wall = ? "
                             "WHERE cid = ? AND state = ?",
                             (spec["qty"], json.dumps(spec, sort_keys=True), time.time(), cid,
                              JournalState.INTENT.value))
            if cur.rowcount != 1:
                raise KeyError(f"journal has no unsent order {cid}")
            self._event(db, cid, "revised", spec=spec)

    def withdraw(self, cid: str, reason: str) -> bool:
        """An intent that will never be POSTed (the exit found no position left once the
        stop's cancel was settled, or was canceled while parked): the order does not exist
        at Alpaca, so the row ends LOST with ``reason``. Only a row still at INTENT: one
        that got further (a POST answered) is left alone. True if withdrawn."""
        with self._tx() as db:
            cur = db.execute("UPDATE orders SET state = ?, reason = ?, updated_wall = ? "
                             "WHERE cid = ? AND state = ?",
                             (JournalState.LOST.value, reason[:300], time.time(), cid,
                              JournalState.INTENT.value))
            if cur.rowcount == 1:
                self._event(db, cid, "withdrawn", reason=reason[:300])
        return cur.rowcount == 1

    def mark_accepted(self, cid: str, alpaca_id: str, alpaca_status: str) -> None:
        """Alpaca has the order (POST answered, or found by lookup). Not synced: lost only
        with the machine, and then the row is at INTENT, resolved by client order id."""
        self._set(cid, "accepted", synced=False, state=JournalState.ACCEPTED.value,
                  alpaca_id=alpaca_id, alpaca_status=alpaca_status)

    def mark_ambiguous(self, cid: str, reason: str) -> None:
        """The POST's outcome is unknown."""
        self._set(cid, "ambiguous", state=JournalState.AMBIGUOUS.value, reason=reason[:300])

    def mark_rejected(self, cid: str, reason: str) -> None:
        """Alpaca definitely refused the order."""
        self._set(cid, "rejected", state=JournalState.REJECTED.value, reason=reason[:300])

    def mark_lost(self, cid: str, reason: str) -> None:
        """Never found at Alpaca after lookups and an age threshold: it does not exist."""
        self._set(cid, "lost", state=JournalState.LOST.value, reason=reason[:300])

    def count_lookup(self, cid: str) -> int:
        """Count one "not found" lookup; returns the new count."""
        with self._tx() as db:
            db.execute("UPDATE orders SET lookups = lookups + 1, updated_wall = ? WHERE cid = ?",
                       (time.time(), cid))
            row = db.execute("SELECT lookups FROM orders WHERE cid = ?", (cid,)).fetchone()
        return int(row["lookups"]) if row else 0

    def set_status(self, cid: str, alpaca_status: str, alpaca_id: str | None = None) -> None:
        """Record Alpaca's latest status for an accepted order (not synced: a status lost
        with the machine is read again from Alpaca by reconciliation; fills are synced)."""
        fields: dict[str, Any] = {"alpaca_status": alpaca_status,
                                  "state": JournalState.ACCEPTED.value}
        if alpaca_id is not None:
            fields["alpaca_id"] = alpaca_id
        self._set(cid, "status", synced=False, **fields)

    def get(self, cid: str) -> JournalOrder | None:
        """The journal row for ``cid``."""
        with self._lock:
            row = self._db.execute("SELECT * FROM orders WHERE cid = ?", (cid,)).fetchone()
        return None if row is None else journal_row(row)

    def by_alpaca_id(self, alpaca_id: str) -> JournalOrder | None:
        """The journal row for an Alpaca order id."""
        with self._lock:
            row = self._db.execute("SELECT * FROM orders WHERE alpaca_id = ?",
                                   (alpaca_id,)).fetchone()
        return None if row is None else journal_row(row)

    def orders(self) -> list[JournalOrder]:
        """Every journal row, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM orders ORDER BY created_wall, cid").fetchall()
        return [journal_row(r) for r in rows]

    def open_orders(self) -> list[JournalOrder]:
        """Rows that are not terminal (working, or not yet resolved)."""
        return [o for o in self.orders() if o.open]

    def unresolved(self) -> list[JournalOrder]:
        """INTENT and AMBIGUOUS rows: their outcome must be looked up."""
        return [o for o in self.orders() if o.unresolved]

    # ----------------------------------------------------------------- fills

    def apply_fill(self, cid: str, cum_qty: Decimal, avg_price: Decimal | None,
                   ts: datetime, exec_id: str | None = None, exec_qty: Decimal | None = None,
                   exec_price: Decimal | None = None) -> Fill | None:
        """Apply the not-yet-applied part of an order's cumulative fill, exactly once.

        ``cum_qty``/``avg_price``: the order's cumulative ``filled_qty`` and
        ``filled_avg_price`` after this event. ``exec_*``: the execution itself, when the
        event carries one. Returns the new ``Fill`` or None when nothing is new.
        """
        with self._tx() as db:
            row = db.execute("SELECT filled_qty, filled_value FROM orders WHERE cid = ?",
                             (cid,)).fetchone()
            if row is None:
                raise KeyError(f"journal has no order {cid}")
            applied, applied_value = as_decimal(row["filled_qty"]), as_decimal(row["filled_value"])
            delta = cum_qty - applied
            if delta <= 0:
                return None
            key = exec_id or f"cum:{cum_qty}"
            if exec_id is not None and db.execute(
                    "SELECT 1 FROM fills WHERE cid = ? AND key = ?", (cid, key)).fetchone():
                key = f"{exec_id}:cum:{cum_qty}"  # an execution seen before, yet more filled
            if exec_price is not None and exec_qty is not None and exec_qty == delta:
                price = exec_price
            elif avg_price is not None and avg_price > 0:
                price = (cum_qty * avg_price - applied_value) / delta
                if price <= 0:  # rounding of a server-side average: fall back to it
                    price = avg_price
            elif exec_price is not None:
                price = exec_price
            else:
                raise ValueError(f"fill of {cid} has no price")
            price = price.quantize(Decimal("0.000001"))
            db.execute("INSERT INTO fills (cid, key, qty, price, ts) VALUES (?, ?, ?, ?, ?)",
                       (cid, key, str(delta), str(price), ts.isoformat()))
            db.execute("UPDATE orders SET filled_qty = ?, filled_value = ?, updated_wall = ? "
                       "WHERE cid = ?",
                       (str(cum_qty), str(applied_value + delta * price), time.time(), cid))
            self._event(db, cid, "fill", key=key, qty=str(delta), price=str(price),
                        cum_qty=str(cum_qty))
        return Fill(cid, key, delta, price, ts, cum_qty)

    def fills(self, cid: str | None = None) -> list[dict[str, Any]]:
        """Applied fills (all orders, or one), in application order."""
        with self._lock:
            if cid is None:
                rows = self._db.execute("SELECT * FROM fills ORDER BY rowid").fetchall()
            else:
                rows = self._db.execute("SELECT * FROM fills WHERE cid = ? ORDER BY rowid",
                                        (cid,)).fetchall()
        return [dict(r) for r in rows]

    def events(self, cid: str | None = None) -> list[dict[str, Any]]:
        """The append-only event log."""
        with self._lock:
            if cid is None:
                rows = self._db.execute("SELECT * FROM events ORDER BY seq").fetchall()
            else:
                rows = self._db.execute("SELECT * FROM events WHERE cid = ? ORDER BY seq",
                                        (cid,)).fetchall()
        return [dict(r) for r in rows]

