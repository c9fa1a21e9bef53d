"""Alerts' cost on the trading path: bar arrival -> order request, alerts off vs alerts to a
receiver that takes 2 s to answer every message.

One command::

    .venv/bin/python benchmarks/bench_alerts.py [--minutes 390] [--repeat 2] [--delay 2]

Each replay is ``bench_paper.py``'s: the loopback Alpaca on the bundled bars, one session of
6 symbols replayed in lockstep through the whole live path (stream, step assembler, live
indicators, fill fence, Backtrader, Strategy, journal, alpaca-py POST), latency taken from
the moment a step's bars arrived on the stream to the moment its order's POST is handed to
alpaca-py. Variants alternate (off, slow, off, slow...): ``off`` = no alert sink; ``slow`` =
an ``AlertDispatcher`` at level ``all`` sending Apprise JSON webhooks to a local HTTP server
that sleeps ``--delay`` seconds before answering (the production timeout, retries and rate
limit). Target: no difference at p99 beyond the run-to-run spread of ``off``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from alerts.dispatch import AlertDispatcher  # noqa: E402
from benchmarks.bench_paper import percentile  # noqa: E402
from brokers.alpaca.credentials import Credentials  # noqa: E402
from brokers.alpaca_sim.testing import SimServer  # noqa: E402
from ratchet.common.alpaca_config import AlpacaConfig  # noqa: E402
from ratchet.common.config import Settings  # noqa: E402
from ratchet.engine.paper import run_paper  # noqa: E402
from ratchet.engine.paper_run import PaperRun, SessionHooks  # noqa: E402


class SlowReceiver:
    """A JSON webhook receiver that answers each POST after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        self.count = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                time.sleep(delay)
                outer.count += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"json://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def replay(symbols: tuple[str, ...], minutes: int, start: str, alerts: Any) -> tuple[list[float],
                                                                                     int]:
    """One lockstep session; (latencies in ms, orders sent)."""
    with SimServer(REPO / "data" / "bars", key="BENCHKEYID0001", secret="BENCH-SECRET-0001",
                   start=start, symbols=symbols, rate_limit=10**6) as sim:
        creds = Credentials(sim.key, sim.secret, "bench")
        box: dict[str, Any] = {}
        steps = {"n": -1, "adv": 0}

        def idle() -> None:
            store = box.get("store")
            if store is None or store.status.steps == steps["n"]:
                return
            if steps["adv"] >= minutes:
                store.request_stop()
                return
            steps["n"] = store.status.steps
            steps["adv"] += 1
            sim.advance(minutes=1)

        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            cfg = AlpacaConfig(
                base_url=sim.base_url, data_stream_url=sim.data_stream_url,
                trading_stream_url=sim.trading_stream_url, clock_poll=5.0, stream_silence=30.0,
                requests_per_minute=1e6)
            run = PaperRun(settings=Settings(symbols=symbols), credentials=creds, alpaca=cfg,
                           live=True, state_dir=root / "state", log_dir=root / "logs", out=None)
            hooks = SessionHooks(on_store=lambda st: box.__setitem__("store", st),
                                 install_signals=False)
            result = run_paper(run, hooks=hooks, alerts=alerts, on_idle=lambda _store: idle())
    return [s * 1000 for s in result.latency], result.orders_sent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", default="ACME,BOLT,CRUX,DYNA,ECHO,FLUX")
    parser.add_argument("--minutes", type=int, default=390)
    parser.add_argument("--start", default="2025-10-03T13:30:00+00:00")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--delay", type=float, default=2.0)
    args = parser.parse_args()
    symbols = tuple(s.strip().upper() for s in args.symbols.split(","))
    receiver = SlowReceiver(args.delay)
    stats: dict[str, list[tuple[float, float, float, int]]] = {"off": [], "slow": []}
    delivered = 0
    for _ in range(args.repeat):
        for variant in ("off", "slow"):
            alerts = AlertDispatcher([receiver.url], "all").start() if variant == "slow" \
                else None
            t0 = time.perf_counter()
            ms, orders = replay(symbols, args.minutes, args.start, alerts)
            wall = time.perf_counter() - t0
            if alerts is not None:
                alerts.close(timeout=0.0)  # what is still queued is not the trading path's
            stats[variant].append((percentile(ms, 50), percentile(ms, 99), max(ms), orders))
            print(f"{variant:>4}: {orders} orders, p50 {percentile(ms, 50):.2f} ms, p99 "
                  f"{percentile(ms, 99):.2f} ms, max {max(ms):.2f} ms ({wall:.1f} s)")
    delivered = receiver.count
    print(f"slow receiver ({args.delay:g} s per message) answered {delivered} messages")
    for variant, rows in stats.items():
        p50 = statistics.median(r[0] for r in rows)
        p99s = [r[1] for r in rows]
        print(f"{variant:>4}: median p50 {p50:.2f} ms, p99 {statistics.median(p99s):.2f} ms "
              f"(runs {', '.join(f'{p:.2f}' for p in p99s)}), orders "
              f"{sorted({r[3] for r in rows})}")
    off99 = [r[1] for r in stats["off"]]
    slow99 = [r[1] for r in stats["slow"]]
    added = statistics.median(slow99) - statistics.median(off99)
    spread = max(off99) - min(off99)
    print(f"added p99: {added:+.2f} ms; run-to-run spread of p99 without alerts: "
          f"{spread:.2f} ms -> {'none measurable' if added <= max(spread, 1.0) else 'MEASURABLE'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
