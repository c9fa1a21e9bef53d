"""Both WebSocket streams with the real alpaca-py clients (StockDataStream, TradingStream)
and with a raw client for the wire details: msgpack frames, one frame per minute, auth,
subscription acks, every trade-update event, and one connection per key."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack
import pytest
from alpaca.data.live import StockDataStream
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, TimeInForce
from alpaca.trading.requests import LimitOrderRequest, MarketOrderRequest, ReplaceOrderRequest
from alpaca.trading.stream import TradingStream
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from brokers.alpaca_sim.bars import BarBook
from brokers.alpaca_sim.testing import SimServer
from tests.sim.conftest import DEFAULT_START, running_stream, subscribed, wait_for

MSGPACK = {"Content-Type": "application/msgpack"}


def recv(ws: ClientConnection, timeout: float = 5.0) -> list[dict[str, Any]]:
    frame = ws.recv(timeout=timeout)
    assert isinstance(frame, bytes), "data-stream frames must be binary msgpack"
    return msgpack.unpackb(frame, timestamp=0)


@contextlib.contextmanager
def data_ws(sim: SimServer, subscribe: dict[str, list[str]] | None = None
            ) -> Iterator[ClientConnection]:
    with connect(sim.data_stream_url, additional_headers=MSGPACK) as ws:
        assert recv(ws) == [{"T": "success", "msg": "connected"}]
        ws.send(msgpack.packb({"action": "auth", "key": sim.key, "secret": sim.secret}))
        assert recv(ws) == [{"T": "success", "msg": "authenticated"}]
        if subscribe:
            ws.send(msgpack.packb({**subscribe, "action": "subscribe"}))
            assert recv(ws)[0]["T"] == "subscription"
        yield ws


def test_stock_data_stream_gets_every_closed_bar(sim: SimServer, book: BarBook) -> None:
    got: list[Any] = []

    async def on_bar(bar: Any) -> None:
        got.append(bar)

    stream = StockDataStream(sim.key, sim.secret, url_override=sim.data_stream_url)
    stream.subscribe_bars(on_bar, "ACME", "BOLT")
    with running_stream(sim, stream, "data", lambda: subscribed(sim, "bars", "BOLT")):
        sim.advance(minutes=3)
        wait_for(lambda: len(got) == 6)
    assert [(b.symbol, b.timestamp.minute) for b in got] == [
        ("ACME", 30), ("BOLT", 30), ("ACME", 31), ("BOLT", 31), ("ACME", 32), ("BOLT", 32)]
    acme = book.bars["ACME"].bars
    i = book.bar_starting_at("ACME", int(DEFAULT_START.timestamp() * 1e9))
    assert (got[0].open, got[0].close, got[0].volume) == (acme.o[i], acme.c[i], acme.v[i])
    assert got[0].timestamp == DEFAULT_START


def test_updated_and_daily_bars(sim: SimServer) -> None:
    updated: list[Any] = []
    daily: list[Any] = []

    async def on_updated(bar: Any) -> None:
        updated.append(bar)

    async def on_daily(bar: Any) -> None:
        daily.append(bar)

    stream = StockDataStream(sim.key, sim.secret, url_override=sim.data_stream_url)
    stream.subscribe_updated_bars(on_updated, "ACME")
    stream.subscribe_daily_bars(on_daily, "CRUX")
    with running_stream(sim, stream, "data", lambda: subscribed(sim, "dailyBars", "CRUX")):
        sim.advance(minutes=2)
        sent = sim.send_updated_bar("ACME", v=123456)
        wait_for(lambda: updated and len(daily) == 2)
    assert updated[0].volume == 123456 and updated[0].close == sent["c"]
    assert updated[0].timestamp == DEFAULT_START + timedelta(minutes=1)
    assert daily[-1].timestamp == datetime(2025, 10, 3, 4, tzinfo=UTC)
    assert daily[-1].volume > daily[0].volume  # the running daily bar grows


def test_wire_format_one_msgpack_frame_per_minute(sim: SimServer) -> None:
    with connect(sim.data_stream_url, additional_headers=MSGPACK) as ws:
        assert recv(ws) == [{"T": "success", "msg": "connected"}]
        ws.send(msgpack.packb({"action": "subscribe", "bars": ["ACME"]}))
        assert recv(ws) == [{"T": "error", "code": 401, "msg": "not authenticated"}]
        ws.send(msgpack.packb({"action": "auth", "key": sim.key, "secret": "bad"}))
        assert recv(ws) == [{"T": "error", "code": 402, "msg": "auth failed"}]
        ws.send(msgpack.packb({"action": "auth", "key": sim.key, "secret": sim.secret}))
        assert recv(ws) == [{"T": "success", "msg": "authenticated"}]
        payload = msgpack.packb({"bars": ["*"], "updatedBars": ["ACME"], "action": "subscribe"})
        ws.send([payload[:5], payload[5:]])  # fragmented, as alpaca-py sends it
        ack = recv(ws)
        assert ack == [{"T": "subscription", "trades": [], "quotes": [], "bars": ["*"],
                        "updatedBars": ["ACME"], "dailyBars": [], "statuses": [], "lulds": [],
                        "corrections": [], "cancelErrors": []}]
        sim.advance(minutes=2)
        first, second = recv(ws), recv(ws)
        assert [m["S"] for m in first] == sim.book.symbols  # all symbols, one frame
        assert {m["T"] for m in first} == {"b"}
        assert all(isinstance(m["t"], msgpack.Timestamp) for m in first)
        assert first[0]["t"].to_datetime() == DEFAULT_START
        assert set(first[0]) == {"T", "S", "o", "h", "l", "c", "v", "t", "n", "vw"}
        assert second[0]["t"].to_datetime() == DEFAULT_START + timedelta(minutes=1)
        ws.send(msgpack.packb({"action": "unsubscribe", "bars": ["*"]}))
        assert recv(ws)[0]["bars"] == []


def test_json_clients_get_json_text(sim: SimServer) -> None:
    with connect(sim.data_stream_url) as ws:
        assert json.loads(ws.recv(timeout=5)) == [{"T": "success", "msg": "connected"}]
        ws.send(json.dumps({"action": "auth", "key": sim.key, "secret": sim.secret}))
        json.loads(ws.recv(timeout=5))
        ws.send(json.dumps({"action": "subscribe", "bars": ["ACME"]}))
        json.loads(ws.recv(timeout=5))
        sim.advance(minutes=1)
        bar = json.loads(ws.recv(timeout=5))[0]
        assert bar["t"] == "2025-10-03T13:30:00Z" and bar["S"] == "ACME"


def test_one_data_connection_per_key(sim: SimServer) -> None:
    with data_ws(sim, {"bars": ["ACME"]}) as first:
        with connect(sim.data_stream_url, additional_headers=MSGPACK) as second:
            recv(second)
            second.send(msgpack.packb({"action": "auth", "key": sim.key,
                                       "secret": sim.secret}))
            assert recv(second) == [{"T": "error", "code": 406,
                                     "msg": "connection limit exceeded"}]
        sim.advance(minutes=1)
        assert recv(first)[0]["S"] == "ACME"  # the first connection is unaffected
    wait_for(lambda: sim.stream_connections("data") == 0)
    with data_ws(sim):  # the slot is free again
        pass


def test_data_stream_auth_timeout(sim: SimServer) -> None:
    sim.app.hub.auth_timeout = 0.2
    with connect(sim.data_stream_url, additional_headers=MSGPACK) as ws:
        recv(ws)
        assert recv(ws) == [{"T": "error", "code": 404, "msg": "auth timeout"}]
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)


def test_one_trading_connection_per_key(sim: SimServer) -> None:
    auth = json.dumps({"action": "authenticate",
                       "data": {"key_id": sim.key, "secret_key": sim.secret}})
    with connect(sim.trading_stream_url) as first:
        first.send(auth)
        assert json.loads(first.recv(timeout=5))["data"] == {"status": "authorized",
                                                             "action": "authenticate"}
        with connect(sim.trading_stream_url) as second:
            second.send(auth)
            reply = json.loads(second.recv(timeout=5))
            assert reply == {"action": "error",
                             "data": {"error_message": "connection limit exceeded"}}
        with connect(sim.trading_stream_url) as bad:
            bad.send(json.dumps({"action": "listen", "data": {"streams": ["trade_updates"]}}))
            assert json.loads(bad.recv(timeout=5))["data"] == {"status": "unauthorized",
                                                               "action": "listen"}
            bad.send(json.dumps({"action": "authenticate",
                                 "data": {"key_id": sim.key, "secret_key": "no"}}))
            assert json.loads(bad.recv(timeout=5))["data"]["status"] == "unauthorized"
        first.send(json.dumps({"action": "listen", "data": {"streams": ["trade_updates"]}}))
        assert json.loads(first.recv(timeout=5)) == {"stream": "listening",
                                                     "data": {"streams": ["trade_updates"]}}


def test_trading_stream_delivers_every_event(book: BarBook) -> None:
    with SimServer(book=book, start=DEFAULT_START - timedelta(minutes=5),
                   volume_participation=0.002) as sim:
        updates: list[Any] = []

        async def on_update(u: Any) -> None:
            updates.append(u)

        trading = TradingClient(sim.key, sim.secret, paper=True, url_override=sim.base_url)
        stream = TradingStream(sim.key, sim.secret, paper=True,
                               url_override=sim.trading_stream_url)
        stream.subscribe_trade_updates(on_update)
        listening = lambda: sim.call(lambda: any(c.listening for c in sim.app.hub.conns))  # noqa: E731
        with running_stream(sim, stream, "trading", listening):
            pre = trading.submit_order(MarketOrderRequest(  # before the open: accepted
                symbol="ACME", qty=300, side=OrderSide.BUY, time_in_force=TimeInForce.DAY))
            sim.advance(minutes=7)  # 09:32; 0.2% of ~40k-share bars: partial fills
            low = trading.submit_order(LimitOrderRequest(
                symbol="BOLT", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY,
                limit_price=1.0))
            new = trading.replace_order_by_id(low.id, ReplaceOrderRequest(limit_price=2.0))
            trading.cancel_order_by_id(new.id)
            sim.faults.reject_orders()
            rej = trading.submit_order(MarketOrderRequest(
                symbol="CRUX", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY))
            day = trading.submit_order(LimitOrderRequest(
                symbol="DYNA", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY,
                limit_price=1.0))
            sim.advance(to=datetime(2025, 10, 3, 20, 0, tzinfo=UTC))  # 16:00: day orders end
            wait_for(lambda: any(u.event == "expired" for u in updates))
        by_order: dict[str, list[str]] = {}
        for u in updates:
            by_order.setdefault(str(u.order.id), []).append(u.event)
        fills = by_order[str(pre.id)]
        assert fills[:2] == ["accepted", "new"] and fills[-1] == "fill"
        assert "partial_fill" in fills
        assert by_order[str(low.id)] == ["new", "replaced"]
        assert by_order[str(new.id)] == ["new", "canceled"]
        assert by_order[str(rej.id)] == ["new", "rejected"]
        assert by_order[str(day.id)] == ["new", "expired"]
        executions = [u for u in updates if u.event in ("partial_fill", "fill")]
        assert len({u.execution_id for u in executions}) == len(executions)
        assert sum(u.qty for u in executions) == 300
        assert executions[-1].position_qty == 300
        assert all(u.price > 0 for u in executions)
        assert [u.position_qty for u in executions] == sorted(u.position_qty for u in executions)
        # Times are replayed time: the first fill at the 09:30 open, nothing at wall time.
        assert executions[0].timestamp == DEFAULT_START
        assert all(u.timestamp.year == 2025 for u in updates)
        replaced = next(u for u in updates if u.event == "replaced")
        assert str(replaced.order.replaced_by) == str(new.id)
        assert float(executions[-1].order.filled_qty) == 300


@pytest.mark.parametrize("speed", [600.0])
def test_bars_arrive_in_replayed_real_time(book: BarBook, speed: float) -> None:
    """At speed N a minute bar arrives every 60/N wall seconds, stamped in replayed time."""
    with SimServer(book=book, speed=speed) as sim:
        got: list[Any] = []

        async def on_bar(bar: Any) -> None:
            got.append(bar)

        stream = StockDataStream(sim.key, sim.secret, url_override=sim.data_stream_url)
        stream.subscribe_bars(on_bar, "ACME")
        with running_stream(sim, stream, "data", lambda: subscribed(sim, "bars", "ACME")):
            wait_for(lambda: len(got) >= 3, timeout=5)
            now = sim.now()
        stamps = [b.timestamp for b in got]
        assert stamps == sorted(stamps)
        assert all(b - a == timedelta(minutes=1) for a, b in zip(stamps, stamps[1:], strict=False))
        assert stamps[-1] + timedelta(minutes=1) <= now  # only closed bars


@pytest.mark.parametrize("latency_ms", [0.0, 300.0], ids=["loopback", "300ms"])
def test_latency_delays_rest_answers_and_stream_messages_in_order(book: BarBook,
                                                                  latency_ms: float) -> None:
    """``--latency``: a rehearsal against a distant Alpaca. With a 300 ms round trip a REST
    call through alpaca-py takes at least 300 ms (150 ms each way), and a trade update
    reaches the real TradingStream 150 ms after the server published it, in order; with 0
    (the default) the same calls are loopback-fast."""
    rtt = 0.3
    seen: list[tuple[str, float]] = []

    async def on_update(u: Any) -> None:
        seen.append((u.event, time.monotonic()))

    with SimServer(book=book, start=DEFAULT_START + timedelta(minutes=1),
                   latency_ms=latency_ms) as sim:
        trading = TradingClient(sim.key, sim.secret, paper=True, url_override=sim.base_url)
        stream = TradingStream(sim.key, sim.secret, paper=True,
                               url_override=sim.trading_stream_url)
        stream.subscribe_trade_updates(on_update)
        listening = lambda: sim.call(  # noqa: E731
            lambda: any(c.listening for c in sim.app.hub.conns))
        with running_stream(sim, stream, "trading", listening):
            t0 = time.monotonic()
            trading.get_clock()
            rest = time.monotonic() - t0
            posted = time.monotonic()
            order = trading.submit_order(LimitOrderRequest(
                symbol="ACME", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY,
                limit_price=1.0))
            trading.cancel_order_by_id(order.id)
            wait_for(lambda: [e for e, _ in seen] == ["new", "canceled"])
    if latency_ms:
        assert rest >= rtt
        # ``new`` is published once the POST has made its trip (half the round trip) and
        # reaches the client half a round trip later
        assert seen[0][1] - posted >= rtt
        assert seen[1][1] - posted >= 2 * rtt  # the DELETE went after the POST's answer
    else:
        assert rest < rtt / 2
