"""JSON shapes Alpaca sends, built from the simulator's records.

Follows ``alpaca-spec/CONTRACT.md`` section 4 and the official OpenAPI schemas: money and
quantities are JSON strings, every Order key is present (null when unset), times are RFC-3339
in UTC (``Z``, nanosecond precision as Alpaca sends them), the clock uses New York offsets,
calendar times are ``HH:MM``, bars carry ``n`` and ``vw``.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack

from brokers.alpaca_sim.bars import BarArraysSet
from brokers.alpaca_sim.calendar import CalendarDay, ns_to_ny
from brokers.alpaca_sim.models import SimOrder, SimPosition, TradeEvent, asset_id

_NS = 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def num(x: float | None) -> str | None:
    """A number as Alpaca's decimal string: up to 9 decimals, no trailing zeros."""
    if x is None:
        return None
    s = f"{round(float(x), 9):.9f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def ts(t_ns: int | None) -> str | None:
    """RFC-3339 UTC with nanoseconds: ``2025-10-03T13:30:00.000000000Z``."""
    if t_ns is None:
        return None
    sec, frac = divmod(int(t_ns), _NS)
    return f"{_EPOCH + timedelta(seconds=sec):%Y-%m-%dT%H:%M:%S}.{frac:09d}Z"


def bar_ts(t_ns: int) -> str:
    """Bar time as Alpaca writes it: ``2025-10-03T13:30:00Z``."""
    return f"{_EPOCH + timedelta(seconds=int(t_ns) // _NS):%Y-%m-%dT%H:%M:%SZ}"


def ny_iso(t_ns: int) -> str:
    """New York wall time with offset, as ``/v2/clock`` sends it."""
    return ns_to_ny(t_ns).isoformat()


def order_json(o: SimOrder) -> dict[str, Any]:
    """The full Order object (every key, Alpaca's order)."""
    return {
        "id": o.id,
        "client_order_id": o.client_order_id,
        "created_at": ts(o.created_at),
        "updated_at": ts(o.updated_at),
        "submitted_at": ts(o.submitted_at),
        "filled_at": ts(o.filled_at),
        "expired_at": ts(o.expired_at),
        "expires_at": ts(o.expires_at) if o.expires_at is not None else ts(o.created_at),
        "canceled_at": ts(o.canceled_at),
        "failed_at": ts(o.failed_at),
        "replaced_at": ts(o.replaced_at),
        "replaced_by": o.replaced_by,
        "replaces": o.replaces,
        "asset_id": asset_id(o.symbol),
        "symbol": o.symbol,
        "asset_class": "us_equity",
        "notional": num(o.notional),
        "qty": num(o.qty),
        "filled_qty": num(o.filled_qty),
        "filled_avg_price": num(o.filled_avg_price),
        "order_class": "simple",
        "order_type": o.type,
        "type": o.type,
        "side": o.side,
        "position_intent": o.position_intent,
        "time_in_force": o.time_in_force,
        "limit_price": num(o.limit_price),
        "stop_price": num(o.trail_stop() if o.type == "trailing_stop" else o.stop_price),
        "status": o.status,
        "extended_hours": o.extended_hours,
        "legs": None,
        "ratio_qty": None,
        "trail_percent": num(o.trail_percent),
        "trail_price": num(o.trail_price),
        "hwm": num(o.hwm),
        "subtag": None,
        "source": None,
    }


def trade_event_json(e: TradeEvent) -> dict[str, Any]:
    """One ``trade_updates`` frame (numbers as strings, like the paper server)."""
    data: dict[str, Any] = {"event": e.event, "timestamp": ts(e.timestamp), "order": e.order}
    if e.execution_id is not None:
        data["execution_id"] = e.execution_id
    if e.price is not None:
        data["price"] = num(e.price)
    if e.qty is not None:
        data["qty"] = num(e.qty)
    if e.position_qty is not None:
        data["position_qty"] = num(e.position_qty)
    return {"stream": "trade_updates", "data": data}


def position_json(p: SimPosition, price: float, lastday: float,
                  held_for_orders: float) -> dict[str, Any]:
    """The Position object, valued at ``price`` (the last trade)."""
    mv = p.qty * price
    pl = mv - p.cost_basis
    day_base = p.qty * lastday
    # a USD account: the LCT fields carry the identity rate and the same values in USD
    usd = {
        "avg_entry_price": num(p.avg_entry_price),
        "change_today": num((price - lastday) / lastday if lastday else 0.0),
        "cost_basis": num(p.cost_basis),
        "current_price": num(price),
        "lastday_price": num(lastday),
        "market_value": num(mv),
        "unrealized_intraday_pl": num(mv - day_base),
        "unrealized_intraday_plpc": num((mv - day_base) / day_base if day_base else 0.0),
        "unrealized_pl": num(pl),
        "unrealized_plpc": num(pl / p.cost_basis if p.cost_basis else 0.0),
    }
    return {
        "asset_id": asset_id(p.symbol),
        "symbol": p.symbol,
        "exchange": "NYSE",
        "asset_class": "us_equity",
        "asset_marginable": False,
        "qty": num(p.qty),
        "qty_available": num(max(0.0, p.qty - held_for_orders)),
        "avg_entry_price": num(p.avg_entry_price),
        "side": "long",
        "market_value": num(mv),
        "cost_basis": num(p.cost_basis),
        "unrealized_pl": num(pl),
        "unrealized_plpc": num(pl / p.cost_basis if p.cost_basis else 0.0),
        "unrealized_intraday_pl": num(mv - day_base),
        "unrealized_intraday_plpc": num((mv - day_base) / day_base if day_base else 0.0),
        "current_price": num(price),
        "lastday_price": num(lastday),
        "change_today": num((price - lastday) / lastday if lastday else 0.0),
        "swap_rate": "1",
        "avg_entry_swap_rate": "1",
        "prev_swap_rate": "1",
        "usd": usd,
    }


