"""Where an entry fill's naked time goes (issue 17): an in-process breakdown, not a benchmark.

One command::

    .venv/bin/python benchmarks/profile_protect.py [--speed 60] [--minutes 385] [--keep DIR]

Runs one rehearsal exactly as ``bench_protect.py`` does (``cli.py paper --sim --sim-speed 60
--live --confirm-live``, the loopback server in the bot's process) with monotonic stamps
(``time.perf_counter``) wrapped around every stage between an entry's fill at the server
and the server's acceptance of its protective stop (the stretch ``bench_protect.py`` counts
as naked, in replayed time, here converted to wall time with the replay clock):

  fill ts -> emitted     the server's timestamp of the fill -> the fill event built
  emitted -> sent        the event queued -> its WebSocket frame written (server loop)
  sent -> arrived        the frame written -> read by the bot's stream thread
  arrived -> hook        alpaca-py's ``TradeUpdate`` parse -> ``StopProtector.on_event``
  hook -> thread         the job queued -> the helper thread starts it
  journal check          the never-resend check (``Journal.get``), and whether the lock
                         was held by another thread when it started
  -> POST                the rest before ``AlpacaClient.submit_order``
  POST -> server         alpaca-py + requests + socket -> the server's middleware
  server -> submit       the middleware -> ``Market.submit`` (body parse, auth)
  submit -> stop ts      ``Market.submit`` -> the stop's timestamp (its ``sync``)

Also per fill: CPU time of the helper thread over its part (the rest is waiting: GIL,
locks, socket), and whether the main thread was inside a bar step when the fill event
arrived. Prints p50 / p90 / mean / sum per stage.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import json
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

STAGES = ["fill ts -> emitted", "emitted -> sent", "sent -> arrived", "arrived -> hook",
          "hook -> thread", "journal check", "-> POST", "POST -> server", "server -> submit",
          "submit -> stop ts"]
_ARRIVED: contextvars.ContextVar[float] = contextvars.ContextVar("arrived", default=0.0)


def install(rec: dict[str, dict[str, Any]], stops: dict[str, str]) -> None:  # noqa: C901 - one wrapper per stage
    """Wrap the stages (module attributes, before anything is built)."""
    import json

    from aiohttp import web

    from brokers.alpaca import client as client_mod
    from brokers.alpaca import journal as journal_mod
    from brokers.alpaca import orders as orders_mod
    from brokers.alpaca import protector as protector_mod
    from brokers.alpaca_sim import engine as engine_mod
    from brokers.alpaca_sim import market as market_mod
    from brokers.alpaca_sim import server as server_mod

    pc = time.perf_counter
    tls = threading.local()
    main = threading.main_thread()
    in_step = {"on": False}
    by_symbol: dict[str, str] = {}

    def fill_key(cid: str, filled: Any) -> str:
        return f"{cid}@{float(filled):g}"

    emit = engine_mod.MatchingEngine._emit

    def _emit(self: Any, event: str, o: Any, fill: Any = None, position_qty: Any = None
              ) -> None:
        t = pc()
        emit(self, event, o, fill, position_qty)
        if event in ("fill", "partial_fill") and o.side == "buy":
            clock = self._clock_now.__self__
            r = rec[fill_key(o.client_order_id, o.filled_qty)]
            r["fill_ts"] = clock.wall_time_of(self._now)
            r["emitted"] = t

    engine_mod.MatchingEngine._emit = _emit  # type: ignore[method-assign]

    send_bytes = web.WebSocketResponse.send_bytes

    async def _send_bytes(self: Any, data: bytes, *args: Any, **kwargs: Any) -> None:
        await send_bytes(self, data, *args, **kwargs)
        t = pc()
        msg = json.loads(data) if b'"trade_updates"' in data else {}
        if msg.get("stream") == "trade_updates":
            msg = msg["data"]
            o = msg["order"]
            if o["side"] == "buy" and msg["event"] in ("fill", "partial_fill"):
                rec[fill_key(o["client_order_id"], o["filled_qty"])].setdefault("sent", t)

    web.WebSocketResponse.send_bytes = _send_bytes  # type: ignore[method-assign]

    on_event = protector_mod.StopProtector.on_event

    def _on_event(self: Any, ev: Any) -> bool:
        t = pc()
        buy_fill = ev.event in ("fill", "partial_fill") and ev.order.side == "buy"
        if buy_fill:
            key = fill_key(ev.order.client_order_id, ev.order.filled_qty)
            rec[key].update(arrived=ev.arrived, hook=t, main_in_step=in_step["on"])
            by_symbol[ev.order.symbol] = key
        started = on_event(self, ev)
        if buy_fill:
            rec[key]["job"] = started
        return started

    protector_mod.StopProtector.on_event = _on_event  # type: ignore[method-assign]

    stj = orders_mod.OrderGateway.send_then_journal

    def _stj(self: Any, spec: Any, *args: Any, **kwargs: Any) -> Any:
        key = None
        if threading.current_thread().name == "stop-protector":
            key = by_symbol.get(spec.symbol)
        if key is not None:
            stops[spec.client_order_id] = key
            rec[key]["thread"] = pc()
            rec[key]["cpu0"] = time.thread_time()
            tls.key = key
        try:
            return stj(self, spec, *args, **kwargs)
        finally:
            tls.key = None

    orders_mod.OrderGateway.send_then_journal = _stj  # type: ignore[method-assign]

    get = journal_mod.Journal.get

    def _get(self: Any, cid: str) -> Any:
        key = getattr(tls, "key", None)
        if key is None or "journal" in rec[key]:
            return get(self, cid)
        free = self._lock.acquire(blocking=False)
        if free:
            self._lock.release()
        out = get(self, cid)
        rec[key]["journal"] = pc()
        rec[key]["lock_held"] = not free
        return out

    journal_mod.Journal.get = _get  # type: ignore[method-assign]
    has = getattr(journal_mod.Journal, "has", None)
    if has is not None:  # the lock-free check (after 1184ebf)

        def _has(self: Any, cid: str) -> bool:
            key = getattr(tls, "key", None)
            out = has(self, cid)
            if key is not None and "journal" not in rec[key]:
                rec[key]["journal"] = pc()
                rec[key]["lock_held"] = False
            return out

        journal_mod.Journal.has = _has  # type: ignore[method-assign]

    submit = client_mod.AlpacaClient.submit_order

    def _submit(self: Any, spec: Any) -> Any:
        key = getattr(tls, "key", None)
        if key is not None:
            rec[key]["post"] = pc()
        out = submit(self, spec)
        if key is not None:
            rec[key]["answered"] = pc()
            rec[key]["cpu1"] = time.thread_time()
        return out

    client_mod.AlpacaClient.submit_order = _submit  # type: ignore[method-assign]

    middleware = server_mod.SimApp._middleware

    @web.middleware
    async def _middleware(self: Any, request: Any, handler: Any) -> Any:
        if request.method == "POST" and request.path == "/v2/orders":
            _ARRIVED.set(pc())
        return await middleware(self, request, handler)

    server_mod.SimApp._middleware = _middleware  # type: ignore[method-assign]

    msubmit = market_mod.Market.submit

    def _msubmit(self: Any, req: Any) -> Any:
        t = pc()
        o = msubmit(self, req)
        key = stops.get(o.client_order_id)
        if key is not None:
            clock = self._clock_now.__self__
            rec[key].update(server=_ARRIVED.get(), submit=t,
                            stop_ts=clock.wall_time_of(o.submitted_at))
        return o

    market_mod.Market.submit = _msubmit  # type: ignore[method-assign]

    # the writes after a step: how often they waited for the step's fills (after 1184ebf)
    from brokers.alpaca import store as store_mod

    settled = getattr(store_mod.AlpacaStore, "_step_fills_settled", None)
    if settled is not None:

        def _settled(self: Any) -> bool:
            out = settled(self)
            rec["_post_step"]["checks"] = rec["_post_step"].get("checks", 0) + 1
            if not out:
                rec["_post_step"]["held"] = rec["_post_step"].get("held", 0) + 1
            return out

        store_mod.AlpacaStore._step_fills_settled = _settled  # type: ignore[method-assign]

    # the main thread's bar step (the Strategy's ``_next``)
    import backtrader as bt

    next_ = bt.Strategy._next

    def _next(self: Any) -> Any:
        if threading.current_thread() is main:
            in_step["on"] = True
            try:
                return next_(self)
            finally:
                in_step["on"] = False
        return next_(self)

    bt.Strategy._next = _next  # type: ignore[method-assign]


def stages(r: dict[str, Any]) -> list[float] | None:
    need = ["fill_ts", "emitted", "sent", "arrived", "hook", "thread", "journal", "post",
            "server", "submit", "stop_ts"]
    if not all(r.get(k) for k in need):
        return None
    seq = [r[k] for k in need]
    return [(b - a) * 1000 for a, b in zip(seq, seq[1:], strict=False)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed", type=float, default=60.0)
    parser.add_argument("--minutes", type=int, default=385)
    parser.add_argument("--keep", type=Path, default=None)
    parser.add_argument("--switch", type=float, default=None,
                        help="cap sys.setswitchinterval at this many seconds (experiment)")
    args = parser.parse_args()
    if args.switch is not None:
        setswitch = sys.setswitchinterval
        sys.setswitchinterval = lambda s: setswitch(min(s, args.switch))  # type: ignore[assignment]
    rec: dict[str, dict[str, Any]] = defaultdict(dict)
    stops: dict[str, str] = {}
    install(rec, stops)
    with tempfile.TemporaryDirectory(prefix="profile-protect-") as tmp:
        work = args.keep or Path(tmp)
        sys.argv = ["cli.py", "paper", "--sim", "--sim-speed", str(args.speed),
                    "--sim-minutes", str(args.minutes), "--live", "--confirm-live",
                    "--state-dir", str(work / "state"), "--log-dir", str(work / "logs"),
                    "--out", str(work / "runs")]
        import cli

        with contextlib.suppress(SystemExit):
            cli.main()
    if args.keep is not None:
        (args.keep / "stamps.json").write_text(json.dumps(rec, default=str))
    rows = [(k, r, s) for k, r in rec.items() if (s := stages(r)) is not None]
    fills = len([k for k in rec if k != "_post_step"])
    print(f"\n{fills} buy fills seen, {len(rows)} with every stamp "
          f"(helper-thread stops); in-process, wall ms")
    print(f"{'stage':22} {'p50':>7} {'p90':>7} {'max':>7} {'mean':>7} {'sum':>8}")
    for i, name in enumerate([*STAGES, "total (naked)"]):
        vals = [s[i] if i < len(STAGES) else sum(s) for _, _, s in rows]
        if not vals:
            continue
        q = sorted(vals)
        print(f"{name:22} {statistics.median(q):7.2f} {q[int(0.9 * (len(q) - 1))]:7.2f} "
              f"{q[-1]:7.2f} {statistics.fmean(q):7.2f} {sum(q):8.1f}")
    cpu = [((r["cpu1"] - r["cpu0"]) * 1000, (r["answered"] - r["thread"]) * 1000)
           for _, r, _ in rows if "cpu1" in r]
    if cpu:
        print(f"helper thread, start -> answer: CPU {statistics.fmean(c for c, _ in cpu):.2f} ms "
              f"of {statistics.fmean(w for _, w in cpu):.2f} ms wall (mean)")
    held = sum(1 for _, r, _ in rows if r.get("lock_held"))
    step = sum(1 for _, r, _ in rows if r.get("main_in_step"))
    print(f"journal lock held by another thread at the check: {held}/{len(rows)}; "
          f"main thread inside Strategy._next at the fill's arrival: {step}/{len(rows)}")
    print(f"post-step writes: {dict(rec.get('_post_step', {}))} (checks / held for fills)")
    others = [(k, r) for k, r in rec.items() if stages(r) is None and k != "_post_step"]
    for k, r in others[:10]:
        print(f"  incomplete {k}: job={r.get('job')} "
              f"stamps={sorted(x for x in r if x not in ('job',))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
