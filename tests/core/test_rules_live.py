"""The rules a live broker applies on its own (issue 14, point 1), pinned one case each.

They used to live inside ``brokers/alpaca/broker.py`` (``_stop_level``, ``_place_missing_stop``,
``_resize_stop``, ``_fallback_cid``, ``_purpose_of``) where no test named them; the id grammar's
``r`` suffix was unknown to ``parse_client_order_id``.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from strategies import rules
from strategies.rules import OrderId, Purpose

T = datetime(2025, 10, 3, 13, 31, tzinfo=UTC)


# ------------------------------------------------------------------- the client order id grammar

@pytest.mark.parametrize(("cid", "parsed"), [
    ("ratchet-ACME-20251003T133100-entry", OrderId("ratchet", "ACME", T, Purpose.ENTRY)),
    ("ratchet-ACME-20251003T133100-fallback", OrderId("ratchet", "ACME", T, Purpose.FALLBACK)),
    ("ratchet-ACME-20251003T133100-exit", OrderId("ratchet", "ACME", T, Purpose.EXIT)),
    ("ratchet-ACME-20251003T133100-stop3", OrderId("ratchet", "ACME", T, Purpose.STOP, 3)),
    # a broker-made stop: 50 past the saved stop number
    ("ratchet-ACME-20251003T133100-stop52", OrderId("ratchet", "ACME", T, Purpose.STOP, 52)),
    # an order sent without an id: numbered with its Backtrader ref
    ("ratchet-ACME-20251003T133100-exit17", OrderId("ratchet", "ACME", T, Purpose.EXIT, 17)),
    # a stop resized by a reconciliation, once and twice
    ("ratchet-ACME-20251003T133100-stop3r", OrderId("ratchet", "ACME", T, Purpose.STOP, 3, 1)),
    ("ratchet-ACME-20251003T133100-stop51rr",
     OrderId("ratchet", "ACME", T, Purpose.STOP, 51, 2)),
    ("s1-BRK.B-20251003T133100-stopr", OrderId("s1", "BRK.B", T, Purpose.STOP, 0, 1)),
])
def test_every_id_form_parses_and_builds_back(cid: str, parsed: OrderId) -> None:
    """Regression: ``parse_client_order_id`` refused the ``r`` suffix of a resized stop (the
    broker's ``_purpose_of`` guessed the purpose from the tail instead)."""
    assert rules.parse_order_id(cid) == parsed
    assert str(parsed) == cid
    assert rules.parse_client_order_id(cid) == (parsed.strategy_id, parsed.symbol, T,
                                                parsed.purpose)
    assert rules.purpose_of(cid) == parsed.purpose.value
    assert rules.is_ours(cid, parsed.strategy_id)


@pytest.mark.parametrize("cid", [
    "5680c4bc-9ac1-4a12-a44c-df427ba53032",  # Alpaca's own uuid ids
    "ratchet-ACME-20251003T133100-stopx",
    "ratchet-ACME-2025-10-03-stop",
    "ratchet--20251003T133100-stop",
    "ratchet-ACME-20251003T133100-rstop",
])
def test_other_ids_do_not_parse(cid: str) -> None:
    assert rules.parse_order_id(cid) is None
    assert rules.parse_client_order_id(cid) is None


def test_purpose_of_an_id_cut_short() -> None:
    """An id too long to keep whole when resized still names its purpose (journal rows)."""
    assert rules.purpose_of("ratchet-ACME-xx-stop12rr") == "stop"
    assert rules.purpose_of("") == ""
    assert not rules.is_ours("other-ACME-20251003T133100-stop", "ratchet")


def test_broker_stop_numbers_clear_the_strategys() -> None:
    """The broker's own stops are numbered 50 past the Strategy's saved stop number, +1 for
    each further one it placed for the symbol in this run."""
    assert rules.BROKER_STOP_SEQ_BASE == 50
    assert rules.broker_stop_seq(0, 0) == 50
    assert rules.broker_stop_seq(3, 0) == 53
    assert rules.broker_stop_seq(3, 2) == 55


def test_unnamed_order_ids_come_from_the_bar_and_the_ref() -> None:
    """An order sent without an id: decision bar, ``entry`` for a buy / ``exit`` for a sell
    unless a purpose is given, numbered with its ref (a restart rebuilds the same id)."""
    assert rules.unnamed_order_id("s", "acme", T, "", True, 7) == "s-ACME-20251003T133100-entry7"
    assert rules.unnamed_order_id("s", "ACME", T, "", False, 8) == "s-ACME-20251003T133100-exit8"
    assert rules.unnamed_order_id("s", "ACME", T, "stop", False, 9) == \
        "s-ACME-20251003T133100-stop9"


def test_resized_id_appends_r_and_stays_within_128() -> None:
    cid = "ratchet-ACME-20251003T133100-stop2"
    assert rules.resized_order_id(cid) == cid + "r"
    assert rules.resized_order_id(rules.resized_order_id(cid)) == cid + "rr"
    long_cid = "s" * 90 + "-ACME-20251003T133100-stop2"
    resized = rules.resized_order_id(long_cid)
    assert len(resized) == rules.RESIZED_ID_KEEP + 1 and resized.endswith("r")
    assert len(rules.resized_order_id(resized)) <= 128


# ------------------------------------------------------------------- the broker's own stop

def test_protective_level_uses_the_known_level_first() -> None:
    """The Strategy's current (or saved) level wins over a level from the average price."""
    p = rules.protective_stop_level(100.0, 2.0, 97.456, 101.0, 2.0, 0.05)
    assert (p.price, p.level, p.below_market) == (97.45, 97.456, False)


def test_protective_level_from_the_average_price_and_atr() -> None:
    # fixed = 100 - 2 * 2 = 96 beats the trail 100 * 0.95 = 95
    p = rules.protective_stop_level(100.0, 2.0, None, 101.0, 2.0, 0.05)
    assert p.price == 96.0 and not p.below_market


@pytest.mark.parametrize("atr", [None, math.nan, math.inf])
def test_without_atr_the_atr_is_one_percent_of_the_average_price(atr: float | None) -> None:
    """Regression: this rule lived only in ``AlpacaBroker._stop_level``. No ATR known (a
    restart before any bar): ATR = 1% of the average price, so fixed = 100 - 2 * 1 = 98."""
    assert rules.FALLBACK_ATR_PCT == 0.01
    assert rules.fallback_atr(100.0, atr) == 1.0
    p = rules.protective_stop_level(100.0, atr, None, None, 2.0, 0.05)
    assert p.price == 98.0
    assert rules.fallback_atr(100.0, 0.7) == 0.7


@pytest.mark.parametrize("last", [96.0, 95.5])
def test_a_level_at_or_above_the_market_goes_just_below_it(last: float) -> None:
    """Regression: a stop at or above the last price (Alpaca refuses it) is placed at
    0.999 x the last price, rounded down to the tick."""
    p = rules.protective_stop_level(100.0, 2.0, None, last, 2.0, 0.05)
    assert p.below_market and p.level == 96.0
    assert p.price == rules.round_price(last * rules.BELOW_MARKET_FACTOR)
    assert p.price < last


def test_stop_placeable() -> None:
    assert rules.stop_placeable(95.0, 96.0)
    assert rules.stop_placeable(95.0, None)
    assert not rules.stop_placeable(96.0, 96.0)  # already hit: sold at market instead
    assert not rules.stop_placeable(math.nan, 96.0)
    assert not rules.stop_placeable(-1.0, 96.0)


def test_fill_stop_price_is_the_strategys_initial_stop() -> None:
    """The helper thread's stop at an entry fill (protector.py) and the handoff's agree."""
    h = rules.StopHandoff("ACME", "s", 2.0, 2.0, 0.05)
    h.state = h.initial_state(100.004)
    assert rules.fill_stop_price(100.004, 2.0, 2.0, 0.05) == h.level() == 96.0
    # a trail of 100% would put the stop at 0: not placeable
    assert rules.fill_stop_price(100.0, math.nan, 2.0, 1.0) is None


def test_refused_stop_exit_reason() -> None:
    state = rules.initial_stop(100.0, 2.0, 2.0, 0.05)
    assert rules.refused_stop_exit_reason(state) == "stop"
    assert rules.refused_stop_exit_reason(state.advance(120.0)) == "trail"
    assert rules.refused_stop_exit_reason(None) == "stop"


def test_default_stop_grace_is_one_bar_plus_15s() -> None:
    assert rules.default_stop_grace(60) == 75.0
    assert rules.default_stop_grace(300) == 315.0


@pytest.mark.parametrize(("position", "others", "wanted", "sellable"), [
    (10.0, 0.0, 10.0, 10.0),  # the whole position
    (10.0, 0.0, 15.0, 10.0),  # clipped: long-only, never short
    (10.0, 4.0, 10.0, 6.0),  # another exit already sells 4
    (0.0, 0.0, 10.0, 0.0),  # the stop filled first: nothing to sell, the exit is not sent
    (10.0, 0.0, 10.0 + 1e-12, 10.0 + 1e-12),  # float noise is not a clip
])
def test_sellable_qty(position: float, others: float, wanted: float, sellable: float) -> None:
    """Regression: the long-only clip of an exit lived in ``AlpacaBroker._clip_to_position``."""
    assert rules.sellable_qty(position, others, wanted) == sellable
