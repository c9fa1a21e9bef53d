"""In-process breakdown of bar arrival -> order request at ``--speed 60`` (NOT a benchmark).

Runs the same session as ``bench_parity60.py`` (its ``run_once``: ``alpaca-sim`` in its own
process, ``paper --live`` in this one, then the backtest comparison), with monotonic stamps
wrapped around the stages of the main thread: the step's delivery (fence, indicators,
feeds, recorder), ``RatchetStrategy.next``, each REST call (POST, PATCH, DELETE, GET), each
journal transaction (an fsynced commit), the cancel confirmation and waits for the helper
thread. For every order sample (the step's arrival -> the POST handed to alpaca-py), the
time inside the window is split by the innermost stage running on the main thread; the rest
is "other" (Backtrader's loop, the Strategy's own code, the GIL held by other threads).

    .venv/bin/python benchmarks/profile_live60.py [--minutes 390] [--top 12]

The figures are in-process and perturbed by the stamps (a few us each): labelled so.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import backtrader as bt  # noqa: E402
import bench_parity60  # noqa: E402

from analyzers import audit as audit_mod  # noqa: E402
from brokers.alpaca import broker as broker_mod  # noqa: E402
from brokers.alpaca import cancels, fills, journal, sender, store  # noqa: E402
from brokers.alpaca.client import AlpacaClient  # noqa: E402
from brokers.alpaca.sender import SENDER_THREAD_PREFIX  # noqa: E402
from strategies.ratchet import RatchetStrategy  # noqa: E402

#: finished intervals by thread name: (start, end, label, exclusive seconds)
SPANS: dict[str, list[tuple[float, float, str, float]]] = defaultdict(list)
#: (step arrived, POST time, index of the order in its step, client order id, the time the
#: main thread handed it to the order sender (= POST time when it sent it itself), the
#: name of the thread that sent it)
ORDERS: list[tuple[float, float, int, str, float, str]] = []
#: client order id -> when the main thread handed it to the order sender
HANDOFF: dict[str, float] = {}
_local = threading.local()
_main: dict[str, Any] = {"thread": None, "arrived": 0.0, "n": 0}


def _wrap(cls: Any, name: str, label: str) -> None:
    fn = getattr(cls, name)

    @functools.wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        thread = threading.current_thread()
        if thread is not _main["thread"] and not thread.name.startswith(SENDER_THREAD_PREFIX):
            return fn(*args, **kwargs)
        stack = getattr(_local, "stack", None)
        if stack is None:
            stack = _local.stack = []
        stack.append(0.0)
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            t1 = time.perf_counter()
            children = stack.pop()
            if stack:
                stack[-1] += t1 - t0
            SPANS[thread.name].append((t0, t1, label, t1 - t0 - children))

    setattr(cls, name, timed)


def install() -> None:
    step, sent = store.LatencyProbe.step, store.LatencyProbe.order_sent

    def on_step(self: Any, arrived: float, source: str) -> None:
        _main["thread"] = threading.current_thread()
        _main["arrived"], _main["n"] = (arrived if source == "stream" else 0.0), 0
        step(self, arrived, source)

    def on_sent(self: Any, cid: str) -> None:
        thread = threading.current_thread()
        now = time.perf_counter()
        ours = thread is _main["thread"] or (thread.name.startswith(SENDER_THREAD_PREFIX)
                                             and cid in HANDOFF)
        if ours and _main["arrived"]:
            ORDERS.append((_main["arrived"], now, _main["n"], cid, HANDOFF.pop(cid, now),
                           thread.name))
            _main["n"] += 1
        sent(self, cid)

    post = sender.OrderSender.post

    def on_post(self: Any, cid: str, symbol: str, send: Any) -> Any:
        HANDOFF[cid] = time.perf_counter()
        return post(self, cid, symbol, send)

    sender.OrderSender.post = on_post  # type: ignore[method-assign]

    store.LatencyProbe.step = on_step  # type: ignore[method-assign]
    store.LatencyProbe.order_sent = on_sent  # type: ignore[method-assign]
    _wrap(store.AlpacaStore, "_deliver", "deliver (indicators, feeds, recorder)")
    _wrap(store.AlpacaStore, "pump_events", "pump stream queue")
    _wrap(store.AlpacaStore, "_housekeeping", "housekeeping (bar recording)")
    _wrap(fills.Fills, "settle", "fill fence")
    _wrap(fills.Fills, "_apply_events", "apply trade events")
    _wrap(RatchetStrategy, "next", "Strategy.next")
    _wrap(AlpacaClient, "submit_order", "POST /v2/orders")
    _wrap(AlpacaClient, "replace_order", "PATCH (stop raise)")
    _wrap(AlpacaClient, "cancel_order", "DELETE (cancel)")
    _wrap(AlpacaClient, "get_order", "GET order")
    _wrap(AlpacaClient, "get_order_by_client_id", "GET by cid")
    for name in ("record_intent", "record_sent", "_set", "apply_fill", "count_lookup",
                 "adopt"):
        _wrap(journal.Journal, name, "journal write (synced commit)")
    _wrap(cancels.Cancels, "_confirm_cancel", "confirm cancel")
    _wrap(broker_mod.AlpacaBroker, "_take_jobs", "wait for the helper's stop")
    _wrap(broker_mod.AlpacaBroker, "submit", "broker.submit (own code)")
    _wrap(broker_mod.AlpacaBroker, "_collect_sends", "wait for sent orders' answers")
    _wrap(broker_mod.AlpacaBroker, "cancel", "broker.cancel (own code)")
    _wrap(broker_mod.AlpacaBroker, "replace_stop_order", "broker.replace_stop_order (own)")
    _wrap(broker_mod.AlpacaBroker, "_publish_armed", "publish armed entries")
    _wrap(broker_mod.AlpacaBroker, "_apply_snapshot", "apply snapshot (journal, bt order)")
    _wrap(journal.Journal, "get", "journal read")
    _wrap(bt.Order, "__init__", "bt.Order() construction")
    _wrap(bt.OrderBase, "clone", "bt.Order.clone (notifications)")
    _wrap(audit_mod.Audit, "record", "audit.record")


def split(spans: list[tuple[float, float, str, float]], arrived: float,
          posted: float, by: dict[str, float] | None = None,
          rest: str = "other (Backtrader loop, own code, GIL)") -> dict[str, float]:
    """The window [arrived, posted] split by the innermost stage on one thread."""
    by = defaultdict(float) if by is None else by
    covered = 0.0
    for t0, t1, label, excl in spans:
        if t1 <= arrived or t0 >= posted:
            continue
        if t0 >= arrived and t1 <= posted:
            by[label] += excl
            covered += excl
        else:  # straddles the window: its exclusive share, clipped (approximate)
            share = excl * (min(t1, posted) - max(t0, arrived)) / max(t1 - t0, 1e-9)
            by[label] += share
            covered += share
    by[rest] += max(0.0, posted - arrived - covered)
    return by


def breakdown(top: int) -> None:
    main = sorted(SPANS[_main["thread"].name]) if _main["thread"] is not None else []
    workers = {name: sorted(spans) for name, spans in SPANS.items()}
    samples = []
    for arrived, posted, idx, cid, handoff, thread in ORDERS:
        # the main thread's stages until the hand-off, then the sending worker's
        by = split(main, arrived, handoff)
        if handoff < posted:
            split(workers.get(thread, []), handoff, posted, by,
                  rest="order sender: hand-off, GIL (worker)")
        samples.append((posted - arrived, idx, cid, by))
    if not samples:
        print("no order samples")
        return
    totals = sorted(s[0] for s in samples)
    p50 = totals[len(totals) // 2]
    print(f"in-process: {len(samples)} orders, p50 {p50 * 1e3:.1f} ms, "
          f"p99 {bench_parity60.percentile([t * 1e3 for t in totals], 99):.1f} ms "
          f"(stamps perturb a little; not a benchmark figure)")
    for idx in sorted({s[1] for s in samples}):
        sel = [s[0] * 1e3 for s in samples if s[1] == idx]
        print(f"  order {idx} of its step: n={len(sel)} median {statistics.median(sel):.1f}"
              f" max {max(sel):.1f} ms")
    agg: dict[str, float] = defaultdict(float)
    for s in samples:
        for k, v in s[3].items():
            agg[k] += v / len(samples)
    print("mean per order, by stage (ms):")
    for k, v in sorted(agg.items(), key=lambda kv: -kv[1]):
        print(f"  {v * 1e3:7.2f}  {k}")
    print(f"slowest {top}:")
    for total, idx, cid, by in sorted(samples, key=lambda s: -s[0])[:top]:
        parts = ", ".join(f"{k} {v * 1e3:.1f}" for k, v in
                          sorted(by.items(), key=lambda kv: -kv[1]) if v >= 0.0005)
        print(f"  {total * 1e3:6.1f} ms  #{idx} {cid}: {parts}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=390)
    parser.add_argument("--speed", type=float, default=60.0)
    parser.add_argument("--start", default="2025-10-03T13:20:00+00:00")
    parser.add_argument("--sim-state", action="store_true")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    install()
    result = bench_parity60.run_once(args, "current")
    bench_parity60.report(result, args.speed)
    breakdown(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
