"""notebooks/analysis.ipynb: stored clean, and executed on a fresh backtest run so it cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from analyzers import load_run
from tests.report.conftest import REPO

NOTEBOOK = REPO / "notebooks" / "analysis.ipynb"


def outputs_text(cell: nbformat.NotebookNode) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        parts.append(out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def by_tag(nb: nbformat.NotebookNode, tag: str) -> nbformat.NotebookNode:
    cells = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, tag
    return cells[0]


def test_notebook_is_stored_with_outputs_cleared() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    assert all(c.outputs == [] and c.execution_count is None for c in code)


def execute(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> nbformat.NotebookNode:
    """Run the stored notebook on ``run_dir``; nbclient raises on the first failing cell."""
    # The kernel inherits this environment; jupyter_client starts the "python3" kernel with
    # this interpreter (the venv's), where the repo packages are installed in editable mode.
    monkeypatch.setenv("RATCHET_RUN_DIR", str(run_dir))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, kernel_name="python3", timeout=120,
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    assert [o for o in outputs if o.output_type == "error"] == []
    # Warnings (pandas deprecations, time zone trouble) are rot in the making.
    assert [o.text for o in outputs if o.get("name") == "stderr"] == []
    return nb


def test_notebook_runs_on_a_fresh_run(real_runs: list[Path],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = real_runs[0]
    run = load_run(run_dir)
    nb = execute(run_dir, monkeypatch)
    # The one-line load picked the run named by RATCHET_RUN_DIR.
    assert f"Run({run.name}: {len(run.trades)} trades" in outputs_text(by_tag(nb, "load"))
    # Charts: equity, drawdown, daily returns, a trade with its stop.
    pngs = [o for c in nb.cells for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})]
    assert len(pngs) >= 4
    # The drawdown recomputed with pandas agrees with stats.json.
    line = re.search(r"max drawdown (-?[\d.]+)% .* \(stats.json: (-?[\d.]+)%\)",
                     outputs_text(by_tag(nb, "drawdown")))
    assert line and line.group(1) == line.group(2)
    # The one-month run has a single monthly cell: October 2025.
    assert "2025" in outputs_text(by_tag(nb, "returns"))
    # Exit reasons table lists each reason of trades.parquet with its count.
    reasons = outputs_text(by_tag(nb, "exit-reasons"))
    for reason, n in run.trades["exit_reason"].value_counts().items():
        assert re.search(rf"^{reason}\s+{n}\s", reasons, flags=re.M), (reason, reasons)
    assert f"{len(run.trades)} trades" in outputs_text(by_tag(nb, "trades"))


def test_notebook_runs_on_a_run_without_trades(real_empty_run: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    nb = execute(real_empty_run, monkeypatch)
    assert "0 trades" in outputs_text(by_tag(nb, "load"))
    assert "no trades in this run" in outputs_text(by_tag(nb, "trade-plot"))
