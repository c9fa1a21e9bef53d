"""The matching engine and the cash account, without HTTP: BackBroker's fill prices, Alpaca's
order lifecycle, and money that always adds up."""

from __future__ import annotations

import pytest

from brokers.alpaca_sim.errors import ApiError
from brokers.alpaca_sim.market import MarketOptions
from brokers.alpaca_sim.models import OrderRequest, ReplaceRequest
from tests.sim.conftest import Desk, make_book, ny

DAY = "2025-10-06"  # a Monday
# o, h, l, c, v per minute; each bar is distinct so every fill price says which bar it used
BARS = [
    ("09:30", 100.00, 100.50, 99.50, 100.20, 1000),
    ("09:31", 100.30, 101.00, 100.10, 100.80, 1000),
    ("09:32", 100.90, 101.20, 99.00, 99.40, 1000),
    ("09:33", 99.50, 99.80, 98.00, 98.20, 1000),
    ("09:34", 97.00, 97.50, 96.50, 97.20, 1000),
    ("09:35", 97.30, 102.00, 97.10, 101.50, 1000),
]


@pytest.fixture
def book():  # type: ignore[no-untyped-def]
    return make_book({"TEST": BARS, "OTHER": BARS})


def order(side: str = "buy", typ: str = "market", qty: float = 10, tif: str = "day",
          **kw: object) -> OrderRequest:
    return OrderRequest("TEST", side, typ, tif, qty=qty, **kw)  # type: ignore[arg-type]


def desk_with_position(book, qty: float = 10) -> Desk:  # type: ignore[no-untyped-def]
    d = Desk(book, ny(DAY, "09:29"))
    d.market.submit(order(qty=qty))
    d.at(ny(DAY, "09:30"))
    assert d.market.positions["TEST"].qty == qty
    return d


def test_market_order_fills_at_open_of_next_bar_that_starts_after_submission(book) -> None:
    d = Desk(book, ny(DAY, "09:30") + 20 * 10**9)  # 09:30:20, inside bar 09:30
    o = d.market.submit(order())
    d.at(ny(DAY, "09:31"))
    assert o.status == "filled"
    assert o.filled_avg_price == 100.30  # open of 09:31, not of 09:30
    assert o.filled_at == ny(DAY, "09:31")
    assert d.kinds(o.id) == ["new", "fill"]


def test_market_order_at_a_bar_start_fills_at_that_open(book) -> None:
    d = Desk(book, ny(DAY, "09:31"))
    o = d.market.submit(order())
    assert o.status == "new"  # acknowledged first; the fill follows right after
    d.market.settle()
    assert (o.status, o.filled_avg_price) == ("filled", 100.30)


def test_order_before_the_open_is_accepted_then_routed_and_filled_at_the_open(book) -> None:
    d = Desk(book, ny(DAY, "08:00"))
    o = d.market.submit(order())
    assert o.status == "accepted"
    d.at(ny(DAY, "09:30"))
    assert d.kinds(o.id) == ["accepted", "new", "fill"]
    assert o.filled_avg_price == 100.00


@pytest.mark.parametrize(("side", "limit", "fill_at", "price"), [
    ("buy", 100.40, "09:31", 100.30),   # open 100.30 <= limit: fills at the open, at bar start
    ("buy", 99.20, "09:33", 99.20),     # 09:32 low 99.00 <= 99.20 < open: at the limit, bar end
    ("sell", 101.10, "09:33", 101.10),  # 09:32 high 101.20 >= limit > open 100.90
    ("sell", 100.20, "09:31", 100.30),  # open 100.30 >= limit: at the open
])
def test_limit_fills_like_backbroker(book, side: str, limit: float, fill_at: str,
                                     price: float) -> None:
    d = desk_with_position(book) if side == "sell" else Desk(book, ny(DAY, "09:30") + 10**9)
    if side == "sell":
        d.at(ny(DAY, "09:30") + 10**9)
    o = d.market.submit(order(side, "limit", limit_price=limit))
    d.at(ny(DAY, "09:36"))
    assert o.status == "filled"
    assert o.filled_avg_price == pytest.approx(price)
    assert o.filled_at == ny(DAY, fill_at)


