"""The Alpaca <-> Backtrader tables of ``brokers.alpaca.parsing``: one test per row."""

from __future__ import annotations

from decimal import Decimal

import backtrader as bt
import msgpack
import pytest
from alpaca.trading.enums import OrderSide, OrderStatus, OrderType, TimeInForce, TradeEvent

from brokers.alpaca import parsing
from brokers.alpaca.parsing import (
    ORDER_STATUS,
    TIME_IN_FORCE,
    TRADE_EVENTS,
    EventKind,
    Life,
    bar_from_stream,
    bt_status,
    choose_time_in_force,
)

# (status, life, terminal, open, bt status with nothing filled, bt status after a partial fill)
STATUS_ROWS = [
    (OrderStatus.PENDING_NEW, Life.SUBMITTED, False, True, bt.Order.Submitted, bt.Order.Submitted),
    (OrderStatus.PENDING_REVIEW, Life.SUBMITTED, False, True, bt.Order.Submitted,
     bt.Order.Submitted),
    (OrderStatus.ACCEPTED, Life.WORKING, False, True, bt.Order.Accepted, bt.Order.Partial),
    (OrderStatus.NEW, Life.WORKING, False, True, bt.Order.Accepted, bt.Order.Partial),
    (OrderStatus.ACCEPTED_FOR_BIDDING, Life.WORKING, False, True, bt.Order.Accepted,
     bt.Order.Partial),
    (OrderStatus.HELD, Life.WORKING, False, True, bt.Order.Accepted, bt.Order.Partial),
    (OrderStatus.PARTIALLY_FILLED, Life.WORKING, False, True, bt.Order.Accepted,
     bt.Order.Partial),
    (OrderStatus.PENDING_CANCEL, Life.WORKING, False, True, bt.Order.Accepted,
     bt.Order.Partial),
    (OrderStatus.PENDING_REPLACE, Life.WORKING, False, True, bt.Order.Accepted,
     bt.Order.Partial),
    (OrderStatus.STOPPED, Life.WORKING, False, True, bt.Order.Accepted, bt.Order.Partial),
    (OrderStatus.SUSPENDED, Life.WORKING, False, True, bt.Order.Accepted, bt.Order.Partial),
    (OrderStatus.CALCULATED, Life.WORKING, False, True, bt.Order.Accepted, bt.Order.Partial),
    (OrderStatus.DONE_FOR_DAY, Life.WORKING, False, True, bt.Order.Accepted, bt.Order.Partial),
    (OrderStatus.FILLED, Life.FILLED, True, False, bt.Order.Completed, bt.Order.Completed),
    (OrderStatus.CANCELED, Life.CANCELED, True, False, bt.Order.Canceled, bt.Order.Canceled),
    (OrderStatus.EXPIRED, Life.EXPIRED, True, False, bt.Order.Expired, bt.Order.Expired),
    (OrderStatus.REPLACED, Life.REPLACED, True, False, bt.Order.Canceled, bt.Order.Canceled),
    (OrderStatus.REJECTED, Life.REJECTED, True, False, bt.Order.Rejected, bt.Order.Rejected),
]


def test_status_table_is_exhaustive() -> None:
    """Every one of alpaca-py's 18 OrderStatus values has exactly one row."""
    assert len(OrderStatus) == 18
    assert set(ORDER_STATUS) == set(OrderStatus)
    assert {row[0] for row in STATUS_ROWS} == set(OrderStatus)


@pytest.mark.parametrize(("status", "life", "terminal", "is_open", "bt_none", "bt_partial"),
                         STATUS_ROWS, ids=[r[0].value for r in STATUS_ROWS])
def test_status_row(status: OrderStatus, life: Life, terminal: bool, is_open: bool,
                    bt_none: int, bt_partial: int) -> None:
    rule = ORDER_STATUS[status]
    assert rule.life is life
    assert rule.terminal is terminal
    assert rule.open is is_open
    assert bt_status(status, Decimal(0)) == bt_none
    assert bt_status(status.value, Decimal(3)) == bt_partial


def test_canceled_after_partial_fill_is_canceled_not_rejected() -> None:
    """Regression (alpaca-backtrader-api): canceled/replaced became "rejected"."""
    assert bt_status("canceled", Decimal(5)) == bt.Order.Canceled
    assert bt_status("replaced", Decimal(0)) == bt.Order.Canceled


def test_unknown_status_is_a_named_error() -> None:
    with pytest.raises(ValueError, match="unknown Alpaca order status 'teleported'"):
        parsing.status_rule("teleported")


EVENT_ROWS = [
    ("new", EventKind.STATUS), ("accepted", EventKind.STATUS),
    ("pending_new", EventKind.STATUS), ("fill", EventKind.FILL),
    ("partial_fill", EventKind.FILL), ("canceled", EventKind.STATUS),
    ("expired", EventKind.STATUS), ("rejected", EventKind.STATUS),
    ("replaced", EventKind.STATUS), ("pending_cancel", EventKind.STATUS),
    ("pending_replace", EventKind.STATUS), ("restated", EventKind.STATUS),
    ("done_for_day", EventKind.STATUS), ("stopped", EventKind.STATUS),
    ("calculated", EventKind.STATUS), ("suspended", EventKind.STATUS),
    ("held", EventKind.STATUS), ("order_cancel_rejected", EventKind.CANCEL_REJECTED),
    ("order_replace_rejected", EventKind.REPLACE_REJECTED),
]


