"""The only module that calls alpaca-py's REST clients.

Implements, through ``alpaca.trading.TradingClient`` and
``alpaca.data.historical.StockHistoricalDataClient``, these Alpaca REST endpoints
(docs.alpaca.markets/reference): POST/GET/PATCH/DELETE ``/v2/orders``,
GET ``/v2/orders:by_client_order_id``, GET ``/v2/positions``, GET ``/v2/account``,
GET ``/v2/clock``, GET ``/v2/calendar`` and GET ``/v2/stocks/bars``.

The transport under it (session, timeout, throttle, the SDK's retry switched off, failure
classification) is ``transport.py``, shared with ``data download``. Here:

* Reads (GET) are retried with exponential backoff and jitter; a read that still fails raises
  ``RetryableError`` or, for positions and open orders, ``UnknownStateError`` (never "flat").
* An order submission is sent exactly once. Its failure is classified by
  ``classify_submit_error``: definitely refused -> ``RejectedError``; anything that may have
  reached Alpaca (timeout, 5xx, reset, "client_order_id must be unique") ->
  ``AmbiguousOrderError``, to be resolved with ``get_order_by_client_id`` (``orders.py``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, TypeVar

import requests
from alpaca.common.enums import Sort
from alpaca.common.exceptions import APIError
from alpaca.data.enums import DataFeed
from alpaca.data.requests import StockBarsRequest
from alpaca.data.timeframe import TimeFrame, TimeFrameUnit
from alpaca.trading.enums import OrderSide, OrderType, QueryOrderStatus, TimeInForce
from alpaca.trading.requests import (
    GetCalendarRequest,
    GetOrdersRequest,
    LimitOrderRequest,
    MarketOrderRequest,
    ReplaceOrderRequest,
    StopLimitOrderRequest,
    StopOrderRequest,
)
from pydantic import ValidationError

from brokers.alpaca.credentials import Credentials
from brokers.alpaca.parsing import (
    BarRecord,
    OrderSnapshot,
    PositionRecord,
    bar_from_model,
    position_from_model,
    snapshot_from_order,
    to_decimal,
)
from brokers.alpaca.throttle import Backoff, TokenBucket
from brokers.alpaca.transport import (
    DATA_URL,
    LIVE_URL,
    PAPER_URL,
    ReadFailure,
    SubmitOutcome,
    ThrottledSession,
    api_status,
    classify_read_error,
    classify_submit_error,
    data_client,
    is_retryable_read_error,
    trading_client,
)
from brokers.alpaca.transport import describe as _describe
from ratchet.common.errors import (
    AmbiguousOrderError,
    BrokerError,
    ConfigError,
    RejectedError,
    RetryableError,
    UnknownStateError,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# Requests


@dataclass(frozen=True)
class OrderSpec:
    """One order as we send it (POST /v2/orders)."""

    client_order_id: str
    symbol: str
    side: OrderSide
    type: OrderType
    qty: Decimal
    time_in_force: TimeInForce
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    extended_hours: bool = False

    def to_request(self) -> Any:
        """The alpaca-py request model."""
        common: dict[str, Any] = {
            "symbol": self.symbol,
            "qty": float(self.qty),
            "side": self.side,
            "time_in_force": self.time_in_force,
            "client_order_id": self.client_order_id,
        }
        if self.extended_hours:
            common["extended_hours"] = True
        if self.type is OrderType.MARKET:
            return MarketOrderRequest(**common)
        if self.type is OrderType.LIMIT:
            return LimitOrderRequest(limit_price=float(self.limit_price or 0), **common)
        if self.type is OrderType.STOP:
            return StopOrderRequest(stop_price=float(self.stop_price or 0), **common)
        if self.type is OrderType.STOP_LIMIT:
            return StopLimitOrderRequest(stop_price=float(self.stop_price or 0),
                                         limit_price=float(self.limit_price or 0), **common)
        raise ValueError(f"order type {self.type} is not supported")

    def to_json(self) -> dict[str, Any]:
        """JSON-able form for the journal."""
        return {
            "client_order_id": self.client_order_id,
            "symbol": self.symbol,
            "side": self.side.value,
            "type": self.type.value,
            "qty": str(self.qty),
            "time_in_force": self.time_in_force.value,
            "limit_price": None if self.limit_price is None else str(self.limit_price),
            "stop_price": None if self.stop_price is None else str(self.stop_price),
            "extended_hours": self.extended_hours,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> OrderSpec:
        """Inverse of ``to_json``."""
        return cls(
            client_order_id=raw["client_order_id"],
            symbol=raw["symbol"],
            side=OrderSide(raw["side"]),
            type=OrderType(raw["type"]),
            qty=Decimal(raw["qty"]),
            time_in_force=TimeInForce(raw["time_in_force"]),
            limit_price=to_decimal(raw.get("limit_price")),
            stop_price=to_decimal(raw.get("stop_price")),
            extended_hours=bool(raw.get("extended_hours")),
        )


@dataclass(frozen=True)
class AccountInfo:
    """The account fields the broker uses."""

    cash: Decimal
    equity: Decimal
    buying_power: Decimal
    status: str
    trading_blocked: bool
    id: str = ""  # the account's UUID: state files and journals are tied to it
    account_number: str = ""


@dataclass(frozen=True)
class ClockInfo:
    """Alpaca's market clock (UTC-aware datetimes)."""

    timestamp: datetime
    is_open: bool
    next_open: datetime
    next_close: datetime


