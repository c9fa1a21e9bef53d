"""Every TradingClient call the server supports, through the real alpaca-py 0.44.0 client
with only ``url_override`` changed, plus Alpaca's status codes and error bodies."""

from __future__ import annotations

import uuid
from datetime import date, timedelta

import pytest
import requests
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, OrderStatus, QueryOrderStatus, TimeInForce
from alpaca.trading.requests import (
    ClosePositionRequest,
    GetCalendarRequest,
    GetOrderByIdRequest,
    GetOrdersRequest,
    LimitOrderRequest,
    MarketOrderRequest,
    ReplaceOrderRequest,
    StopLimitOrderRequest,
    StopOrderRequest,
    TrailingStopOrderRequest,
)

from brokers.alpaca_sim.testing import SimServer
from tests.sim.conftest import DEFAULT_START, wait_for


def buy(trading: TradingClient, symbol: str = "ACME", qty: float = 10, cid: str | None = None):  # type: ignore[no-untyped-def]
    return trading.submit_order(MarketOrderRequest(symbol=symbol, qty=qty, side=OrderSide.BUY,
                                                   time_in_force=TimeInForce.DAY,
                                                   client_order_id=cid))


def filled(trading: TradingClient, order_id: object) -> bool:
    return trading.get_order_by_id(order_id).status == OrderStatus.FILLED


def test_account_clock_calendar_assets(sim: SimServer, trading: TradingClient) -> None:
    acct = trading.get_account()
    assert (acct.cash, acct.buying_power, acct.equity, acct.status) == (
        "100000", "100000", "100000", "ACTIVE")
    clock = trading.get_clock()
    assert clock.timestamp == DEFAULT_START and clock.is_open
    assert clock.next_close.hour == 16 and clock.next_open.date() == date(2025, 10, 6)
    cal = trading.get_calendar(GetCalendarRequest(start=date(2025, 11, 26),
                                                  end=date(2025, 11, 28)))
    assert [(c.date.day, c.open.hour, c.close.hour) for c in cal] == [(26, 9, 16), (28, 9, 13)]
    assets = trading.get_all_assets()
    assert sorted(a.symbol for a in assets) == sim.book.symbols
    acme = trading.get_asset("ACME")
    assert acme.tradable and acme.fractionable and trading.get_asset(acme.id).symbol == "ACME"
    with pytest.raises(APIError) as exc:
        trading.get_asset("ZZZZQX")
    assert (exc.value.status_code, exc.value.code) == (404, 40410000)


def test_clock_follows_replayed_time(sim: SimServer, trading: TradingClient) -> None:
    sim.advance(hours=6, minutes=30)  # 16:00 New York: closed
    clock = trading.get_clock()
    assert not clock.is_open
    assert clock.next_open.date() == date(2025, 10, 6)


