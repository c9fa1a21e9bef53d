"""Kill soak: ``cli.py paper`` SIGKILLed at random moments and the loopback server restarted
(with its ``--state`` file) while the market keeps moving; then the same span uninterrupted.

One command::

    .venv/bin/python benchmarks/bench_soak.py [--kills 50] [--restarts 5] [--pace 0.3]
        [--min-life 4] [--max-life 14]

The server (``brokers.alpaca_sim`` with ``state_path``) runs in this process, stepped one
replayed minute every ``--pace`` wall seconds (nights skipped), so every order that reaches
it is counted. The bot is the real command as a user runs it (``cli.py paper --live``, one
process per life). Every ``uniform(--min-life, --max-life)`` seconds the bot gets SIGKILL and
is started again; ``--restarts`` times (spread over the soak) the server is stopped and
started again on the same port from its state file while the bot runs. At the end a last bot
runs 20 s and is stopped with SIGTERM.

Reported (targets in brackets):

* duplicates: client order ids that reached the server more than once [0];
* unprotected position-minutes: replayed minutes x symbols where the broker held shares not
  covered by an open sell stop, sampled after each replayed minute, against the same span run
  without kills or restarts (the baseline, same pace, same command);
* missed bars: bars of the replayed span absent from the bot's recorded bars
  (``state/bars/1Min``) [0];
* final state vs broker: positions and resting stops in ``portfolio_state.json`` equal the
  server's [equal].

Exits non-zero when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402

from brokers.alpaca_sim.bars import BarBook  # noqa: E402
from brokers.alpaca_sim.calendar import to_ns  # noqa: E402
from brokers.alpaca_sim.testing import SimServer  # noqa: E402

KEY, SECRET = "SOAKKEYID0001", "SOAK-SECRET-0001"
SYMBOLS = ("ACME", "BOLT", "CRUX")
START = "2025-10-03T13:30:00+00:00"


class Venue:
    """The stepped loopback server, restartable on its port from its state file; counts
    every order that reaches the market and the unprotected position-minutes."""

    def __init__(self, book: BarBook, state: Path) -> None:
        self.book, self.state = book, state
        self.posts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.unprotected = 0
        self.minutes = 0
        self.first_ts: Any = None
        self.server = self._start(0)

    def _start(self, port: int) -> SimServer:
        server = SimServer(book=self.book, key=KEY, secret=SECRET, start=START,
                           rate_limit=10**6, port=port, state_path=self.state).start()
        submit = server.market.submit

        def counted(req: Any) -> Any:
            self.posts[str(req.client_order_id)] += 1
            return submit(req)

        server.market.submit = counted  # type: ignore[method-assign]
        return server

    def restart(self) -> None:
        with self.lock:
            port = self.server.port
            self.server.stop()
            self.server = self._start(port)

    def step(self) -> None:
        """One replayed minute (over the night to the next open), then sample protection."""
        with self.lock:
            sim = self.server
            cal = sim.book.calendar
            if cal.phase(to_ns(sim.now())) != "regular":
                sim.advance(to=sim.next_open())
            sim.advance(minutes=1)
            self.minutes += 1
            m = sim.market
            with m.lock:
                for sym, pos in m.positions.items():
                    covered = sum(o.qty - o.filled_qty for o in m.orders.values()
                                  if o.symbol == sym and o.type == "stop" and o.side == "sell"
                                  and o.is_open)
                    if pos.qty > 0 and covered + 1e-9 < pos.qty:
                        self.unprotected += 1

    def stop(self) -> None:
        self.server.stop()


def bot(base: str, root: Path) -> subprocess.Popen[str]:
    """``cli.py paper --live`` against the venue, as a user starts it."""
    env = {**os.environ, "APCA_API_KEY_ID": KEY, "APCA_API_SECRET_KEY": SECRET,
           "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "cli.py", "paper", "--live", "--confirm-live", "--base-url", base,
            "--symbols", ",".join(SYMBOLS), "--state-dir", str(root / "state"),
            "--log-dir", str(root / "logs"), "--out", str(root / "runs"), "--clock-poll", "1"]
    log = (root / "bot-output.txt").open("a")
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            text=True)


def soak(book: BarBook, root: Path, kills: int, restarts: int, minutes: int | None,
         pace: float, life: tuple[float, float], seed: int) -> dict[str, Any]:
    """One soak (kills=0, restarts=0: the uninterrupted baseline over ``minutes``)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    venue = Venue(book, root / "sim-state.json")
    base = venue.server.base_url
    stop = threading.Event()

    def clock() -> None:
        while not stop.is_set():
            venue.step()
            time.sleep(pace)

    proc = bot(base, root)
    state = root / "state" / "portfolio_state.json"
    deadline = time.monotonic() + 90
    while not state.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    ticker = threading.Thread(target=clock, daemon=True)
    ticker.start()
    t0 = time.monotonic()
    done_kills = done_restarts = 0
    restart_at = {int((i + 1) * kills / (restarts + 1)) for i in range(restarts)}
    while done_kills < kills:
        time.sleep(rng.uniform(*life))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        done_kills += 1
        proc = bot(base, root)
        if done_kills in restart_at:
            time.sleep(rng.uniform(0.5, 2.0))  # the bot is starting or running
            venue.restart()
            done_restarts += 1
    while minutes is not None and venue.minutes < minutes:
        time.sleep(0.2)
    stop.set()
    ticker.join()
    time.sleep(3.0)  # the last bars reach the bot
    if kills:
        proc.send_signal(signal.SIGKILL)  # the last life ends as a kill too, then a clean run
        proc.wait(timeout=30)
        proc = bot(base, root)
        time.sleep(20.0)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
    wall = time.monotonic() - t0
    sim = venue.server
    with sim.market.lock:
        broker_pos = {s: float(p.qty) for s, p in sim.market.positions.items() if p.qty}
        broker_stops = {o.client_order_id: float(o.qty - o.filled_qty)
                        for o in sim.market.orders.values()
                        if o.type == "stop" and o.is_open}
        now = sim.market.now_ns
    saved = json.loads(state.read_text())
    same = ({s: p["qty"] for s, p in saved["positions"].items()} == broker_pos
            and {v["cid"]: v["qty"] for v in saved["stops"].values()} == broker_stops)
    missed = 0
    for sym in SYMBOLS:
        files = list((root / "state" / "bars" / "1Min" / sym).glob("*.parquet"))
        got = set(pd.concat(pd.read_parquet(f) for f in files).timestamp) if files else set()
        bars = book.bars[sym]
        span = [pd.Timestamp(int(t), tz="UTC") for t, e in zip(bars.bars.t, bars.end, strict=True)
                if to_ns(pd.Timestamp(START).to_pydatetime()) <= t and e <= now]
        missed += sum(1 for t in span if t not in got)
    venue.stop()
    text = (root / "bot-output.txt").read_text(errors="replace")
    return {"kills": done_kills, "trading_lives": text.count("LIVE (paper account)"),
            "restarts": done_restarts, "minutes": venue.minutes,
            "orders": sum(venue.posts.values()),
            "duplicates": {c: n for c, n in venue.posts.items() if n > 1},
            "unprotected": venue.unprotected, "missed": missed, "same": same,
            "exit": code, "wall": wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument("--pace", type=float, default=0.3, help="wall s per replayed minute")
    # a bot needs ~3-6 s (imports, warm-up, reconciliation) on a busy 2-core machine before it
    # trades: shorter lives would only ever kill it during its startup
    parser.add_argument("--min-life", type=float, default=4.0)
    parser.add_argument("--max-life", type=float, default=14.0)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    book = BarBook.load(REPO / "data" / "bars" / "1Min", SYMBOLS)
    with tempfile.TemporaryDirectory() as tmp:
        faulty = soak(book, Path(tmp) / "soak", args.kills, args.restarts, None, args.pace,
                      (args.min_life, args.max_life), args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        base = soak(book, Path(tmp) / "base", 0, 0, faulty["minutes"], args.pace,
                    (args.min_life, args.max_life), args.seed)
    for name, r in (("soak", faulty), ("baseline", base)):
        print(f"{name}: {r['kills']} SIGKILLs of paper ({r['trading_lives']} lives reached "
              f"trading), {r['restarts']} server restarts, "
              f"{r['minutes']} replayed minutes x {len(SYMBOLS)} symbols in {r['wall']:.0f} s; "
              f"{r['orders']} orders reached the server; duplicates {len(r['duplicates'])}; "
              f"unprotected position-minutes {r['unprotected']}; missed bars {r['missed']}; "
              f"final state == broker: {r['same']}; last exit code {r['exit']}")
    ok = (not faulty["duplicates"] and faulty["missed"] == 0 and faulty["same"]
          and not base["duplicates"] and base["same"])
    print(f"unprotected position-minutes: soak {faulty['unprotected']} vs uninterrupted "
          f"{base['unprotected']}; targets (0 duplicates, 0 missed bars, state == broker): "
          f"{'MET' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
