"""The simulated **cash account**: cash, positions, equity and buying power.

Buying power = cash - cost reserved by open buy orders (limit price for limit/stop-limit, stop
price for stops, last trade for market and trailing orders, the notional for notional
orders); sells need shares not already held by other open sell orders (no shorting).
``market.Market`` owns one ``Account`` and changes it under its lock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from brokers.alpaca_sim.models import EPS, SimOrder, SimPosition


@dataclass(frozen=True)
class AccountState:
    """The account's money at one instant."""

    cash: float
    long_market_value: float
    equity: float
    buying_power: float
    last_equity: float


def reserve(o: SimOrder | None, last_price: Callable[[str], float | None]) -> float:
    """Cash an open buy order holds back from buying power (0 for sells and closed orders)."""
    if o is None or o.side != "buy" or not o.is_open:
        return 0.0
    if o.qty is None:
        return max(0.0, (o.notional or 0.0) - o.filled_cost)
    if o.type in ("limit", "stop_limit"):
        ref = o.limit_price
    elif o.type == "stop":
        ref = o.stop_price
    else:
        ref = last_price(o.symbol)
    return o.remaining * (ref or 0.0)


class Account:
    """Cash and positions; ``last_equity`` is the equity at the previous session's close."""

    def __init__(self, cash: float) -> None:
        self.cash = float(cash)
        self.last_equity = float(cash)
        #: Equity at the last regular close (becomes ``last_equity`` at the next pre-open).
        self.close_equity = float(cash)
        self.positions: dict[str, SimPosition] = {}

    def held(self, symbol: str) -> float:
        """Shares of ``symbol`` in the account (0 when flat)."""
        p = self.positions.get(symbol)
        return p.qty if p else 0.0

    def buy(self, symbol: str, qty: float, price: float) -> float:
        """Pay for ``qty`` shares; the position's new quantity."""
        cost = qty * price
        self.cash -= cost
        p = self.positions.get(symbol)
        if p is None:
            p = self.positions[symbol] = SimPosition(symbol, 0.0, 0.0)
        p.qty = round(p.qty + qty, 9)
        p.cost_basis += cost
        return p.qty

    def sell(self, symbol: str, qty: float, price: float) -> float:
        """Sell ``qty`` held shares (the caller caps ``qty`` at the position); the position's
        new quantity (0.0 once closed, and the position is gone)."""
        p = self.positions[symbol]
        p.cost_basis -= p.avg_entry_price * qty
        p.qty = round(p.qty - qty, 9)
        self.cash += qty * price
        if p.qty <= EPS:
            del self.positions[symbol]
            return 0.0
        return p.qty

    def state(self, last_price: Callable[[str], float | None], reserved: Iterable[float]
              ) -> AccountState:
        """Cash, long market value (at the last trade, else the entry price), equity and
        buying power after ``reserved``."""
        lmv = 0.0
        for sym, p in self.positions.items():
            px = last_price(sym)
            lmv += p.qty * (px if px is not None else p.avg_entry_price)
        bp = max(0.0, self.cash - sum(reserved))
        return AccountState(self.cash, lmv, self.cash + lmv, bp, self.last_equity)

    def snapshot(self) -> dict[str, Any]:
        """The account's part of ``Market.snapshot`` (same keys as ever)."""
        return {"cash": self.cash, "last_equity": self.last_equity,
                "close_equity": self.close_equity,
                "positions": [dataclasses.asdict(p) for p in self.positions.values()]}

    def restore(self, snap: dict[str, Any]) -> None:
        """Load the account's part of a snapshot (``KeyError``/``TypeError`` if incomplete)."""
        self.cash = float(snap["cash"])
        self.last_equity = float(snap["last_equity"])
        self.close_equity = float(snap["close_equity"])
        self.positions = {p["symbol"]: SimPosition(**p) for p in snap["positions"]}
