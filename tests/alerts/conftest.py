"""Real alert receivers on loopback: an HTTP server for Apprise's JSON webhook (``json://``)
and an SMTP server (aiosmtpd) for e-mail (``mailto://``)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

ALERT_TOKEN = "SENTINEL-ALERT-TOKEN-5f2e9a"
SMTP_PASSWORD = "SENTINELMAILPASS77"


class WebhookReceiver:
    """Collects the JSON bodies POSTed to it; ``delay`` makes it slow, ``status`` refuse."""

    def __init__(self, delay: float = 0.0, status: int = 200) -> None:
        self.received: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.delay = delay
        self.status = status
        self.event = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if receiver.delay:
                    time.sleep(receiver.delay)
                receiver.paths.append(self.path)
                receiver.received.append(json.loads(body or b"{}"))
                receiver.event.set()
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The Apprise URL (the path carries a sentinel "token")."""
        return f"json://127.0.0.1:{self.port}/hook/{ALERT_TOKEN}"

    def wait_for(self, n: int, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.received) >= n:
                return True
            time.sleep(0.02)
        return len(self.received) >= n

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    """A JSON webhook receiver on a free loopback port."""
    with WebhookReceiver() as r:
        yield r


class SmtpReceiver:
    """An aiosmtpd server that accepts one login and keeps the messages."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        self.messages: list[Any] = []
        outer = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any,
                                  envelope: Any) -> str:
                from email import message_from_bytes

                outer.messages.append(message_from_bytes(envelope.content))
                return "250 OK"

        def authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                          auth_data: Any) -> Any:
            ok = isinstance(auth_data, LoginPassword) and \
                auth_data.password.decode() == SMTP_PASSWORD
            return AuthResult(success=ok)

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port,
                                     authenticator=authenticator, auth_require_tls=False)

    @property
    def url(self) -> str:
        """An Apprise mailto:// URL for this server (plain SMTP, with a login)."""
        return (f"mailto://bot:{SMTP_PASSWORD}@127.0.0.1:{self.port}?smtp=127.0.0.1"
                f"&from=bot@example.com&to=me@example.com&mode=insecure")

    def __enter__(self) -> SmtpReceiver:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


@pytest.fixture
def smtp() -> Iterator[SmtpReceiver]:
    """An SMTP receiver on a free loopback port."""
    with SmtpReceiver() as r:
        yield r
