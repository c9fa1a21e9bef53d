"""``python cli.py ...`` from a checkout: the same program as the installed
``ratchet`` command, whose code is ``ratchet/cli.py`` (this file is not installed)."""

from __future__ import annotations

from ratchet.cli import COMMANDS, LazyGroup, cli, console, main

__all__ = ["COMMANDS", "LazyGroup", "cli", "console", "main"]

if __name__ == "__main__":
    console(prog_name="cli.py")
