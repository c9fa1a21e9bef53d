"""Run files of a paper session: the portfolio state file, the audit trail, the dry-run book.

Implements no Alpaca API itself; it persists what the broker knows about Alpaca's account
(docs.alpaca.markets/reference/getallopenpositions, .../getallorders) between runs:

* ``data/realtime/portfolio_state.json``: written atomically (``ratchet.common.atomic``) after every
  step and at shutdown: positions, resting stops, working orders, cash/value, the last bar
  per symbol, the Strategy's ``export_state()``, stream status. Tagged with the mode; a live
  run never restores a dry-run file (nor the reverse). Tagged with the endpoint and account
  id too: ``check_owner`` refuses to start on the files of another account (a rehearsal's
  state must never be inherited by the paper account, nor the reverse).
* ``ModeAudit``: the audit trail (``analyzers.audit.Audit``) with the run mode in every row's
  detail, so DRY RUN rows can never be mistaken for orders that were sent.
* ``DryRunBroker``: Backtrader's ``BackBroker`` rules (``brokers.backtest.SimBroker``) on the
  live bars: a local shadow book that shows what the Strategy would do and sends nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import backtrader as bt

from analyzers.audit import Audit
from brokers.alpaca.journal import Journal, JournalCorruptError
from brokers.backtest import SimBroker
from ratchet.common.atomic import write_text_atomic
from ratchet.common.errors import UserError
from ratchet.common.logs import REDACTOR
from ratchet.common.perms import private_dir

if TYPE_CHECKING:
    from brokers.alpaca.broker import BrokerView
    from brokers.alpaca.store import AlpacaStore

logger = logging.getLogger(__name__)

STATE_SCHEMA = 1
LIVE = "live"
DRY_RUN = "dry_run"


def load_state(path: Path, mode: str, notes: list[str] | None = None) -> dict[str, Any] | None:
    """The saved state for ``mode``, or None (missing, or another mode's file).

    An unreadable (corrupt) file is never overwritten: it is moved aside with a timestamp,
    loudly, and the run starts from the broker's state (``notes`` gets one line for the
    audit trail)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(state, dict):
            raise ValueError("not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        aside = move_aside(path, "corrupt")
        msg = (f"state file {path} is unreadable ({str(exc)[:120]}): moved aside to "
               f"{aside.name}; starting from the broker's positions and orders")
        logger.error("%s", msg)
        if notes is not None:
            notes.append(msg)
        return None
    if state.get("mode") != mode:
        logger.warning("state file %s was written by a %s run: ignored by this %s run",
                       path, state.get("mode"), mode)
        return None
    return state


def move_aside(path: Path, why: str) -> Path:
    """Rename ``path`` to ``<name>.<why>-<UTC timestamp>`` (never overwriting anything);
    SQLite's ``-wal``/``-shm`` companions go along. Returns the new path."""
    path = Path(path)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.{why}-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.{why}-{stamp}-{n}")
    path.rename(target)
    for suffix in ("-wal", "-shm"):
        side = Path(f"{path}{suffix}")
        if side.exists():
            side.rename(Path(f"{target}{suffix}"))
    return target


def names_orders(state: dict[str, Any] | None) -> int:
    """How many orders (resting stops, working and unresolved orders) a state file lists."""
    if not state:
        return 0
    return (len(state.get("stops") or {}) + len(state.get("working_orders") or [])
            + len(state.get("ambiguous") or []))


class StateDirLockedError(UserError):
    """Another process runs on this state directory."""


class StateFileError(UserError):
    """A state or journal file is broken, or missing while it is needed."""

    exit_code = 3


class StateDirLock:
    """An exclusive ``flock`` on ``<state dir>/.lock`` for the life of a session.

    A second ``paper`` on the same directory is refused at once with the first one's pid
    (two processes writing one journal and one state file would corrupt both). The lock
    goes with the process, also on SIGKILL: no stale lock to clean up."""

    NAME = ".lock"

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / self.NAME
        self._fd: int | None = None

    def acquire(self) -> StateDirLock:
        """Take the lock; raises ``StateDirLockedError`` naming the holder's pid."""
        private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise StateDirLockedError(
                f"{self.path.parent} is in use by another ratchet paper run (pid {holder}): "
                "stop it first, or pass another --state-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the lock up (idempotent)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)


class StateOwnerError(UserError):
    """The state directory holds the files of another account or endpoint."""


def read_state_any_mode(path: Path) -> dict[str, Any] | None:
    """The saved state whatever its mode (None when missing or unreadable)."""
    try:
        state = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return state if isinstance(state, dict) else None


def same_endpoint(a: str, b: str) -> bool:
    """Do two REST roots name the same endpoint (case and a trailing slash aside)?"""
    return a.strip().rstrip("/").lower() == b.strip().rstrip("/").lower()


def check_owner(state_dir: Path, endpoint: str, account_id: str | None,
                owners: list[tuple[str, str | None, str | None]]) -> None:
    """Refuse files written for another endpoint or account.

    ``owners``: (what, endpoint, account id) recorded by each file (the state file, the
    journal); None where a file did not record it (older files)."""
    for what, their_endpoint, their_account in owners:
        other_endpoint = bool(their_endpoint) and not same_endpoint(their_endpoint or "",
                                                                     endpoint)
        other_account = bool(their_account) and bool(account_id) and their_account != account_id
        if other_endpoint or other_account:
            raise StateOwnerError(
                f"{state_dir} holds the {what} of account {their_account or '?'} at "
                f"{their_endpoint or '?'}, not of account {account_id or '?'} at {endpoint}: "
                f"pass another --state-dir, or move the files in {state_dir} aside")


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write the state atomically (never containing a secret: redacted on the way out)."""
    text = json.dumps(state, indent=2, sort_keys=True, default=str) + "\n"
    write_text_atomic(Path(path), REDACTOR.redact(text), mode=0o600)


def last_bars(state: dict[str, Any] | None) -> dict[str, datetime]:
    """Per symbol, the last bar time the Strategy processed (from a state file)."""
    out: dict[str, datetime] = {}
    for sym, iso in ((state or {}).get("last_bar") or {}).items():
        try:
            when = datetime.fromisoformat(iso)
        except (TypeError, ValueError):
            continue
        out[sym] = when if when.tzinfo else when.replace(tzinfo=UTC)
    return out


class ModeAudit(Audit):
    """An ``Audit`` that stamps every row with the run mode (``mode`` in the detail)."""

    def __init__(self, mode: str, live_path: Path | None = None) -> None:
        super().__init__(live_path=live_path, redact=REDACTOR.redact)
        self.mode = mode

    def record(self, time: datetime | None, kind: str, symbol: str = "", action: str = "",
               reason: str = "", qty: float | None = None, price: float | None = None,
               client_order_id: str = "", **detail: Any) -> None:
        """Add one row; ``mode`` (``live`` / ``DRY_RUN``) goes into its detail."""
        detail.setdefault("mode", "DRY_RUN" if self.mode == DRY_RUN else self.mode)
        super().record(time, kind, symbol, action, reason, qty, price, client_order_id,
                       **detail)


class DryRunBroker(SimBroker):
    """The backtest broker on live bars: fills with Backtrader's rules, sends nothing.

    Backtrader calls ``broker.next()`` on every loop iteration; with live feeds most
    iterations carry no new bar, and ``BackBroker.next`` would then fill orders against the
    bar they were decided on. This broker only runs it when a new step was delivered.
    """

    def __init__(self, store: AlpacaStore | None = None) -> None:
        super().__init__()
        #: the store whose delivered steps gate ``next`` (None: never fills)
        self.store = store
        self._seen_steps = 0

    def next(self) -> None:
        steps = self.store.status.steps if self.store is not None else 0
        if steps == self._seen_steps:
            return
        self._seen_steps = steps
        super().next()

    def view(self) -> BrokerView:
        """Positions and working orders of the shadow book (dashboard, state file)."""
        from brokers.alpaca.broker import BrokerView, is_stop_order

        positions: dict[str, dict[str, float]] = {}
        for data, pos in self.positions.items():
            if pos.size:
                last = float(data.close[0]) if len(data) else pos.price
                positions[data._name] = {"qty": pos.size, "avg_price": pos.price,
                                         "last": last,
                                         "unrealized_pnl": pos.size * (last - pos.price)}
        stops: dict[str, dict[str, Any]] = {}
        working: list[dict[str, Any]] = []
        for order in list(self.pending) + list(self.submitted):
            if not order.alive():
                continue
            row = {"cid": order.info.get("cid", ""), "symbol": order.data._name,
                   "purpose": order.info.get("purpose", ""),
                   "side": "buy" if order.isbuy() else "sell",
                   "type": order.getordername().lower(), "state": "DRY RUN",
                   "qty": abs(order.executed.remsize), "price": order.created.price,
                   "alpaca_id": None}
            if is_stop_order(order):
                stops[row["symbol"]] = row
            else:
                working.append(row)
        return BrokerView(self.getcash(), self.getvalue(), positions, stops, working)


def make_dry_run_broker(cash: float, commission: float, store: AlpacaStore,
                        session: Callable[[datetime], str] | None = None) -> DryRunBroker:
    """A ``DryRunBroker`` on ``store``'s steps with the backtest's fill settings; ``session``
    (bar time -> ``regular``/``extended``/``closed``) makes stops sleep outside regular
    hours as at Alpaca (extended-hours sessions)."""
    broker = DryRunBroker(store=store)
    broker.session = session
    broker.setcash(cash)
    broker.setcommission(commission=commission)
    broker.set_coc(False)
    broker.set_coo(False)
    return broker


def bt_order_status(order: bt.Order) -> str:
    """Lower-case Backtrader status name."""
    return order.getstatusname().lower()


def open_journal(path: Path, saved: dict[str, Any] | None, rebuild: bool,
                 notes: list[str]) -> Journal:
    """Open the order journal, refusing to guess when it is broken.

    * healthy: opened as it is;
    * missing with no orders in the state file (a first run): created;
    * missing or empty (0 bytes) while the state file lists orders, or corrupt: a one-line
      ``StateFileError`` naming ``--rebuild-journal``. With that flag the bad file is moved
      aside with a timestamp (never overwritten) and a new journal is rebuilt from Alpaca at
      the startup reconciliation (open orders of ours are adopted); ``notes`` gets the line
      for the audit trail;
    * empty while the state lists no orders: moved aside and recreated, loudly.
    """
    path = Path(path)
    listed = names_orders(saved)
    problem = None
    if not path.exists():
        problem = None if listed == 0 else "missing"
    elif path.stat().st_size == 0 and not Path(f"{path}-wal").exists():
        problem = "empty (0 bytes)"
    else:
        try:
            return Journal(path)
        except JournalCorruptError as exc:
            problem = f"corrupt ({str(exc).split(': ', 1)[-1][:100]})"
    if problem is None:
        return Journal(path)
    if not rebuild and (problem.startswith("corrupt") or listed > 0):
        raise StateFileError(
            f"order journal {path} is {problem} while the state file lists {listed} "
            f"order(s): not trading on a guess. Pass --rebuild-journal to move it aside and "
            f"rebuild it from Alpaca's open orders")
    aside = move_aside(path, "broken") if path.exists() else None
    msg = (f"order journal {path} was {problem}"
           f"{f', moved aside to {aside.name}' if aside else ''}: a new journal is rebuilt "
           f"from Alpaca's positions and open orders")
    logger.error("RECOVERY: %s", msg)
    notes.append(msg)
    return Journal(path)
