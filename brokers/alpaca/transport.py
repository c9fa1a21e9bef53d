"""The one Alpaca transport: alpaca-py's REST clients on a paced, timed session, and the
classification of their failures into the named errors of ``ratchet/common/errors.py``.

Used by the live path (``brokers/alpaca/client.py``: trading and market data) and by
``data download`` (``feeds/download.py``: market data), so both read the same keys files
(``credentials.py``), pace requests with a throttle of ``throttle.py`` and see the same
errors. What it adds to the SDK (see ../shared/alpaca-spec/CONTRACT.md, "Retries"):

* Every request gets a timeout (the SDK sets none) and passes through a throttle (a
  ``TokenBucket`` per lane for the live path, the download's ``RateLimiter``) that sees every
  response, including ``X-RateLimit-*``, 429s and connection errors.
* The SDK's own retry loop is switched off for the live path (``sdk_retry=False``): it
  re-POSTs ``/v2/orders`` on 429/504, which duplicates an order the server already accepted.
  The download keeps it for its idempotent GETs, without its fixed 3-second sleep (the
  throttle does the waiting).
* ``api_status``/``api_message``/``describe`` read an alpaca-py failure;
  ``classify_submit_error`` decides what a failed POST /v2/orders means;
  ``classify_read_error`` what a failed read means.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

import requests
from pydantic import ValidationError

from brokers.alpaca.credentials import Credentials

# the endpoints are defined once, beside the live run's settings that default to them
from ratchet.common.alpaca_config import DATA_URL as DATA_URL
from ratchet.common.alpaca_config import LIVE_URL as LIVE_URL
from ratchet.common.alpaca_config import PAPER_URL as PAPER_URL

if TYPE_CHECKING:
    from alpaca.data.historical import StockHistoricalDataClient
    from alpaca.trading.client import TradingClient



# ---------------------------------------------------------------------------------------------
# Session and clients


class Throttle(Protocol):
    """What the session needs from a rate limiter (``TokenBucket``, ``RateLimiter``)."""

    def acquire(self) -> Any:
        """Wait until one request may be sent."""

    def observe(self, status: int | None, headers: Mapping[str, str]) -> None:
        """Learn from a response (``status=None``: the request failed on the network)."""


class ThrottledSession(requests.Session):
    """requests.Session with a default timeout and a throttle (set as the SDK's session)."""

    def __init__(self, timeout: tuple[float, float], throttle: Throttle) -> None:
        super().__init__()
        self.timeout = timeout
        self.throttle = throttle

    def request(self, method: str | bytes, url: str | bytes, *args: Any,
                **kwargs: Any) -> requests.Response:
        """Send one request: paced, with the default timeout, the outcome observed."""
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout  # a hung server would block forever
        self.throttle.acquire()
        try:
            response = super().request(method, url, *args, **kwargs)  # type: ignore[arg-type] # requests' stub narrows what Session.request accepts
        except requests.RequestException:
            self.throttle.observe(None, {})
            raise
        self.throttle.observe(response.status_code, response.headers)
        return response


def install_session(client: Any, session: ThrottledSession, *, sdk_retry: bool = False) -> None:
    """Make an alpaca-py REST client send through ``session``.

    Private attributes of ``alpaca.common.rest.RESTClient`` (0.44.0). ``sdk_retry=False``
    turns the SDK's retry loop off: it re-sends POST /v2/orders on 429/504, exactly the
    duplicate the live path must never create. Either way its fixed sleep is off.
    """
    if not sdk_retry:
        client._retry = 0
        client._retry_codes = []
    client._retry_wait = 0
    client._session = session


def trading_client(credentials: Credentials, base_url: str,
                   session: ThrottledSession) -> TradingClient:
    """alpaca-py's ``TradingClient`` at ``base_url`` on ``session`` (no SDK retry)."""
    from alpaca.trading.client import TradingClient

    client = TradingClient(credentials.key_id, credentials.secret_key,
                           paper=base_url.rstrip("/") != LIVE_URL, url_override=base_url)
    install_session(client, session)
    return client


def data_client(credentials: Credentials, data_url: str | None, session: ThrottledSession, *,
                raw_data: bool = False, sdk_retry: bool = False) -> StockHistoricalDataClient:
    """alpaca-py's ``StockHistoricalDataClient`` at ``data_url`` (None: Alpaca's) on
    ``session``; ``raw_data`` returns JSON dicts instead of models."""
    from alpaca.data.historical import StockHistoricalDataClient

    client = StockHistoricalDataClient(credentials.key_id, credentials.secret_key,
                                       raw_data=raw_data, url_override=data_url)
    install_session(client, session, sdk_retry=sdk_retry)
    return client


# ---------------------------------------------------------------------------------------------
# Reading failures


def api_status(exc: BaseException) -> int | None:
    """HTTP status of an alpaca-py ``APIError`` (None for other errors)."""
    from alpaca.common.exceptions import APIError

    if isinstance(exc, APIError):
        try:
            return exc.status_code
        except Exception:  # noqa: BLE001 - the SDK property may fail on odd responses
            return None
    return None


def api_message(exc: BaseException) -> str:
    """The ``message`` of an Alpaca error body, else the exception text (shortened)."""
    text = str(exc)
    try:
        body = json.loads(text)
        if isinstance(body, dict) and body.get("message"):
            return str(body["message"])
    except (ValueError, TypeError):
        pass
    return text[:200]


#: HTTP statuses worth asking again (throttled, timed out, server trouble).
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def is_retryable_status(status: int | None) -> bool:
    """429, 408 and every 5xx: the request may succeed if sent again later."""
    return status is not None and (status in RETRY_STATUS or status >= 500)


class SubmitOutcome(StrEnum):
    """What a failed POST /v2/orders means."""

    REJECTED = "rejected"  # Alpaca definitely refused it: nothing was created
    AMBIGUOUS = "ambiguous"  # it may exist: look it up by client order id
    EXISTS = "exists"  # "client_order_id must be unique": it exists, look it up
    RATE_LIMITED = "rate_limited"  # 429: refused before processing; confirm by lookup


def classify_submit_error(exc: BaseException) -> SubmitOutcome:
    """Classify a failed order submission. One row per case in the tests.

    Anything we cannot prove was refused is AMBIGUOUS: the order is then looked up by its
    client order id, never sent again.
    """
    status = api_status(exc)
    if status is None:
        return SubmitOutcome.AMBIGUOUS  # timeout, reset, refused connection, bad body...
    message = api_message(exc).lower()
    if "client_order_id" in message and "unique" in message:
        return SubmitOutcome.EXISTS
    if status == 429:
        return SubmitOutcome.RATE_LIMITED
    if status >= 500 or status == 408:
        return SubmitOutcome.AMBIGUOUS
    if 400 <= status < 500:
        return SubmitOutcome.REJECTED
    return SubmitOutcome.AMBIGUOUS


class ReadFailure(StrEnum):
    """What a failed GET means (a read has no side effect, so retrying is always safe)."""

    AUTH = "auth"  # 401: the keys (or the endpoint) are wrong -> ConfigError
    FORBIDDEN = "forbidden"  # 403: the plan or the account forbids it -> ConfigError
    RETRYABLE = "retryable"  # 408/429/5xx, network, a malformed body -> RetryableError
    REJECTED = "rejected"  # another 4xx: the request itself is wrong -> no retry


def classify_read_error(exc: BaseException) -> ReadFailure:
    """Classify a failed read; one row per case in the tests."""
    status = api_status(exc)
    if status == 401:
        return ReadFailure.AUTH
    if status == 403:
        return ReadFailure.FORBIDDEN
    if status is not None:
        return ReadFailure.RETRYABLE if is_retryable_status(status) else ReadFailure.REJECTED
    if isinstance(exc, (requests.RequestException, OSError, ValidationError, ValueError)):
        return ReadFailure.RETRYABLE
    return ReadFailure.REJECTED


def is_retryable_read_error(exc: BaseException) -> bool:
    """Transient read failures: timeouts, connection errors, 429 and 5xx."""
    return classify_read_error(exc) is ReadFailure.RETRYABLE


def describe(exc: BaseException | None) -> str:
    """A short, key-free description of a failure for messages and logs."""
    if exc is None:
        return "no error"
    status = api_status(exc)
    if status is not None:
        return f"HTTP {status} {api_message(exc)}"
    network = network_reason(exc)
    if network is not None:
        return network
    return f"{type(exc).__name__}: {str(exc)[:160]}"


#: Substrings of socket errors -> the words a user needs.
_NETWORK_REASONS: tuple[tuple[str, str], ...] = (
    ("Connection refused", "connection refused: is the server running at that address?"),
    ("Name or service not known", "unknown host name"),
    ("nodename nor servname", "unknown host name"),
    ("Temporary failure in name resolution", "host name lookup failed: check the network"),
    ("timed out", "the connection timed out"),
    ("Network is unreachable", "network unreachable"),
    ("Connection reset", "the connection was reset"),
)


def network_reason(exc: BaseException) -> str | None:
    """``cannot connect to HOST:PORT (why)`` for a socket-level failure, else None: the
    urllib3 repr chain (``HTTPConnectionPool(host=..., port=...): Max retries ...``) is
    long and was cut mid-word in error messages."""
    text = " ".join(str(e) for e in (exc, exc.__cause__, exc.__context__) if e is not None)
    m = re.search(r"host='([^']+)', port=(\d+)", text)
    where = f"{m.group(1)}:{m.group(2)}" if m else "the server"
    for needle, why in _NETWORK_REASONS:
        if needle in text:
            return f"cannot connect to {where} ({why})"
    if "ConnectionError" in type(exc).__name__ or "NewConnectionError" in text:
        return f"cannot connect to {where}"
    return None
