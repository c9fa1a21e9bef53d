"""Request parsing and response helpers shared by the REST modules.

Follows ``alpaca-spec/CONTRACT.md`` section 2: numbers arrive as JSON numbers or numeric
strings, query booleans as ``True``/``true``/``1``, datetimes as RFC-3339 (``Z``, offsets,
naive = UTC, up to nanoseconds) or ``YYYY-MM-DD``; errors leave as ``{"code", "message"}``.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from brokers.alpaca_sim import errors
from brokers.alpaca_sim.calendar import ny_midnight_ns, to_ns

if TYPE_CHECKING:
    from brokers.alpaca_sim.context import SimContext

#: Where handlers find the server they run in (``server.SimApp`` sets it to itself).
SIM: web.AppKey[SimContext] = web.AppKey("alpaca_sim", object)  # type: ignore[arg-type]

_FRACTION = re.compile(r"(\.\d{6})\d+")
_DAY_NS = 86_400_000_000_000


def state(request: web.Request) -> SimContext:
    """The simulator serving this request."""
    return request.app[SIM]


def dumps(data: Any) -> str:
    """Compact JSON (what Alpaca sends)."""
    return json.dumps(data, separators=(",", ":"))


def ok(data: Any, status: int = 200) -> web.Response:
    """A JSON response."""
    return web.json_response(data, status=status, dumps=dumps)


def error_response(exc: errors.ApiError) -> web.Response:
    """Alpaca's error response for ``exc``."""
    return web.json_response(exc.body(), status=exc.status, dumps=dumps)


def error_for_status(status: int, message: str | None = None) -> errors.ApiError:
    """A generic Alpaca error for an HTTP status (code = status x 100000 + 10000)."""
    default = {
        400: "bad request", 401: "request is not authorized", 403: "forbidden",
        404: "not found", 422: "unprocessable entity", 429: "rate limit exceeded",
        500: "internal server error", 502: "bad gateway", 503: "service unavailable",
        504: "gateway timeout",
    }.get(status, "error")
    return errors.ApiError(status, status * 100_000 + 10_000, message or default)


def number(value: Any, name: str) -> float | None:
    """A JSON number or numeric string -> float (None stays None); 422 otherwise."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise errors.validation(f"invalid {name}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise errors.validation(f"invalid {name}") from None
    if not math.isfinite(out):
        raise errors.validation(f"invalid {name}")
    return out


def boolean(value: Any, default: bool = False) -> bool:
    """``True``/``true``/``1`` (query strings or JSON) -> bool."""
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("true", "1", "yes")


def integer(value: str | None, name: str, default: int, lo: int, hi: int,
            status: int = 422) -> int:
    """A bounded integer query parameter."""
    if value is None or value == "":
        return default
    try:
        out = int(value)
    except ValueError:
        raise errors.ApiError(status, errors.CODE_VALIDATION, f"invalid {name}") from None
    if not lo <= out <= hi:
        raise errors.ApiError(status, errors.CODE_VALIDATION,
                              f"invalid {name}: must be between {lo} and {hi}")
    return out


def time_param(value: str | None, name: str, end_of_day: bool = False,
               status: int = 422) -> int | None:
    """RFC-3339 or ``YYYY-MM-DD`` (New York day; its end when ``end_of_day``) -> UTC ns."""
    if value is None or value == "":
        return None
    text = value.strip().replace(" ", "+") if "T" in value else value.strip()
    try:
        if len(text) == 10:
            d = date.fromisoformat(text)
            start = ny_midnight_ns(d)
            return start + _DAY_NS - 1 if end_of_day else start
        dt = datetime.fromisoformat(_FRACTION.sub(r"\1", text.replace("Z", "+00:00")))
    except ValueError:
        raise errors.ApiError(status, errors.CODE_VALIDATION, f"invalid {name}: {value}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return to_ns(dt)


def date_param(value: str | None, name: str) -> date | None:
    """``YYYY-MM-DD`` (or an RFC-3339 time, its date) -> date."""
    if not value:
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        raise errors.ApiError(400, errors.CODE_VALIDATION, f"invalid {name}: {value}") from None


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body (422 when it is not one)."""
    try:
        body = await request.json(loads=json.loads)
    except ValueError:
        raise errors.validation("request body format is invalid") from None
    if not isinstance(body, dict):
        raise errors.validation("request body format is invalid")
    return body
