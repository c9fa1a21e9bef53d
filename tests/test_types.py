"""The product code type-checks (mypy, configured in setup.cfg: signatures everywhere,
``warn_unused_ignores``). A pytest test rather than a CI step, so it runs in parallel with
the rest of the suite under xdist."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_mypy_clean() -> None:
    # The mypy of this interpreter (the test extra); its cache stays in the repo's
    # .mypy_cache (gitignored), so a developer's second run is incremental.
    proc = subprocess.run([sys.executable, "-m", "mypy", "--no-error-summary"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
