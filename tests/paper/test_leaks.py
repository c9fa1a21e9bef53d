"""API keys never appear in logs, the audit trail, state files, the journal or output.

The keys are SENTINEL values; the CLI runs as a subprocess with -vv (debug log file) in both
modes and once with a wrong secret (the error path).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from brokers.alpaca_sim.testing import SimServer
from tests.paper.conftest import REPO, SENTINEL_KEY, SENTINEL_SECRET


def _run(sim: SimServer, root: Path, *extra: str, secret: str = SENTINEL_SECRET,
         ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "APCA_API_KEY_ID": SENTINEL_KEY, "APCA_API_SECRET_KEY": secret}
    args = [sys.executable, "cli.py", "paper", "--base-url", sim.base_url, "--symbols",
            "ACME,BOLT", "--state-dir", str(root / "state"), "--log-dir", str(root / "logs"),
            "--out", str(root / "runs"), "--once", "-vv", *extra]
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def _assert_clean(root: Path, *texts: str, secrets: tuple[str, ...]) -> int:
    checked = 0
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for s in secrets:
                assert s.encode() not in data, f"{s[:4]}… leaked into {path}"
            checked += 1
    for text in texts:
        for s in secrets:
            assert s not in text
    return checked


def test_keys_never_leak_dry_run_and_live(sim: SimServer, tmp_path: Path) -> None:
    dry = _run(sim, tmp_path)
    assert dry.returncode == 0, dry.stderr[-2000:]
    live = _run(sim, tmp_path, "--live", "--confirm-live")
    assert live.returncode == 0, live.stderr[-2000:]
    files = _assert_clean(tmp_path, dry.stdout, dry.stderr, live.stdout, live.stderr,
                          secrets=(SENTINEL_KEY, SENTINEL_SECRET))
    assert files >= 5  # state, audit, log, journal, run folder files were all checked
    assert (tmp_path / "logs" / "audit_trail.csv").is_file()
    assert list((tmp_path / "logs").glob("trading_*.log"))
    assert "keys SE…91 from " in " ".join(dry.stdout.split())  # masked, never a repr


def test_wrong_secret_error_names_no_key(sim: SimServer, tmp_path: Path) -> None:
    wrong = "SENTINEL-WRONG-SECRET-42"
    bad = _run(sim, tmp_path, "--live", "--confirm-live", secret=wrong)
    assert bad.returncode != 0
    assert "error:" in bad.stderr and "keys" in bad.stderr
    _assert_clean(tmp_path, bad.stdout, bad.stderr, secrets=(SENTINEL_KEY, wrong))


def test_alert_urls_never_leak(sim: SimServer, tmp_path: Path) -> None:
    """Alert URLs carry tokens and passwords: delivered to, never written anywhere."""
    import threading

    from tests.alerts.conftest import ALERT_TOKEN, SMTP_PASSWORD, SmtpReceiver, WebhookReceiver

    env = {**os.environ, "APCA_API_KEY_ID": SENTINEL_KEY, "APCA_API_SECRET_KEY": SENTINEL_SECRET}
    done = threading.Event()

    def market() -> None:  # the stepped sim moves on until the bot has its two bars
        while not done.wait(0.3):
            sim.advance(minutes=1)

    ticker = threading.Thread(target=market, daemon=True)
    with WebhookReceiver() as hook, SmtpReceiver() as mail:
        ticker.start()
        live = subprocess.run(
            [sys.executable, "cli.py", "paper", "--base-url", sim.base_url, "--symbols",
             "ACME,BOLT", "--state-dir", str(tmp_path / "state"), "--log-dir",
             str(tmp_path / "logs"), "--out", str(tmp_path / "runs"), "--max-steps", "2",
             "-vv", "--live", "--confirm-live", "--alert", hook.url, "--alert", mail.url],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        done.set()
        assert live.returncode == 0, live.stderr[-2000:]
        assert hook.wait_for(1)
    titles = " ".join(m["title"] + " " + m["message"] for m in hook.received)
    assert "session started (live)" in titles and "--max-steps 2 reached" in titles
    assert mail.messages
    assert "alerts (all) to json #1, mailto #2" in live.stdout
    files = _assert_clean(tmp_path, live.stdout, live.stderr,
                          secrets=(SENTINEL_KEY, SENTINEL_SECRET, ALERT_TOKEN, SMTP_PASSWORD))
    assert files >= 5
    log = next((tmp_path / "logs").glob("trading_*.log")).read_text()
    assert "apprise" in log  # Apprise's own records reached the debug log, redacted
