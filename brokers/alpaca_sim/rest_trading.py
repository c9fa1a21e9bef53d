"""Trading REST v2 handlers.

Implements the Alpaca Trading API pages "Account" (``GET /v2/account``), "Clock"
(``GET /v2/clock``), "Calendar" (``GET /v2/calendar``), "Assets" (``GET /v2/assets``,
``GET /v2/assets/{symbol_or_asset_id}``), "Orders" (``POST/GET/DELETE /v2/orders``,
``GET/PATCH/DELETE /v2/orders/{order_id}``, ``GET /v2/orders:by_client_order_id``) and
"Positions" (``GET/DELETE /v2/positions``, ``GET/DELETE /v2/positions/{symbol_or_asset_id}``),
with the status codes and bodies of ``alpaca-spec/CONTRACT.md`` sections 3-6.
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from brokers.alpaca_sim import errors
from brokers.alpaca_sim.calendar import CalendarDay
from brokers.alpaca_sim.httputil import (
    boolean,
    date_param,
    integer,
    json_body,
    number,
    ok,
    state,
    time_param,
)
from brokers.alpaca_sim.models import (
    ORDER_TYPES,
    SIDES,
    TIME_IN_FORCE,
    OrderRequest,
    ReplaceRequest,
    account_id,
    asset_id,
)
from brokers.alpaca_sim.serialization import (
    account_json,
    asset_json,
    calendar_json,
    ny_iso,
    order_json,
    position_json,
)

_ORDER_STATUS_FILTERS = ("open", "closed", "all")


def routes() -> list[web.RouteDef]:
    """The trading routes (static paths before parametrised ones)."""
    return [
        web.get("/v2/account", get_account),
        web.get("/v2/clock", get_clock),
        web.get("/v2/calendar", get_calendar),
        web.get("/v2/assets", list_assets),
        web.get("/v2/assets/{symbol_or_asset_id}", get_asset),
        web.post("/v2/orders", submit_order),
        web.get("/v2/orders", list_orders),
        web.delete("/v2/orders", cancel_all_orders),
        web.get("/v2/orders:by_client_order_id", get_order_by_client_id),
        web.get("/v2/orders/{order_id}", get_order),
        web.patch("/v2/orders/{order_id}", replace_order),
        web.delete("/v2/orders/{order_id}", cancel_order),
        web.get("/v2/positions", list_positions),
        web.delete("/v2/positions", close_all_positions),
        web.get("/v2/positions/{symbol_or_asset_id}", get_position),
        web.delete("/v2/positions/{symbol_or_asset_id}", close_position),
    ]


# -- account, clock, calendar, assets -------------------------------------------------------


async def get_account(request: web.Request) -> web.Response:
    """``GET /v2/account``."""
    sim = state(request)
    m = sim.market
    return ok(account_json(m.account_state(), account_id(sim.key), m.created_at, m.now_ns))


async def get_clock(request: web.Request) -> web.Response:
    """``GET /v2/clock`` in replayed time, New York offsets."""
    sim = state(request)
    now = sim.market.now_ns
    cal = sim.book.calendar
    nxt_open, nxt_close = cal.next_open(now), cal.next_close(now)
    if nxt_open is None or nxt_close is None:
        raise errors.ApiError(500, errors.CODE_INTERNAL, "replay time is past the calendar")
    return ok({"timestamp": ny_iso(now), "is_open": cal.is_open(now),
               "next_open": ny_iso(nxt_open), "next_close": ny_iso(nxt_close)})


async def get_calendar(request: web.Request) -> web.Response:
    """``GET /v2/calendar?start=&end=`` (dates, inclusive; default: the whole calendar)."""
    cal = state(request).book.calendar
    start = date_param(request.query.get("start"), "start") or cal.dates[0]
    end = date_param(request.query.get("end"), "end") or cal.dates[-1]
    days: list[CalendarDay] = [cal.day(i) for i in cal.range_indices(start, end)]
    return ok([calendar_json(d) for d in days])


async def list_assets(request: web.Request) -> web.Response:
    """``GET /v2/assets`` (the replayed symbols; all active us_equity)."""
    q = request.query
    if q.get("status") not in (None, "", "active"):
        return ok([])
    if q.get("asset_class") not in (None, "", "us_equity"):
        return ok([])
    return ok([asset_json(s) for s in state(request).book.symbols])


async def get_asset(request: web.Request) -> web.Response:
    """``GET /v2/assets/{symbol_or_asset_id}``."""
    sym = _symbol_of(request, request.match_info["symbol_or_asset_id"])
    if sym is None:
        raise errors.not_found(f"asset not found for {request.match_info['symbol_or_asset_id']}")
    return ok(asset_json(sym))


# -- orders ---------------------------------------------------------------------------------


async def submit_order(request: web.Request) -> web.Response:
    """``POST /v2/orders`` (200 with the Order; 403/422 as Alpaca)."""
    sim = state(request)
    req = parse_order_request(await json_body(request))
    fault = sim.faults.take_order_fault()
    if fault == "insufficient_buying_power":
        acct = sim.market.account_state()
        raise errors.forbidden("insufficient buying power",
                               buying_power=f"{acct.buying_power:.2f}", cost_basis="0")
    if fault == "duplicate_client_order_id":
        raise errors.validation("client_order_id must be unique")
    order = sim.market.submit(req)
    body = order_json(order)
    if fault == "reject":
        sim.schedule(sim.market.reject, order.id)
    return ok(body)


async def list_orders(request: web.Request) -> web.Response:
    """``GET /v2/orders`` with status, limit, after, until, direction, side, symbols."""
    q = request.query
    status = q.get("status", "open").lower()
    if status not in _ORDER_STATUS_FILTERS:
        raise errors.validation("status must be one of open, closed, all")
    direction = q.get("direction", "desc").lower()
    if direction not in ("asc", "desc"):
        raise errors.validation("direction must be asc or desc")
    side = q.get("side")
    if side is not None and side not in SIDES:
        raise errors.validation("side must be buy or sell")
    symbols = [s for s in q.get("symbols", "").split(",") if s] or None
    orders = state(request).market.list_orders(
        status=status, limit=integer(q.get("limit"), "limit", 50, 1, 500),
        after=time_param(q.get("after"), "after"), until=time_param(q.get("until"), "until"),
        direction=direction, side=side, symbols=symbols)
    return ok([order_json(o) for o in orders])


async def get_order(request: web.Request) -> web.Response:
    """``GET /v2/orders/{order_id}``."""
    order = state(request).market.get_order(_order_id(request))
    return ok(order_json(order))


async def get_order_by_client_id(request: web.Request) -> web.Response:
    """``GET /v2/orders:by_client_order_id?client_order_id=``."""
    cid = request.query.get("client_order_id")
    if not cid:
        raise errors.validation("client_order_id is required")
    return ok(order_json(state(request).market.get_order_by_client_id(cid)))


async def replace_order(request: web.Request) -> web.Response:
    """``PATCH /v2/orders/{order_id}``: the new order (new id, ``replaces`` = old id)."""
    body = await json_body(request)
    tif = body.get("time_in_force")
    if tif is not None and tif not in TIME_IN_FORCE:
        raise errors.validation("invalid time_in_force")
    qty = number(body.get("qty"), "qty")
    if qty is not None and (qty <= 0 or qty != int(qty)):
        raise errors.validation("qty must be integer")
    cid = body.get("client_order_id")
    req = ReplaceRequest(
        qty=qty, time_in_force=tif, limit_price=number(body.get("limit_price"), "limit_price"),
        stop_price=number(body.get("stop_price"), "stop_price"),
        trail=number(body.get("trail"), "trail"),
        client_order_id=str(cid) if cid is not None else None,
    )
    new = state(request).market.replace(_order_id(request), req)
    return ok(order_json(new))


async def cancel_order(request: web.Request) -> web.Response:
    """``DELETE /v2/orders/{order_id}``: 204, empty body."""
    state(request).market.cancel(_order_id(request))
    return web.Response(status=204)


async def cancel_all_orders(request: web.Request) -> web.Response:
    """``DELETE /v2/orders``: 207 with one ``{id, status, body}`` per canceled order."""
    done = state(request).market.cancel_all()
    return ok([{"id": o.id, "status": 200, "body": order_json(o)} for o in done], status=207)


# -- positions ------------------------------------------------------------------------------


async def list_positions(request: web.Request) -> web.Response:
    """``GET /v2/positions``."""
    m = state(request).market
    with m.lock:
        return ok([_position(request, sym) for sym in sorted(m.positions)])


async def get_position(request: web.Request) -> web.Response:
    """``GET /v2/positions/{symbol_or_asset_id}``."""
    sym = _symbol_of(request, request.match_info["symbol_or_asset_id"])
    m = state(request).market
    with m.lock:
        if sym is None or sym not in m.positions:
            raise errors.not_found("position does not exist")
        return ok(_position(request, sym))


async def close_position(request: web.Request) -> web.Response:
    """``DELETE /v2/positions/{symbol_or_asset_id}?qty=|percentage=``: the closing Order."""
    sym = _symbol_of(request, request.match_info["symbol_or_asset_id"])
    if sym is None:
        raise errors.not_found("position does not exist")
    q = request.query
    order = state(request).market.close_position(
        sym, qty=number(q.get("qty"), "qty"), percentage=number(q.get("percentage"), "percentage"))
    return ok(order_json(order))


async def close_all_positions(request: web.Request) -> web.Response:
    """``DELETE /v2/positions?cancel_orders=``: 207 with ``{symbol, status, body}`` each."""
    results = state(request).market.close_all(boolean(request.query.get("cancel_orders")))
    out: list[dict[str, Any]] = []
    for sym, status, res in results:
        if isinstance(res, errors.ApiError):
            out.append({"symbol": sym, "status": status, "body": res.body()})
        else:
            out.append({"symbol": sym, "status": status, "order_id": res.id,
                        "body": order_json(res)})
    return ok(out, status=207)


# -- helpers --------------------------------------------------------------------------------


def parse_order_request(body: dict[str, Any]) -> OrderRequest:
    """A ``POST /v2/orders`` JSON body -> ``OrderRequest`` (type checks; 422 on bad fields)."""
    symbol = body.get("symbol")
    if not isinstance(symbol, str) or not symbol:
        raise errors.validation("symbol is required")
    side = body.get("side")
    if side not in SIDES:
        raise errors.validation("side is required" if side is None else f"invalid side: {side}")
    typ = body.get("type", body.get("order_type"))
    if typ not in ORDER_TYPES:
        raise errors.validation("type is required" if typ is None else f"invalid type: {typ}")
    tif = body.get("time_in_force")
    if tif not in TIME_IN_FORCE:
        raise errors.validation("time_in_force is required" if tif is None
                                else f"invalid time_in_force: {tif}")
    cid = body.get("client_order_id")
    if cid is not None and not isinstance(cid, str):
        raise errors.validation("client_order_id must be a string")
    order_class = body.get("order_class") or "simple"
    if any(body.get(k) for k in ("take_profit", "stop_loss", "legs")) and order_class == "simple":
        order_class = "bracket"
    return OrderRequest(
        symbol=symbol.upper(), side=side, type=typ, time_in_force=tif,
        qty=number(body.get("qty"), "qty"), notional=number(body.get("notional"), "notional"),
        limit_price=number(body.get("limit_price"), "limit_price"),
        stop_price=number(body.get("stop_price"), "stop_price"),
        trail_price=number(body.get("trail_price"), "trail_price"),
        trail_percent=number(body.get("trail_percent"), "trail_percent"),
        extended_hours=boolean(body.get("extended_hours")),
        client_order_id=cid or None, order_class=str(order_class),
        position_intent=body.get("position_intent"),
    )


def _order_id(request: web.Request) -> str:
    raw = request.match_info["order_id"]
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise errors.validation("order_id is missing") from None


def _symbol_of(request: web.Request, raw: str) -> str | None:
    symbols = state(request).book.symbols
    up = raw.upper()
    if up in symbols:
        return up
    for s in symbols:
        if asset_id(s) == raw.lower():
            return s
    return None


def _position(request: web.Request, sym: str) -> dict[str, Any]:
    m = state(request).market
    p = m.positions[sym]
    price = m.price(sym) or p.avg_entry_price
    lastday = m.lastday_price(sym) or price
    return position_json(p, price, lastday, m.held_for_orders(sym))
