"""Unit and property tests of the SPEC rules in strategies/rules.py."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import backtrader as bt
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies import rules
from strategies.rules import Purpose, Reason


class TestSizing:
    def test_risk_budget_over_stop_distance(self) -> None:
        # 100k * 2% = 2000 risk; 2 x ATR 1.0 = 2.0 per share -> 1000 shares; caps are wide.
        d = rules.position_size(100_000, 100_000, 10.0, 1.0, max_position_pct=1.0)
        assert d.shares == 1000 and d.binding == "risk"

    def test_capped_by_max_position_pct(self) -> None:
        d = rules.position_size(100_000, 100_000, 100.0, 1.0)
        assert d.shares == 100 and d.binding == "max_position_pct"

    def test_capped_by_cash(self) -> None:
        d = rules.position_size(100_000, 2_550.0, 100.0, 1.0)
        assert d.shares == 25 and d.binding == "cash"

    def test_fewer_than_one_share_is_size_zero(self) -> None:
        d = rules.position_size(100_000, 50.0, 100.0, 1.0)
        assert d.shares == 0 and d.binding == "size_zero"

    def test_formula_has_no_extra_price_term(self) -> None:
        """SPEC note: the original design divided by entry price too; that is wrong."""
        d = rules.position_size(50_000, 50_000, 250.0, 2.5, max_position_pct=1.0)
        assert d.shares == math.floor(50_000 * 0.02 / (2.0 * 2.5))

    @pytest.mark.parametrize("bad", [math.nan, 0.0, -1.0, math.inf])
    def test_bad_atr_or_price_gives_no_order(self, bad: float) -> None:
        assert rules.position_size(100_000, 100_000, 100.0, bad).shares == 0
        assert rules.position_size(100_000, 100_000, bad, 1.0).shares == 0

    @settings(max_examples=300, deadline=None)
    @given(
        equity=st.floats(1_000, 10_000_000),
        cash_frac=st.floats(0, 1.5),
        price=st.floats(0.5, 5_000),
        atr_frac=st.floats(0.0005, 0.2),
        risk=st.floats(0.001, 0.2),
        mult=st.floats(0.5, 5),
        maxpct=st.floats(0.01, 1.0),
        fractional=st.booleans(),
    )
    def test_size_never_breaks_a_cap(self, equity: float, cash_frac: float, price: float,
                                     atr_frac: float, risk: float, mult: float, maxpct: float,
                                     fractional: bool) -> None:
        cash = equity * cash_frac
        atr = price * atr_frac
        d = rules.position_size(equity, cash, price, atr, risk, mult, maxpct, fractional)
        assert d.shares >= 0
        assert d.shares * price <= maxpct * equity + 1e-6
        assert d.shares * price <= cash + 1e-6
        assert d.shares * mult * atr <= equity * risk + 1e-6
        if not fractional:
            assert d.shares == int(d.shares)
            assert d.shares == 0 or d.shares >= 1


class TestStops:
    def test_initial_stop_is_max_of_fixed_and_trailing(self) -> None:
        s = rules.initial_stop(100.0, 1.0, 2.0, 0.03)
        assert s.fixed_stop == 98.0
        assert s.trail_stop == pytest.approx(97.0)
        assert s.level == 98.0 and s.binding == "stop"

    def test_trailing_takes_over_after_a_new_high(self) -> None:
        s = rules.initial_stop(100.0, 1.0, 2.0, 0.03).advance(110.0)
        assert s.level == pytest.approx(106.7) and s.binding == "trail"

    def test_lower_high_does_not_lower_the_stop(self) -> None:
        s = rules.initial_stop(100.0, 1.0, 2.0, 0.03).advance(110.0).advance(90.0)
        assert s.level == pytest.approx(106.7)

    def test_nan_high_is_ignored(self) -> None:
        s = rules.initial_stop(100.0, 1.0, 2.0, 0.03)
        assert s.advance(math.nan).level == s.level

    @settings(max_examples=300, deadline=None)
    @given(
        fill=st.floats(1, 1000),
        atr_frac=st.floats(0.0001, 0.2),
        mult=st.floats(0.5, 5),
        trail=st.floats(0.001, 0.5),
        moves=st.lists(st.floats(-0.3, 0.3), min_size=1, max_size=60),
    )
    def test_stop_never_moves_down(self, fill: float, atr_frac: float, mult: float,
                                   trail: float, moves: list[float]) -> None:
        s = rules.initial_stop(fill, fill * atr_frac, mult, trail)
        high = fill
        for m in moves:
            high = max(0.01, high * (1 + m))
            nxt = s.advance(high)
            assert nxt.level >= s.level
            assert nxt.level == pytest.approx(max(nxt.fixed_stop, nxt.trail_stop, s.level))
            assert rules.round_price(nxt.level) >= rules.round_price(s.level)
            s = nxt

    def test_round_price_never_rounds_a_stop_up(self) -> None:
        assert rules.round_price(97.019) == pytest.approx(97.01)
        assert rules.round_price(0.123456) == pytest.approx(0.1234)


class TestPriceRounding:
    """Alpaca's ticks: cents at or above $1, 4 decimals below (issue 10.3)."""

    @pytest.mark.parametrize(
        ("price", "limit"),
        [
            (1.416667, 1.41),  # regression: NVDA 1999-05-21, the old nearest-cent gave 1.42
            (100.0, 100.0),  # on the tick: unchanged
            (99.999, 99.99),
            (12.345, 12.34),
            (0.29, 0.29),  # 0.29 / 0.01 is 28.999999999999996 in floats: still 0.29
            (1.0, 1.0),  # $1 exactly: cents
            (0.99999, 0.9999),  # below $1: 4 decimals, down
            (0.123456, 0.1234),
            (0.00015, 0.0001),
        ],
    )
    def test_buy_limit_is_rounded_down_to_the_tick(self, price: float, limit: float) -> None:
        got = rules.round_limit_buy(price)
        assert got == limit  # exact: the price sent to Alpaca has no float noise
        assert got <= price and price - got < rules.tick_size(price)

    @pytest.mark.parametrize(
        ("level", "stop"),
        [(97.019, 97.01), (98.0, 98.0), (100.88, 100.88), (0.98765, 0.9876), (1.0049, 1.0)],
    )
    def test_sell_stop_is_rounded_down_never_above_its_level(self, level: float,
                                                               stop: float) -> None:
        assert rules.round_price(level) == stop and rules.round_price(level) <= level

    def test_extended_hours_sell_limit_is_rounded_down(self) -> None:
        assert rules.round_limit_sell(97.509) == 97.5 and rules.round_limit_sell(0.51239) == \
            0.5123


