"""Fill prices and order rules of the simulated venue as pure functions (no market, no server):
``brokers.alpaca_sim.fills`` (BackBroker's prices) and ``brokers.alpaca_sim.validation`` (what
Alpaca refuses), one row per case."""

from __future__ import annotations

from typing import Any

import pytest

from brokers.alpaca_sim import fills, validation
from brokers.alpaca_sim.errors import ApiError
from brokers.alpaca_sim.models import OrderRequest, ReplaceRequest, SimOrder

# one bar: open, high, low, close
OP, HI, LO, CL = 100.0, 103.0, 97.0, 99.0


@pytest.mark.parametrize(("typ", "buy", "limit", "stop", "want"), [
    ("market", True, None, None, 100.0),
    ("limit", True, 100.0, None, 100.0),   # open at the limit: marketable
    ("limit", True, 99.5, None, None),     # open above a buy limit
    ("limit", False, 99.5, None, 100.0),   # open above a sell limit: fills at the open
    ("stop", False, None, 100.5, 100.0),   # sell stop above the open: triggered at the open
    ("stop", False, None, 99.0, None),     # sell stop below the open: not triggered
    ("stop", True, None, 99.0, 100.0),     # buy stop below the open: triggered at the open
    ("stop_limit", True, 100.5, 99.0, 100.0),  # triggered and marketable
    ("stop_limit", True, 99.5, 99.0, None),    # triggered, limit below the open
])
def test_open_price(typ: str, buy: bool, limit: float | None, stop: float | None,
                    want: float | None) -> None:
    px, _ = fills.open_price(typ, buy, OP, limit, stop, False)
    assert px == want


def test_stop_limit_stays_triggered_at_the_open() -> None:
    """A stop-limit triggered at the open but not marketable keeps its trigger for later."""
    assert fills.open_price("stop_limit", True, OP, 99.5, 99.0, False) == (None, True)
    assert fills.open_price("stop_limit", True, OP, 99.5, 120.0, True) == (None, True)


@pytest.mark.parametrize(("typ", "buy", "limit", "stop", "want"), [
    ("limit", True, 98.0, None, 98.0),     # low reaches a buy limit below the open
    ("limit", True, 101.0, None, 100.0),   # min(open, limit)
    ("limit", True, 96.0, None, None),     # low above the limit
    ("limit", False, 102.0, None, 102.0),  # high reaches a sell limit
    ("limit", False, 104.0, None, None),
    ("stop", False, None, 98.0, 98.0),     # sell stop hit by the low
    ("stop", False, None, 101.0, 100.0),   # min(open, stop)
    ("stop", True, None, 102.0, 102.0),    # buy stop hit by the high
    ("stop", True, None, 104.0, None),
    ("market", True, None, None, None),    # market orders fill at the open only
])
def test_close_price(typ: str, buy: bool, limit: float | None, stop: float | None,
                     want: float | None) -> None:
    px, _ = fills.close_price(typ, buy, OP, HI, LO, CL, limit, stop, False)
    assert px == want


@pytest.mark.parametrize(("buy", "stop", "limit", "want"), [
    (True, 102.0, 102.5, (102.0, True)),  # limit at/above the trigger: fills at the stop
    (True, 102.0, 99.5, (99.5, True)),    # open > close and limit >= close: at the limit
    (True, 102.0, 98.0, (None, True)),    # limit below the close: BackBroker cannot price it
    (False, 98.0, 97.5, (98.0, True)),    # sell: limit at/below the trigger
    (False, 98.0, 99.5, (None, True)),    # open > close: a sell limit above is not known hit
    (True, 104.0, 105.0, (None, False)),  # never triggered
])
def test_stop_limit_intrabar(buy: bool, stop: float, limit: float,
                             want: tuple[float | None, bool]) -> None:
    assert fills.stop_limit_intrabar(buy, OP, HI, LO, CL, stop, limit) == want


def test_water_mark_and_participation_cap() -> None:
    assert fills.water_mark(False, 100.0, 103.0) == 103.0  # a sell trails the high
    assert fills.water_mark(True, 100.0, 97.0) == 97.0     # a buy trails the low
    assert fills.water_mark(True, 100.0, 103.0) == 100.0
    assert fills.participation_cap(1000, 0.1, whole=True) == 100
    assert fills.participation_cap(1005, 0.1, whole=True) == 100       # whole shares
    assert fills.participation_cap(1005, 0.1, whole=False) == pytest.approx(100.5)