def test_every_order_type_round_trips(sim: SimServer, trading: TradingClient) -> None:
    buy(trading, qty=20)
    wait_for(lambda: trading.get_all_positions())
    reqs = [
        LimitOrderRequest(symbol="ACME", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.GTC,
                          limit_price=50.0),
        LimitOrderRequest(symbol="ACME", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY,
                          limit_price=50.0, extended_hours=True),
        StopOrderRequest(symbol="ACME", qty=5, side=OrderSide.SELL,
                         time_in_force=TimeInForce.GTC, stop_price=90.0),
        StopLimitOrderRequest(symbol="ACME", qty=5, side=OrderSide.SELL,
                              time_in_force=TimeInForce.DAY, stop_price=90.0, limit_price=89.5),
        TrailingStopOrderRequest(symbol="ACME", qty=5, side=OrderSide.SELL,
                                 time_in_force=TimeInForce.GTC, trail_percent=2.5),
        TrailingStopOrderRequest(symbol="ACME", qty=5, side=OrderSide.SELL,
                                 time_in_force=TimeInForce.DAY, trail_price=1.0),
        MarketOrderRequest(symbol="BOLT", notional=1000.5, side=OrderSide.BUY,
                           time_in_force=TimeInForce.DAY),
        MarketOrderRequest(symbol="CRUX", qty=1.5, side=OrderSide.BUY,
                           time_in_force=TimeInForce.DAY),
        LimitOrderRequest(symbol="DYNA", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.IOC,
                          limit_price=1.0),
        MarketOrderRequest(symbol="ECHO", qty=1, side=OrderSide.BUY,
                           time_in_force=TimeInForce.FOK),
    ]
    for r in reqs:
        o = trading.submit_order(r)
        assert o.symbol == r.symbol and o.side == r.side and o.type == r.type
        assert o.time_in_force == r.time_in_force and o.status == OrderStatus.NEW
        back = trading.get_order_by_id(o.id)
        assert back.client_order_id == o.client_order_id
    trail = trading.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN,
                                                symbols=["ACME"]))
    pct = next(o for o in trail if o.trail_percent is not None)
    assert pct.trail_percent == "2.5" and float(pct.hwm) > 0
    assert float(pct.stop_price) == pytest.approx(float(pct.hwm) * 0.975)
    wait_for(lambda: trading.get_order_by_id(o.id).status != OrderStatus.NEW)
    positions = {p.symbol: p for p in trading.get_all_positions()}
    assert positions["CRUX"].qty == "1.5"
    assert float(positions["BOLT"].cost_basis) == pytest.approx(1000.5, abs=1e-6)
    assert "DYNA" not in positions  # ioc limit far below the market: canceled
    assert positions["ECHO"].qty == "1"


def test_orders_list_filters_and_lookup(sim: SimServer, trading: TradingClient) -> None:
    a = buy(trading, "ACME", 1, cid="a-1")
    wait_for(lambda: filled(trading, a.id))
    sim.advance(minutes=1)
    b = trading.submit_order(LimitOrderRequest(symbol="BOLT", qty=1, side=OrderSide.BUY,
                                               time_in_force=TimeInForce.GTC, limit_price=1.0,
                                               client_order_id="b-1"))
    assert [o.id for o in trading.get_orders()] == [b.id]
    closed = trading.get_orders(GetOrdersRequest(status=QueryOrderStatus.CLOSED))
    assert [o.client_order_id for o in closed] == ["a-1"]
    every = trading.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL))
    assert [o.id for o in every] == [b.id, a.id]  # newest first
    asc = trading.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL, direction="asc"))
    assert [o.id for o in asc] == [a.id, b.id]
    after = trading.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL,
                                                after=DEFAULT_START + timedelta(seconds=30)))
    assert [o.id for o in after] == [b.id]
    assert trading.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL, side=OrderSide.SELL,
                                               )) == []
    assert len(trading.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL, limit=1))) == 1
    assert trading.get_order_by_client_id("b-1").id == b.id
    assert trading.get_order_by_id(b.id, GetOrderByIdRequest(nested=True)).legs is None
    with pytest.raises(APIError) as exc:
        trading.get_order_by_client_id("nope")
    assert (exc.value.status_code, exc.value.code, exc.value.message) == (
        404, 40410000, "order not found")
    with pytest.raises(APIError) as exc:
        trading.get_order_by_id(uuid.uuid4())
    assert exc.value.status_code == 404


