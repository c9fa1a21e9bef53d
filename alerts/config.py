"""Where alert URLs and the alert level come from: flags, ``RATCHET_ALERTS``, the config file.

URLs: ``--alert`` flags if any, else ``RATCHET_ALERTS`` (space separated), else ``alerts =
[...]`` in the config file (``--config`` or ``RATCHET_CONFIG``). Level: ``--alert-level``,
else ``RATCHET_ALERT_LEVEL``, else ``alert_level`` in the file, else ``all``. They are kept
out of ``ratchet.common.config.Settings``: Settings are written to run folders, alert URLs are
secrets.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from alerts.dispatch import split_urls
from alerts.events import LEVELS
from ratchet.common.errors import ConfigError


def _file_values(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (OSError, ValueError) as exc:  # load_settings already named a bad file
        raise ConfigError(f"config file {path} is not valid TOML/JSON: {exc}") from None
    if isinstance(raw, dict) and set(raw) == {"ratchet"} and isinstance(raw["ratchet"], dict):
        raw = raw["ratchet"]
    return raw if isinstance(raw, dict) else {}


def alert_settings(config_file: Path | None, flag_urls: Sequence[str] = (),
                   flag_level: str | None = None,
                   environ: Mapping[str, str] | None = None) -> tuple[list[str], str]:
    """(alert URLs, level) from flags, environment and config file."""
    env = os.environ if environ is None else environ
    if config_file is None and env.get("RATCHET_CONFIG"):
        config_file = Path(env["RATCHET_CONFIG"])
    file_vals = _file_values(Path(config_file)) if config_file is not None and \
        Path(config_file).is_file() else {}
    urls = split_urls(flag_urls)
    if not urls and env.get("RATCHET_ALERTS"):
        urls = split_urls([env["RATCHET_ALERTS"]])
    if not urls and "alerts" in file_vals:
        raw = file_vals["alerts"]
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not all(isinstance(u, str) for u in raw):
            raise ConfigError(f"config file {config_file}: alerts must be a list of URL "
                              'strings, e.g. alerts = ["ntfy://my-topic"]')
        urls = split_urls(raw)
    level = flag_level or env.get("RATCHET_ALERT_LEVEL") or str(file_vals.get("alert_level")
                                                                or "all")
    if level not in LEVELS:
        raise ConfigError(f"alert level {level!r}: use one of {', '.join(LEVELS)} "
                          "(--alert-level, RATCHET_ALERT_LEVEL or alert_level in the config)")
    return urls, level
