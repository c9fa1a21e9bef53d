"""Terminal output that fits: tables that stack instead of cutting values, plain text when piped.

Rules (docs/CONTRACTS.md, "Terminal output"): in a terminal every line fits its width
(``COLUMNS`` or the real width); a table too wide for it is printed as one block per row
(``key: value`` pairs) and never truncated. When stdout is not a terminal the text is plain
(no colour, no box characters) and complete: a table is aligned columns, as wide as its
longest values, unless ``COLUMNS`` asks for a width (then it stacks the same way).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from typing import IO

GAP = "  "


def out_width(stream: IO[str] | None = None) -> int | None:
    """Columns to fit: ``COLUMNS`` if set, the terminal's width, or None (piped: no limit)."""
    cols = os.environ.get("COLUMNS", "")
    if cols.isdigit() and int(cols) > 0:
        return int(cols)
    stream = stream or sys.stdout
    if hasattr(stream, "isatty") and stream.isatty():
        return shutil.get_terminal_size((80, 24)).columns
    return None


def is_terminal(stream: IO[str] | None = None) -> bool:
    """True when ``stream`` (stdout) is an interactive terminal."""
    stream = stream or sys.stdout
    return bool(hasattr(stream, "isatty") and stream.isatty())


def fit(text: str, width: int | None, indent: str = "") -> list[str]:
    """``text`` wrapped at spaces to ``width``; a word longer than a line stays whole."""
    if width is None or len(text) <= width:
        return [text]
    lines: list[str] = []
    line = ""
    for word in text.split(" "):
        candidate = f"{line} {word}" if line else word
        if len(candidate) <= width or not line:
            line = candidate
        else:
            lines.append(line)
            line = indent + word
    if line:
        lines.append(line)
    return lines


def kv_lines(pairs: Sequence[tuple[str, str]], width: int | None) -> list[str]:
    """``key   value`` rows; a value that does not fit goes whole on the next line."""
    if not pairs:
        return []
    keyw = max(len(k) for k, _ in pairs)
    out: list[str] = []
    for key, value in pairs:
        line = f"{key:<{keyw}}{GAP}{value}"
        if width is None or len(line) <= width:
            out.append(line.rstrip())
        else:
            out.append(key)
            out.extend(fit("    " + value, width, "    "))
    return out


def table_lines(headers: Sequence[str], rows: Sequence[Sequence[str]],
                width: int | None, right: Sequence[int] = (), key_cols: int = 1) -> list[str]:
    """An aligned plain-text table, or (too wide for ``width``) one block per row: the
    first ``key_cols`` cells as a heading, then ``header: value`` pairs filling lines."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    total = sum(widths) + len(GAP) * (len(widths) - 1)
    if width is None or total <= width:
        def line(cells: Sequence[str]) -> str:
            return GAP.join(c.rjust(w) if i in right else c.ljust(w)
                            for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

        return [line(headers), line(["-" * w for w in widths]), *[line(r) for r in rows]]
    out: list[str] = []
    for r in rows:
        out.append(" ".join(r[:key_cols]))
        cur = ""
        for h, v in zip(headers[key_cols:], r[key_cols:], strict=True):
            item = f"  {h}: {v}"
            if len(cur) + len(item) <= width or not cur:
                cur += item
            else:
                out.append(cur)
                cur = item
        if cur.strip():
            out.append(cur)
    return out
