"""Alpaca's error responses as one exception type.

Alpaca answers every refused request with a non-2xx status and a JSON body
``{"code": <int>, "message": "<text>", ...extra}`` (Trading API "Errors" page; the codes used
here are the ones real servers send, see ``alpaca-spec/CONTRACT.md`` section 6).
"""

from __future__ import annotations

from typing import Any

#: Alpaca's error codes by meaning.
CODE_VALIDATION = 40010001
CODE_UNAUTHORIZED = 40110000
CODE_FORBIDDEN = 40310000
CODE_NOT_FOUND = 40410000
CODE_UNPROCESSABLE = 42210000
CODE_RATE_LIMIT = 42910000
CODE_INTERNAL = 50010000


class ApiError(Exception):
    """A refusal the server turns into ``status`` + ``{"code", "message", **extra}``."""

    def __init__(self, status: int, code: int | None, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        """The JSON body Alpaca would send."""
        out: dict[str, Any] = dict(self.extra)
        if self.code is not None:
            out["code"] = self.code
        out["message"] = self.message
        return out


def validation(message: str, **extra: Any) -> ApiError:
    """422 with code 40010001: a missing or malformed request field."""
    return ApiError(422, CODE_VALIDATION, message, **extra)


def unprocessable(message: str, **extra: Any) -> ApiError:
    """422 with code 42210000: well-formed but refused in the current market state."""
    return ApiError(422, CODE_UNPROCESSABLE, message, **extra)


def forbidden(message: str, **extra: Any) -> ApiError:
    """403 with code 40310000: buying power, quantity or account restrictions."""
    return ApiError(403, CODE_FORBIDDEN, message, **extra)


def not_found(message: str) -> ApiError:
    """404 with code 40410000."""
    return ApiError(404, CODE_NOT_FOUND, message)


def bad_request(message: str) -> ApiError:
    """400 with code 40010001 (market-data parameter errors)."""
    return ApiError(400, CODE_VALIDATION, message)
