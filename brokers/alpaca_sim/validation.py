"""What the simulated Alpaca refuses, one rule per function, checked in Alpaca's order.

Each rule raises the ``errors.ApiError`` Alpaca answers with (422 ``validation`` /
``unprocessable``, 403 ``forbidden``) and returns nothing when the order passes. The rules that
need the venue's state (last trade, position, held shares, buying power) take it as arguments,
so every rule is testable without a market or a server. ``validate_request`` runs the
stateless ones (and the stop-price side) in order; ``market.Market`` adds the sell quantity,
client order id and buying-power checks.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Sequence

from brokers.alpaca_sim import errors
from brokers.alpaca_sim.models import EPS, OrderRequest, ReplaceRequest, SimOrder
from brokers.alpaca_sim.serialization import num

#: Prices each order type requires; the others must be absent.
REQUIRED_PRICES: dict[str, tuple[str, ...]] = {
    "market": (), "limit": ("limit_price",), "stop": ("stop_price",),
    "stop_limit": ("limit_price", "stop_price"), "trailing_stop": (),
}
#: Time-in-force values Alpaca knows but the simulator does not implement.
UNSUPPORTED_TIME_IN_FORCE = ("opg", "cls")
#: Longest client order id Alpaca accepts.
MAX_CLIENT_ORDER_ID = 128


def penny_ok(price: float) -> bool:
    """No sub-penny price: >= $1 two decimals, < $1 four."""
    decimals = 2 if price >= 1.0 else 4
    scaled = price * 10**decimals
    return abs(scaled - round(scaled)) < 1e-6


def check_symbol(r: OrderRequest, symbols: Container[str]) -> None:
    """The symbol is one the venue trades."""
    if r.symbol not in symbols:
        raise errors.validation(f'asset "{r.symbol}" not found')


def check_order_class(r: OrderRequest) -> None:
    """Simple orders only (no bracket, OCO or OTO)."""
    if r.order_class not in ("simple", ""):
        raise errors.validation(
            f"order_class {r.order_class} is not supported by alpaca-sim (simple orders only)")


def check_time_in_force(r: OrderRequest) -> None:
    """No opening/closing auction orders."""
    if r.time_in_force in UNSUPPORTED_TIME_IN_FORCE:
        raise errors.validation(f"time_in_force {r.time_in_force} is not supported by alpaca-sim")


def check_quantity(r: OrderRequest) -> None:
    """Exactly one of qty and notional, positive; notional only for DAY market orders."""
    if (r.qty is None) == (r.notional is None):
        raise errors.validation("qty or notional is required" if r.qty is None
                                else "only one of qty or notional is accepted")
    if r.qty is not None and r.qty <= 0:
        raise errors.validation("qty must be > 0")
    if r.notional is not None:
        if r.notional <= 0:
            raise errors.validation("notional must be > 0")
        if r.type != "market" or r.time_in_force != "day":
            raise errors.validation("notional orders must be DAY market orders")


def check_fractional(r: OrderRequest) -> None:
    """Fractional quantities only on DAY market or limit orders."""
    fractional = r.qty is not None and abs(r.qty - round(r.qty)) > EPS
    if fractional and (r.time_in_force != "day" or r.type not in ("market", "limit")):
        raise errors.validation("fractional orders must be DAY market or limit orders")


def check_prices(r: OrderRequest, penny_increments: bool) -> None:
    """The limit/stop prices the type needs (``REQUIRED_PRICES``), positive, no sub-pennies."""
    need = REQUIRED_PRICES[r.type]
    for name in ("limit_price", "stop_price"):
        v = getattr(r, name)
        if name in need and v is None:
            raise errors.validation(f"{name} is required for {r.type} orders")
        if name not in need and v is not None:
            raise errors.validation(f"{name} must not be given for {r.type} orders")
        if v is not None:
            if v <= 0:
                raise errors.validation(f"{name} must be > 0")
            if penny_increments and not penny_ok(v):
                raise errors.unprocessable(
                    f"invalid {name} {num(v)}. sub-penny increment does not fulfill "
                    "minimum pricing criteria")


def check_trail(r: OrderRequest) -> None:
    """Trailing stops have exactly one positive trail; other types none."""
    trail = (r.trail_price is not None, r.trail_percent is not None)
    if r.type == "trailing_stop":
        if sum(trail) != 1:
            raise errors.validation("exactly one of trail_price or trail_percent is required")
        amount = r.trail_price if r.trail_price is not None else r.trail_percent
        if amount is None or amount <= 0:
            raise errors.validation("trail must be > 0")
    elif any(trail):
        raise errors.validation("trail_price and trail_percent are for trailing_stop orders")


def check_stop_side(r: OrderRequest, last_price: float | None) -> None:
    """A stop sits beyond the last trade: above it for a buy, below it for a sell."""
    if r.type not in ("stop", "stop_limit") or not r.stop_price or last_price is None:
        return
    px = last_price
    if r.side == "buy" and r.stop_price <= px:
        raise errors.unprocessable("stop price must be greater than current price",
                                   market_price=num(px), stop_price=num(r.stop_price))
    if r.side == "sell" and r.stop_price >= px:
        raise errors.unprocessable("stop price must be less than current price",
                                   market_price=num(px), stop_price=num(r.stop_price))


def check_extended_hours(r: OrderRequest) -> None:
    """Extended-hours orders are DAY or GTC limit orders."""
    if r.extended_hours and (r.type != "limit" or r.time_in_force not in ("day", "gtc")):
        raise errors.validation("extended hours order must be DAY or GTC limit orders")


def check_immediate(r: OrderRequest) -> None:
    """IOC and FOK are for market and limit orders."""
    if r.time_in_force in ("ioc", "fok") and r.type not in ("market", "limit"):
        raise errors.validation(f"{r.time_in_force} orders must be market or limit orders")


def check_trailing_time_in_force(r: OrderRequest) -> None:
    """Trailing stops are DAY or GTC."""
    if r.type == "trailing_stop" and r.time_in_force not in ("day", "gtc"):
        raise errors.validation("trailing stop orders must be DAY or GTC")


def validate_request(r: OrderRequest, symbols: Container[str], *, penny_increments: bool,
                     check_stop_price: bool, last_price: Callable[[str], float | None]) -> None:
    """Every rule that needs no account state, in the order Alpaca reports them."""
    check_symbol(r, symbols)
    check_order_class(r)
    check_time_in_force(r)
    check_quantity(r)
    check_fractional(r)
    check_prices(r, penny_increments)
    check_trail(r)
    if check_stop_price and r.type in ("stop", "stop_limit") and r.stop_price:
        check_stop_side(r, last_price(r.symbol))
    check_extended_hours(r)
    check_immediate(r)
    check_trailing_time_in_force(r)


def check_sell_qty(r: OrderRequest, have: float, held: float, price: float | None,
                   related: Sequence[str]) -> None:
    """No shorting: a sell needs shares not already held by other open sells (``held``).

    ``price`` sizes a notional sell; ``related`` are the other open sells' ids (403 body).
    """
    available = max(0.0, have - held)
    want = r.qty if r.qty is not None else (r.notional or 0.0) / (price or 1.0)
    if want > available + EPS:
        raise errors.forbidden(
            f"insufficient qty available for order (requested: {num(want)}, "
            f"available: {num(available)})",
            available=num(available), existing_qty=num(have), held_for_orders=num(held),
            related_orders=list(related), symbol=r.symbol)


def check_client_order_id(cid: str, taken: Container[str]) -> None:
    """At most 128 characters, never used before on this account."""
    if len(cid) > MAX_CLIENT_ORDER_ID:
        raise errors.validation("client_order_id must be no more than 128 characters")
    if cid in taken:
        raise errors.validation("client_order_id must be unique")


def check_buying_power(cost: float, buying_power: float) -> None:
    """A buy's reserved cost fits the buying power (a cent's float slack)."""
    if cost > buying_power + 1e-6:
        raise errors.forbidden("insufficient buying power",
                               buying_power=num(round(buying_power, 2)),
                               cost_basis=num(round(cost, 2)))


def replace_changes(old: SimOrder, r: ReplaceRequest) -> dict[str, float | str]:
    """The fields a ``PATCH`` changes (empty: nothing changes, a 403); 422 for a field the
    order's type does not have."""
    changes: dict[str, float | str] = {}
    if r.qty is not None and r.qty != old.qty:
        changes["qty"] = r.qty
    if r.time_in_force is not None and r.time_in_force != old.time_in_force:
        changes["time_in_force"] = r.time_in_force
    if r.limit_price is not None:
        if old.type not in ("limit", "stop_limit"):
            raise errors.validation(f"limit_price must not be given for {old.type} orders")
        if r.limit_price != old.limit_price:
            changes["limit_price"] = r.limit_price
    if r.stop_price is not None:
        if old.type not in ("stop", "stop_limit"):
            raise errors.validation(f"stop_price must not be given for {old.type} orders")
        if r.stop_price != old.stop_price:
            changes["stop_price"] = r.stop_price
    if r.trail is not None:
        if old.type != "trailing_stop":
            raise errors.validation("trail is only for trailing_stop orders")
        key = "trail_price" if old.trail_price is not None else "trail_percent"
        if r.trail != getattr(old, key):
            changes[key] = r.trail
    if r.client_order_id is not None and r.client_order_id != old.client_order_id:
        changes["client_order_id"] = r.client_order_id
    return changes
