"""A state directory belongs to one account at one endpoint (review finding 3).

Before the fix ``--sim`` rehearsals shared ``data/realtime`` with the paper account: the state
file recorded the endpoint but nobody checked it, and the journal keyed on client order ids
only, so a second identical rehearsal sent 0 orders ("already in the journal") and a real
run after a rehearsal inherited simulator rows.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from brokers.alpaca.credentials import Credentials
from brokers.alpaca.journal import Journal
from brokers.alpaca.state import StateOwnerError
from brokers.alpaca_sim.bars import BarBook
from brokers.alpaca_sim.models import account_id
from brokers.alpaca_sim.testing import SimServer
from ratchet.common.logs import REDACTOR
from tests.paper.conftest import REPLAY_START, REPO, SENTINEL_KEY, session


def test_files_of_another_account_are_refused(sim: SimServer, creds: Credentials,
                                              book: BarBook, tmp_path: Path) -> None:
    """The state file and the journal record endpoint + account id; another account (or
    endpoint) on the same state dir is refused with one line naming the dir and the fix."""
    session(sim, creds, tmp_path, 2)
    journal = Journal(tmp_path / "state" / "journal.sqlite")
    assert journal.get_meta("endpoint") == sim.base_url
    assert journal.get_meta("account_id") == account_id(SENTINEL_KEY)
    journal.close()
    other_key, other_secret = "OTHERKEY4242", "OTHER-SECRET-4242"
    other_creds = Credentials(other_key, other_secret, "test").register(REDACTOR)
    with SimServer(book=book, key=other_key, secret=other_secret, start=REPLAY_START,
                   rate_limit=10**6) as other:
        with pytest.raises(StateOwnerError) as err:
            session(other, other_creds, tmp_path, 2)
        text = str(err.value)
        assert "\n" not in text and str(tmp_path / "state") in text
        assert "--state-dir" in text and "aside" in text
        assert other.market.orders == {}  # nothing was sent


def _rehearsal(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APCA_")}
    args = [sys.executable, str(REPO / "cli.py"), "paper", "--sim", "--live", "--confirm-live",
            "--sim-minutes", "25", "--out", str(cwd / "runs")]
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_two_sim_rehearsals_in_a_row_both_trade(tmp_path: Path) -> None:
    """Regression: the second identical rehearsal sent 0 orders (its client order ids were
    in the shared journal). Each rehearsal now gets its own state and log dirs (never
    data/realtime), and without --symbols it trades the symbols of the sim's data."""
    sent = []
    symbols = ", ".join(sorted(f.stem for f in (REPO / "data" / "bars" / "1Min").glob("*.parquet")))
    for _ in range(2):
        out = _rehearsal(tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        assert f"symbols {symbols}," in " ".join(out.stdout.split())
        match = re.search(r"Orders sent to Alpaca\D*(\d+)", out.stdout)
        assert match, out.stdout[-2000:]
        sent.append(int(match.group(1)))
    assert all(n > 0 for n in sent), sent
    assert len(list((tmp_path / "data" / "realtime-sim").iterdir())) == 2
    assert len(list((tmp_path / "logs" / "realtime-sim").iterdir())) == 2
    assert not (tmp_path / "data" / "realtime").exists()
