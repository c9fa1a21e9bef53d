"""Logging setup shared by every command, with a filter that redacts secrets."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from pathlib import Path

_REDACTED = "***"


class RedactSecrets(logging.Filter):
    """Replace every configured secret value in log records with ``***``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets: set[str] = {s for s in secrets if s and len(s) >= 4}

    def add(self, *secrets: str) -> None:
        """Register more secret values to redact."""
        self._secrets.update(s for s in secrets if s and len(s) >= 4)

    def redact(self, text: str) -> str:
        """``text`` with every secret replaced."""
        for s in self._secrets:
            if s in text:
                text = text.replace(s, _REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self._secrets:
            message = record.getMessage()
            clean = self.redact(message)
            if clean != message:
                record.msg, record.args = clean, None
            if record.exc_info and record.exc_info[1] is not None:
                record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
        return True


class _PlainFormatter(logging.Formatter):
    """``warning: message`` (no time, no module name) for the default console log."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


#: The process-wide redaction filter (installed on every handler by ``setup_logging``).
REDACTOR = RedactSecrets()


def setup_logging(verbosity: int = 0, log_file: Path | None = None) -> None:
    """Console logging at WARNING (0), INFO (1) or DEBUG (2+); optional file log at DEBUG."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(level)
    if verbosity <= 0:
        # Plain sentences for users: "warning: ..." (the log file keeps the details).
        console.setFormatter(_PlainFormatter())
    else:
        console.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    console.addFilter(REDACTOR)
    root.addHandler(console)
    root.setLevel(min(level, logging.DEBUG if log_file else level))
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file, encoding="utf-8")
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)-7s %(name)s [%(threadName)s]: %(message)s"))
        fh.addFilter(REDACTOR)
        root.addHandler(fh)
    for noisy in ("urllib3", "websockets", "asyncio", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, level))