class TestGuards:
    @pytest.mark.parametrize(
        ("kwargs", "reason"),
        [
            ({"market_open": False}, Reason.MARKET_CLOSED),
            ({"has_position": True}, Reason.POSITION_OPEN),
            ({"has_working_order": True}, Reason.DUPLICATE_ORDER),
            ({"open_positions": 3, "working_entries": 2}, Reason.MAX_POSITIONS),
            ({"open_positions": 5}, Reason.MAX_POSITIONS),
        ],
    )
    def test_each_guard_refuses(self, kwargs: dict[str, object], reason: Reason) -> None:
        base: dict[str, object] = dict(has_position=False, has_working_order=False,
                                       open_positions=0, working_entries=0, max_positions=5)
        base.update(kwargs)
        g = rules.check_entry(**base)  # type: ignore[arg-type]
        assert not g.ok and g.reason == reason

    def test_all_clear(self) -> None:
        assert rules.check_entry(False, False, 4, 0, 5).ok

    def test_limit_gets_at_least_one_bar(self) -> None:
        t0 = datetime(2025, 10, 1, 14, 0, tzinfo=UTC)
        assert not rules.limit_timed_out(t0, t0, 30, 60)
        assert not rules.limit_timed_out(t0, t0 + timedelta(seconds=59), 30, 60)
        assert rules.limit_timed_out(t0, t0 + timedelta(minutes=1), 30, 60)
        # A long timeout holds the limit for several bars.
        assert not rules.limit_timed_out(t0, t0 + timedelta(minutes=4), 300, 60)
        assert rules.limit_timed_out(t0, t0 + timedelta(minutes=5), 300, 60)