def test_replace_and_cancel(sim: SimServer, trading: TradingClient) -> None:
    o = trading.submit_order(LimitOrderRequest(symbol="ACME", qty=3, side=OrderSide.BUY,
                                               time_in_force=TimeInForce.GTC, limit_price=50.0,
                                               client_order_id="l-1"))
    new = trading.replace_order_by_id(o.id, ReplaceOrderRequest(qty=5, limit_price=51.5,
                                                                client_order_id="l-2"))
    assert new.id != o.id and new.replaces == o.id and new.qty == "5"
    assert float(new.limit_price) == 51.5 and new.client_order_id == "l-2"
    old = trading.get_order_by_id(o.id)
    assert old.status == OrderStatus.REPLACED and old.replaced_by == new.id
    assert trading.cancel_order_by_id(new.id) is None  # 204, empty body
    assert trading.get_order_by_id(new.id).status == OrderStatus.CANCELED
    with pytest.raises(APIError) as exc:
        trading.cancel_order_by_id(new.id)
    assert (exc.value.status_code, exc.value.message) == (422,
                                                          'order is already in "canceled" state')
    ids = {trading.submit_order(LimitOrderRequest(
        symbol=s, qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY, limit_price=1.0)).id
        for s in ("ACME", "BOLT")}
    res = trading.cancel_orders()
    assert {r.id for r in res} == ids and {r.status for r in res} == {200}
    assert trading.get_orders() == []


def test_positions_get_close_and_close_all(sim: SimServer, trading: TradingClient) -> None:
    for sym in ("ACME", "BOLT", "CRUX"):
        buy(trading, sym, 10)
    wait_for(lambda: len(trading.get_all_positions()) == 3)
    sim.advance(minutes=1)
    p = trading.get_open_position("ACME")
    assert (p.qty, p.side, p.symbol) == ("10", "long", "ACME")
    assert float(p.market_value) == pytest.approx(10 * float(p.current_price))
    assert trading.get_open_position(p.asset_id).symbol == "ACME"
    half = trading.close_position("ACME", ClosePositionRequest(percentage="50"))
    part = trading.close_position("BOLT", ClosePositionRequest(qty="4"))
    assert (half.qty, half.side, part.qty) == ("5", OrderSide.SELL, "4")
    wait_for(lambda: trading.get_open_position("BOLT").qty == "6")
    stop = trading.submit_order(StopOrderRequest(symbol="CRUX", qty=10, side=OrderSide.SELL,
                                                 time_in_force=TimeInForce.GTC, stop_price=1.0))
    with pytest.raises(APIError) as exc:  # all 10 held by the stop
        trading.close_position("CRUX")
    assert exc.value.status_code == 403 and "insufficient qty" in exc.value.message
    results = trading.close_all_positions(cancel_orders=True)
    assert {r.symbol for r in results} == {"ACME", "BOLT", "CRUX"}
    assert {r.status for r in results} == {200}
    assert trading.get_order_by_id(stop.id).status == OrderStatus.CANCELED
    wait_for(lambda: trading.get_all_positions() == [])
    with pytest.raises(APIError) as exc:
        trading.get_open_position("ACME")
    assert (exc.value.status_code, exc.value.message) == (404, "position does not exist")
    with pytest.raises(APIError):
        trading.close_position("ACME")
    acct = trading.get_account()
    assert float(acct.equity) == pytest.approx(float(acct.cash))
    assert float(acct.long_market_value) == 0


def test_order_refusals_carry_alpaca_bodies(sim: SimServer, trading: TradingClient) -> None:
    buy(trading, cid="dup")
    with pytest.raises(APIError) as exc:
        buy(trading, cid="dup")
    assert (exc.value.status_code, exc.value.code, exc.value.message) == (
        422, 40010001, "client_order_id must be unique")
    with pytest.raises(APIError) as exc:
        buy(trading, qty=10_000)
    assert (exc.value.status_code, exc.value.code) == (403, 40310000)
    assert exc.value.message == "insufficient buying power"
    with pytest.raises(APIError) as exc:
        trading.submit_order(MarketOrderRequest(symbol="BOLT", qty=1, side=OrderSide.SELL,
                                                time_in_force=TimeInForce.DAY))
    assert exc.value.status_code == 403 and "insufficient qty" in exc.value.message
    with pytest.raises(APIError) as exc:
        trading.submit_order(LimitOrderRequest(symbol="ACME", qty=1, side=OrderSide.BUY,
                                               time_in_force=TimeInForce.DAY,
                                               limit_price=100.123))
    assert (exc.value.status_code, exc.value.code) == (422, 42210000)
    with pytest.raises(APIError) as exc:
        buy(trading, symbol="NOPE")
    assert exc.value.status_code == 422


