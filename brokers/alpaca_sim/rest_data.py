"""Market Data REST v2 (stocks) handlers.

Implements Alpaca's Market Data API v2 "Historical bars" (``GET /v2/stocks/bars`` and the
single-symbol ``GET /v2/stocks/{symbol}/bars``), "Latest bars/quotes/trades"
(``/v2/stocks/{bars,quotes,trades}/latest``) and "Snapshots" (``GET /v2/stocks/snapshots``,
``GET /v2/stocks/{symbol}/snapshot``) over the replayed bars, as ``alpaca-spec/CONTRACT.md``
section 7 describes: ``limit`` counts bars across all symbols, pages fill in (symbol, time)
order with an opaque ``next_page_token``, bars always carry ``n`` and ``vw``, an empty answer
is ``{"bars": {}}``. Only bars that have closed in replayed time are ever returned; quotes
and trades are derived from the bars (one synthetic trade at the last price; a quote around it).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from aiohttp import web

from brokers.alpaca_sim import errors
from brokers.alpaca_sim.bars import BarArraysSet, BarBook, Timeframe, parse_timeframe
from brokers.alpaca_sim.calendar import ny_date, ny_midnight_ns
from brokers.alpaca_sim.httputil import integer, ok, state, time_param
from brokers.alpaca_sim.serialization import (
    bar_json_one,
    bars_json,
    decode_page_token,
    encode_page_token,
    ts,
)
from feeds.store import is_valid_symbol

_MAX_LIMIT = 10_000
_DEFAULT_LIMIT = 1000


def routes() -> list[web.RouteDef]:
    """The market-data routes (static paths before parametrised ones)."""
    return [
        web.get("/v2/stocks/bars", get_bars),
        web.get("/v2/stocks/bars/latest", latest_bars),
        web.get("/v2/stocks/quotes/latest", latest_quotes),
        web.get("/v2/stocks/trades/latest", latest_trades),
        web.get("/v2/stocks/snapshots", snapshots),
        web.get("/v2/stocks/quotes", get_quotes),
        web.get("/v2/stocks/trades", get_trades),
        web.get("/v2/stocks/{symbol}/bars", get_symbol_bars),
        web.get("/v2/stocks/{symbol}/bars/latest", latest_bar_one),
        web.get("/v2/stocks/{symbol}/quotes/latest", latest_quote_one),
        web.get("/v2/stocks/{symbol}/trades/latest", latest_trade_one),
        web.get("/v2/stocks/{symbol}/snapshot", snapshot_one),
    ]


# -- historical bars ------------------------------------------------------------------------


async def get_bars(request: web.Request) -> web.Response:
    """``GET /v2/stocks/bars``: ``{"bars": {SYM: [...]}, "next_page_token": ...}``."""
    symbols = _symbols(request)
    bars, token = _bars_page(request, symbols)
    return ok({"bars": bars, "next_page_token": token, "currency": "USD"})


async def get_symbol_bars(request: web.Request) -> web.Response:
    """``GET /v2/stocks/{symbol}/bars`` (the older single-symbol shape)."""
    sym = _one_symbol(request)
    bars, token = _bars_page(request, [sym])
    return ok({"bars": bars.get(sym, []), "symbol": sym, "next_page_token": token,
               "currency": "USD"})


async def get_trades(request: web.Request) -> web.Response:
    """``GET /v2/stocks/trades``: one synthetic trade per replayed bar (at its start, at its
    open, the bar's volume), paged like bars."""
    bars, token = _bars_page(request, _symbols(request), replay_step=True)
    trades = {sym: [_bar_trade(b) for b in lst] for sym, lst in bars.items()}
    return ok({"trades": trades, "next_page_token": token, "currency": "USD"})


async def get_quotes(request: web.Request) -> web.Response:
    """``GET /v2/stocks/quotes``: one synthetic quote per replayed bar (around its open)."""
    sim = state(request)
    bars, token = _bars_page(request, _symbols(request), replay_step=True)
    bps = sim.market.options.spread_bps
    quotes = {sym: [_bar_quote(b, bps) for b in lst] for sym, lst in bars.items()}
    return ok({"quotes": quotes, "next_page_token": token, "currency": "USD"})


def _bar_trade(b: dict[str, Any]) -> dict[str, Any]:
    t_ms = int(pd.Timestamp(b["t"]).value // 1_000_000)
    return {"t": b["t"], "x": "V", "p": b["o"], "s": int(b["v"]), "c": ["@"], "i": t_ms,
            "z": "A"}


def _bar_quote(b: dict[str, Any], spread_bps: float) -> dict[str, Any]:
    half = b["o"] * spread_bps / 2 / 10_000
    return {"t": b["t"], "bx": "V", "bp": round(b["o"] - half, 4), "bs": 1, "ax": "V",
            "ap": round(b["o"] + half, 4), "as": 1, "c": ["R"], "z": "A"}


def _bars_page(request: web.Request, symbols: list[str],
               replay_step: bool = False) -> tuple[dict[str, Any], str | None]:
    sim = state(request)
    book = sim.book
    q = request.query
    step_min = book.step_ns // 60_000_000_000
    tf = parse_timeframe((f"{step_min // 60}Hour" if step_min % 60 == 0 else f"{step_min}Min")
                         if replay_step else q.get("timeframe", ""))
    if tf is None:
        raise errors.unprocessable("invalid timeframe")
    if tf.unit in ("Min", "Hour") and tf.intraday_ns % book.step_ns:
        raise errors.unprocessable(
            f"invalid timeframe: the replayed bars are {book.step_ns // 60_000_000_000}Min")
    now = sim.market.now_ns
    start = time_param(q.get("start"), "start", status=400)
    end = time_param(q.get("end"), "end", end_of_day=True, status=400)
    if start is None:
        start = ny_midnight_ns(ny_date(now))
    end = now if end is None else min(end, now)
    limit = integer(q.get("limit"), "limit", _DEFAULT_LIMIT, 1, _MAX_LIMIT, status=400)
    limit = min(limit, sim.options.max_page_size)
    desc = q.get("sort", "asc").lower() == "desc"
    token = q.get("page_token") or None
    resume: tuple[str, int] | None = None
    if token is not None:
        resume = decode_page_token(token)
        if resume is None:
            raise errors.bad_request("invalid page_token")
    return paginate(book, symbols, tf, start, end, now, limit, desc, resume)


def paginate(book: BarBook, symbols: list[str], tf: Timeframe, start: int, end: int, now: int,
             limit: int, desc: bool, resume: tuple[str, int] | None
             ) -> tuple[dict[str, list[dict[str, Any]]], str | None]:
    """One page of bars, filled in (symbol, time) order; the token names the next bar."""
    out: dict[str, list[dict[str, Any]]] = {}
    room = limit
    for sym in sorted(set(symbols)):
        if resume is not None and sym < resume[0]:
            continue
        arr = book.aggregate(sym, tf, start, end, now) if start <= end else None
        if arr is None or not len(arr):
            continue
        if desc:
            arr = arr.take(slice(None, None, -1))
        if resume is not None and sym == resume[0]:
            keep = arr.t <= resume[1] if desc else arr.t >= resume[1]
            arr = arr.take(keep)
            if not len(arr):
                continue
        if room == 0:
            return out, encode_page_token(sym, int(arr.t[0]))
        page = arr.take(slice(0, room))
        out[sym] = bars_json(page)
        room -= len(page)
        if len(arr) > len(page):
            return out, encode_page_token(sym, int(arr.t[len(page)]))
    return out, None


# -- latest, snapshots ----------------------------------------------------------------------


async def latest_bars(request: web.Request) -> web.Response:
    """``GET /v2/stocks/bars/latest``: the last closed bar per symbol."""
    return ok({"bars": _per_symbol(request, _symbols(request), _latest_bar), "currency": "USD"})


async def latest_quotes(request: web.Request) -> web.Response:
    """``GET /v2/stocks/quotes/latest``."""
    return ok({"quotes": _per_symbol(request, _symbols(request), _quote), "currency": "USD"})


async def latest_trades(request: web.Request) -> web.Response:
    """``GET /v2/stocks/trades/latest``."""
    return ok({"trades": _per_symbol(request, _symbols(request), _trade), "currency": "USD"})


async def snapshots(request: web.Request) -> web.Response:
    """``GET /v2/stocks/snapshots``: ``{SYM: {...}}`` (no wrapper key)."""
    return ok(_per_symbol(request, _symbols(request), _snapshot))


async def latest_bar_one(request: web.Request) -> web.Response:
    """``GET /v2/stocks/{symbol}/bars/latest``."""
    return _one(request, "bar", _latest_bar)


async def latest_quote_one(request: web.Request) -> web.Response:
    """``GET /v2/stocks/{symbol}/quotes/latest``."""
    return _one(request, "quote", _quote)


async def latest_trade_one(request: web.Request) -> web.Response:
    """``GET /v2/stocks/{symbol}/trades/latest``."""
    return _one(request, "trade", _trade)


async def snapshot_one(request: web.Request) -> web.Response:
    """``GET /v2/stocks/{symbol}/snapshot``."""
    sym = _one_symbol(request)
    snap = _snapshot(request, sym)
    if snap is None:
        raise errors.not_found(f"no data for {sym}")
    return ok({"symbol": sym, **snap})


def _one(request: web.Request, key: str, fn: Any) -> web.Response:
    sym = _one_symbol(request)
    item = fn(request, sym)
    if item is None:
        raise errors.not_found(f"no data for {sym}")
    return ok({"symbol": sym, key: item, "currency": "USD"})


def _per_symbol(request: web.Request, symbols: list[str], fn: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for sym in symbols:
        item = fn(request, sym)
        if item is not None:
            out[sym] = item
    return out


def _latest_bar(request: web.Request, sym: str) -> dict[str, Any] | None:
    sim = state(request)
    if sym not in sim.book.bars:
        return None
    i = sim.book.last_closed(sym, sim.market.now_ns)
    return bar_json_one(sim.book.bars[sym].bars, i) if i >= 0 else None


def _trade(request: web.Request, sym: str) -> dict[str, Any] | None:
    sim = state(request)
    if sym not in sim.book.bars:
        return None
    found = sim.book.price_at(sym, sim.market.now_ns)
    if found is None:
        return None
    px, t = found
    return {"t": ts(t), "x": "V", "p": px, "s": 100, "c": ["@"], "i": t // 1_000_000, "z": "A"}


def _quote(request: web.Request, sym: str) -> dict[str, Any] | None:
    sim = state(request)
    if sym not in sim.book.bars:
        return None
    found = sim.book.price_at(sym, sim.market.now_ns)
    if found is None:
        return None
    px, t = found
    half = px * sim.market.options.spread_bps / 2 / 10_000
    return {"t": ts(t), "bx": "V", "bp": round(px - half, 4), "bs": 1, "ax": "V",
            "ap": round(px + half, 4), "as": 1, "c": ["R"], "z": "A"}


def _snapshot(request: web.Request, sym: str) -> dict[str, Any] | None:
    sim = state(request)
    book = sim.book
    if sym not in book.bars:
        return None
    now = sim.market.now_ns
    out: dict[str, Any] = {}
    trade, quote = _trade(request, sym), _quote(request, sym)
    if trade is not None:
        out["latestTrade"] = trade
    if quote is not None:
        out["latestQuote"] = quote
    i = book.last_closed(sym, now)
    finals = book.final_daily(sym, now)
    today: BarArraysSet | None = None
    if i >= 0:
        out["minuteBar"] = bar_json_one(book.bars[sym].bars, i)
        running = book.running_daily(sym, i)
        if not len(finals) or finals.t[-1] < running.t[0]:
            today = running
    if today is not None:
        out["dailyBar"] = bar_json_one(today, 0)
        if len(finals):
            out["prevDailyBar"] = bar_json_one(finals, len(finals) - 1)
    elif len(finals):
        out["dailyBar"] = bar_json_one(finals, len(finals) - 1)
        if len(finals) > 1:
            out["prevDailyBar"] = bar_json_one(finals, len(finals) - 2)
    return out or None


def _symbols(request: web.Request) -> list[str]:
    raw = request.query.get("symbols", "")
    symbols = [s.strip().upper() for s in raw.split(",") if s.strip()]
    if not symbols:
        raise errors.bad_request("symbols is required")
    for s in symbols:
        if not is_valid_symbol(s):
            raise errors.bad_request(f"invalid symbol: {s}")
    return symbols


def _one_symbol(request: web.Request) -> str:
    sym = request.match_info["symbol"].upper()
    if not is_valid_symbol(sym):
        raise errors.bad_request(f"invalid symbol: {sym}")
    return sym
