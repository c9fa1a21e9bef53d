"""Remove ``logger = logging.getLogger(__name__)`` from modules that never use it (and the
``import logging`` it needed), issue 14 point 9. The rule (docs/DEVELOPING.md): a logger in
every module that logs, none in a module that does not.

``python tools/drop_unused_loggers.py [PATH...]`` fixes the tracked ``*.py`` files (all, or
those under the given paths) and prints each file it changed; ``--check`` only lists them
(exit 1 if any). Deterministic and idempotent.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFINITION = re.compile(r"(?m)^logger = logging\.getLogger\(__name__\)\n")
IMPORT = re.compile(r"(?m)^import logging\n")


def unused_logger(text: str) -> bool:
    """True when the module defines the module logger and never refers to it again."""
    return bool(DEFINITION.search(text)) and len(re.findall(r"\blogger\b", text)) == 1


def fixed(text: str) -> str:
    """``text`` without the unused logger (and without ``import logging`` if now unused)."""
    # the line and one of the blank lines around it (imports, one blank line, the next code)
    text = re.sub(r"\n\nlogger = logging\.getLogger\(__name__\)\n(?=\n)", "\n", text, count=1)
    text = DEFINITION.sub("", text, count=1)
    text = re.sub(r"\n\n\n\n+", "\n\n\n", text)
    if not re.search(r"(?<![\w.])logging\.", IMPORT.sub("", text)):  # no other use of it
        text = IMPORT.sub("", text, count=1)
    return text


def python_files(paths: list[str]) -> list[Path]:
    """Tracked ``*.py`` files under ``paths`` (the whole tree when empty), sorted."""
    out = subprocess.run(["git", "ls-files", "--", *(paths or ["."])], cwd=ROOT, check=True,  # noqa: S603,S607 # git from PATH, fixed arguments
                         capture_output=True, text=True).stdout
    return sorted(ROOT / p for p in out.splitlines() if p.endswith(".py"))


def offenders(paths: list[str], skip: tuple[str, ...] = ()) -> list[Path]:
    """Files with an unused module logger, except those under a ``skip`` prefix."""
    found = []
    for path in python_files(paths):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(skip) or rel == "tools/drop_unused_loggers.py":
            continue
        if unused_logger(path.read_text(encoding="utf-8")):
            found.append(path)
    return found


def main(argv: list[str] | None = None) -> int:
    """Fix (or, with ``--check``, list) the offending files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", help="files or folders (default: the whole tree)")
    parser.add_argument("--check", action="store_true", help="list offenders, change nothing")
    args = parser.parse_args(argv)
    found = offenders(args.paths)
    for path in found:
        rel = path.relative_to(ROOT)
        if args.check:
            print(f"{rel}: unused logger")
        else:
            path.write_text(fixed(path.read_text(encoding="utf-8")), encoding="utf-8")
            print(f"removed the unused logger of {rel}")
    if not found:
        print("no unused loggers")
    return 1 if args.check and found else 0


if __name__ == "__main__":
    sys.exit(main())
