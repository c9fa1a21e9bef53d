"""Broken and shared files of a paper run (issue 11 points 3, 4, 5, 8): a journal conflict
is quarantined, a second process on a state dir is refused naming the first, broken files
stop the start with one line or are recovered loudly (moved aside, never overwritten), and
everything the run writes is private."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest
from alpaca.trading.enums import OrderSide, OrderType, TimeInForce

from brokers.alpaca.client import OrderSpec
from brokers.alpaca.credentials import Credentials
from brokers.alpaca.journal import Journal, JournalState
from brokers.alpaca.state import StateDirLock, StateDirLockedError, StateFileError
from brokers.alpaca_sim.testing import SimServer
from tests.paper.conftest import session

T0 = datetime(2025, 10, 3, 13, 30, tzinfo=UTC)


def _intent(j: Journal, cid: str) -> None:
    spec = OrderSpec(cid, "ACME", OrderSide.BUY, OrderType.MARKET, Decimal(5),
                     TimeInForce.DAY)
    j.record_intent(spec.to_json(), "entry", T0)


def test_reused_alpaca_id_quarantines_the_old_row(tmp_path: Path) -> None:
    """Regression (issue 11.3): a restarted server reused order ids; startup reconciliation
    died on ``UNIQUE constraint failed: orders.alpaca_id`` at every restart (a position sat
    288 replay-minutes without a stop). The row Alpaca no longer knows by that id is
    quarantined (audited via the hook), the new order is recorded."""
    j = Journal(tmp_path / "j.sqlite")
    seen: list[tuple[str, str, str]] = []
    j.on_quarantine = lambda *a: seen.append(a)
    _intent(j, "old-entry")
    j.mark_accepted("old-entry", "id-7", "new")  # still open at the old server
    _intent(j, "new-entry")
    j.mark_accepted("new-entry", "id-7", "new")  # the restarted server hands out id-7 again
    j.adopt("found-stop", "ACME", "sell", "stop", Decimal(5), "stop", "id-9", "new",
            Decimal(0), Decimal(0))
    j.set_status("new-entry", "filled", "id-9")  # and once more, through a status update
    old, new, found = j.get("old-entry"), j.get("new-entry"), j.get("found-stop")
    assert old is not None and new is not None and found is not None
    assert (old.alpaca_id, old.state) == (None, JournalState.AMBIGUOUS)  # resolved by its cid
    assert (new.alpaca_id, new.alpaca_status) == ("id-9", "filled")
    assert found.alpaca_id is None
    assert seen == [("old-entry", "id-7", "new-entry"), ("found-stop", "id-9", "new-entry")]
    assert [e["cid"] for e in j.quarantined()] == ["old-entry", "found-stop"]


def test_second_process_on_a_state_dir_is_refused_naming_the_first(
        sim: SimServer, creds: Credentials, tmp_path: Path) -> None:
    """Regression (issue 11.4): a second ``paper`` on the same state dir was refused only by
    accident, after 20 s, with "check the keys". Now: at once, one line with the pid."""
    first = StateDirLock(tmp_path / "state").acquire()
    try:
        with pytest.raises(StateDirLockedError) as err:
            session(sim, creds, tmp_path, 2)
        text = str(err.value)
        assert "\n" not in text and f"pid {os.getpid()}" in text
        assert str(tmp_path / "state") in text and "--state-dir" in text
        assert sim.market.orders == {}
    finally:
        first.release()
    session(sim, creds, tmp_path, 1)  # released: the next run starts


def _state_with_orders(state_dir: Path, base_url: str) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "portfolio_state.json").write_text(json.dumps({
        "schema": 1, "mode": "live", "endpoint": base_url, "positions": {"ACME": {"qty": 5}},
        "stops": {"ACME": {"cid": "ratchet-ACME-20251003T133000-stop", "price": 90.0}},
        "working_orders": []}))


def test_missing_or_empty_journal_with_orders_in_the_state_is_refused(
        sim: SimServer, creds: Credentials, tmp_path: Path) -> None:
    """Regression (issue 11.5): a journal deleted or truncated to 0 bytes was silently
    replaced by a new one although the state file listed orders."""
    state = tmp_path / "state"
    _state_with_orders(state, sim.base_url)
    for broken in ("missing", "empty"):
        if broken == "empty":
            (state / "journal.sqlite").write_bytes(b"")
        with pytest.raises(StateFileError) as err:
            session(sim, creds, tmp_path, 1)
        text = str(err.value)
        assert "\n" not in text and "--rebuild-journal" in text and broken in text
        assert sim.market.orders == {}
    assert (state / "journal.sqlite").stat().st_size == 0  # left as it was


def test_corrupt_journal_is_one_line_then_rebuilt_on_request(
        sim: SimServer, creds: Credentials, tmp_path: Path) -> None:
    """Regression (issue 11.5): a journal with corrupted pages gave a 40-line traceback."""
    state = tmp_path / "state"
    state.mkdir()
    path = state / "journal.sqlite"
    j = Journal(path)
    for i in range(60):
        _intent(j, f"ratchet-ACME-20251003T13{i:02d}00-entry-with-a-long-name-{'x' * 200}")
    j.close()
    raw = bytearray(path.read_bytes())
    raw[4096:12288] = b"\xde\xad\xbe\xef" * 2048  # two pages of garbage
    path.write_bytes(bytes(raw))
    with pytest.raises(StateFileError) as err:
        session(sim, creds, tmp_path, 1)
    assert "\n" not in str(err.value) and "corrupt" in str(err.value)
    assert path.read_bytes() == bytes(raw)  # never overwritten
    result = session(sim, creds, tmp_path, 1, rebuild_journal=True)
    aside = list(state.glob("journal.sqlite.broken-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == bytes(raw)
    audit = pd.read_csv(result.audit_path)
    rows = audit[audit["action"] == "file_recovered"]
    assert len(rows) == 1 and "journal" in rows.iloc[0]["detail"]


def test_corrupt_state_file_is_moved_aside_and_audited(
        sim: SimServer, creds: Credentials, tmp_path: Path) -> None:
    """Regression (issue 11.5): a corrupt state file was silently overwritten."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "portfolio_state.json").write_text('{"schema": 1, "positions": {"AC')
    result = session(sim, creds, tmp_path, 1)
    aside = list(state.glob("portfolio_state.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text() == '{"schema": 1, "positions": {"AC'
    assert json.loads(result.state_path.read_text())["mode"] == "live"
    audit = pd.read_csv(result.audit_path)
    assert (audit["action"] == "file_recovered").sum() == 1


def test_run_files_are_private(sim: SimServer, creds: Credentials, tmp_path: Path) -> None:
    """Regression (issue 11.8): state, journal (-wal/-shm), audit, log and run folders were
    0644/0755."""
    result = session(sim, creds, tmp_path, 2)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    state = tmp_path / "state"
    assert mode(state) == 0o700 and mode(tmp_path / "logs") == 0o700
    assert mode(result.state_path) == 0o600 and mode(result.audit_path) == 0o600
    for f in state.glob("journal.sqlite*"):
        assert mode(f) == 0o600, f
    assert result.run_dir is not None and mode(result.run_dir) == 0o700
