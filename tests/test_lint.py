"""The tree is ruff clean (the same check a developer runs: ruff check .)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_ruff_clean() -> None:
    # The ruff installed next to this interpreter (the test extra), else one on PATH.
    local = Path(sys.executable).with_name("ruff")
    ruff = str(local) if local.exists() else shutil.which("ruff") or "ruff"
    proc = subprocess.run([ruff, "check", "--quiet", str(REPO)], capture_output=True, text=True,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cli_help_lists_every_command() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "cli.py"), "--help"], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 0
    for name in ("backtest", "paper", "alpaca-sim", "data", "report", "train"):
        assert name in proc.stdout


#: Modules other issue-14 branches are splitting (iss14b, iss14p): tools/drop_unused_loggers.py
#: runs on them after those merges (then this tuple is emptied).
LOGGER_PENDING: tuple[str, ...] = ()


def test_no_module_defines_a_logger_it_never_uses() -> None:
    """docs/DEVELOPING.md: a logger in every module that logs, and only there."""
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import drop_unused_loggers
    finally:
        sys.path.remove(str(REPO / "tools"))
    found = drop_unused_loggers.offenders([], LOGGER_PENDING)
    assert not found, f"unused loggers (python tools/drop_unused_loggers.py fixes them): {found}"
