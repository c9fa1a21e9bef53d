"""Each scriptable fault, observed through the real alpaca-py clients."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import requests
from alpaca.common.exceptions import APIError
from alpaca.data.historical import StockHistoricalDataClient
from alpaca.data.live import StockDataStream
from alpaca.data.requests import StockBarsRequest
from alpaca.data.timeframe import TimeFrame
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, OrderStatus, QueryOrderStatus, TimeInForce
from alpaca.trading.requests import GetOrdersRequest, MarketOrderRequest
from alpaca.trading.stream import TradingStream

from brokers.alpaca_sim.testing import SimServer
from tests.sim.conftest import DEFAULT_START, running_stream, subscribed, wait_for


def market(symbol: str = "ACME", qty: float = 10, cid: str | None = None) -> MarketOrderRequest:
    return MarketOrderRequest(symbol=symbol, qty=qty, side=OrderSide.BUY,
                              time_in_force=TimeInForce.DAY, client_order_id=cid)


def all_orders(trading: TradingClient) -> list[Any]:
    return trading.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL))


def test_429_with_rate_limit_headers_is_retried_by_the_sdk(sim: SimServer,
                                                           trading: TradingClient) -> None:
    sim.faults.rate_limit(times=3)  # the SDK makes 4 attempts
    assert trading.get_clock().is_open
    sim.faults.rate_limit(times=4)
    with pytest.raises(APIError) as exc:
        trading.get_account()
    assert (exc.value.status_code, exc.value.code, exc.value.message) == (
        429, 42910000, "rate limit exceeded")
    headers = exc.value.response.headers
    assert headers["X-RateLimit-Remaining"] == "0" and int(headers["X-RateLimit-Limit"]) == 200
    assert int(headers["X-RateLimit-Reset"]) > 0


def test_500_is_not_retried_504_is(sim: SimServer, trading: TradingClient) -> None:
    sim.faults.server_error(500, path="/v2/account")
    with pytest.raises(APIError) as exc:
        trading.get_account()
    assert (exc.value.status_code, exc.value.code) == (500, 50010000)
    assert trading.get_account().cash == "100000"  # consumed: the next call works
    sim.faults.server_error(504, times=2)
    assert trading.get_clock().is_open  # two 504s, then success on the third attempt


def test_order_accepted_but_response_lost(sim: SimServer, trading: TradingClient) -> None:
    """The order exists although the client saw the connection die: resolve by client id."""
    sim.faults.lose_response()
    with pytest.raises(requests.ConnectionError):
        trading.submit_order(market(cid="lost-1"))
    order = trading.get_order_by_client_id("lost-1")
    assert order.status in (OrderStatus.NEW, OrderStatus.FILLED)
    assert len(all_orders(trading)) == 1


def test_lost_response_as_504_makes_the_sdk_retry_into_a_duplicate(
        sim: SimServer, trading: TradingClient) -> None:
    """alpaca-py re-POSTs on 504; with a client_order_id the retry is refused (not doubled)."""
    sim.faults.lose_response(status=504)
    with pytest.raises(APIError) as exc:
        trading.submit_order(market(cid="dup-1"))
    assert (exc.value.status_code, exc.value.message) == (422, "client_order_id must be unique")
    assert [o.client_order_id for o in all_orders(trading)] == ["dup-1"]


def test_duplicate_client_order_id_fault(sim: SimServer, trading: TradingClient) -> None:
    sim.faults.duplicate_client_order_id()
    with pytest.raises(APIError) as exc:
        trading.submit_order(market(cid="fresh"))
    assert (exc.value.status_code, exc.value.code) == (422, 40010001)
    assert all_orders(trading) == []


def test_insufficient_buying_power_fault(sim: SimServer, trading: TradingClient) -> None:
    sim.faults.insufficient_buying_power()
    with pytest.raises(APIError) as exc:
        trading.submit_order(market(qty=1))
    assert (exc.value.status_code, exc.value.code, exc.value.message) == (
        403, 40310000, "insufficient buying power")
    assert trading.submit_order(market(qty=1)).status == OrderStatus.NEW


def test_reject_after_accept(sim: SimServer, trading: TradingClient) -> None:
    sim.faults.reject_orders()
    o = trading.submit_order(market())
    assert o.status == OrderStatus.NEW
    wait_for(lambda: trading.get_order_by_id(o.id).status == OrderStatus.REJECTED)
    assert trading.get_all_positions() == []


def test_partial_fills_fault(sim: SimServer, trading: TradingClient) -> None:
    sim.faults.partial_fills(0.001)  # ~20-75 shares per 1-minute bar of the sample data
    o = trading.submit_order(market(qty=200))
    sim.advance(minutes=1)
    first = trading.get_order_by_id(o.id)
    assert first.status == OrderStatus.PARTIALLY_FILLED and 0 < float(first.filled_qty) < 200
    sim.advance(minutes=10)
    assert trading.get_order_by_id(o.id).status == OrderStatus.FILLED
    assert trading.get_open_position("ACME").qty == "200"
    sim.faults.clear()
    assert sim.market.volume_participation is None


def test_faults_on_market_data_and_over_http(sim: SimServer,
                                             data_client: StockHistoricalDataClient) -> None:
    r = requests.post(f"{sim.base_url}/_sim/faults", json={"fault": "rate_limit", "times": 2,
                                                           "path": "/v2/stocks/bars"},
                      headers={"APCA-API-KEY-ID": sim.key, "APCA-API-SECRET-KEY": sim.secret})
    assert r.status_code == 200 and r.json()["http"][0]["status"] == 429
    got = data_client.get_stock_bars(StockBarsRequest(
        symbol_or_symbols="ACME", timeframe=TimeFrame.Minute,
        start=DEFAULT_START - timedelta(days=1)))
    assert got.data["ACME"]
    assert sim.faults.describe()["http"] == []  # both consumed by the SDK's retries
    r = requests.post(f"{sim.base_url}/_sim/faults", json={"fault": "nope"},
                      headers={"APCA-API-KEY-ID": sim.key, "APCA-API-SECRET-KEY": sim.secret})
    assert r.status_code == 422
    assert requests.post(f"{sim.base_url}/_sim/faults", json={}).status_code == 403


def test_data_stream_dropped_after_n_messages_reconnects(sim: SimServer) -> None:
    got: list[Any] = []

    async def on_bar(bar: Any) -> None:
        got.append(bar)

    stream = StockDataStream(sim.key, sim.secret, url_override=sim.data_stream_url)
    stream.subscribe_bars(on_bar, "ACME", "BOLT")
    with running_stream(sim, stream, "data", lambda: subscribed(sim, "bars", "BOLT")):
        sim.faults.drop_stream("data", after=4)
        sim.advance(minutes=3)  # 6 bars: the socket dies after the 2nd frame (4 bars)
        wait_for(lambda: len(got) == 4)
        wait_for(lambda: sim.stream_connections("data") == 1 and subscribed(sim, "bars", "ACME"),
                 timeout=15)  # alpaca-py reconnected (backoff <= 1 s), auth + resubscribe
        sim.advance(minutes=1)
        wait_for(lambda: len(got) == 6)
    assert [b.timestamp.minute for b in got] == [30, 30, 31, 31, 33, 33]  # 09:32 was lost


def test_trading_stream_drop_and_silence(sim: SimServer, trading: TradingClient) -> None:
    updates: list[Any] = []

    async def on_update(u: Any) -> None:
        updates.append(u)

    stream = TradingStream(sim.key, sim.secret, paper=True, url_override=sim.trading_stream_url)
    stream.subscribe_trade_updates(on_update)
    listening = lambda: sim.call(lambda: any(c.listening for c in sim.app.hub.conns))  # noqa: E731
    with running_stream(sim, stream, "trading", listening):
        sim.faults.silence_stream("trading")
        trading.submit_order(market(cid="quiet"))
        sim.advance(minutes=1)
        assert sim.market.positions["ACME"].qty == 10  # it filled...
        assert updates == []  # ...but the silent stream said nothing
        sim.faults.clear()
        sim.faults.drop_stream("trading", after=0)
        wait_for(lambda: sim.stream_connections("trading") == 1 and listening(), timeout=15)
        trading.submit_order(market("BOLT", cid="loud"))
        sim.advance(minutes=1)
        wait_for(lambda: [u.event for u in updates] == ["new", "fill"])
    assert updates[0].order.client_order_id == "loud"


def test_silent_data_stream_then_data_timeout_reconnect(sim: SimServer) -> None:
    got: list[Any] = []

    async def on_bar(bar: Any) -> None:
        got.append(bar)

    stream = StockDataStream(sim.key, sim.secret, url_override=sim.data_stream_url,
                             data_timeout=0.5)
    stream.subscribe_bars(on_bar, "ACME")
    with running_stream(sim, stream, "data", lambda: subscribed(sim, "bars", "ACME")):
        sim.advance(minutes=1)
        wait_for(lambda: len(got) == 1)
        sim.faults.silence_stream("data", seconds=1.0)
        sim.advance(minutes=1)
        assert len(got) == 1  # connected, but mute
        wait_for(lambda: not sim.faults.stream_silent("data"), timeout=5)
        wait_for(lambda: subscribed(sim, "bars", "ACME"), timeout=15)
        sim.advance(minutes=1)
        wait_for(lambda: len(got) == 2, timeout=5)
    assert [b.timestamp.minute for b in got] == [30, 32]


def test_enforced_rate_limit(book: Any) -> None:
    with SimServer(book=book, rate_limit=3, enforce_rate_limit=True) as sim:
        keys = {"APCA-API-KEY-ID": sim.key, "APCA-API-SECRET-KEY": sim.secret}
        codes = [requests.get(f"{sim.base_url}/v2/clock", headers=keys).status_code
                 for _ in range(4)]
    assert codes[:3] == [200, 200, 200] and codes[3] == 429


def test_control_endpoints(sim: SimServer) -> None:
    keys = {"APCA-API-KEY-ID": sim.key, "APCA-API-SECRET-KEY": sim.secret}
    r = requests.post(f"{sim.base_url}/_sim/advance", json={"to": "2025-10-03T13:35:00Z"},
                      headers=keys)
    assert r.json()["now"] == "2025-10-03T13:35:00.000000000Z"
    assert requests.post(f"{sim.base_url}/_sim/advance", json={"minutes": -1},
                         headers=keys).status_code == 422
    status = requests.get(f"{sim.base_url}/_sim/status", headers=keys).json()
    assert status["speed"] == 0 and status["symbols"] == sim.book.symbols
    bar = requests.post(f"{sim.base_url}/_sim/updated_bar", headers=keys,
                        json={"symbol": "ACME", "changes": {"v": 7}}).json()
    assert bar["bar"]["v"] == 7
    assert requests.delete(f"{sim.base_url}/_sim/faults", headers=keys).json()["http"] == []