class TestClientOrderIds:
    def test_deterministic_and_parseable(self) -> None:
        t = datetime(2025, 10, 1, 14, 31, tzinfo=UTC)
        a = rules.client_order_id("ratchet", "aapl", t, Purpose.ENTRY)
        assert a == "ratchet-AAPL-20251001T143100-entry"
        assert a == rules.client_order_id("ratchet", "AAPL", t, "entry")
        assert rules.parse_client_order_id(a) == ("ratchet", "AAPL", t, Purpose.ENTRY)

    def test_stop_sequence_and_dotted_symbols(self) -> None:
        t = datetime(2025, 10, 1, 14, 31, tzinfo=UTC)
        a = rules.client_order_id("s1", "BRK.B", t, Purpose.STOP, seq=3)
        assert a.endswith("-stop3")
        assert rules.parse_client_order_id(a) == ("s1", "BRK.B", t, Purpose.STOP)

    def test_distinct_per_purpose_bar_and_symbol(self) -> None:
        t = datetime(2025, 10, 1, 14, 31, tzinfo=UTC)
        ids = {rules.client_order_id("r", s, t + timedelta(minutes=m), p)
               for s in ("A", "B") for m in (0, 1) for p in Purpose}
        assert len(ids) == 2 * 2 * len(Purpose)

    def test_naive_time_is_utc(self) -> None:
        naive = datetime(2025, 10, 1, 14, 31)
        aware = naive.replace(tzinfo=UTC)
        assert rules.client_order_id("r", "A", naive, "exit") == \
            rules.client_order_id("r", "A", aware, "exit")

    def test_foreign_ids_do_not_parse(self) -> None:
        assert rules.parse_client_order_id("5680c4bc-9ac1-4a12-a44c-df427ba53032") is None


def test_atr_matches_backtrader_exactly() -> None:
    """Our vectorised ATR feeds sizing and stops; it must equal bt.indicators.ATR."""
    rng = np.random.default_rng(7)
    n = 300
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    high = close * (1 + rng.uniform(0, 0.01, n))
    low = close * (1 - rng.uniform(0, 0.01, n))
    ours = rules.atr_wilder(high, low, close, 14)
    import pandas as pd

    df = pd.DataFrame({"open": close, "high": high, "low": low, "close": close, "volume": 1.0},
                      index=pd.date_range("2025-01-01", periods=n, freq="1min"))
    got: list[float] = []

    class S(bt.Strategy):
        def __init__(self) -> None:
            self.atr = bt.indicators.ATR(self.data, period=14)

        def next(self) -> None:
            got.append(self.atr[0])

    c = bt.Cerebro(stdstats=False)
    c.adddata(bt.feeds.PandasData(dataname=df))
    c.addstrategy(S)
    c.run()
    assert np.isnan(ours[:14]).all()
    assert np.array_equal(ours[14:], np.array(got))


def sma_exact(values: np.ndarray, period: int) -> np.ndarray:
    """SMA with each window summed exactly (``math.fsum(window) / period``), as Backtrader's
    ``bt.indicators.SMA`` does, bit for bit. Slow (one Python call per window): the
    reference that ``MASignal`` matches where it matters."""
    n = values.shape[0]
    out = np.full(n, np.nan)
    if n < period:
        return out
    windows = np.lib.stride_tricks.sliding_window_view(values.astype(np.float64), period)
    out[period - 1 :] = np.fromiter(map(math.fsum, windows.tolist()), np.float64) / period
    return out


