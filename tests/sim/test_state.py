"""The loopback server across restarts: random order ids, ``--state FILE`` (issue 11.3)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, TimeInForce
from alpaca.trading.requests import MarketOrderRequest, StopOrderRequest

from brokers.alpaca_sim.bars import BarBook
from brokers.alpaca_sim.server import SimStateError
from brokers.alpaca_sim.testing import SimServer


def _client(sim: SimServer) -> TradingClient:
    client = TradingClient(sim.key, sim.secret, paper=True, url_override=sim.base_url)
    client._retry_wait = 0
    return client


def _buy(client: TradingClient, cid: str) -> str:
    order = client.submit_order(MarketOrderRequest(symbol="ACME", qty=5, side=OrderSide.BUY,
                                                   time_in_force=TimeInForce.DAY,
                                                   client_order_id=cid))
    return str(order.id)


def test_order_ids_are_never_reused_by_a_restarted_server(book: BarBook) -> None:
    """Regression (issue 11.3): ids came from a generator seeded with 0, so a restarted
    server handed out the ids of the previous run again (the bot's journal then crashed on
    its UNIQUE alpaca_id)."""
    ids = []
    for _ in range(2):
        with SimServer(book=book) as sim:
            ids.append(_buy(_client(sim), "same-cid"))
    assert ids[0] != ids[1]


def test_state_file_keeps_account_orders_and_positions_across_a_restart(
        book: BarBook, tmp_path: Path) -> None:
    """Regression (issue 11.3): a restarted alpaca-sim forgot every order and position;
    with ``state_path`` it resumes like Alpaca (replay time included)."""
    path = tmp_path / "sim-state.json"
    with SimServer(book=book, state_path=path) as sim:
        client = _client(sim)
        buy_id = _buy(client, "entry-1")
        sim.advance(minutes=2)
        stop = client.submit_order(StopOrderRequest(
            symbol="ACME", qty=5, side=OrderSide.SELL, time_in_force=TimeInForce.GTC,
            stop_price=1.00, client_order_id="stop-1"))
        sim.advance(minutes=1)
        before = (client.get_account().cash, sim.now(), float(client.get_open_position("ACME").qty))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list(tmp_path.glob("*.tmp"))
    with SimServer(book=book, state_path=path) as sim:
        client = _client(sim)
        assert (client.get_account().cash, sim.now(),
                float(client.get_open_position("ACME").qty)) == before
        assert client.get_order_by_client_id("entry-1").id.hex == buy_id.replace("-", "")
        assert [str(o.id) for o in client.get_orders()] == [str(stop.id)]  # the stop still rests
        with pytest.raises(APIError) as exc:  # client order ids stay unique
            _buy(client, "entry-1")
        assert exc.value.status_code == 422
        sim.advance(minutes=1)  # the market goes on from where it was
        assert _buy(client, "entry-2") not in (buy_id, str(stop.id))


def test_unreadable_state_file_is_refused_not_overwritten(book: BarBook, tmp_path: Path) -> None:
    path = tmp_path / "sim-state.json"
    path.write_text('{"schema": 1, "processed_until": ')
    with pytest.raises(SimStateError, match="not a readable alpaca-sim state"):
        SimServer(book=book, state_path=path)
    assert path.read_text() == '{"schema": 1, "processed_until": '
    path.write_text(json.dumps({"schema": 99, "processed_until": 1}))
    with pytest.raises(SimStateError, match="not an alpaca-sim state"):
        SimServer(book=book, state_path=path)
