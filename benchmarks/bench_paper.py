"""Paper-trading latency: a bar's arrival on the stream -> the order request, p50 / p99.

One command::

    .venv/bin/python benchmarks/bench_paper.py [--symbols ACME,BOLT,...] [--minutes 390]

It starts the loopback Alpaca (``brokers.alpaca_sim``) on the bundled bars in this process
and replays one session in lockstep (each bar is published as soon as the previous step is
done) through the whole live path: the market-data WebSocket, the step assembler, the live
``signal``/``atr`` computation, the fill fence, Backtrader, ``RatchetStrategy``, the
journal's fsynced intent, and alpaca-py's POST. For every order it records the time from the
moment the step's bars arrived on the stream (``perf_counter`` in the stream thread) to the
moment the POST is handed to alpaca-py.

The replay runs hundreds of times faster than real time, so the request budget (Alpaca's
200 per minute, enforced by our token bucket) is lifted for it: the loopback server has no
limit and real time would never approach it (a few requests per bar).

The baseline, measured in the same run: the round trip of one bare alpaca-py
``get_clock()`` on the same loopback server (what one REST request costs here), so the
ratio p50 / baseline shows our overhead in units of one request. Target: p99 < 50 ms.
Exits non-zero when the target is missed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from brokers.alpaca.client import AlpacaClient  # noqa: E402
from brokers.alpaca.credentials import Credentials  # noqa: E402
from brokers.alpaca_sim.testing import SimServer  # noqa: E402
from ratchet.common.alpaca_config import AlpacaConfig  # noqa: E402
from ratchet.common.config import Settings  # noqa: E402
from ratchet.engine.paper import run_paper  # noqa: E402
from ratchet.engine.paper_run import PaperRun, SessionHooks  # noqa: E402

TARGET_P99_MS = 50.0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", default="ACME,BOLT,CRUX,DYNA,ECHO,FLUX")
    parser.add_argument("--minutes", type=int, default=390)
    parser.add_argument("--start", default="2025-10-03T13:30:00+00:00")
    args = parser.parse_args()
    symbols = tuple(s.strip().upper() for s in args.symbols.split(","))
    with SimServer(REPO / "data" / "bars", key="BENCHKEYID0001", secret="BENCH-SECRET-0001",
                   start=args.start, symbols=symbols, rate_limit=10**6) as sim:
        creds = Credentials(sim.key, sim.secret, "bench")
        # baseline: one bare request on the same server
        probe = AlpacaClient(creds, base_url=sim.base_url, trading_per_minute=1e6)
        rtts = []
        for _ in range(200):
            t0 = time.perf_counter()
            probe.get_clock()
            rtts.append(time.perf_counter() - t0)
        baseline = statistics.median(rtts)

        box: dict[str, object] = {}
        steps = {"n": -1, "adv": 0}
        t_stop = datetime.fromisoformat(args.start)

        def idle() -> None:
            store = box.get("store")
            if store is None:
                return
            done = store.status.steps  # type: ignore[attr-defined]
            if done == steps["n"]:
                return
            if steps["adv"] >= args.minutes:
                store.request_stop()  # type: ignore[attr-defined]
                return
            steps["n"] = done
            steps["adv"] += 1
            sim.advance(minutes=1)

        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            cfg = AlpacaConfig(
                base_url=sim.base_url, data_stream_url=sim.data_stream_url,
                trading_stream_url=sim.trading_stream_url, clock_poll=5.0, stream_silence=30.0,
                # the replay runs ~500x real time; Alpaca's 200/min budget scales with it
                requests_per_minute=1e6)
            run = PaperRun(settings=Settings(symbols=symbols), credentials=creds, alpaca=cfg,
                           live=True, state_dir=root / "state", log_dir=root / "logs", out=None)
            hooks = SessionHooks(on_store=lambda st: box.__setitem__("store", st),
                                 install_signals=False)
            t0 = time.perf_counter()
            result = run_paper(run, hooks=hooks, on_idle=lambda _store: idle())
            wall = time.perf_counter() - t0
    samples = [s * 1000 for s in result.latency]
    if not samples:
        print("no orders were sent: nothing to measure")
        return 1
    p50, p99 = percentile(samples, 50), percentile(samples, 99)
    print(f"replayed {result.steps} steps x {len(symbols)} symbols from {t_stop:%Y-%m-%d %H:%M} "
          f"UTC in {wall:.1f}s ({result.orders_sent} orders sent)")
    print(f"bar arrival -> order request over {len(samples)} orders: "
          f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {max(samples):.2f} ms")
    print(f"baseline (one bare alpaca-py GET /v2/clock on loopback): {baseline * 1000:.2f} ms; "
          f"p50 / baseline = {p50 / (baseline * 1000):.1f}x")
    print(f"target p99 < {TARGET_P99_MS:.0f} ms: p99 / target = {p99 / TARGET_P99_MS:.2f} "
          f"-> {'MET' if p99 < TARGET_P99_MS else 'MISSED'}")
    _ = UTC
    return 0 if p99 < TARGET_P99_MS else 1


if __name__ == "__main__":
    sys.exit(main())
