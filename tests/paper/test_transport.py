"""``brokers/alpaca/transport.py``: the one Alpaca transport of the live path and of ``data
download`` (failure classes one row per case; the session's pacing and timeout)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
import requests
from alpaca.common.exceptions import APIError

from brokers.alpaca.transport import (
    ReadFailure,
    ThrottledSession,
    classify_read_error,
    describe,
    install_session,
    is_retryable_read_error,
)


def _api_error(status: int, message: str = "boom") -> APIError:
    resp = requests.Response()
    resp.status_code = status
    body = json.dumps({"code": status * 100, "message": message})
    resp._content = body.encode()
    return APIError(body, requests.HTTPError(response=resp))


@pytest.mark.parametrize(("exc", "failure"), [
    (_api_error(401), ReadFailure.AUTH),
    (_api_error(403), ReadFailure.FORBIDDEN),
    (_api_error(404), ReadFailure.REJECTED),
    (_api_error(422), ReadFailure.REJECTED),
    (_api_error(408), ReadFailure.RETRYABLE),
    (_api_error(429), ReadFailure.RETRYABLE),
    (_api_error(500), ReadFailure.RETRYABLE),
    (_api_error(501), ReadFailure.RETRYABLE),
    (_api_error(504), ReadFailure.RETRYABLE),
    (requests.ConnectionError("refused"), ReadFailure.RETRYABLE),
    (requests.ReadTimeout("timed out"), ReadFailure.RETRYABLE),
    (ValueError("bad json"), ReadFailure.RETRYABLE),
    (RuntimeError("a bug"), ReadFailure.REJECTED),
])
def test_read_failures(exc: BaseException, failure: ReadFailure) -> None:
    assert classify_read_error(exc) is failure
    assert is_retryable_read_error(exc) is (failure is ReadFailure.RETRYABLE)


def test_describe_keeps_the_api_message() -> None:
    assert describe(_api_error(403, "subscription does not permit")) == (
        "HTTP 403 subscription does not permit")
    assert describe(None) == "no error"


class _Recorder:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def acquire(self) -> None:
        self.events.append("acquire")

    def observe(self, status: int | None, headers: Mapping[str, str]) -> None:
        self.events.append(status)


def test_session_paces_times_out_and_reports_network_failures() -> None:
    """Every request asks the throttle first and reports its outcome, a refused connection
    as ``None`` (the download's limiter backs off on it)."""
    throttle = _Recorder()
    session = ThrottledSession((0.5, 0.5), throttle)
    with pytest.raises(requests.ConnectionError):
        session.get("http://127.0.0.1:9/v2/account")
    assert throttle.events == ["acquire", None]


def test_install_session_turns_the_sdk_retry_off_unless_asked() -> None:
    from alpaca.data.historical import StockHistoricalDataClient

    session = ThrottledSession((1.0, 1.0), _Recorder())
    live = StockHistoricalDataClient("k", "s")
    install_session(live, session)
    assert (live._retry, live._retry_codes, live._retry_wait) == (0, [], 0)
    assert live._session is session
    download = StockHistoricalDataClient("k", "s")
    install_session(download, session, sdk_retry=True)
    assert download._retry > 0 and download._retry_wait == 0