def req(typ: str = "market", side: str = "buy", tif: str = "day", **kw: Any) -> OrderRequest:
    kw.setdefault("qty", None if "notional" in kw else 10)
    return OrderRequest("TEST", side, typ, tif, **kw)


@pytest.mark.parametrize(("request_", "status", "message"), [
    (OrderRequest("NOPE", "buy", "market", "day", 1), 422, 'asset "NOPE" not found'),
    (req(order_class="bracket"), 422, "simple orders only"),
    (req(tif="opg"), 422, "time_in_force opg is not supported"),
    (req(qty=None), 422, "qty or notional is required"),
    (req(notional=100.0, qty=1), 422, "only one of qty or notional"),
    (req(qty=-1), 422, "qty must be > 0"),
    (req(notional=100.0, tif="gtc"), 422, "notional orders must be DAY market orders"),
    (req(qty=1.5, tif="gtc"), 422, "fractional orders must be DAY market or limit"),
    (req("limit"), 422, "limit_price is required for limit orders"),
    (req("market", limit_price=10.0), 422, "limit_price must not be given for market"),
    (req("stop_limit", limit_price=10.0), 422, "stop_price is required"),
    (req("limit", limit_price=-1.0), 422, "limit_price must be > 0"),
    (req("limit", limit_price=10.001), 422, "sub-penny increment"),
    (req("trailing_stop", trail_price=1.0, trail_percent=1.0), 422, "exactly one of trail"),
    (req("trailing_stop", trail_price=-1.0), 422, "trail must be > 0"),
    (req("limit", limit_price=10.0, trail_price=1.0), 422, "are for trailing_stop orders"),
    (req("stop", side="sell", stop_price=101.0), 422, "stop price must be less than"),
    (req("stop", stop_price=99.0), 422, "stop price must be greater than"),
    (req("market", extended_hours=True), 422, "extended hours order must be DAY or GTC limit"),
    (req("stop", tif="ioc", stop_price=101.0), 422, "ioc orders must be market or limit"),
    (req("trailing_stop", tif="ioc", trail_price=1.0), 422, "ioc orders must be market or lim"),
])
def test_validate_request_refuses(request_: OrderRequest, status: int, message: str) -> None:
    with pytest.raises(ApiError) as exc:
        validation.validate_request(request_, {"TEST"}, penny_increments=True,
                                    check_stop_price=True, last_price=lambda _s: 100.0)
    assert exc.value.status == status
    assert message in exc.value.message


@pytest.mark.parametrize("request_", [
    req(), req("limit", limit_price=99.99), req("limit", limit_price=0.1234),
    req("stop", side="sell", stop_price=99.0), req(notional=100.0),
    req("trailing_stop", tif="gtc", trail_percent=2.0), req(qty=0.5),
    req("limit", extended_hours=True, limit_price=10.0),
])
def test_validate_request_accepts(request_: OrderRequest) -> None:
    validation.validate_request(request_, {"TEST"}, penny_increments=True,
                                check_stop_price=True, last_price=lambda _s: 100.0)


def test_rules_that_read_the_account() -> None:
    sell = req(side="sell", qty=10)
    validation.check_sell_qty(sell, have=10, held=0, price=None, related=[])
    with pytest.raises(ApiError) as exc:
        validation.check_sell_qty(sell, have=10, held=5, price=None, related=["a"])
    assert exc.value.status == 403 and "available: 5" in exc.value.message
    validation.check_buying_power(100.0, 100.0)
    with pytest.raises(ApiError, match="insufficient buying power"):
        validation.check_buying_power(100.02, 100.0)
    with pytest.raises(ApiError, match="must be unique"):
        validation.check_client_order_id("x", {"x"})
    with pytest.raises(ApiError, match="128"):
        validation.check_client_order_id("x" * 129, set())


def test_replace_changes() -> None:
    old = SimOrder("id", "cid", "TEST", "buy", "limit", "day", 10, None, 10.0, None, None, None,
                   False, "new", 0, 0, None, "buy_to_open")
    assert validation.replace_changes(old, ReplaceRequest(qty=10, limit_price=10.0)) == {}
    assert validation.replace_changes(old, ReplaceRequest(limit_price=11.0)) == {
        "limit_price": 11.0}
    with pytest.raises(ApiError, match="stop_price must not be given"):
        validation.replace_changes(old, ReplaceRequest(stop_price=9.0))
