"""API keys for Alpaca: from the environment or a file the user names; never printed.

Implements the key convention of Alpaca's docs ("Authentication",
docs.alpaca.markets/docs/authentication) and of the old SDK: ``APCA_API_KEY_ID`` and
``APCA_API_SECRET_KEY``. alpaca-py itself reads no environment variable.

``Credentials`` masks both values in ``repr``/``str`` and registers them with the process-wide
log filter ``ratchet.common.logs.REDACTOR`` as soon as they are loaded, so a key that reaches a log
record, an exception text or the audit detail is replaced by ``***``.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ratchet.common.errors import ConfigError
from ratchet.common.logs import REDACTOR, RedactSecrets
from ratchet.common.perms import warn_if_readable_by_others

ENV_KEY_ID = "APCA_API_KEY_ID"
ENV_SECRET = "APCA_API_SECRET_KEY"  # noqa: S105 - the variable's name, not a secret


def mask(value: str) -> str:
    """``AK…XY`` style mask: first and last two characters of long values, else ``***``."""
    if len(value) >= 12:
        return f"{value[:2]}…{value[-2:]}"
    return "***"


@dataclass(frozen=True)
class Credentials:
    """An Alpaca key pair. ``repr``/``str`` never show the values."""

    key_id: str = field(repr=False)
    secret_key: str = field(repr=False)
    source: str = "environment"

    def __post_init__(self) -> None:
        if not self.key_id or not self.secret_key:
            raise ConfigError(
                f"Alpaca keys from {self.source} are incomplete: set both {ENV_KEY_ID} and "
                f"{ENV_SECRET} (or pass --keys-file FILE)"
            )

    def __repr__(self) -> str:
        return f"Credentials(key_id={mask(self.key_id)}, secret_key=***, source={self.source})"

    __str__ = __repr__

    def register(self, redactor: RedactSecrets = REDACTOR) -> Credentials:
        """Add both values to ``redactor`` (the process-wide log filter by default)."""
        redactor.add(self.key_id, self.secret_key)
        return self

    @property
    def secrets(self) -> tuple[str, str]:
        """Both secret values (for redaction checks)."""
        return (self.key_id, self.secret_key)


def from_env(environ: Mapping[str, str] | None = None,
             redactor: RedactSecrets = REDACTOR) -> Credentials:
    """Keys from ``APCA_API_KEY_ID`` / ``APCA_API_SECRET_KEY``; a ``ConfigError`` names what
    is missing (never its value)."""
    env = os.environ if environ is None else environ
    key, secret = env.get(ENV_KEY_ID, "").strip(), env.get(ENV_SECRET, "").strip()
    missing = [name for name, v in ((ENV_KEY_ID, key), (ENV_SECRET, secret)) if not v]
    if missing:
        raise ConfigError(
            f"Alpaca keys missing: set {' and '.join(missing)} in the environment "
            "(or pass --keys-file FILE)"
        )
    return Credentials(key, secret, "environment").register(redactor)


#: Names accepted for the key id and the secret in a keys file (case-insensitive): ours, the
#: environment variables', and the spellings of other Alpaca tools' ``.env`` files.
KEY_NAMES: tuple[str, ...] = ("key_id", "apca_api_key_id", "alpaca_api_key",
                              "alpaca_api_key_id", "alpaca_key_id", "api_key")
SECRET_NAMES: tuple[str, ...] = ("secret_key", "apca_api_secret_key", "alpaca_secret_key",
                                 "alpaca_api_secret_key", "api_secret")
FILE_FORMATS = ("two lines (key id, then secret), NAME=value lines, TOML or JSON with key_id "
                "and secret_key")


def _parse_keys_text(path: Path, text: str) -> dict[str, str]:
    """Name -> value (names lower-cased) of a keys file in any of ``FILE_FORMATS``."""
    suffix = path.suffix.lower()
    stripped = text.strip()
    raw: object
    try:
        if suffix == ".json" or (suffix != ".toml" and stripped.startswith("{")):
            raw = json.loads(text)
        elif suffix == ".toml":
            raw = tomllib.loads(text)
        else:
            lines = [ln.strip() for ln in text.splitlines()]
            lines = [ln for ln in lines if ln and not ln.startswith("#")]
            if not any("=" in ln for ln in lines):
                # two bare lines: key id, then secret
                return {"key_id": lines[0] if lines else "",
                        "secret_key": lines[1] if len(lines) > 1 else ""}
            pairs: dict[str, str] = {}
            raw = pairs
            for line in lines:
                if "=" not in line:
                    continue
                name, _, value = line.partition("=")
                name = name.strip().removeprefix("export ").strip()
                pairs[name] = value.strip().strip("'\"")
    except (json.JSONDecodeError, tomllib.TOMLDecodeError):
        # The parser's message may quote the file: never echo it.
        kind = "TOML" if suffix == ".toml" else "JSON"
        raise ConfigError(f"keys file {path} is not valid {kind}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"keys file {path}: expected key_id and secret_key entries")
    return {str(name).strip().lower(): str(value).strip() for name, value in raw.items()}


def from_file(path: Path, redactor: RedactSecrets = REDACTOR) -> Credentials:
    """Keys from a file the user names (``--keys-file`` of every command), in any of
    ``FILE_FORMATS``: two bare lines (key id, then secret); ``NAME=value`` lines (``export``
    and quotes allowed) or TOML/JSON, with the names ``key_id``/``secret_key``, the environment
    variable names ``APCA_API_KEY_ID``/``APCA_API_SECRET_KEY`` or one of ``KEY_NAMES`` /
    ``SECRET_NAMES``. Errors name the file, never its content."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"keys file {path} not found: check --keys-file")
    warn_if_readable_by_others(path, "keys file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"keys file {path} is unreadable ({exc.__class__.__name__}): "
                          "check --keys-file") from None
    values = _parse_keys_text(path, text)
    key = next((values[n] for n in KEY_NAMES if values.get(n)), "")
    secret = next((values[n] for n in SECRET_NAMES if values.get(n)), "")
    if not key or not secret:
        raise ConfigError(
            f"keys file {path}: needs the key id and the secret ({FILE_FORMATS}; or "
            f"{ENV_KEY_ID} and {ENV_SECRET})"
        )
    return Credentials(key, secret, f"file {path.name}").register(redactor)


def load_credentials(keys_file: Path | None = None,
                     environ: Mapping[str, str] | None = None,
                     redactor: RedactSecrets = REDACTOR) -> Credentials:
    """Keys from ``keys_file`` when given, else from the environment."""
    if keys_file is not None:
        return from_file(keys_file, redactor)
    return from_env(environ, redactor)
