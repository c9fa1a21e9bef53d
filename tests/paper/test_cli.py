"""``cli.py paper`` safety rails: real money refused, --live needs YES, keys required; the
help text, --fractional refused, SIGHUP, the dashboard at 80 columns."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

from brokers.alpaca.broker import BrokerView
from brokers.alpaca.client import ClockInfo
from brokers.alpaca.store import StoreStatus
from brokers.alpaca_sim.testing import SimServer
from ratchet.commands.paper_view import Dashboard
from ratchet.engine.paper import Snapshot
from tests.paper.conftest import REPO, SENTINEL_KEY, SENTINEL_SECRET, wait_until


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


def test_help_describes_paper_not_backtest() -> None:
    """Regression (finding 5): ``--symbols`` said "[every symbol in --data]" (paper has no
    --data) and ``--interval`` listed 1Day, which paper refuses."""
    out = _cli("--help")
    text = " ".join(out.stdout.split())
    assert "--data]" not in text and "1Day" not in text
    assert "with--sim:everysymbolin--sim-data" in text.replace(" ", "")  # click wraps it


def test_fractional_is_refused_in_one_line() -> None:
    """Finding 10: fractional quantities need DAY orders, but the resting stop is GTC (and
    a stop PATCH sends a whole qty): refused before anything connects."""
    out = _cli("--fractional", "--base-url", "http://127.0.0.1:9", env=KEYS)
    assert out.returncode != 0
    assert "--fractional" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_sim_refuses_fractional_before_starting_anything(tmp_path: Path) -> None:
    """Regression: `paper --sim --fractional` started the loopback server and printed the
    rehearsal banner and state folder before refusing (the check ran in the session)."""
    out = _cli("--sim", "--fractional", "--state-dir", str(tmp_path / "state"),
               "--log-dir", str(tmp_path / "logs"))
    assert out.returncode == 2 and "--fractional" in out.stderr
    assert out.stdout == "" and not (tmp_path / "state").exists(), out.stdout


def test_sighup_stops_as_cleanly_as_ctrl_c(sim: SimServer, tmp_path: Path) -> None:
    """Regression (finding 5): SIGHUP (terminal or ssh session closed) killed the bot without
    the graceful shutdown INT/TERM get: now the state is saved and the exit code is 0."""
    env = {**os.environ, "APCA_API_KEY_ID": SENTINEL_KEY, "APCA_API_SECRET_KEY": SENTINEL_SECRET}
    state = tmp_path / "state" / "portfolio_state.json"
    args = [sys.executable, "cli.py", "paper", "--live", "--confirm-live", "--base-url",
            sim.base_url, "--symbols", "ACME", "--state-dir", str(tmp_path / "state"),
            "--log-dir", str(tmp_path / "logs"), "--out", str(tmp_path / "runs")]
    bot = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_until(state.exists, timeout=60)
        first = state.stat().st_mtime_ns
        bot.send_signal(signal.SIGHUP)
        output, _ = bot.communicate(timeout=60)
    finally:
        if bot.poll() is None:
            bot.kill()
    assert bot.returncode == 0, output[-2000:]
    assert "SIGHUP: finishing the current step" in output
    assert "Paper session summary" in output and state.stat().st_mtime_ns >= first


def test_dashboard_header_fits_80_columns() -> None:
    """Regression (finding 5): the header was one 5-column table row that wrapped into an
    unreadable block at 80 columns. Every line now fits, each fact on one line."""
    from rich.console import Console

    now = datetime(2025, 10, 3, 22, 10, tzinfo=UTC)
    clock = ClockInfo(now, False, datetime(2025, 10, 6, 13, 30, tzinfo=UTC),
                      datetime(2025, 10, 6, 20, 0, tzinfo=UTC))
    stream = SimpleNamespace(name="market data", state=SimpleNamespace(value="live"),
                             connects=3)
    trading = SimpleNamespace(name="trade_updates", state=SimpleNamespace(value="live"),
                              connects=1)
    store = SimpleNamespace(
        status=StoreStatus(last_bar=datetime(2025, 10, 3, 19, 59, tzinfo=UTC), steps=390,
                           state="live"),
        clock=SimpleNamespace(last=clock), now=lambda: now,
        stream_statuses=lambda: [stream, trading])
    view = BrokerView(123_456.78, 1_234_567.89, {}, {}, [])
    buf = io.StringIO()
    console = Console(file=buf, width=80, force_terminal=False, color_system=None)
    board = Dashboard(console, start_value=1_200_000.0)
    console.print(board.render(Snapshot("live", "https://paper-api.alpaca.markets", store,  # type: ignore[arg-type]
                                         view, {})))
    lines = buf.getvalue().splitlines()
    assert all(len(line) <= 80 for line in lines)
    head = "\n".join(lines[:5])
    assert "LIVE (paper account)  https://paper-api.alpaca.markets" in head
    assert "value 1,234,567.89   cash 123,456.78   P&L +34,567.89" in head
    assert "last bar 2025-10-03 15:59 NY   steps 390   data live" in head  # New York time
    assert "market closed; opens Mon 2025-10-06 09:30 EDT (in 63h 20m)" in head
    assert "streams: market data live (3x), trade_updates live (1x)" in head
