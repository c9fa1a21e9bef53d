"""Private files and folders: state, journal, logs, audit and run folders hold account data.

``private_dir`` creates a folder 0700 (and tightens one that exists); ``private_file`` sets a
file 0600; ``warn_if_readable_by_others`` logs a warning for a secrets file that the group or
the world can read (the keys still work: refusing would break a running cron job).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

logger = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) and make it 0700; returns it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    _chmod(path, DIR_MODE)
    return path


def private_file(path: Path) -> None:
    """Make an existing file 0600 (missing files are ignored)."""
    if Path(path).exists():
        _chmod(Path(path), FILE_MODE)


def readable_by_others(path: Path) -> bool:
    """Can the file's group or other users read it?"""
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return False
    return bool(mode & (stat.S_IRGRP | stat.S_IROTH))


def warn_if_readable_by_others(path: Path, what: str) -> bool:
    """Log a warning when a secrets file is readable by its group or others; True if so."""
    if not readable_by_others(path):
        return False
    mode = stat.S_IMODE(Path(path).stat().st_mode)
    logger.warning("%s %s is readable by other users (mode %o): run chmod 600 %s", what, path,
                   mode, path)
    return True


def _chmod(path: Path, mode: int) -> None:
    try:
        if stat.S_IMODE(path.stat().st_mode) != mode and path.stat().st_uid == os.getuid():
            path.chmod(mode)
    except OSError as exc:  # e.g. a filesystem without permissions: keep going
        logger.debug("cannot chmod %s: %s", path, exc)