@dataclass(frozen=True)
class SessionDay:
    """One trading day of Alpaca's calendar; ``open``/``close`` are New York wall times."""

    date: date
    open: datetime
    close: datetime


class CancelResult(StrEnum):
    """Outcome of DELETE /v2/orders/{id}."""

    REQUESTED = "requested"  # 204: the cancel is on its way (confirm by status)
    ALREADY_DONE = "already_done"  # 422: the order is filled/canceled already (the race)
    NOT_FOUND = "not_found"  # 404


_TIMEFRAMES: dict[str, TimeFrame] = {
    "1Min": TimeFrame(1, TimeFrameUnit.Minute),
    "2Min": TimeFrame(2, TimeFrameUnit.Minute),
    "3Min": TimeFrame(3, TimeFrameUnit.Minute),
    "5Min": TimeFrame(5, TimeFrameUnit.Minute),
    "10Min": TimeFrame(10, TimeFrameUnit.Minute),
    "15Min": TimeFrame(15, TimeFrameUnit.Minute),
    "30Min": TimeFrame(30, TimeFrameUnit.Minute),
    "1Hour": TimeFrame(1, TimeFrameUnit.Hour),
    "1Day": TimeFrame(1, TimeFrameUnit.Day),
}


# ---------------------------------------------------------------------------------------------
# The client


