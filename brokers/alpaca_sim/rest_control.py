"""Control endpoints of a simulator running in another process, guarded by the API keys:
``GET /_sim/status``, ``POST /_sim/advance``, ``GET|POST|DELETE /_sim/faults``,
``POST /_sim/updated_bar``."""

from __future__ import annotations

from datetime import timedelta

from aiohttp import web

from brokers.alpaca_sim import errors
from brokers.alpaca_sim.httputil import json_body, ok, state, time_param
from brokers.alpaca_sim.serialization import ts

_NS = 1_000_000_000


def routes() -> list[web.RouteDef]:
    """The ``/_sim/`` control routes."""
    return [
        web.get("/_sim/status", status),
        web.post("/_sim/advance", advance),
        web.get("/_sim/faults", faults_get),
        web.post("/_sim/faults", faults_post),
        web.delete("/_sim/faults", faults_delete),
        web.post("/_sim/updated_bar", updated_bar),
    ]


async def status(request: web.Request) -> web.Response:
    """``GET /_sim/status``: replay time, speed, symbols, cash, equity, positions, faults."""
    sim = state(request)
    m = sim.market
    acct = m.account_state()
    return ok({"now": ts(m.now_ns), "speed": sim.clock.speed, "symbols": sim.book.symbols,
               "cash": acct.cash, "equity": acct.equity,
               "positions": {s: p.qty for s, p in m.positions.items()},
               "open_orders": len(m.list_orders(status="open", limit=500)),
               "faults": sim.faults.describe()})


async def advance(request: web.Request) -> web.Response:
    """``POST /_sim/advance`` (``{"minutes": 1}`` or ``{"to": "<RFC-3339>"}``): move replayed
    time forward; answers once every bar closed on the way is published."""
    sim = state(request)
    body = await json_body(request)
    if "to" in body:
        target = time_param(str(body["to"]), "to")
        if target is None:
            raise errors.validation("to is required")
    else:
        delta = timedelta(days=float(body.get("days", 0)), hours=float(body.get("hours", 0)),
                          minutes=float(body.get("minutes", 0)),
                          seconds=float(body.get("seconds", 0)))
        target = sim.clock.now_ns() + int(delta.total_seconds() * _NS)
    if target < sim.clock.now_ns():
        raise errors.validation("the replay clock cannot go backwards")
    now = await sim.advance_to(target)
    return ok({"now": ts(now)})


async def faults_get(request: web.Request) -> web.Response:
    """``GET /_sim/faults``: the scripted faults."""
    return ok(state(request).faults.describe())


async def faults_post(request: web.Request) -> web.Response:
    """``POST /_sim/faults``: script faults (``faults.Faults.apply``)."""
    sim = state(request)
    try:
        sim.faults.apply(await json_body(request))
    except (TypeError, ValueError) as exc:
        raise errors.validation(str(exc)) from None
    return ok(sim.faults.describe())


async def faults_delete(request: web.Request) -> web.Response:
    """``DELETE /_sim/faults``: clear every fault."""
    sim = state(request)
    sim.faults.clear()
    return ok(sim.faults.describe())


async def updated_bar(request: web.Request) -> web.Response:
    """``POST /_sim/updated_bar``: publish a ``u`` message for a closed bar."""
    sim = state(request)
    body = await json_body(request)
    symbol = str(body.get("symbol", "")).upper()
    start = time_param(body.get("start"), "start") if body.get("start") else None
    changes = body.get("changes") or {}
    if not isinstance(changes, dict):
        raise errors.validation("changes must be an object")
    bar = sim.updated_bar(symbol, start, changes)
    return ok({"symbol": symbol, "bar": bar})
