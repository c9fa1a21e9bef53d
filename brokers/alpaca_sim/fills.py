"""Fill prices of the simulated venue: pure functions of an order's prices and one bar.

Fills are decided the way Backtrader's ``BackBroker`` decides them, so a replay trades like a
backtest:

- At a bar's **start** (its open is then the current price): market orders fill at the open;
  a buy limit fills at the open if ``open <= limit`` (sell: ``open >= limit``); a sell stop
  fills at the open if ``open <= stop`` (buy: ``open >= stop``); trailing stops likewise.
- At a bar's **end** (its high and low are then known): a buy limit fills at the limit if
  ``low <= limit`` (sell: ``high >= limit``); a sell stop fills at the stop if
  ``low <= stop`` (buy: ``high >= stop``). Together: buy limit at ``min(open, limit)``, sell
  stop at ``min(open, stop)``, exactly ``BackBroker``'s prices.
- stop_limit: triggered like a stop, then a limit (``BackBroker``'s intrabar cases);
  trailing_stop: the stop trails the high-water mark (sell) or low-water mark (buy), updated
  with each bar's open and then its high (low) after the trigger check.
- Partial fills: at most ``volume_participation x bar volume`` per order per bar (whole
  shares for whole-share orders).

Which bars an order may trade on, and the bookkeeping of a fill: ``engine.MatchingEngine``.
"""

from __future__ import annotations

import math

from brokers.alpaca_sim.models import EPS


def crosses_limit(buy: bool, price: float, limit: float | None) -> bool:
    """A limit order is marketable at ``price`` (buy: at or below the limit)."""
    return limit is not None and (price <= limit if buy else price >= limit)


def crosses_stop(buy: bool, price: float, stop: float | None) -> bool:
    """A stop triggers at ``price`` (buy: at or above the stop; sell: at or below)."""
    return stop is not None and (price >= stop if buy else price <= stop)


def limit_intrabar(buy: bool, op: float, hi: float, lo: float,
                   limit: float | None) -> float | None:
    """A limit order's fill price within a bar (``None``: the bar never reached the limit)."""
    if limit is None:
        return None
    if buy:
        return min(op, limit) if lo <= limit else None
    return max(op, limit) if hi >= limit else None


def stop_intrabar(buy: bool, op: float, hi: float, lo: float, stop: float | None) -> float | None:
    """A stop order's fill price within a bar (``None``: the bar never reached the stop)."""
    if stop is None:
        return None
    if buy:
        return max(op, stop) if hi >= stop else None
    return min(op, stop) if lo <= stop else None


def stop_limit_intrabar(buy: bool, op: float, hi: float, lo: float, cl: float, stop: float,
                        limit: float) -> tuple[float | None, bool]:
    """(fill price or None, triggered) of a not yet triggered stop-limit order within a bar.

    ``BackBroker._try_exec_stoplimit``: triggered during the bar, the fill price is known only
    in the cases where the limit is reachable from the trigger price.
    """
    if buy and hi >= stop:
        if limit >= stop:
            return stop, True
        return (limit if op > cl and limit >= cl else None), True
    if not buy and lo <= stop:
        if limit <= stop:
            return stop, True
        return (limit if op <= cl and limit <= cl else None), True
    return None, False


def open_price(order_type: str, buy: bool, op: float, limit: float | None,
               stop: float | None, triggered: bool) -> tuple[float | None, bool]:
    """(fill price or None, triggered) of a market, limit, stop or stop-limit order at a bar's
    open ``op`` (trailing stops: ``crosses_stop`` against their trailing stop)."""
    if order_type == "market":
        return op, triggered
    if order_type == "limit":
        return (op if crosses_limit(buy, op, limit) else None), triggered
    if order_type == "stop":
        return (op if crosses_stop(buy, op, stop) else None), triggered
    if order_type == "stop_limit":
        if not triggered and crosses_stop(buy, op, stop):
            triggered = True
        return (op if triggered and crosses_limit(buy, op, limit) else None), triggered
    return None, triggered


def close_price(order_type: str, buy: bool, op: float, hi: float, lo: float, cl: float,
                limit: float | None, stop: float | None,
                triggered: bool) -> tuple[float | None, bool]:
    """(fill price or None, triggered) of a limit, stop or stop-limit order once the bar's
    high and low are known (trailing stops: ``stop_intrabar`` on their trailing stop)."""
    if order_type == "limit":
        return limit_intrabar(buy, op, hi, lo, limit), triggered
    if order_type == "stop":
        return stop_intrabar(buy, op, hi, lo, stop), triggered
    if order_type == "stop_limit":
        if triggered:
            return limit_intrabar(buy, op, hi, lo, limit or 0.0), True
        return stop_limit_intrabar(buy, op, hi, lo, cl, stop or 0.0, limit or 0.0)
    return None, triggered


def water_mark(buy: bool, mark: float, price: float) -> float:
    """A trailing stop's new mark: the high-water mark of a sell, the low-water mark of a buy."""
    return min(mark, price) if buy else max(mark, price)


def participation_cap(volume: float, participation: float, whole: bool) -> float:
    """Most shares one order may fill on a bar of ``volume`` (whole shares for whole-share
    orders; fractional ones to 1e-9)."""
    cap = participation * volume
    return math.floor(cap + EPS) if whole else math.floor(cap * 1e9) / 1e9
