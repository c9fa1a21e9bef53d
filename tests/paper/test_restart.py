"""The bot killed with SIGKILL at random points and restarted (``cli.py paper`` subprocesses
against a loopback Alpaca that lives in this test process and keeps its state).

Pins: no client order id reaches the broker twice (freqtrade #10436, nautilus #3176:
duplicate orders after a restart), and the saved state ends equal to the broker's.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from brokers.alpaca_sim.testing import SimServer
from tests.paper.conftest import REPO, SENTINEL_KEY, SENTINEL_SECRET, wait_until

pytestmark = pytest.mark.slow


def _bot(sim: SimServer, root: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "APCA_API_KEY_ID": SENTINEL_KEY, "APCA_API_SECRET_KEY": SENTINEL_SECRET,
           "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "cli.py", "paper", "--live", "--confirm-live",
            "--base-url", sim.base_url, "--symbols", "ACME,BOLT,CRUX",
            "--state-dir", str(root / "state"), "--log-dir", str(root / "logs"),
            "--out", str(root / "runs"), "--clock-poll", "1", "-v"]
    log = (root / "bot-output.txt").open("a")
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            text=True)


def _lives(output: Path) -> int:
    """Bot lives that finished their startup (the banner line after reconciliation)."""
    return output.read_text(errors="replace").count("LIVE (paper account)") \
        if output.exists() else 0


def _last_bar_saved(state: Path) -> datetime:
    """The newest bar time the state file says the Strategy processed."""
    try:
        bars = json.loads(state.read_text()).get("last_bar") or {}
    except (OSError, ValueError):
        return datetime.min.replace(tzinfo=UTC)
    return max((datetime.fromisoformat(t) for t in bars.values()),
               default=datetime.min.replace(tzinfo=UTC))


def test_sigkill_at_random_points_sends_no_order_twice(sim: SimServer, tmp_path: Path) -> None:
    rng = random.Random(20251003)
    minutes, done = 110, threading.Event()

    def clock() -> None:  # the market keeps moving, whether the bot is alive or not
        for _ in range(minutes):
            sim.advance(minutes=1)
            time.sleep(0.12)
        done.set()

    state = tmp_path / "state" / "portfolio_state.json"
    output = tmp_path / "bot-output.txt"
    bot = _bot(sim, tmp_path)
    # a loaded machine may need long for the imports: wait on conditions, not fixed sleeps
    assert wait_until(state.exists, timeout=180), output.read_text()
    ticker = threading.Thread(target=clock, daemon=True)
    ticker.start()
    kills = 0
    lives = _lives(output)
    while not done.is_set() and kills < 4:
        time.sleep(rng.uniform(0.8, 3.0))
        bot.send_signal(signal.SIGKILL)
        bot.wait(timeout=10)
        kills += 1
        lives = _lives(output)
        bot = _bot(sim, tmp_path)
    assert done.wait(timeout=300)
    # the last bot must be past its startup (signal handlers in place, reconciled) before the
    # SIGTERM, and have seen the last bar: a SIGTERM during the imports is a plain kill
    assert wait_until(lambda: _lives(output) > lives, timeout=180), output.read_text()[-3000:]
    last_bar = sim.now() - timedelta(minutes=1)
    assert wait_until(lambda: _last_bar_saved(state) >= last_bar, timeout=120)
    bot.send_signal(signal.SIGTERM)
    assert bot.wait(timeout=180) == 0, output.read_text()[-3000:]
    assert kills >= 3

    assert sim.posts.duplicates() == {}  # type: ignore[attr-defined]
    assert sum(sim.posts.posts.values()) > 0  # type: ignore[attr-defined]
    saved = json.loads(state.read_text())
    with sim.market.lock:
        broker_pos = {s: float(p.qty) for s, p in sim.market.positions.items() if p.qty}
        stops = {o.client_order_id: float(o.qty) - float(o.filled_qty)
                 for o in sim.market.orders.values()
                 if o.type == "stop" and o.status in ("new", "accepted", "partially_filled")}
        working_entries = [o.client_order_id for o in sim.market.orders.values()
                           if o.side == "buy" and o.status in ("new", "accepted",
                                                               "partially_filled")]
    assert {s: p["qty"] for s, p in saved["positions"].items()} == broker_pos
    assert {v["cid"]: v["qty"] for v in saved["stops"].values()} == stops
    assert set(stops) == {v["cid"] for v in saved["stops"].values()}
    for sym in broker_pos:  # every position is protected by exactly one resting stop
        assert sum(1 for c in stops if f"-{sym}-" in c) == 1
    assert working_entries == []  # a graceful stop cancels working entries, keeps stops