def asset_json(symbol: str) -> dict[str, Any]:
    """The Asset object of a replayed symbol (tradable, fractionable, not shortable)."""
    return {
        "id": asset_id(symbol),
        "class": "us_equity",
        "exchange": "NYSE",
        "symbol": symbol,
        "name": f"{symbol} (replayed by alpaca-sim)",
        "status": "active",
        "tradable": True,
        "marginable": False,
        "maintenance_margin_requirement": 100,
        "margin_requirement_long": "100",
        "margin_requirement_short": "100",
        "shortable": False,
        "easy_to_borrow": False,
        "borrow_status": "hard_to_borrow",
        "cusip": None,  # fictional symbols have none
        "fractionable": True,
        "attributes": [],
        "min_order_size": "0.0001",
        "min_trade_increment": "0.0001",
        "price_increment": "0.01",
    }


def calendar_json(d: CalendarDay) -> dict[str, Any]:
    """One ``/v2/calendar`` day: ``open``/``close`` as ``HH:MM`` New York time."""
    return {
        "date": d.date.isoformat(),
        "open": f"{ns_to_ny(d.open):%H:%M}",
        "close": f"{ns_to_ny(d.close):%H:%M}",
        "session_open": f"{ns_to_ny(d.ext_open):%H%M}",
        "session_close": f"{ns_to_ny(d.ext_close):%H%M}",
        "settlement_date": d.settlement_date.isoformat(),
    }


def bars_json(b: BarArraysSet) -> list[dict[str, Any]]:
    """REST bars: ``t o h l c v n vw`` (volume and trade count as integers)."""
    return [
        {"t": bar_ts(t), "o": o, "h": h, "l": lo, "c": c, "v": int(round(v)), "n": int(round(n)),
         "vw": vw}
        for t, o, h, lo, c, v, n, vw in zip(b.t.tolist(), b.o.tolist(), b.h.tolist(),
                                            b.l.tolist(), b.c.tolist(), b.v.tolist(),
                                            b.n.tolist(), b.vw.tolist(), strict=True)
    ]


def bar_json_one(b: BarArraysSet, i: int) -> dict[str, Any]:
    """Bar ``i`` of ``b`` as one REST bar."""
    return bars_json(b.take(slice(i, i + 1)))[0]


def stream_bar(kind: str, symbol: str, t_ns: int, o: float, h: float, lo: float, c: float,
               v: float, n: float, vw: float, binary: bool = True) -> dict[str, Any]:
    """A data-stream bar message (``T`` = ``b``, ``u`` or ``d``); ``t`` is a msgpack
    Timestamp (ext type -1) as alpaca-py requires, or an RFC-3339 string in JSON mode."""
    return {"T": kind, "S": symbol, "o": o, "h": h, "l": lo, "c": c, "v": int(round(v)),
            "t": msgpack.Timestamp.from_unix_nano(int(t_ns)) if binary else bar_ts(t_ns),
            "n": int(round(n)), "vw": vw}


def encode_page_token(symbol: str, t_ns: int) -> str:
    """Opaque pagination token: where the next page starts."""
    return base64.b64encode(f"{symbol}|{t_ns}".encode()).decode()


def decode_page_token(token: str) -> tuple[str, int] | None:
    """The (symbol, time) of a page token, or None if it is not one of ours."""
    try:
        sym, t = base64.b64decode(token.encode(), validate=True).decode().split("|")
        return sym, int(t)
    except (ValueError, UnicodeDecodeError):
        return None


def account_json(acct: Any, account_uuid: str, created_at: int, now: int) -> dict[str, Any]:
    """The TradeAccount object of a cash account (multiplier 1, no shorting)."""
    bp = num(acct.buying_power)
    return {
        "id": account_uuid,
        "account_number": "PA" + account_uuid.replace("-", "")[:10].upper(),
        "status": "ACTIVE",
        "currency": "USD",
        "cash": num(acct.cash),
        "buying_power": bp,
        "regt_buying_power": bp,
        "daytrading_buying_power": "0",
        "non_marginable_buying_power": bp,
        "options_buying_power": bp,
        "effective_buying_power": bp,
        "portfolio_value": num(acct.equity),
        "equity": num(acct.equity),
        "last_equity": num(acct.last_equity),
        "long_market_value": num(acct.long_market_value),
        "short_market_value": "0",
        "position_market_value": num(acct.long_market_value),
        "initial_margin": "0",
        "maintenance_margin": "0",
        "last_maintenance_margin": "0",
        "sma": "0",
        "multiplier": "1",
        "accrued_fees": "0",
        "pending_transfer_in": "0",
        "pending_transfer_out": "0",
        "pattern_day_trader": False,
        "trading_blocked": False,
        "transfers_blocked": False,
        "account_blocked": False,
        "trade_suspended_by_user": False,
        "shorting_enabled": False,
        "daytrade_count": 0,
        "options_approved_level": 0,
        "options_trading_level": 0,
        "created_at": ts(created_at),
        "balance_asof": ns_to_ny(now).date().isoformat(),
        "crypto_status": "ACTIVE",
        "crypto_tier": 0,
        "intraday_adjustments": "0",
        "pending_reg_taf_fees": "0",
        "bod_dtbp": "0",
        "admin_configurations": {},
        "user_configurations": None,
    }
