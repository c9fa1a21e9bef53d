"""Where the repository and its bundled sample bars live (one definition for every command)."""

from __future__ import annotations

from pathlib import Path

#: The repository root (the folder holding cli.py).
REPO_ROOT = Path(__file__).resolve().parents[2]
#: The bundled SYNTHETIC sample bars: <interval>/<SYMBOL>.parquet.
BUNDLED_BARS = REPO_ROOT / "data" / "bars"
