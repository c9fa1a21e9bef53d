"""``python cli.py alpaca-sim`` as a subprocess: it starts, prints its URLs, answers
/v2/clock, can be stepped over HTTP, stops on SIGTERM, and refuses a bad --data in one line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.sim.conftest import REPO


def test_cli_serves_and_stops() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "ALPACA_SIM_SECRET": "s1-secret"}
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "cli.py"), "alpaca-sim", "--port", "0", "--speed", "0",
         "--key", "k1"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while not any(line.startswith("Ctrl-C") for line in lines):
            assert time.monotonic() < deadline and proc.poll() is None, lines
            assert proc.stdout is not None
            lines.append(proc.stdout.readline())
        out = "".join(lines)
        base = re.search(r"REST: +(http://127\.0\.0\.1:\d+)", out).group(1)  # type: ignore[union-attr]
        assert f"ws://{base[7:]}/v2/iex" in out and f"ws://{base[7:]}/stream" in out
        assert "url_override" in out and "s1-secret" not in out
        keys = {"APCA-API-KEY-ID": "k1", "APCA-API-SECRET-KEY": "s1-secret"}
        clock = requests.get(f"{base}/v2/clock", headers=keys, timeout=10)
        assert clock.status_code == 200
        assert clock.json()["timestamp"] == "2025-10-03T09:30:00-04:00"
        assert requests.get(f"{base}/v2/clock", timeout=10).status_code == 403
        step = requests.post(f"{base}/_sim/advance", json={"minutes": 2}, headers=keys,
                             timeout=10)
        assert step.json()["now"].startswith("2025-10-03T13:32:00")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "alpaca-sim stopped" in out


def test_cli_bad_data_is_one_line_and_nonzero(tmp_path: object) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "cli.py"), "alpaca-sim", "--data",
                           "/no/such/folder"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 3
    assert proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("error: data folder /no/such/folder does not exist")
    assert "Traceback" not in proc.stderr


def test_cli_bad_start_is_one_line() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "cli.py"), "alpaca-sim", "--start",
                           "yesterday"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --start 'yesterday' is not a time")


def test_cli_secret_never_on_argv(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Regression (issue 11.8): ``--secret`` put the server's secret in argv (ps shows it).
    It is refused; ``--secret-file`` (warned when others can read it) or the env work."""
    from click.testing import CliRunner

    from ratchet.commands.sim import _secret, alpaca_sim

    secret_file = tmp_path / "secret"
    secret_file.write_text("from-a-file\n")
    secret_file.chmod(0o644)
    assert _secret(secret_file, None) == "from-a-file"
    assert "readable by other users" in caplog.text and "chmod 600" in caplog.text
    assert "from-a-file" not in caplog.text
    result = CliRunner().invoke(alpaca_sim, ["--secret", "s3cr3t-value"])
    assert result.exit_code != 0
    assert "--secret on the command line shows in ps" in str(result.exception)
    assert "s3cr3t-value" not in str(result.exception) + result.output


def _started(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, str(REPO / "cli.py"), "alpaca-sim", *args],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline and proc.poll() is None
        assert proc.stdout is not None
        found = re.search(r"REST: +(http://127\.0\.0\.1:\d+)", proc.stdout.readline())
        if found:
            return proc, found.group(1)


def test_cli_state_survives_sigkill(tmp_path: Path) -> None:
    """Issue 11.3: ``alpaca-sim --state FILE`` killed with SIGKILL and started again keeps
    the account, its orders and positions and the replay time, like Alpaca; a broken state
    file is one line and stays as it was."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    keys = {"APCA-API-KEY-ID": "test-key", "APCA-API-SECRET-KEY": "test-secret"}
    state = tmp_path / "sim.json"
    args = ["--port", "0", "--speed", "0", "--state", str(state)]
    proc, base = _started(args, env)
    try:
        order = requests.post(f"{base}/v2/orders", headers=keys, timeout=10, json={
            "symbol": "ACME", "qty": 3, "side": "buy", "type": "market",
            "time_in_force": "day", "client_order_id": "kept-1"}).json()
        requests.post(f"{base}/_sim/advance", json={"minutes": 2}, headers=keys, timeout=10)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    proc, base = _started(args, env)
    try:
        again = requests.get(f"{base}/v2/orders:by_client_order_id", headers=keys,
                             params={"client_order_id": "kept-1"}, timeout=10).json()
        assert (again["id"], again["status"]) == (order["id"], "filled")
        pos = requests.get(f"{base}/v2/positions/ACME", headers=keys, timeout=10).json()
        assert pos["qty"] == "3"
        clock = requests.get(f"{base}/v2/clock", headers=keys, timeout=10).json()
        assert clock["timestamp"] == "2025-10-03T09:32:00-04:00"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    from click.testing import CliRunner

    from ratchet.commands.sim import alpaca_sim

    state.write_text("{not json")
    result = CliRunner().invoke(alpaca_sim, ["--state", str(state), "--speed", "0"])
    assert result.exit_code != 0 and "\n" not in str(result.exception)
    assert "not a readable alpaca-sim state" in str(result.exception)
    assert state.read_text() == "{not json"
