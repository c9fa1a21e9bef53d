"""``cli.py paper`` safety rails: real money refused, --live needs YES, keys required."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.paper.conftest import REPO


def _cli(*args: str, env: dict[str, str] | None = None,
         stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("APCA_")}
    full.update(env or {})
    return subprocess.run([sys.executable, "cli.py", "paper", *args], cwd=REPO, env=full,
                          capture_output=True, text=True, timeout=60, input=stdin)


KEYS = {"APCA_API_KEY_ID": "AKTESTCLI1234", "APCA_API_SECRET_KEY": "SKTESTCLI5678"}


def test_real_money_endpoint_is_refused_without_the_explicit_flag() -> None:
    out = _cli("--live", "--confirm-live", "--base-url", "https://api.alpaca.markets", env=KEYS)
    assert out.returncode != 0
    assert "REAL MONEY" in out.stderr and "--i-understand-real-money" in out.stderr
    dry = _cli("--base-url", "https://api.alpaca.markets", env=KEYS)
    assert dry.returncode != 0 and "REAL MONEY" in dry.stderr


def test_live_needs_a_typed_yes_when_not_interactive() -> None:
    out = _cli("--live", "--base-url", "http://127.0.0.1:9", env=KEYS, stdin="YES\n")
    assert out.returncode != 0
    assert "--confirm-live" in out.stderr


def test_missing_keys_are_named() -> None:
    out = _cli("--base-url", "http://127.0.0.1:9")
    assert out.returncode != 0
    assert "APCA_API_KEY_ID" in out.stderr and "APCA_API_SECRET_KEY" in out.stderr


def test_help_lists_the_options() -> None:
    out = _cli("--help")
    assert out.returncode == 0
    for flag in ("--live", "--once", "--dashboard", "--symbols", "--interval", "--risk",
                 "--verbose", "--sim", "--base-url", "--confirm-live",
                 "--i-understand-real-money"):
        assert flag in out.stdout


def test_daily_interval_is_refused_with_the_reason() -> None:
    out = _cli("--interval", "1Day", "--base-url", "http://127.0.0.1:9", env=KEYS)
    assert out.returncode != 0 and "minute bars" in out.stderr
