"""``--once`` keeps its working entries for the next run, which adopts them (review findings
2 and 7); a fill that wins the race against the shutdown's cancel reaches the Strategy
(finding 2).
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from brokers.alpaca.credentials import Credentials
from brokers.alpaca_sim.testing import SimServer
from ratchet.common.config import Settings
from ratchet.engine.paper import run_paper
from ratchet.engine.paper_run import PaperResult
from tests.paper.conftest import REPLAY_START, paper_run, session

ENTRY = "ratchet-CRUX-20251003T134200-entry"  # the CRUX crossover of the 13:42 bar
FALLBACK = "ratchet-CRUX-20251003T134300-fallback"


def _once(sim: SimServer, creds: Credentials, root: Path) -> PaperResult:
    run, hooks = paper_run(sim, creds, root, Settings(symbols=("CRUX",)), live=True, once=True,
                           stream_silence=None,
                           once_fill_wait=0.3)  # the fallback cannot fill here (no volume)
    return run_paper(run, hooks=hooks)


def _status(sim: SimServer, cid: str) -> str:
    with sim.market.lock:
        return next(o.status for o in sim.market.orders.values() if o.client_order_id == cid)


def test_once_leaves_its_entry_and_the_next_run_adopts_it(sim: SimServer, creds: Credentials,
                                                          tmp_path: Path) -> None:
    """Regression (findings 2 and 7): ``--once`` canceled its own limit entry at exit, so it
    never got its timeout or fallback; and a working entry found at startup was invisible to
    the Strategy. Now run 1 leaves the DAY limit at Alpaca; run 2 adopts it
    (``adopt_order``), times it out on the next bar and sends the market fallback."""
    sim.advance(to=REPLAY_START + timedelta(minutes=13))  # the 13:42 bar just closed
    sim.faults.partial_fills(1e-9)  # nothing fills (the limit would at the next open)
    first = _once(sim, creds, tmp_path)
    assert first.steps == 1 and sim.posts.posts[ENTRY] == 1  # type: ignore[attr-defined]
    assert _status(sim, ENTRY) == "new"  # not canceled at --once shutdown
    sim.advance(minutes=1)
    assert _status(sim, ENTRY) == "new"
    second = _once(sim, creds, tmp_path)
    assert second.steps == 1
    assert _status(sim, ENTRY) == "canceled"  # timed out (placed 13:42, now the 13:43 bar)
    assert sim.posts.posts[FALLBACK] == 1  # type: ignore[attr-defined]
    assert sim.posts.duplicates() == {}  # type: ignore[attr-defined]
    entries = [c for c in sim.posts.posts if c.endswith("-entry")]  # type: ignore[attr-defined]
    assert entries == [ENTRY]  # the adopted entry counted for the guards: no second entry
    audit = pd.read_csv(second.audit_path)
    decided = audit[(audit["kind"] == "decision") & (audit["symbol"] == "CRUX")]
    acts = list(zip(decided["action"], decided["reason"], decided["client_order_id"],
                    strict=True))
    assert ("cancel_entry", "limit_timeout", ENTRY) in acts
    assert ("buy", "fallback", FALLBACK) in acts
    assert _status(sim, FALLBACK) in ("new", "accepted")  # --once leaves it working too


def test_fill_that_wins_the_shutdown_cancel_goes_through_the_strategy(
        sim: SimServer, creds: Credentials, tmp_path: Path) -> None:
    """Regression (finding 2): at Ctrl+C the working entry had filled at Alpaca, its trade
    update unseen. The shutdown applied the fill to the broker's position only (no audit
    fill row, no trade; the stop came from the final reconciliation, unknown to the
    Strategy). Now the fill reaches the Strategy: audited, and its own stop protects it."""
    box: dict[str, Any] = {}
    sim.faults.partial_fills(1e-9)  # the entry rests (it would fill at the next bar's open)

    def fill_then_stop() -> None:  # right after the 13:42 bar's limit entry was placed
        sim.faults.silence_stream("trading")  # the fill's trade update never arrives ...
        sim.faults.partial_fills(None)
        box["store"].request_stop()  # ... Ctrl+C; the Lockstep now moves the market 1 bar

    result = session(sim, creds, tmp_path, 14, symbols=("CRUX",),
                     settings=Settings(symbols=("CRUX",)), hooks={13: fill_then_stop},
                     on_store=lambda st: box.__setitem__("store", st))
    assert _status(sim, ENTRY) == "filled"  # the race: filled before the shutdown's DELETE
    audit = pd.read_csv(result.audit_path)
    fills = audit[(audit["kind"] == "fill") & (audit["client_order_id"] == ENTRY)]
    assert len(fills) == 1 and float(fills.iloc[0]["qty"]) == 30
    stop = "ratchet-CRUX-20251003T134200-stop1"  # the Strategy's stop, not a reconcile one
    assert _status(sim, stop) == "new"
    state = json.loads(result.state_path.read_text())
    assert state["positions"]["CRUX"]["qty"] == 30
    assert state["stops"]["CRUX"]["cid"] == stop
    assert state["strategy"]["CRUX"]["trade"]["entry_cid"] == ENTRY
