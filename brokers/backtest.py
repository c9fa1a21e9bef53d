"""The backtest broker: Backtrader's BackBroker plus the one extension the Strategy needs.

The Strategy keeps one resting stop per position and moves it up with
``broker.replace_stop_order(order, price, cid)``. Alpaca does that with one PATCH (the
position is never unprotected); here it is a cancel and a new stop order in the same step,
which is equivalent because both happen before the next bar is processed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import backtrader as bt

from feeds.sessions import EXTENDED, REGULAR, name_of
from ratchet.common.config import Settings

logger = logging.getLogger(__name__)

_SESSION_CODE = {"regular": REGULAR, "extended": EXTENDED}


class SimBroker(bt.brokers.BackBroker):
    """``BackBroker`` with ``replace_stop_order`` and the run's cash/fill settings.

    Fills follow Alpaca's session rules: an order fills only on a regular-hours bar, except a
    limit order sent with ``extended_hours``, which may also fill on an extended-hours bar;
    stop orders (and market orders) sleep outside regular hours. The session of a bar comes
    from the feed's ``session`` line (``feeds.sessions``), or from ``session`` (optional
    callable: bar time -> ``regular``/``extended``/``closed``) for feeds without one; neither
    means every bar is regular. An order fills only on a bar of its own symbol that is newer
    than the bar it was decided on and than the bar it was last tried on: a symbol without a
    bar in this step (a gap, or its data ended) fills nothing on its old bar.
    """

    session: Callable[[datetime], str] | None = None

    def __init__(self) -> None:
        super().__init__()
        self._tried: dict[int, float] = {}  # order ref -> bar (bt time) it was last tried on

    def _try_exec(self, order: bt.Order) -> None:
        data = order.data
        dtline = data.lines.datetime
        dt = dtline.array[dtline._idx]
        if dt <= order.created.dt or self._tried.get(order.ref) == dt:
            return  # no new bar of this symbol since the order was made or last tried
        self._tried[order.ref] = dt
        line = getattr(data.lines, "session", None)
        if line is not None:
            code = int(line.array[line._idx]) & 3
        elif self.session is not None:
            code = _SESSION_CODE.get(self.session(bt.num2date(dt).replace(tzinfo=UTC)), 0)
        else:
            code = REGULAR
        if code != REGULAR and not (code == EXTENDED and order.exectype == bt.Order.Limit
                                    and order.info.get("extended_hours")):
            logger.debug("%s: %s bar, order %s waits", data._name, name_of(code),
                         order.info.get("cid", order.ref))
            return
        super()._try_exec(order)

    def _plain(self) -> bool:
        """Stock-like commissions without interest, no order history: the case ``next``
        has a lean path for (what every ratchet backtest is)."""
        return not self._userhist and all(
            ci.stocklike and not ci.p.interest for ci in self.comminfo.values())

    def next(self) -> None:
        """``BackBroker.next`` without its per-bar work that is zero for stocks, and with a
        cheap look at a resting sell stop before the full fill check.

        Backtrader's ``next`` asks every open position for credit interest (converting the
        bar time with ``num2date`` each time) and adjusts cash for futures; both are zero for
        stock-like commissions without interest, so they are skipped then. A sell stop whose
        bar's low stays above its price cannot fill on this bar (the open is above it too),
        so it goes straight back to the queue. Everything else is Backtrader's code path.
        """
        if not self._plain():
            super().next()
            return
        while self._toactivate:
            self._toactivate.popleft().activate()
        if self.p.checksubmit:
            self.check_submitted()
        pending = self.pending
        pending.append(None)
        stop, completed = bt.Order.Stop, bt.Order.Completed
        while True:
            order = pending.popleft()
            if order is None:
                break
            if order.expire():
                self.notify(order)
                self._ococheck(order)
                self._bracketize(order, cancel=True)
            elif not order.active():
                pending.append(order)
            else:
                params = order.p  # Order params are read through a slow __getattr__
                if params.exectype == stop and order.ordtype == order.Sell:
                    low = params.data.lines.low
                    if low.array[low._idx] > order.created.price:
                        pending.append(order)  # not touched on this bar
                        continue
                self._try_exec(order)
                if order.alive():
                    pending.append(order)
                elif order.status == completed:
                    self._bracketize(order)
        self._get_value(plain=True)

    def notify(self, order: bt.Order) -> None:
        """Queue a snapshot of ``order`` for the Strategy (``Order.clone`` without the slow
        generic ``copy.copy``: the same attributes, copied as a dict)."""
        self.notifs.append(_snapshot(order))

    def _get_value(self, datas: Any = None, lever: bool = False,
                   plain: bool | None = None) -> float:
        """Portfolio value, visiting only non-flat positions.

        Backtrader revalues every data ever traded on every bar; a flat position adds
        nothing, so with 20 symbols and at most 5 positions most of that work is skipped.
        Other cases (one data asked for, fund history, shortcash off, cash additions
        pending) use Backtrader's own method. ``plain`` (``_plain()``, given by ``next``):
        stock-like commissions, whose value and profit are computed inline.
        """
        if datas is not None or self._fundhist or not self.p.shortcash or self._cash_addition:
            return float(super()._get_value(datas, lever))
        pos_value = unlever = unrealized = 0.0
        if plain is None:
            plain = self._plain()
        comminfo = self.comminfo
        for data, position in self.positions.items():
            size = position.size
            if not size:
                continue
            ci = comminfo[data._name] if data._name in comminfo else comminfo[None]
            close = data.lines.close
            price = close.array[close._idx]  # data.close[0]
            if plain:  # CommInfoBase.getvaluesize/profitandloss/get_leverage of a stock
                cp = ci.p
                value = size * price
                pnl = size * (price - position.price) * cp.mult
                leverage = cp.leverage
            else:
                value = ci.getvaluesize(size, price)
                pnl = ci.profitandloss(size, position.price, price)
                leverage = ci.get_leverage()
            pos_value += value
            unrealized += pnl
            unlever += (value - pnl) / leverage + pnl if value > 0 else value
        self._value = self.cash + unlever
        self._fundval = self._value / self._fundshares
        self._valuemkt = unlever
        self._valuelever = self.cash + pos_value
        self._valuemktlever = pos_value
        self._leverage = pos_value / (unlever or 1.0)
        self._unrealized = unrealized
        return float(self._valuelever if lever else self._value)

    def cancel(self, order: bt.Order, bracket: bool = False) -> bool:
        """Cancel a working order, including one submitted in this very step.

        ``BackBroker.cancel`` only finds orders already moved to its pending list, so a stop
        placed and replaced on the same bar would otherwise survive as a second stop.
        """
        if order in self.submitted:
            self.submitted.remove(order)
            order.cancel()
            self.notify(order)
            return True
        return bool(super().cancel(order, bracket=bracket))

    def replace_stop_order(
        self, order: bt.Order, price: float, cid: str, size: float | None = None
    ) -> bt.Order:
        """Move a resting sell stop to ``price`` (and ``size``): cancel it, submit the new one.

        Returns the order to track from now on. If the old stop is no longer working
        (it filled this bar), nothing is replaced and the old order is returned.
        """
        if not order.alive():
            return order
        if size is None:
            size = abs(order.executed.remsize) if order.executed.remsize else abs(order.size)
        new = self.sell(
            order.owner,
            order.data,
            size,
            price=price,
            exectype=bt.Order.Stop,
            cid=cid,
            purpose=order.info.get("purpose", "stop"),
            replaces=order.info.get("cid"),
        )
        self.cancel(order)
        return new


def _copy(obj: Any) -> Any:
    # What copy.copy does for a plain instance (no __copy__/__reduce__/__slots__): a new
    # object of the class with the same __dict__.
    new = object.__new__(type(obj))
    new.__dict__.update(obj.__dict__)
    return new


def _snapshot(order: bt.Order) -> bt.Order:
    """``order.clone()``: a copy whose ``executed`` part is frozen at this moment."""
    obj = _copy(order)
    executed = order.executed
    executed.markpending()
    obj.executed = _copy(executed)
    return obj


def make_backtest_broker(
    settings: Settings, session: Callable[[datetime], str] | None = None
) -> SimBroker:
    """A ``SimBroker`` with the settings' cash, commission and volume participation."""
    broker = SimBroker()
    broker.session = session
    broker.setcash(settings.cash)
    broker.setcommission(commission=settings.commission)
    # Trades at the open of the next bar; we never trade on the close of the decision bar.
    broker.set_coc(False)
    broker.set_coo(False)
    if settings.volume_participation is not None:
        broker.set_filler(bt.broker.fillers.FixedBarPerc(perc=settings.volume_participation * 100))
    return broker