@pytest.mark.parametrize(("stop", "price", "fill_at"), [
    (99.10, 99.10, "09:33"),  # touched inside 09:32 (low 99.00): at the stop
    (97.90, 97.00, "09:34"),  # 09:34 opens at 97.00 below the stop: at the open
])
def test_sell_stop_triggers_when_touched_and_fills_at_min_open_stop(book, stop: float,
                                                                    price: float,
                                                                    fill_at: str) -> None:
    d = desk_with_position(book)
    d.at(ny(DAY, "09:31") + 10**9)
    o = d.market.submit(order("sell", "stop", stop_price=stop, tif="gtc"))
    if stop == 97.90:
        d.at(ny(DAY, "09:33"))
        assert o.status == "new"  # 09:33 bar's low 98.00 has not reached 97.90 yet
    d.at(ny(DAY, "09:36"))
    assert (o.status, o.filled_avg_price, o.filled_at) == ("filled", price, ny(DAY, fill_at))


def test_buy_stop_mirror(book) -> None:
    d = Desk(book, ny(DAY, "09:33") + 10**9)
    o = d.market.submit(order("buy", "stop", stop_price=101.00))
    d.at(ny(DAY, "09:36"))
    assert (o.filled_avg_price, o.filled_at) == (101.00, ny(DAY, "09:36"))  # 09:35 high 102


def test_stop_limit_sell_triggers_then_fills_at_stop_when_limit_is_below(book) -> None:
    d = desk_with_position(book)
    d.at(ny(DAY, "09:31") + 10**9)
    o = d.market.submit(order("sell", "stop_limit", stop_price=99.50, limit_price=99.00))
    d.at(ny(DAY, "09:33"))
    assert (o.status, o.filled_avg_price) == ("filled", 99.50)


def test_stop_limit_triggered_but_limit_not_reached_rests(book) -> None:
    d = desk_with_position(book)
    d.at(ny(DAY, "09:32") + 10**9)
    # Triggered by 09:33's low (98.00 <= 99.0); limit 99.70 above the 09:33 close: rests.
    o = d.market.submit(order("sell", "stop_limit", stop_price=99.00, limit_price=99.70,
                              tif="gtc"))
    d.at(ny(DAY, "09:35"))
    assert (o.status, o.triggered) == ("new", True)
    d.at(ny(DAY, "09:36"))  # 09:35 high 102.00 >= 99.70: a resting sell limit fills there
    assert (o.status, o.filled_avg_price) == ("filled", 99.70)


def test_trailing_stop_tracks_the_high_water_mark(book) -> None:
    d = desk_with_position(book)
    d.at(ny(DAY, "09:31"))
    o = d.market.submit(order("sell", "trailing_stop", trail_price=1.00, tif="gtc"))
    d.market.settle()
    assert o.hwm == 100.30  # last price at submission (09:31 open)
    d.at(ny(DAY, "09:32"))
    assert o.hwm == 101.00 and o.trail_stop() == 100.00  # 09:31 high
    d.at(ny(DAY, "09:33"))  # 09:32 opens 100.90 (hwm 101.00, stop 100.00), low 99.00
    assert (o.status, o.filled_avg_price) == ("filled", 100.00)


def test_partial_fills_capped_by_volume_participation(book) -> None:
    d = Desk(book, ny(DAY, "09:29"), volume_participation=0.1)  # 100 shares per 1000 bar
    o = d.market.submit(order(qty=250))
    d.at(ny(DAY, "09:32"))
    assert d.kinds(o.id) == ["accepted", "new", "partial_fill", "partial_fill", "fill"]
    assert [f.qty for f in o.fills] == [100, 100, 50]
    assert [f.price for f in o.fills] == [100.00, 100.30, 100.90]  # each bar's open
    fills = [e for e in d.events if e.event in ("partial_fill", "fill")]
    assert [e.position_qty for e in fills] == [100, 200, 250]
    assert o.filled_avg_price == pytest.approx((100 * 100.0 + 100 * 100.3 + 50 * 100.9) / 250)


