"""Alerts through Apprise to real receivers on loopback (JSON webhook, SMTP), and the parts
that turn a session's records into events."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from alerts.config import alert_settings
from alerts.dispatch import AlertDispatcher, DispatchConfig
from alerts.events import AlertEvent, Category, ListSink
from alerts.sources import AuditAlerts, SessionMonitor
from analyzers.audit import Audit
from ratchet.common.config import load_settings
from ratchet.common.errors import ConfigError
from ratchet.common.logs import REDACTOR
from tests.alerts.conftest import ALERT_TOKEN, SMTP_PASSWORD, SmtpReceiver, WebhookReceiver

REPO = Path(__file__).resolve().parents[2]
FAST = DispatchConfig(timeout=2.0, retries=2, backoff=0.05, gather=0.05, min_interval=0.0)


def _fill(n: int, symbol: str = "ACME") -> AlertEvent:
    return AlertEvent("entry_fill", Category.FILL, f"{symbol} BUY {n} @ 10.00 filled",
                      f"bought {n}", datetime(2025, 10, 3, 14, n % 60, tzinfo=UTC), symbol)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_json_webhook_and_email_receive_the_alert(webhook: WebhookReceiver,
                                                  smtp: SmtpReceiver) -> None:
    d = AlertDispatcher([webhook.url, smtp.url], "all", prefix="ratchet SIM: ",
                        config=FAST).start()
    d.emit(_fill(1))
    assert webhook.wait_for(1)
    counts = d.close(timeout=5.0)
    assert counts["sent"] == 2 and counts["failed"] == 0
    msg = webhook.received[0]
    assert msg["title"] == "ratchet SIM: ACME BUY 1 @ 10.00 filled"
    assert msg["message"] == "bought 1" and msg["type"] == "success"
    assert webhook.paths == [f"/hook/{ALERT_TOKEN}"]
    assert len(smtp.messages) == 1
    assert smtp.messages[0]["Subject"] == "ratchet SIM: ACME BUY 1 @ 10.00 filled"
    assert smtp.messages[0]["To"] == "me@example.com"


def test_a_burst_becomes_one_message_and_order_is_kept(webhook: WebhookReceiver) -> None:
    """Rate limit: events queued while the endpoint may not be called join one message."""
    cfg = DispatchConfig(timeout=2.0, retries=0, gather=0.2, min_interval=0.3)
    d = AlertDispatcher([webhook.url], "all", config=cfg).start()
    for i in range(1, 6):
        d.emit(_fill(i))
    assert webhook.wait_for(1)
    d.emit(_fill(6, "BOLT"))
    d.emit(AlertEvent("stop_lost", Category.PROBLEM, "BOLT protective stop canceled"))
    assert webhook.wait_for(2)
    d.close(timeout=3.0)
    first, second = webhook.received
    assert first["title"] == "ratchet: 5 events (5 fills)"
    assert [line.split()[2] for line in first["message"].splitlines()] == ["ACME"] * 5
    assert first["message"].splitlines()[0].endswith("ACME BUY 1 @ 10.00 filled: bought 1")
    assert second["title"] == "ratchet: 2 events (1 fill, 1 problem)"
    assert second["type"] == "warning"  # a problem in the batch makes the message a warning


def test_level_filters_categories(webhook: WebhookReceiver) -> None:
    d = AlertDispatcher([webhook.url], "problems", config=FAST).start()
    d.emit(_fill(1))
    d.emit(AlertEvent("daily_summary", Category.INFO, "daily summary"))
    d.emit(AlertEvent("order_rejected", Category.PROBLEM, "ACME order rejected"))
    assert webhook.wait_for(1)
    d.close(timeout=3.0)
    assert [m["title"] for m in webhook.received] == ["ratchet: ACME order rejected"]
    with pytest.raises(ConfigError):
        AlertDispatcher([], "loud")


def test_dead_endpoint_is_logged_once_and_emit_never_waits(
        caplog: pytest.LogCaptureFixture) -> None:
    dead = f"json://127.0.0.1:{_closed_port()}/hook/{ALERT_TOKEN}"
    d = AlertDispatcher([dead], "all", config=FAST).start()
    with caplog.at_level(logging.DEBUG):
        worst = 0.0
        for i in range(3):
            t0 = time.perf_counter()
            d.emit(_fill(i))
            worst = max(worst, time.perf_counter() - t0)
            time.sleep(0.4)  # each event its own message: three failing sends
        counts = d.close(timeout=3.0)
    assert worst < 0.01
    assert counts["failed"] == 3 and counts["sent"] == 0
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING
                and r.name.startswith("alerts")]
    assert len(warnings) == 1 and "json #1" in warnings[0].getMessage()
    assert all(r.levelno <= logging.DEBUG for r in caplog.records if r.name == "apprise")
    text = "\n".join(REDACTOR.redact(r.getMessage()) for r in caplog.records)
    assert ALERT_TOKEN not in text


def test_hanging_receiver_never_holds_up_the_caller() -> None:
    with WebhookReceiver(delay=3.0) as slow:
        cfg = DispatchConfig(timeout=0.3, retries=1, backoff=0.05, gather=0.0)
        d = AlertDispatcher([slow.url], "all", config=cfg).start()
        t0 = time.perf_counter()
        for i in range(50):
            d.emit(_fill(i))
        emitted = time.perf_counter() - t0
        t1 = time.monotonic()
        counts = d.close(timeout=0.5)
        closed = time.monotonic() - t1
    assert emitted < 0.05
    assert closed < 1.5  # the worker stuck on the hanging endpoint is left behind
    assert counts["sent"] == 0


def test_audit_rows_become_events_with_pnl_and_no_duplicates() -> None:
    sink = ListSink()
    audit = Audit()
    audit.listeners.append(AuditAlerts(sink))
    t = datetime(2025, 10, 3, 14, 1, tzinfo=UTC)
    audit.record(t, "decision", "ACME", "buy", "signal", qty=10, price=100.0)
    audit.record(t, "fill", "ACME", "buy", "entry", qty=10, price=100.0,
                 client_order_id="ratchet-ACME-e")
    audit.record(t, "fill", "ACME", "sell", "stop", qty=10, price=98.0,
                 client_order_id="ratchet-ACME-s")
    audit.record(t, "trade", "ACME", "close", "trail", qty=10, price=98.0,
                 client_order_id="ratchet-ACME-s", pnl=-20.0)
    audit.record(t, "order", "BOLT", "rejected", "entry", qty=5, client_order_id="c1")
    audit.record(t, "broker", "BOLT", "rejected", "rejected by Alpaca", qty=5,
                 client_order_id="c1")
    audit.record(t, "decision", "CRUX", "replace_lost_stop", "canceled", client_order_id="c2")
    audit.record(t, "reconcile", "", "reconcile", "market data reconnect",
                 detail="reconciled: OrderUpdate=1")
    audit.record(t, "reconcile", "ECHO", "place_stop", "missing_stop", qty=7, price=9.5,
                 client_order_id="c4", outcome="rejected")
    audit.record(t, "fill", "DYNA", "sell", "exit", qty=3, price=50.0, client_order_id="c3")
    audit.listeners[0].flush()
    kinds = [(e.kind, e.symbol) for e in sink.events]
    assert kinds == [("entry_fill", "ACME"), ("exit_fill", "ACME"), ("order_rejected", "BOLT"),
                     ("stop_lost", "CRUX"), ("reconcile", ""), ("stop_not_placed", "ECHO"),
                     ("exit_fill", "DYNA")]
    assert "unprotected" in sink.events[5].body
    exit_ = sink.events[1]
    assert exit_.fields["pnl"] == -20.0 and exit_.fields["reason"] == "trail"
    assert "P&L -20.00" in exit_.title
    assert "market data reconnect" in sink.events[4].title
    assert "not closed yet" in sink.events[6].body


def test_monitor_stream_down_up_and_daily_summary() -> None:
    sink = ListSink()
    market = SimpleNamespace(name="market data", state="live", last_error="")
    now = {"t": datetime(2025, 10, 3, 19, 0, tzinfo=UTC)}
    mon = SessionMonitor(sink, lambda: [market], lambda: now["t"],
                         lambda day: datetime(day.year, day.month, day.day, 20, tzinfo=UTC),
                         down_after=30.0)
    mon.on_state({"broker_time": now["t"].isoformat(), "value": 1000.0})
    mon.check_streams(mono=0.0)
    market.state = "backoff"
    mon.check_streams(mono=1.0)
    mon.check_streams(mono=20.0)
    assert sink.events == []  # a short drop is no alert
    mon.check_streams(mono=32.0)
    market.state = "live"
    mon.check_streams(mono=40.0)
    assert [e.kind for e in sink.events] == ["stream_down", "stream_up"]
    assert "39 s" in sink.events[1].body
    mon.check_close()
    assert len(sink.events) == 2  # 15:00 New York: not closed yet
    now["t"] = datetime(2025, 10, 3, 20, 0, 30, tzinfo=UTC)
    mon.on_state({"broker_time": now["t"].isoformat(), "value": 1012.5, "cash": 500.0,
                  "positions": {"ACME": {"qty": 5, "avg_price": 100.0}},
                  "stops": {"ACME": {"price": 97.0}}})
    mon.check_close()
    mon.check_close()
    summary = sink.events[2:]
    assert [e.kind for e in summary] == ["daily_summary"]
    assert summary[0].title == f"daily summary {date(2025, 10, 3).isoformat()}"
    assert "day P&L +12.50" in summary[0].body and "ACME 5 @ 100.00, stop 97.00" in \
        summary[0].body


def test_alerts_in_the_config_file_are_not_settings(tmp_path: Path) -> None:
    cfg = tmp_path / "my.toml"
    cfg.write_text(f'max_positions = 3\nalerts = ["json://127.0.0.1:1/{ALERT_TOKEN}"]\n'
                   'alert_level = "fills"\n')
    settings = load_settings(cfg, environ={})
    assert settings.max_positions == 3
    assert ALERT_TOKEN not in str(settings.to_dict())
    assert alert_settings(cfg, environ={}) == ([f"json://127.0.0.1:1/{ALERT_TOKEN}"], "fills")
    assert alert_settings(cfg, ["ntfy://a"], "problems", environ={}) == (["ntfy://a"],
                                                                         "problems")
    assert alert_settings(None, environ={"RATCHET_ALERTS": "ntfy://a ntfy://b"})[0] == \
        ["ntfy://a", "ntfy://b"]


def test_alert_test_command_says_what_arrived(webhook: WebhookReceiver) -> None:
    dead = f"mailto://bot:{SMTP_PASSWORD}@127.0.0.1:{_closed_port()}?smtp=127.0.0.1" \
           "&from=bot@example.com&to=me@example.com&mode=insecure"
    out = subprocess.run([sys.executable, "cli.py", "alert-test", webhook.url, dead,
                          "--timeout", "2", "-vv"], cwd=REPO, capture_output=True, text=True,
                         timeout=60, env={**os.environ})
    assert out.returncode == 1, out.stderr
    assert "json #1: delivered" in out.stdout
    assert "mailto #2: NOT delivered" in out.stdout
    assert webhook.received[0]["title"] == "ratchet: test alert"
    for secret in (ALERT_TOKEN, SMTP_PASSWORD):
        assert secret not in out.stdout + out.stderr


def test_a_url_apprise_cannot_use_is_one_line_without_the_url() -> None:
    bad = subprocess.run([sys.executable, "cli.py", "alert-test", f"bogus://{ALERT_TOKEN}/x"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: alert URL bogus #1 is not a URL Apprise can send to")
    assert "Traceback" not in bad.stderr and ALERT_TOKEN not in bad.stdout + bad.stderr


def test_redaction_keeps_host_names_of_alert_urls_readable() -> None:
    """Regression: ``smtp=127.0.0.1`` in a mailto URL was registered as a secret, so the
    state file's endpoint became ``http://***:PORT`` and the next run refused its own state
    directory (StateOwnerError)."""
    from alerts.dispatch import register_secrets

    register_secrets(f"mailto://bot:{SMTP_PASSWORD}@127.0.0.1:2525?smtp=127.0.0.1"
                     "&from=bot@example.com&to=me@example.com&mode=insecure"
                     "&token=SENTINEL-QUERY-TOKEN-1")
    text = "endpoint http://127.0.0.1:8765 mode insecure"
    assert REDACTOR.redact(text) == text
    assert REDACTOR.redact(f"x {SMTP_PASSWORD} SENTINEL-QUERY-TOKEN-1") == "x *** ***"