def test_ma_signal_equals_the_exact_backtrader_crossover() -> None:
    """MASignal sums windows with numpy and settles near-ties exactly; its signals must equal
    the crossover of Backtrader-exact SMAs (fsum per window), including exact ties."""
    import pandas as pd

    from strategies.signals import MASignal, crossover

    rng = np.random.default_rng(3)
    # Prices on a coarse grid make exact ties between the two SMAs common.
    close = np.round(100 + np.cumsum(rng.choice([-0.5, 0.0, 0.5], 20_000)), 1)
    frame = pd.DataFrame({"close": close})
    got = MASignal(10, 30).compute(frame)["signal"].to_numpy()
    want = crossover(sma_exact(close, 10), sma_exact(close, 30))
    assert np.array_equal(np.nan_to_num(got, nan=9), np.nan_to_num(want, nan=9))
    f, s = sma_exact(close, 10), sma_exact(close, 30)
    assert (f == s).sum() > 100  # the case this guards really occurs in the data


class TestStopHandoff:
    """The Strategy's stop rule as handed to a live broker (issue 17): same numbers as
    ``initial_stop`` + ``round_price``, one numbering of the position's stops."""

    def test_initial_state_is_the_strategys_rule(self) -> None:
        h = rules.StopHandoff("ACME", "ratchet", atr=0.5, atr_stop_multiplier=2.0,
                              trail_pct=0.03)
        state = h.initial_state(100.0)
        assert state == rules.initial_stop(100.0, 0.5, 2.0, 0.03)
        assert state.fixed_stop == 99.0 and state.level == 99.0  # fixed binds: 99 > 97

    def test_trailing_binds_when_the_atr_is_wide(self) -> None:
        h = rules.StopHandoff("ACME", "ratchet", atr=5.0, atr_stop_multiplier=2.0,
                              trail_pct=0.03)
        h.state = h.initial_state(100.0)
        assert h.level() == 97.0 and h.state.binding == "trail"

    def test_no_atr_means_trailing_only(self) -> None:
        h = rules.StopHandoff("ACME", "ratchet", atr=math.nan, atr_stop_multiplier=2.0,
                              trail_pct=0.03)
        h.state = h.initial_state(50.0)
        assert h.level() == 48.5 and h.state.fixed_stop == -math.inf

    def test_level_is_rounded_down_to_the_tick(self) -> None:
        h = rules.StopHandoff("ACME", "ratchet", atr=0.333, atr_stop_multiplier=2.0,
                              trail_pct=0.03)
        h.state = h.initial_state(101.0)  # 101 - 0.666 = 100.334 -> 100.33
        assert h.level() == pytest.approx(100.33)

    def test_level_needs_a_state(self) -> None:
        h = rules.StopHandoff("ACME", "ratchet", 1.0, 2.0, 0.03)
        with pytest.raises(ValueError, match="no stop state"):
            h.level()

    def test_stop_cids_continue_the_positions_numbering(self) -> None:
        bar = datetime(2025, 10, 3, 13, 43, tzinfo=UTC)
        h = rules.StopHandoff("acme", "ratchet", 1.0, 2.0, 0.03, seq=2)
        assert h.stop_cid(bar) == "ratchet-ACME-20251003T134300-stop3"
        assert h.stop_cid(bar) == "ratchet-ACME-20251003T134300-stop4"
        assert h.seq == 4
        assert rules.parse_client_order_id(h.stop_cid(bar))[3] is Purpose.STOP  # type: ignore[index]

    @pytest.mark.parametrize(("level", "price", "through"),
                             [(99.0, 100.0, False), (100.0, 100.0, True), (100.5, 100.0, True)])
    def test_stop_through_market(self, level: float, price: float, through: bool) -> None:
        assert rules.stop_through_market(level, price) is through