def test_day_order_expires_at_the_close(book) -> None:
    d = Desk(book, ny(DAY, "09:36"))
    o = d.market.submit(order("buy", "limit", limit_price=50.00))
    d.at(ny(DAY, "15:59"))
    assert o.status == "new"
    d.at(ny(DAY, "16:00"))
    assert o.status == "expired" and o.expired_at == ny(DAY, "16:00")
    assert d.kinds(o.id) == ["new", "expired"]


def test_gtc_order_survives_the_close(book) -> None:
    d = Desk(book, ny(DAY, "09:36"))
    o = d.market.submit(order("buy", "limit", limit_price=50.00, tif="gtc"))
    d.at(ny("2025-10-07", "09:00"))
    assert o.status == "new"


def test_ioc_fills_what_it_can_and_cancels_the_rest(book) -> None:
    d = Desk(book, ny(DAY, "09:29"), volume_participation=0.1)
    o = d.market.submit(order(qty=250, tif="ioc"))
    d.at(ny(DAY, "09:31"))
    assert (o.status, o.filled_qty) == ("canceled", 100)
    assert d.kinds(o.id) == ["accepted", "new", "partial_fill", "canceled"]


def test_fok_that_cannot_fill_completely_is_canceled_unfilled(book) -> None:
    d = Desk(book, ny(DAY, "09:29"), volume_participation=0.1)
    o = d.market.submit(order(qty=250, tif="fok"))
    d.at(ny(DAY, "09:31"))
    assert (o.status, o.filled_qty) == ("canceled", 0)
    assert "TEST" not in d.market.positions


def test_ioc_limit_not_marketable_at_the_open_is_canceled(book) -> None:
    d = Desk(book, ny(DAY, "09:29"))
    o = d.market.submit(order("buy", "limit", limit_price=99.90, tif="ioc"))
    d.at(ny(DAY, "09:31"))  # 09:30 low 99.50 would reach it, but ioc lives only at the open
    assert (o.status, o.filled_qty) == ("canceled", 0)


def test_extended_hours_limit_trades_premarket_regular_orders_wait() -> None:
    book = make_book({"TEST": [("08:00", 50.0, 50.5, 49.5, 50.0, 1000),
                               ("09:30", 51.0, 51.5, 50.5, 51.0, 1000)]})
    d = Desk(book, ny(DAY, "07:59"))
    ext = d.market.submit(OrderRequest("TEST", "buy", "limit", "day", qty=1, limit_price=50.10,
                                       extended_hours=True))
    reg = d.market.submit(OrderRequest("TEST", "buy", "limit", "day", qty=1, limit_price=52.00))
    assert (ext.status, reg.status) == ("new", "accepted")
    d.at(ny(DAY, "08:01"))
    assert (ext.status, ext.filled_avg_price) == ("filled", 50.0)
    assert reg.status == "accepted"
    d.at(ny(DAY, "09:30"))
    assert (reg.status, reg.filled_avg_price) == ("filled", 51.0)


def test_extended_hours_requires_a_day_or_gtc_limit(book) -> None:
    d = Desk(book, ny(DAY, "09:36"))
    with pytest.raises(ApiError) as exc:
        d.market.submit(order(extended_hours=True))
    assert exc.value.status == 422


def test_no_bar_in_a_minute_means_no_fill_then() -> None:
    book = make_book({"TEST": [("09:30", 10.0, 10.5, 9.5, 10.0, 100),
                               ("09:40", 11.0, 11.5, 10.5, 11.0, 100)]})
    d = Desk(book, ny(DAY, "09:31"))
    o = d.market.submit(OrderRequest("TEST", "buy", "market", "day", qty=1))
    d.at(ny(DAY, "09:39"))
    assert o.status == "new"
    d.at(ny(DAY, "09:40"))
    assert o.filled_avg_price == 11.0


