"""Move the generic top-level packages ``common`` and ``commands`` (and ``cli.py``'s code) under
one ``ratchet`` package, and rewrite every reference to them (issue 14, point 7).

Run from anywhere: ``python tools/rename_internal.py`` (``--dry-run`` prints what would
change). It is deterministic and idempotent: a second run changes nothing and says so.

What it does, in order:

1. ``git mv common ratchet/common`` and ``git mv commands ratchet/commands`` (creates
   ``ratchet/__init__.py``); ``git mv cli.py ratchet/cli.py`` and writes a small ``cli.py`` shim
   at the top so ``python cli.py ...`` keeps working from a checkout (not installed).
2. Rewrites every tracked text file (code, tests, benchmarks, docs, setup.cfg, ruff.toml):
   ``from common.x import`` / ``import commands.y`` / dotted names in strings (``-m`` module
   paths, monkeypatch targets, logger names, ``attr:`` in setup.cfg, ``[mypy-common.*]``),
   file paths (``commands/paper.py``, ``common/*.py``, ``REPO / "commands"``), and the package
   list and console script in setup.cfg. Dotted names are only rewritten when the next part is
   a real module of the moved package, so ``alpaca.common.exceptions`` or a local variable
   named ``common`` are left alone.

Afterwards reinstall (``.venv/bin/pip install -e '.[test]'``): an editable install made
before the move does not know the ``ratchet`` package.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NEW = "ratchet"
MOVED = ("common", "commands", "engine")
#: files never rewritten: this script, vendored third-party files, data
SKIP = (re.compile(r"^tools/rename_internal\.py$"), re.compile(r"^tests/sim/alpaca-spec/"),
        re.compile(r"^data/"), re.compile(r"\.(parquet|npz|png|jpg|ico|gz|zip|pkl|skops)$"))

PACKAGE_INIT = (
    '"""ratchet: the project\'s own code that has no place in the design-card folders\n'
    "(``ratchet.common``: settings, errors, logging, files; ``ratchet.engine``: backtest and\n"
    "paper sessions as a library; ``ratchet.commands``: the CLI commands; ``ratchet.cli``: the\n"
    '``ratchet`` console command)."""\n'
)

CLI_SHIM = '''"""``python cli.py ...`` from a checkout: the same program as the installed
``ratchet`` command, whose code is ``ratchet/cli.py`` (this file is not installed)."""

from __future__ import annotations

from ratchet.cli import COMMANDS, LazyGroup, cli, console, main

__all__ = ["COMMANDS", "LazyGroup", "cli", "console", "main"]

if __name__ == "__main__":
    console(prog_name="cli.py")
'''


def git(*args: str) -> str:
    """Run git in the repository; its stdout."""
    proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True)  # noqa: S603,S607 # git from PATH with fixed arguments
    return proc.stdout


def move_tree(dry: bool, say: Callable[[str], None]) -> None:
    """Step 1: the ``git mv``s and the ``cli.py`` shim."""
    pkg = ROOT / NEW
    init = pkg / "__init__.py"
    if not init.exists():
        say(f"create {NEW}/__init__.py")
        if not dry:
            pkg.mkdir(exist_ok=True)
            init.write_text(PACKAGE_INIT)
            git("add", str(init.relative_to(ROOT)))
    for name in MOVED:
        src, dst = ROOT / name, pkg / name
        if dst.exists():
            if src.exists() and git("ls-files", name).strip():
                raise SystemExit(f"both {name}/ and {NEW}/{name}/ hold tracked files: "
                                 "merge them by hand")
            continue
        say(f"git mv {name} {NEW}/{name}")
        if not dry:
            git("mv", name, f"{NEW}/{name}")
            _drop_leftovers(src)
    if not (pkg / "cli.py").exists():
        say(f"git mv cli.py {NEW}/cli.py; write the cli.py shim")
        if not dry:
            git("mv", "cli.py", f"{NEW}/cli.py")
            (ROOT / "cli.py").write_text(CLI_SHIM)
            git("add", "cli.py")


def _drop_leftovers(folder: Path) -> None:
    """Remove what ``git mv`` leaves behind (``__pycache__``), never anything else."""
    if not folder.exists():
        return
    for cache in sorted(folder.rglob("__pycache__"), reverse=True):
        shutil.rmtree(cache)
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
        if not any(sub.iterdir()):
            sub.rmdir()
    if not any(folder.iterdir()):
        folder.rmdir()
    else:
        print(f"warning: {folder.relative_to(ROOT)}/ still holds untracked files", file=sys.stderr)


def module_names(name: str) -> list[str]:
    """The modules and subpackages of a moved package (as they are on disk now)."""
    base = ROOT / NEW / name if (ROOT / NEW / name).exists() else ROOT / name
    names = {p.stem for p in base.glob("*.py") if p.stem != "__init__"}
    names |= {p.name for p in base.iterdir() if (p / "__init__.py").exists()}
    return sorted(names, key=lambda s: (-len(s), s))


