"""Alerts from a paper rehearsal against the loopback Alpaca: the expected messages arrive
in order, and a receiver that hangs or refuses changes not a single order."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alerts.dispatch import AlertDispatcher, DispatchConfig
from analyzers import load_run
from brokers.alpaca.credentials import Credentials
from brokers.alpaca_sim.testing import SimServer
from tests.alerts.conftest import SmtpReceiver, WebhookReceiver
from tests.paper.conftest import session

MINUTES = 45
CFG = DispatchConfig(timeout=1.0, retries=1, backoff=0.05, gather=0.05, min_interval=0.0)


def _orders(sim: SimServer) -> list[tuple[Any, ...]]:
    with sim.market.lock:
        return sorted((o.client_order_id, o.side, o.type, str(o.qty), str(o.limit_price),
                       str(o.stop_price), o.status, str(o.filled_qty), str(o.filled_avg_price))
                      for o in sim.market.orders.values())


def test_rehearsal_delivers_fills_and_stop_in_order(book: Any, creds: Credentials,
                                                    tmp_path: Path) -> None:
    """The session's last 80 minutes: fills with their P&L in order, then the daily summary
    after the close, then the stop message, at a JSON webhook and by e-mail."""
    sim = SimServer(book=book, key=creds.key_id, secret=creds.secret_key,
                    start=datetime(2025, 10, 3, 18, 40, tzinfo=UTC), rate_limit=10**6).start()
    try:
        with WebhookReceiver() as hook, SmtpReceiver() as mail:
            alerts = AlertDispatcher([hook.url, mail.url], "all", prefix="ratchet SIM: ",
                                     config=CFG).start()
            result = session(sim, creds, tmp_path, 80, alerts=alerts)
            counts = alerts.close(timeout=10.0)
    finally:
        sim.stop()
    assert counts["failed"] == 0 and counts["dropped"] == 0
    lines = [line for m in hook.received for line in
             (m["message"].splitlines() if " events (" in m["title"] else
              [f"{m['title']}: {m['message']}"])]
    text = "\n".join(lines)
    run = load_run(result.run_dir)
    fills = run.audit[run.audit.kind == "fill"]
    buys = fills[fills.action == "buy"]
    assert len(buys) >= 2 and len(run.trades) >= 1
    # every entry fill and every closed trade (with its P&L), in the order they happened
    expected = []
    for r in run.audit.itertuples():
        if r.kind == "fill" and r.action == "buy":
            expected.append(f"{r.symbol} BUY {float(r.qty):g} @ {float(r.price):,.2f} filled")
        elif r.kind == "trade":
            pnl = json.loads(r.detail)["pnl"]
            expected.append(f"{r.symbol} SELL {float(r.qty):g} @ {float(r.price):,.2f} "
                            f"filled ({r.reason}), P&L {pnl:+,.2f}")
    got = [next(i for i, line in enumerate(lines) if e in line) for e in expected]
    assert got == sorted(got), text
    assert "session started (live)" in lines[0]
    assert "daily summary 2025-10-03" in lines[-2] and "day P&L" in lines[-2]
    assert "bot stopping" in lines[-1] and "end of the rehearsal" in lines[-1]
    assert f"{result.steps} bar steps" in lines[-1]
    # the e-mail receiver got the same events in the same order (batched its own way: the
    # SMTP endpoint is slower, so more of a burst waits for it and joins one message)
    mail_text = "\n".join(_plain(m) for m in mail.messages)
    at = [mail_text.find(e) for e in expected]
    assert -1 not in at and at == sorted(at), mail_text


def _plain(message: Any) -> str:
    parts = message.walk() if message.is_multipart() else [message]
    for part in parts:
        if part.get_content_type() == "text/plain":
            body = part.get_payload(decode=True).decode("utf-8")
            return f"{message['Subject']}\n{body}"
    return str(message["Subject"])


def test_hanging_and_refusing_receivers_change_no_order(book: Any, creds: Credentials,
                                                        tmp_path: Path) -> None:
    """Two identical rehearsals: one alerting to a receiver that hangs 3 s per message and
    one that answers 500, one with alerts off. The orders at the broker are identical."""
    from tests.paper.conftest import REPLAY_START, SENTINEL_KEY, SENTINEL_SECRET

    runs = []
    for with_alerts in (False, True):
        sim = SimServer(book=book, key=SENTINEL_KEY, secret=SENTINEL_SECRET,
                        start=REPLAY_START, rate_limit=10**6).start()
        try:
            if with_alerts:
                with WebhookReceiver(delay=3.0) as slow, WebhookReceiver(status=500) as bad:
                    alerts = AlertDispatcher([slow.url, bad.url], "all",
                                             config=DispatchConfig(timeout=0.5, retries=2,
                                                                   backoff=0.1, gather=0.0,
                                                                   min_interval=0.0)).start()
                    result = session(sim, creds, tmp_path / "alerts", MINUTES, alerts=alerts)
                    counts = alerts.close(timeout=0.5)
                assert counts["sent"] == 0 and counts["failed"] >= 1
                assert bad.received  # it was called, and refused
            else:
                result = session(sim, creds, tmp_path / "plain", MINUTES)
            runs.append((_orders(sim), result))
        finally:
            sim.stop()
    (plain, r0), (alerted, r1) = runs
    assert len(plain) >= 4
    assert alerted == plain
    assert r1.steps == r0.steps == MINUTES
