"""The ratchet rules written as a plain stock-Backtrader script: the baseline of the benchmark.

    python benchmarks/stock_backtrader.py --data DIR [--trades FILE.csv] [--market-orders]

What a Backtrader user writes without ratchet: ``pd.read_parquet`` per symbol, one
``bt.feeds.PandasData`` each, the signal and the ATR as ``bt.indicators`` built in
``__init__``, Backtrader's own ``BackBroker``, and the rules in one ``bt.Strategy``. It
imports NOTHING from this project, on purpose: ``bench_backtest.py`` times it as a whole
process against ``python cli.py backtest`` and demands the same trades.

The rules (SPEC, as ratchet implements them; the same choices where SPEC leaves room):

- signal: SMA(10) crossing SMA(30), SPEC's comparison ``fast[-1] <= slow[-1] and fast[0] >
  slow[0]`` (``bt.indicators.CrossOver`` differs after exact ties, so ``SpecCross`` below);
- sizing: floor(equity x 2% / (2 x ATR(14) at the decision bar)), capped at 10% of equity
  and by cash minus what working entries already promised; at most 5 positions + entries;
- entry: a buy limit at the decision bar's close (rounded down to the cent); if it has not
  filled by the next bar it is cancelled and the rest bought at market (the fallback, cut
  to what the cash affords at the close); no new entry or fallback on a session's last bar;
- protective stop: max(fill - 2 x ATR at the decision bar, highest high x 0.97), rounded
  down to the cent, only ever raised, re-placed (cancel + new stop order) at the end of a
  bar whose high raised it; a stop already at or above the close exits at market instead;
- a SELL cross cancels a working entry and sells the position at market; exit reason
  ``signal``, or ``stop`` / ``trail`` (which of the two stops was binding) for a stop fill.

Backtrader's ``BackBroker.cancel`` misses an order submitted in the same step, so this script
submits at most one stop change per symbol per bar, after that bar's decisions.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from datetime import UTC
from pathlib import Path
from zoneinfo import ZoneInfo

import backtrader as bt
import pandas as pd

# Backtrader day numbers: 1 second.
SECOND = 1.0 / 86400.0
NY = ZoneInfo("America/New_York")
TRADE_FIELDS = ("symbol", "entry_time", "exit_time", "qty", "entry_price", "exit_price",
                "exit_reason")


def round_down(price: float) -> float:
    """A price rounded DOWN to the cent (to 1/100 cent below $1): stops and buy limits."""
    if price >= 1.0:
        return math.floor(price * 100 + 1e-7) / 100
    return math.floor(price * 10_000 + 1e-7) / 10_000


def last_bar(d: bt.DataBase) -> bool:
    """Does this 1-minute bar end at the 16:00 New York close? No new order then (it would
    only work in the next session). Regular sessions only: no half days here."""
    end = bt.num2date(d.datetime[0] + 60 * SECOND).replace(tzinfo=UTC).astimezone(NY)
    return (end.hour, end.minute) >= (16, 0)


class SpecCross(bt.Indicator):
    """+1 when data0 crosses above data1 on this bar, -1 below, 0 else (SPEC's comparison)."""

    lines = ("cross",)

    def __init__(self) -> None:
        a, b = self.data0, self.data1
        self.lines.cross = bt.And(a(-1) <= b(-1), a > b) - bt.And(a(-1) >= b(-1), a < b)


class Book:
    """What the strategy tracks per symbol."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.entry = None          # working limit entry
        self.entry_dt = 0.0        # its decision bar (Backtrader day number)
        self.fallback = None       # working market order for the unfilled rest
        self.stop = None           # resting stop order
        self.stop_due = False      # the stop must be (re)placed at the end of this bar
        self.exit = None           # working market sell
        self.exit_reason = ""
        self.atr = math.nan        # ATR at the entry decision
        self.fixed = None          # fixed stop level; None: no position being protected
        self.high = 0.0            # highest high since entry
        self.level = 0.0           # current stop level (unrounded)
        self.trade = None          # [entry dt, qty, value, exit dt, exit qty, exit value]

    def working_entry(self) -> bool:
        return any(o is not None and o.alive() for o in (self.entry, self.fallback))

    def binding(self, trail: float) -> str:
        return "stop" if self.fixed >= self.high * (1.0 - trail) else "trail"


class Ratchet(bt.Strategy):
    params = dict(fast=10, slow=30, atr_period=14, risk=0.02, atr_mult=2.0, max_pct=0.10,
                  max_positions=5, trail=0.03, limit_orders=True, timeout=30.0, bar_seconds=60)

    def __init__(self) -> None:
        p = self.p
        self.sig, self.atr = {}, {}
        for d in self.datas:
            fast = bt.indicators.SMA(d.close, period=p.fast)
            slow = bt.indicators.SMA(d.close, period=p.slow)
            self.sig[d] = SpecCross(fast, slow)
            self.atr[d] = bt.indicators.ATR(d, period=p.atr_period)
        self.books = {d: Book(d._name) for d in self.datas}
        self.trades: list[dict] = []

    # ------------------------------------------------------------------ per bar

    def next(self) -> None:
        p = self.p
        for d in self.datas:
            b = self.books[d]
            pos = self.getposition(d).size
            if pos > 0 and b.fixed is not None:
                old = round_down(b.level)
                b.high = max(b.high, d.high[0])
                b.level = max(b.level, b.fixed, b.high * (1.0 - p.trail))
                new = round_down(b.level)
                active = b.stop_due or (b.stop is not None and b.stop.alive())
                if new > old and active:
                    if new >= d.close[0]:
                        self.exit_now(d, b, b.binding(p.trail))  # through the market
                    else:
                        b.stop_due = True
            signal = self.sig[d][0]
            if b.entry is not None and b.entry.alive() and \
                    (d.datetime[0] - b.entry_dt) / SECOND >= max(p.timeout, p.bar_seconds) - 1e-3:
                self.cancel(b.entry)
                # no fallback on the session's last bar, nor when a SELL on this bar would
                # cancel it at once
                if not signal < 0 and not last_bar(d):
                    self.send_fallback(d, b)
                else:
                    b.entry = None
            if signal > 0:
                self.on_buy(d, b)
            elif signal < 0:
                self.on_sell(d, b)
            if b.stop_due:
                self.place_stop(d, b)

    def on_buy(self, d: bt.DataBase, b: Book) -> None:
        p = self.p
        if self.getposition(d).size != 0 or b.working_entry() or \
                (b.exit is not None and b.exit.alive()):
            return
        if last_bar(d):
            return
        busy = sum(1 for x in self.datas if self.getposition(x).size != 0
                   or self.books[x].working_entry())
        if busy >= p.max_positions:
            return
        price, atr = d.close[0], self.atr[d][0]
        equity = self.broker.getvalue()
        cash = self.broker.getcash() - self.promised()
        if not (price > 0 and atr > 0 and equity > 0 and math.isfinite(cash)):
            return
        shares = equity * p.risk / (p.atr_mult * atr)
        shares = min(shares, p.max_pct * equity / price, max(cash, 0.0) / price)
        shares = float(math.floor(shares + 1e-9))
        if shares * price > min(p.max_pct * equity, max(cash, 0.0)) + 1e-6:
            shares -= 1.0
        if shares < 1.0:
            return
        if p.limit_orders:
            b.entry = self.buy(data=d, size=shares, exectype=bt.Order.Limit,
                               price=round_down(price))
        else:
            b.entry = self.buy(data=d, size=shares)
        b.entry_dt = d.datetime[0]
        b.atr = atr
        b.fallback = None

    def promised(self) -> float:
        """Cash already promised to working entries."""
        total = 0.0
        for x in self.books.values():
            for o in (x.entry, x.fallback):
                if o is not None and o.alive():
                    total += abs(o.executed.remsize) * (o.created.price or o.data.close[0])
        return total

    def on_sell(self, d: bt.DataBase, b: Book) -> None:
        for o in (b.entry, b.fallback):
            if o is not None and o.alive():
                self.cancel(o)
        if self.getposition(d).size > 0 and not (b.exit is not None and b.exit.alive()):
            self.exit_now(d, b, "signal")

    def send_fallback(self, d: bt.DataBase, b: Book) -> None:
        rest = math.floor(abs(b.entry.size) - abs(b.entry.executed.size) + 1e-9)
        b.entry = None
        if rest <= 0:
            return
        cash = self.broker.getcash() - self.promised()
        price = d.close[0]
        # the market order pays the market's price: no more than the cash affords at the close
        if cash > 0 and price > 0:
            rest = min(rest, float(math.floor(cash / price + 1e-9)))
            if rest * price > cash + 1e-6:
                rest -= 1.0
        else:
            rest = 0.0
        if rest > 0:
            b.fallback = self.buy(data=d, size=rest)

    def exit_now(self, d: bt.DataBase, b: Book, reason: str) -> None:
        for o in (b.entry, b.fallback):
            if o is not None and o.alive():
                self.cancel(o)
        if b.stop is not None and b.stop.alive():
            self.cancel(b.stop)
        b.stop, b.stop_due = None, False
        b.exit = self.sell(data=d, size=self.getposition(d).size)
        b.exit_reason = reason

    def place_stop(self, d: bt.DataBase, b: Book) -> None:
        b.stop_due = False
        pos = self.getposition(d).size
        if pos <= 0 or (b.exit is not None and b.exit.alive()):
            return
        if b.stop is not None and b.stop.alive():
            self.cancel(b.stop)  # placed on an earlier bar: Backtrader can cancel it
        b.stop = self.sell(data=d, size=pos, exectype=bt.Order.Stop,
                           price=round_down(b.level))

    # ------------------------------------------------------------------ orders

    def notify_order(self, order: bt.Order) -> None:
        d = order.data
        b = self.books[d]
        if order.status == order.Completed:
            when, size, price = order.executed.dt, order.executed.size, order.executed.price
            if order.isbuy():
                if b.trade is None:
                    b.trade = [when, 0.0, 0.0, None, 0.0, 0.0]
                b.trade[1] += size
                b.trade[2] += size * price
                self.protect(d, b, price)
            else:
                t = b.trade
                t[3], t[4], t[5] = when, t[4] - size, t[5] - size * price
                stop = b.stop is not None and order.ref == b.stop.ref
                reason = b.binding(self.p.trail) if stop else (b.exit_reason or "signal")
                if self.getposition(d).size <= 0:
                    self.trades.append({
                        "symbol": b.name,
                        "entry_time": bt.num2date(t[0]).isoformat(),
                        "exit_time": bt.num2date(t[3]).isoformat(),
                        "qty": t[1],
                        "entry_price": t[2] / t[1],
                        "exit_price": t[5] / t[4],
                        "exit_reason": reason,
                    })
                    b.trade, b.fixed, b.atr, b.exit_reason = None, None, math.nan, ""
                    if b.stop is not None and b.stop.alive():
                        self.cancel(b.stop)
                    b.stop, b.exit, b.stop_due = None, None, False
        if not order.alive():
            for attr in ("entry", "fallback", "exit"):
                o = getattr(b, attr)
                if o is not None and o.ref == order.ref:
                    setattr(b, attr, None)
            if order.issell() and order.status != order.Completed and \
                    self.getposition(d).size > 0 and b.exit is None and \
                    (b.stop is None or not b.stop.alive()):
                self.protect(d, b, d.close[0])  # an exit that did not happen

    def protect(self, d: bt.DataBase, b: Book, fill_price: float) -> None:
        if self.getposition(d).size <= 0 or (b.exit is not None and b.exit.alive()):
            return
        if b.fixed is None:
            atr = b.atr if math.isfinite(b.atr) else self.atr[d][0]
            b.fixed = fill_price - self.p.atr_mult * atr if atr > 0 else -math.inf
            b.high = fill_price
            b.level = max(b.fixed, fill_price * (1.0 - self.p.trail))
        if round_down(b.level) >= d.close[0]:
            self.exit_now(d, b, b.binding(self.p.trail))  # already through the market
        else:
            b.stop_due = True  # placed (or resized) after this bar's decisions


def run(data: Path, cash: float = 100_000.0, **params: object) -> tuple[Ratchet, float, int]:
    """Backtest every ``<SYMBOL>.parquet`` in ``data``: (strategy, end value, bars)."""
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.broker.setcash(cash)
    cerebro.broker.setcommission(commission=0.0)
    bars = 0
    for path in sorted(Path(data).glob("*.parquet")):
        frame = pd.read_parquet(path).set_index("timestamp")
        bars += len(frame)
        cerebro.adddata(bt.feeds.PandasData(dataname=frame, name=path.stem))
    cerebro.addstrategy(Ratchet, **params)
    strat = cerebro.run()[0]
    return strat, cerebro.broker.getvalue(), bars


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="ratchet's rules as plain Backtrader")
    ap.add_argument("--data", type=Path, required=True, help="folder of <SYMBOL>.parquet")
    ap.add_argument("--trades", type=Path, help="write the closed trades here (CSV)")
    ap.add_argument("--cash", type=float, default=100_000.0)
    ap.add_argument("--market-orders", action="store_true")
    ap.add_argument("--max-positions", type=int, default=5)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    strat, value, bars = run(args.data, args.cash, limit_orders=not args.market_orders,
                             max_positions=args.max_positions)
    if args.trades is not None:
        with args.trades.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(TRADE_FIELDS))
            writer.writeheader()
            writer.writerows(strat.trades)
    print(f"{bars:,} bars in {time.perf_counter() - t0:.1f}s: {len(strat.trades)} trades, "
          f"end value {value:,.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