def rules() -> list[tuple[re.Pattern[str], str]]:
    """The rewrites, in the order they are applied; each leaves its own output untouched."""
    out: list[tuple[re.Pattern[str], str]] = []
    for name in MOVED:
        mods = "|".join(module_names(name))
        # statements: `from common import x`, `import commands`, `import common.config as c`
        out.append((re.compile(rf"(?m)^(\s*)(from|import)\s+{name}(?=[\s.,]|$)"),
                    rf"\1\2 {NEW}.{name}"))
        # dotted names anywhere (code, strings, docs, setup.cfg): common.config -> ratchet....
        out.append((re.compile(rf"(?<![\w./]){name}\.(?=(?:{mods})\b)"), f"{NEW}.{name}."))
        out.append((re.compile(rf"(?<=\[mypy-){name}(?=\.\*\])"), f"{NEW}.{name}"))
        # file paths: commands/paper.py, common/*.py, `commands/`
        out.append((re.compile(rf"(?<![\w./-]){name}/"), f"{NEW}/{name}/"))
        # path joins: REPO / "commands" / ...
        out.append((re.compile(rf'(?<!"{NEW}" )/ "{name}"'), f'/ "{NEW}" / "{name}"'))
    # the installed command now lives in the package
    out.append((re.compile(r"(?m)^([ \t]*ratchet[ \t]*=[ \t]*)cli:console[ \t]*$"),
                rf"\1{NEW}.cli:console"))
    return out


#: in a moved module, the repository root is one folder further up
DEEPER = (re.compile(r"Path\(__file__\)\.resolve\(\)\.parent\.parent\b"),
          "Path(__file__).resolve().parents[2]")


def rewrite_setup_cfg(text: str) -> str:
    """setup.cfg: no top-level ``cli`` module, one ``ratchet*`` entry in the package list."""
    text = re.sub(r"(?m)^py_modules\s*=\s*cli\s*\n", "", text)

    def files_line(m: re.Match[str]) -> str:  # mypy's `files =`: one `ratchet` for both
        names = [n.strip() for n in m.group(2).split(",")]
        out: list[str] = []
        for n in names:
            n = NEW if n in MOVED else n
            if n not in out:
                out.append(n)
        return m.group(1) + ", ".join(out)

    text = re.sub(r"(?m)^(files\s*=\s*)(.*)$", files_line, text)
    lines = text.splitlines(keepends=True)
    kept: list[str] = []
    for line in lines:
        if re.fullmatch(rf"\s+(?:{'|'.join(MOVED)})\*\s*", line):
            if not any(re.fullmatch(rf"\s+{NEW}\*\s*", k) for k in kept):
                kept.append(line.split(line.strip())[0] + f"{NEW}*\n")
            continue
        kept.append(line)
    return "".join(kept)


def tracked_text_files() -> list[Path]:
    """Tracked files that are text and not skipped, sorted."""
    out = []
    for rel in sorted(git("ls-files").splitlines()):
        if any(p.search(rel) for p in SKIP):
            continue
        path = ROOT / rel
        if not path.is_file():
            continue
        raw = path.read_bytes()
        if b"\0" in raw:
            continue
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        out.append(path)
    return out


def rewrite_files(dry: bool, say: Callable[[str], None]) -> int:
    """Step 2: rewrite references; the number of files changed."""
    subs = rules()
    changed = 0
    for path in tracked_text_files():
        text = path.read_text(encoding="utf-8")
        new, count = text, 0
        for pattern, repl in subs:
            new, n = pattern.subn(repl, new)
            count += n
        rel = path.relative_to(ROOT).as_posix()
        if any(rel.startswith(f"{NEW}/{name}/") for name in MOVED):
            new, n = DEEPER[0].subn(DEEPER[1], new)
            count += n
        if path.name == "setup.cfg" and path.parent == ROOT:
            fixed = rewrite_setup_cfg(new)
            count += fixed != new
            new = fixed
        if new != text:
            changed += 1
            say(f"rewrite {path.relative_to(ROOT)} ({count} references)")
            if not dry:
                path.write_text(new, encoding="utf-8")
    return changed


def tidy(say: Callable[[str], None]) -> None:
    """Step 3: re-sort the rewritten imports (ruff's isort fix, deterministic) and name the
    lines the longer names pushed past the line limit (wrap those by hand)."""
    local = Path(sys.executable).with_name("ruff")
    ruff = str(local) if local.exists() else shutil.which("ruff")
    if ruff is None:
        print("ruff not found: run `ruff check --fix --select I001 .`, then wrap E501 lines")
        return
    fixed = subprocess.run([ruff, "check", "--fix", "--select", "I001", "--output-format",  # noqa: S603 - our own ruff, fixed arguments
                            "concise", "--exit-zero", "."], cwd=ROOT, capture_output=True,
                           text=True, check=True)
    count = re.search(r"(\d+) fixed", fixed.stdout + fixed.stderr)
    if count:
        say(f"ruff: sorted {count.group(1)} import blocks")
    long = subprocess.run([ruff, "check", "--select", "E501", "--output-format", "concise",  # noqa: S603 - same
                           "--exit-zero", "."], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout
    for line in long.splitlines():
        if ": E501 " in line:
            print(f"wrap by hand: {line}")


def main(argv: list[str] | None = None) -> int:
    """Move and rewrite; print every change; 0 when done (or nothing left to do)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="print what would change")
    args = parser.parse_args(argv)
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        print(("would " if args.dry_run else "") + line)

    move_tree(args.dry_run, say)
    rewrite_files(args.dry_run, say)
    if not args.dry_run:
        tidy(say)
    if not lines:
        print("nothing to change: the tree is already renamed")
    elif not args.dry_run:
        print(f"{len(lines)} changes; now reinstall: .venv/bin/pip install -e '.[test]'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
