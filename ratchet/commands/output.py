"""The CLI's output: a rich console that never wraps or cuts piped text, and plain lines.

The layout rules and helpers (``fit``, ``kv_lines``, ``table_lines``, ``out_width``) live in
``ratchet.common.terminal`` (library code that returns printable text uses them too); the command
modules import them from here with the rest of their output.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ratchet.common.terminal import GAP, fit, is_terminal, kv_lines, out_width, table_lines

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["GAP", "console", "echo_lines", "fit", "is_terminal", "kv_lines", "out_width",
           "table_lines"]


def console(stderr: bool = False) -> Console:
    """A rich Console for stdout (or stderr) that never wraps or cuts text when piped."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = out_width(stream)
    if is_terminal(stream):
        return Console(stderr=stderr, width=width)
    # Piped: plain text; a fixed width only when COLUMNS asks for one.
    return Console(stderr=stderr, width=width or 1000, no_color=True, highlight=False,
                   soft_wrap=width is None, emoji=False)


def echo_lines(lines: Sequence[str]) -> None:
    """Print lines to stdout exactly as given (the CLI's output)."""
    import click

    for line in lines:
        click.echo(line)