class AlpacaClient:
    """alpaca-py's trading and market-data REST clients, made safe for unattended trading.

    Args:
        credentials: the key pair (never logged).
        base_url: trading REST root (``https://paper-api.alpaca.markets`` or a loopback
            server); market data uses ``data_url`` (defaults to ``base_url`` when that is not
            an Alpaca host, so one loopback server serves both).
        feed: market-data feed, ``iex`` or ``sip``.
        timeout: (connect, read) seconds per request.
        read_attempts: attempts per read before giving up.
        sleep: injectable for tests.
        rate_limit_max_wait: longest wait for an announced ``X-RateLimit-Reset`` (seconds).
    """

    def __init__(
        self,
        credentials: Credentials,
        base_url: str = PAPER_URL,
        data_url: str | None = None,
        feed: str = "iex",
        timeout: tuple[float, float] = (3.0, 10.0),
        read_attempts: int = 4,
        backoff_base: float = 0.25,
        sleep: Callable[[float], None] = time.sleep,
        trading_per_minute: float = 200.0,
        data_per_minute: float = 200.0,
        rate_limit_max_wait: float = 60.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        if data_url is None:
            data_url = DATA_URL if "alpaca.markets" in self.base_url else self.base_url
        self.data_url = data_url.rstrip("/")
        self.feed = DataFeed(feed)
        self.read_attempts = max(1, read_attempts)
        self.backoff_base = backoff_base
        self._sleep = sleep
        self.trading_bucket = TokenBucket(trading_per_minute, sleep=sleep, name="trading",
                                          max_block=rate_limit_max_wait)
        self.data_bucket = TokenBucket(data_per_minute, sleep=sleep, name="market data",
                                       max_block=rate_limit_max_wait)
        self.trading = trading_client(credentials, self.base_url,
                                      ThrottledSession(timeout, self.trading_bucket))
        self.data = data_client(credentials, self.data_url,
                                ThrottledSession(timeout, self.data_bucket))
        #: called with the client order id right before each POST /v2/orders (latency probe)
        self.on_submit: Callable[[str], None] | None = None
        self.submit_count = 0

    def __repr__(self) -> str:
        return f"AlpacaClient(base_url={self.base_url!r}, feed={self.feed.value!r})"

    # ----------------------------------------------------------------- reads with retry

    def _read(self, what: str, call: Callable[[], T], attempts: int | None = None) -> T:
        backoff = Backoff(base=self.backoff_base, cap=8.0)
        tries = attempts or self.read_attempts
        last: BaseException | None = None
        for attempt in range(tries):
            try:
                return call()
            except Exception as exc:
                failure = classify_read_error(exc)
                if failure in (ReadFailure.AUTH, ReadFailure.FORBIDDEN) \
                        and what in ("account", "clock"):
                    raise ConfigError(
                        f"Alpaca refused the keys ({api_status(exc)}) at {self.base_url}: "
                        "check APCA_API_KEY_ID / APCA_API_SECRET_KEY and the endpoint"
                    ) from None
                if failure is not ReadFailure.RETRYABLE:
                    raise
                last = exc
                if attempt + 1 < tries:
                    delay = backoff.next_delay()
                    logger.warning("%s read failed (%s); retry %d/%d in %.2fs", what,
                                   _describe(exc), attempt + 1, tries - 1, delay)
                    self._sleep(delay)
        raise RetryableError(f"{what}: {tries} attempts failed: {_describe(last)}")

    def get_account(self) -> AccountInfo:
        """GET /v2/account."""
        acct = self._read("account", self.trading.get_account)
        return AccountInfo(
            cash=to_decimal(acct.cash) or Decimal(0),
            equity=to_decimal(acct.equity) or to_decimal(acct.portfolio_value) or Decimal(0),
            buying_power=to_decimal(acct.buying_power) or Decimal(0),
            status=str(getattr(acct.status, "value", acct.status)),
            trading_blocked=bool(acct.trading_blocked),
            id=str(acct.id or ""),
            account_number=str(acct.account_number or ""),
        )

    def get_clock(self) -> ClockInfo:
        """GET /v2/clock (the broker's time: trading logic never reads the local clock)."""
        clock = self._read("clock", self.trading.get_clock)
        return ClockInfo(_aware(clock.timestamp), bool(clock.is_open), _aware(clock.next_open),
                         _aware(clock.next_close))

    def get_calendar(self, start: date, end: date) -> list[SessionDay]:
        """GET /v2/calendar for ``start..end`` (open/close are New York wall times)."""
        days = self._read("calendar", lambda: self.trading.get_calendar(
            GetCalendarRequest(start=start, end=end)))
        return [SessionDay(d.date, d.open, d.close) for d in days]

    def get_positions(self) -> list[PositionRecord]:
        """GET /v2/positions. A failed read raises ``UnknownStateError``, never ``[]``."""
        try:
            positions = self._read("positions", self.trading.get_all_positions)
        except (RetryableError, APIError, requests.RequestException) as exc:
            raise UnknownStateError(f"positions unknown: {_describe(exc)}") from None
        return [position_from_model(p) for p in positions]

    def get_open_orders(self) -> list[OrderSnapshot]:
        """GET /v2/orders?status=open. A failed read raises ``UnknownStateError``."""
        req = GetOrdersRequest(status=QueryOrderStatus.OPEN, limit=500, nested=False)
        try:
            orders = self._read("open orders", lambda: self.trading.get_orders(req))
        except (RetryableError, APIError, requests.RequestException) as exc:
            raise UnknownStateError(f"open orders unknown: {_describe(exc)}") from None
        return [snapshot_from_order(o) for o in orders]

    def get_orders_after(self, after: datetime) -> list[OrderSnapshot]:
        """GET /v2/orders?status=all&after=... (closed and open), oldest first."""
        req = GetOrdersRequest(status=QueryOrderStatus.ALL, limit=500, after=after,
                               direction=Sort.ASC, nested=False)
        try:
            orders = self._read("recent orders", lambda: self.trading.get_orders(req))
        except (RetryableError, APIError, requests.RequestException) as exc:
            raise UnknownStateError(f"recent orders unknown: {_describe(exc)}") from None
        return [snapshot_from_order(o) for o in orders]

    def get_order(self, order_id: str) -> OrderSnapshot | None:
        """GET /v2/orders/{id}; None when Alpaca says 404."""
        try:
            return snapshot_from_order(self._read(
                "order", lambda: self.trading.get_order_by_id(order_id)))
        except APIError as exc:
            if api_status(exc) == 404:
                return None
            raise

    def get_order_by_client_id(self, client_order_id: str,
                               attempts: int | None = None) -> OrderSnapshot | None:
        """GET /v2/orders:by_client_order_id; None when Alpaca says 404 (not found)."""
        try:
            return snapshot_from_order(self._read(
                "order lookup", lambda: self.trading.get_order_by_client_id(client_order_id),
                attempts))
        except APIError as exc:
            if api_status(exc) == 404:
                return None
            raise

    def get_bars(self, symbols: list[str], start: datetime, end: datetime | None,
                 interval: str = "1Min") -> dict[str, list[BarRecord]]:
        """GET /v2/stocks/bars (all pages) for ``start <= t <= end``, per symbol, sorted."""
        try:
            timeframe = _TIMEFRAMES[interval]
        except KeyError:
            raise ConfigError(f"interval {interval!r} has no Alpaca timeframe") from None
        req = StockBarsRequest(symbol_or_symbols=list(symbols), timeframe=timeframe,
                               start=start, end=end, feed=self.feed)
        barset = self._read("bars", lambda: self.data.get_stock_bars(req))
        out: dict[str, list[BarRecord]] = {s: [] for s in symbols}
        for symbol, bars in barset.data.items():
            out[symbol] = sorted((bar_from_model(b) for b in bars), key=lambda b: b.ts)
        return out

    # ----------------------------------------------------------------- writes

    def _lane(self, urgent: bool) -> contextlib.AbstractContextManager[None]:
        """The trading bucket's urgent lane for protective stops, else no change."""
        return self.trading_bucket.urgent() if urgent else contextlib.nullcontext()

    def submit_order(self, spec: OrderSpec) -> OrderSnapshot:
        """POST /v2/orders exactly once.

        Raises ``RejectedError`` when Alpaca definitely refused it and
        ``AmbiguousOrderError`` when it may exist (resolve by client order id).
        """
        request = spec.to_request()  # validation errors happen before anything is sent
        if self.on_submit is not None:
            self.on_submit(spec.client_order_id)
        self.submit_count += 1
        try:
            with self._lane(spec.type == "stop" and spec.side == "sell"):
                order = self.trading.submit_order(request)
        except Exception as exc:  # noqa: BLE001 - any SDK or transport error is classified below
            outcome = classify_submit_error(exc)
            text = _describe(exc)
            if outcome is SubmitOutcome.REJECTED:
                raise RejectedError(f"order {spec.client_order_id} rejected: {text}") from None
            error = AmbiguousOrderError(
                f"order {spec.client_order_id}: outcome unknown ({outcome.value}: {text})",
                spec.client_order_id)
            error.outcome = outcome  # type: ignore[attr-defined]
            raise error from None
        try:
            return snapshot_from_order(order)
        except (ValidationError, ValueError, TypeError) as exc:
            raise AmbiguousOrderError(
                f"order {spec.client_order_id}: unreadable response ({exc})",
                spec.client_order_id) from None

    def cancel_order(self, order_id: str, attempts: int = 3) -> CancelResult:
        """DELETE /v2/orders/{id}: idempotent, so transient failures are retried."""
        backoff = Backoff(base=self.backoff_base, cap=4.0)
        last: BaseException | None = None
        for attempt in range(attempts):
            try:
                self.trading.cancel_order_by_id(order_id)
                return CancelResult.REQUESTED
            except Exception as exc:  # noqa: BLE001 - any SDK or transport error is classified below
                status = api_status(exc)
                if status == 404:
                    return CancelResult.NOT_FOUND
                if status == 422:
                    return CancelResult.ALREADY_DONE
                if not is_retryable_read_error(exc):
                    raise BrokerError(f"cancel {order_id} failed: {_describe(exc)}") from None
                last = exc
                if attempt + 1 < attempts:
                    self._sleep(backoff.next_delay())
        raise RetryableError(f"cancel {order_id}: {attempts} attempts failed: {_describe(last)}")

    def replace_order(self, order_id: str, new_client_order_id: str,
                      stop_price: Decimal | None = None, limit_price: Decimal | None = None,
                      qty: Decimal | None = None) -> OrderSnapshot:
        """PATCH /v2/orders/{id} once: returns the NEW order (new id, ``replaces`` = old).

        Raises ``RejectedError`` (e.g. 422: the old order is no longer open) or
        ``AmbiguousOrderError`` (look up ``new_client_order_id``).
        """
        fields: dict[str, Any] = {"client_order_id": new_client_order_id}
        if stop_price is not None:
            fields["stop_price"] = float(stop_price)
        if limit_price is not None:
            fields["limit_price"] = float(limit_price)
        if qty is not None:
            fields["qty"] = int(qty)
        try:
            # a stop's ratchet or resize (no limit price): protective, never queued
            with self._lane(limit_price is None):
                order = self.trading.replace_order_by_id(order_id,
                                                         ReplaceOrderRequest(**fields))
        except Exception as exc:  # noqa: BLE001 - any SDK or transport error is classified below
            outcome = classify_submit_error(exc)
            if outcome is SubmitOutcome.REJECTED:
                raise RejectedError(f"replace {order_id} refused: {_describe(exc)}") from None
            raise AmbiguousOrderError(f"replace {order_id}: outcome unknown: {_describe(exc)}",
                                      new_client_order_id) from None
        return snapshot_from_order(order)


def _aware(when: datetime) -> datetime:
    from datetime import UTC

    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


# Re-exported for the callers that knew them here before transport.py existed.
__all__ = [
    "DATA_URL",
    "LIVE_URL",
    "PAPER_URL",
    "AccountInfo",
    "AlpacaClient",
    "CancelResult",
    "ClockInfo",
    "OrderSpec",
    "SessionDay",
    "SubmitOutcome",
    "classify_submit_error",
]
