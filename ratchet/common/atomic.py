"""Crash-safe file writes: temp file in the same directory, flush, fsync, rename, fsync dir."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_path(path: Path, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    The caller writes the temp file by any means (pyarrow, pandas, open()). On an exception
    the temp file is removed and ``path`` is untouched. ``mode`` (e.g. ``0o600`` for private
    files): the result's permissions; default: what a plain open() would give.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes 0600 files; give the result the mode a plain open() would have.
    tmp_path.chmod(mode if mode is not None else 0o666 & ~_umask())
    try:
        yield tmp_path
        with tmp_path.open("rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        tmp_path.replace(path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_atomic(path: Path, writer: Callable[[IO[bytes]], Any],
                 mode: int | None = None) -> None:
    """Write ``path`` atomically by calling ``writer`` with a binary file object."""
    with atomic_path(path, mode) as tmp, tmp.open("wb") as fh:
        writer(fh)


def write_text_atomic(path: Path, text: str, mode: int | None = None) -> None:
    """Write a text file atomically (UTF-8)."""
    write_atomic(path, lambda fh: fh.write(text.encode("utf-8")), mode)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON atomically, sorted and indented for diffs; non-JSON values via ``str``."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not supported on every platform/filesystem.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