def test_event_table_covers_the_sdk_enum() -> None:
    assert {e.value for e in TradeEvent} <= set(TRADE_EVENTS)
    assert {e for e, _ in EVENT_ROWS} == set(TRADE_EVENTS)


@pytest.mark.parametrize(("event", "kind"), EVENT_ROWS, ids=[e for e, _ in EVENT_ROWS])
def test_event_row(event: str, kind: EventKind) -> None:
    assert parsing.event_kind(event) is kind


def test_unknown_event_is_a_status_update() -> None:
    assert parsing.event_kind("something_new") is EventKind.STATUS


@pytest.mark.parametrize(("bt_side", "side"), [(bt.Order.Buy, OrderSide.BUY),
                                               (bt.Order.Sell, OrderSide.SELL)])
def test_side_row(bt_side: int, side: OrderSide) -> None:
    assert parsing.SIDES[bt_side] is side
    assert parsing.SIDES_BACK[side] == bt_side


@pytest.mark.parametrize(("exectype", "otype"), [
    (bt.Order.Market, OrderType.MARKET), (bt.Order.Limit, OrderType.LIMIT),
    (bt.Order.Stop, OrderType.STOP), (bt.Order.StopLimit, OrderType.STOP_LIMIT),
    (bt.Order.StopTrail, OrderType.TRAILING_STOP)])
def test_order_type_row(exectype: int, otype: OrderType) -> None:
    assert parsing.ORDER_TYPES[exectype] is otype
    assert parsing.ORDER_TYPES_BACK[otype] == exectype


def test_close_and_historical_have_no_alpaca_type() -> None:
    assert bt.Order.Close not in parsing.ORDER_TYPES
    assert bt.Order.Historical not in parsing.ORDER_TYPES


TIF_ROWS = [(TimeInForce.DAY, True), (TimeInForce.GTC, True), (TimeInForce.OPG, False),
            (TimeInForce.CLS, False), (TimeInForce.IOC, False), (TimeInForce.FOK, False)]


def test_tif_table_is_exhaustive() -> None:
    assert set(TIME_IN_FORCE) == set(TimeInForce)


@pytest.mark.parametrize(("tif", "used"), TIF_ROWS, ids=[t.value for t, _ in TIF_ROWS])
def test_tif_row(tif: TimeInForce, used: bool) -> None:
    assert TIME_IN_FORCE[tif].used is used


@pytest.mark.parametrize(("exectype", "purpose", "tif"), [
    (bt.Order.Stop, "stop", TimeInForce.GTC), (bt.Order.Limit, "entry", TimeInForce.DAY),
    (bt.Order.Market, "fallback", TimeInForce.DAY), (bt.Order.Market, "exit", TimeInForce.DAY)])
def test_chosen_tif(exectype: int, purpose: str, tif: TimeInForce) -> None:
    """The protective stop is GTC (it must survive the night); everything else DAY."""
    assert choose_time_in_force(exectype, purpose) is tif


def test_bar_from_stream_reads_msgpack_timestamps() -> None:
    raw = msgpack.packb([{"T": "b", "S": "ACME", "o": 1.0, "h": 2.0, "l": 0.5, "c": 1.5,
                          "v": 100, "t": msgpack.Timestamp(1759498200, 0), "n": 3,
                          "vw": 1.2}], datetime=False)
    msg = msgpack.unpackb(raw, timestamp=3)[0]
    bar = bar_from_stream(msg)
    assert bar.symbol == "ACME"
    assert bar.ts.isoformat() == "2025-10-03T13:30:00+00:00"
    assert (bar.open, bar.high, bar.low, bar.close, bar.volume) == (1.0, 2.0, 0.5, 1.5, 100.0)
    assert bar.valid()


def test_to_decimal() -> None:
    assert parsing.to_decimal("150.25") == Decimal("150.25")
    assert parsing.to_decimal(10.0) == Decimal("10.0")
    assert parsing.to_decimal(None) is None
    assert parsing.to_decimal(float("nan")) is None


@pytest.mark.parametrize("row", parsing.STOP_THROUGH_MARKET_REFUSALS)
def test_stop_through_market_refusal_row(row: str) -> None:
    """Each row is recognised inside the client's rejection text (case aside); other
    refusals (buying power, a bad price) are not exits."""
    assert parsing.stop_through_market_refusal(
        f"order ratchet-X-stop1 rejected: 422 {{'message': '{row.upper()}'}}")
    assert not parsing.stop_through_market_refusal("403 insufficient buying power")
    assert not parsing.stop_through_market_refusal("stop price must be greater than current "
                                                   "price")