def test_buying_power_reserves_open_buys_and_refuses_beyond_it(book) -> None:
    d = Desk(book, ny(DAY, "09:36"), cash=10_000.0)
    d.market.submit(order("buy", "limit", qty=60, limit_price=90.00))  # reserves 5400
    assert d.market.account_state().buying_power == pytest.approx(4600.0)
    with pytest.raises(ApiError) as exc:
        d.market.submit(order("buy", "limit", qty=60, limit_price=90.00))
    assert exc.value.status == 403
    assert exc.value.body() == {"buying_power": "4600", "cost_basis": "5400", "code": 40310000,
                                "message": "insufficient buying power"}


def test_selling_more_than_available_is_refused_no_shorting(book) -> None:
    d = desk_with_position(book, qty=10)
    d.market.submit(order("sell", "stop", qty=10, stop_price=90.00, tif="gtc"))
    with pytest.raises(ApiError) as exc:
        d.market.submit(order("sell", qty=1))
    body = exc.value.body()
    assert exc.value.status == 403
    assert (body["available"], body["existing_qty"], body["held_for_orders"]) == ("0", "10", "10")
    assert body["message"] == "insufficient qty available for order (requested: 1, available: 0)"
    with pytest.raises(ApiError):
        d.market.submit(OrderRequest("OTHER", "sell", "market", "day", qty=1))


def test_sub_penny_prices_are_refused(book) -> None:
    d = Desk(book, ny(DAY, "09:36"))
    with pytest.raises(ApiError) as exc:
        d.market.submit(order("buy", "limit", limit_price=99.123))
    assert exc.value.status == 422
    assert exc.value.message == ("invalid limit_price 99.123. sub-penny increment does not "
                                 "fulfill minimum pricing criteria")


def test_stop_on_the_wrong_side_of_the_market_is_refused(book) -> None:
    d = Desk(book, ny(DAY, "09:36"))  # last trade: 09:35 close 101.50
    with pytest.raises(ApiError) as exc:
        d.market.submit(order("buy", "stop", stop_price=100.00))
    assert exc.value.status == 422 and exc.value.code == 42210000
    assert exc.value.body()["market_price"] == "101.5"


def test_replace_creates_a_new_order_and_retires_the_old(book) -> None:
    d = desk_with_position(book)
    d.at(ny(DAY, "09:31") + 10**9)
    old = d.market.submit(order("sell", "stop", stop_price=95.00, tif="gtc",
                                client_order_id="stop-1"))
    new = d.market.replace(old.id, ReplaceRequest(stop_price=96.00, client_order_id="stop-2"))
    assert new.id != old.id and new.replaces == old.id
    assert (old.status, old.replaced_by) == ("replaced", new.id)
    assert d.kinds(old.id)[-1] == "replaced" and d.kinds(new.id) == ["new"]
    with pytest.raises(ApiError) as exc:
        d.market.replace(new.id, ReplaceRequest(stop_price=96.00))
    assert exc.value.status == 403  # "order parameters are not changed"
    with pytest.raises(ApiError) as exc:
        d.market.replace(old.id, ReplaceRequest(stop_price=97.00))
    assert exc.value.status == 422


def test_cancel_terminal_order_is_422(book) -> None:
    d = desk_with_position(book)
    filled = next(iter(d.market.orders.values()))
    with pytest.raises(ApiError) as exc:
        d.market.cancel(filled.id)
    assert (exc.value.status, exc.value.message) == (422, 'order is already in "filled" state')


def test_notional_order_is_sized_at_its_fill(book) -> None:
    d = Desk(book, ny(DAY, "09:29"))
    o = d.market.submit(OrderRequest("TEST", "buy", "market", "day", notional=1000.0))
    d.at(ny(DAY, "09:30"))
    assert o.filled_qty == pytest.approx(10.0)  # 1000 / open 100.00