def test_raw_requests_strings_numbers_and_bad_ids(sim: SimServer) -> None:
    """Other clients send numeric strings and non-UUID ids; Alpaca answers them too."""
    s = requests.Session()
    s.headers.update({"APCA-API-KEY-ID": sim.key, "APCA-API-SECRET-KEY": sim.secret})
    r = s.post(f"{sim.base_url}/v2/orders", json={
        "symbol": "ACME", "qty": "2", "side": "buy", "type": "limit", "time_in_force": "gtc",
        "limit_price": "50.5", "extended_hours": "true"})
    assert r.status_code == 200, r.text
    assert (r.json()["qty"], r.json()["limit_price"], r.json()["extended_hours"]) == (
        "2", "50.5", True)
    assert s.get(f"{sim.base_url}/v2/orders/not-a-uuid").json() == {
        "code": 40010001, "message": "order_id is missing"}
    r = s.delete(f"{sim.base_url}/v2/positions", params={"cancel_orders": "True"})
    assert r.status_code == 207 and r.json() == []
    assert s.get(f"{sim.base_url}/v2/orders").json() == []  # cancel_orders=True canceled it
    r = s.post(f"{sim.base_url}/v2/orders", json={"symbol": "ACME", "side": "buy",
                                                  "type": "market", "time_in_force": "day"})
    assert (r.status_code, r.json()["message"]) == (422, "qty or notional is required")
    r = s.get(f"{sim.base_url}/v2/nothing-here")
    assert (r.status_code, r.json()["code"]) == (404, 40410000)


def test_requests_without_the_right_keys_are_refused(sim: SimServer) -> None:
    r = requests.get(f"{sim.base_url}/v2/account")
    assert (r.status_code, r.json()) == (403, {"message": "forbidden."})
    wrong = TradingClient(sim.key, "wrong", paper=True, url_override=sim.base_url)
    with pytest.raises(APIError) as exc:
        wrong.get_account()
    assert (exc.value.status_code, exc.value.code, exc.value.message) == (
        401, 40110000, "request is not authorized")
    basic = requests.get(f"{sim.base_url}/v2/clock", auth=(sim.key, sim.secret))
    assert basic.status_code == 200
    r = requests.get(f"{sim.base_url}/v2/clock", headers={"APCA-API-KEY-ID": sim.key,
                                                          "APCA-API-SECRET-KEY": sim.secret})
    assert set(r.headers) >= {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"}


def test_upgrade_header_does_not_bypass_auth(sim: SimServer) -> None:
    """Regression (issue 11.1): any REST request with ``Upgrade: websocket`` skipped
    authentication, fault injection and rate counting; orders could be sent without keys."""
    sneaky = {"Upgrade": "websocket", "Connection": "Upgrade"}
    r = requests.post(f"{sim.base_url}/v2/orders", headers=sneaky,
                      json={"symbol": "ACME", "qty": 1, "side": "buy", "type": "market",
                            "time_in_force": "day"})
    assert (r.status_code, r.json()) == (403, {"message": "forbidden."})
    for method, path in (("GET", "/v2/account"), ("DELETE", "/v2/positions"),
                         ("POST", "/_sim/faults"), ("GET", "/_sim/status")):
        r = requests.request(method, f"{sim.base_url}{path}", headers=sneaky, json={})
        assert r.status_code == 403, (method, path)
    r = requests.get(f"{sim.base_url}/v2/account",
                     headers={**sneaky, "APCA-API-KEY-ID": sim.key, "APCA-API-SECRET-KEY": "x"})
    assert r.status_code == 401
    assert sim.market.list_orders(status="all", limit=500) == []