def test_cash_positions_and_orders_stay_consistent(book) -> None:
    d = Desk(book, ny(DAY, "09:29"), volume_participation=0.05)
    m = d.market
    m.submit(order(qty=120))
    m.submit(OrderRequest("OTHER", "buy", "market", "day", qty=30))
    d.at(ny(DAY, "09:33"))
    m.submit(order("sell", "limit", qty=40, limit_price=97.10))
    d.at(ny(DAY, "09:36"))
    fills = [(e.order["side"], e.qty, e.price) for e in d.events if e.qty is not None]
    spent = sum(q * p for s, q, p in fills if s == "buy")
    got = sum(q * p for s, q, p in fills if s == "sell")
    assert m.cash == pytest.approx(100_000.0 - spent + got)
    by_order = {}
    for o in m.orders.values():
        by_order[o.id] = sum(f.qty for f in o.fills)
        assert o.filled_qty == pytest.approx(by_order[o.id])
    held = {s: p.qty for s, p in m.positions.items()}
    bought = sum(q for s, q, _ in fills if s == "buy")
    sold = sum(q for s, q, _ in fills if s == "sell")
    assert sum(held.values()) == pytest.approx(bought - sold)
    st = m.account_state()
    assert st.equity == pytest.approx(st.cash + sum(p.qty * m.price(s)
                                                    for s, p in m.positions.items()))


def test_fill_grace_lets_a_late_order_use_the_bar_that_just_opened(book) -> None:
    strict = Desk(book, ny(DAY, "09:31") + 3 * 10**9)
    late = strict.market.submit(order())
    strict.at(ny(DAY, "09:33"))
    graced = Desk(book, ny(DAY, "09:31") + 3 * 10**9, fill_grace_seconds=5)
    o = graced.market.submit(order())
    graced.market.settle()
    assert (late.filled_avg_price, o.filled_avg_price) == (100.90, 100.30)


@pytest.mark.parametrize("kw", [{"time_in_force": "opg"}, {"order_class": "bracket"},
                                {"qty": 1.5, "time_in_force": "gtc"}])
def test_unsupported_or_invalid_combinations_are_422(book, kw: dict[str, object]) -> None:
    d = Desk(book, ny(DAY, "09:36"))
    base = {"symbol": "TEST", "side": "buy", "type": "market", "time_in_force": "day",
            "qty": 1.0}
    with pytest.raises(ApiError) as exc:
        d.market.submit(OrderRequest(**{**base, **kw}))  # type: ignore[arg-type]
    assert exc.value.status == 422


def test_order_arriving_during_a_bar_may_fill_against_it_by_default(book) -> None:
    """Regression (issue 11.9): at --speed 60 an order sent right after bar k-1 closed
    arrives during bar k and could only fill from bar k+1, so every limit entry timed out
    into a market fallback (40% parity). By default it is eligible for bar k, as the
    backtest assumes: a market order takes bar k's open, a limit trades when bar k reaches
    it."""
    d = Desk(book, ny(DAY, "09:31") + 700 * 10**6, fill_current_bar=True)  # 0.7 s into 09:31
    m = d.market.submit(order())
    lim = d.market.submit(order(typ="limit", limit_price=100.4))
    d.market.settle()
    assert (m.status, m.filled_avg_price) == ("filled", 100.30)  # bar 09:31's open
    assert (lim.status, lim.filled_avg_price) == ("filled", 100.30)
    strict = Desk(book, ny(DAY, "09:31") + 700 * 10**6, fill_current_bar=False)
    late = strict.market.submit(order())
    strict.market.settle()
    assert late.status == "new"
    strict.at(ny(DAY, "09:33"))
    assert late.filled_avg_price == 100.90  # the open of 09:32, the next bar
    assert MarketOptions().fill_current_bar is True
