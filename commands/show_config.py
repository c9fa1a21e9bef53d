"""``python cli.py show-config``: the effective settings (defaults < file < env < flags)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from common.config import load_settings

logger = logging.getLogger(__name__)


@click.command("show-config")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="TOML/JSON settings file.")
def show_config(config_file: Path | None) -> None:
    """Print the settings a run would use, as JSON (API keys are never settings)."""
    settings = load_settings(config_file)
    click.echo(json.dumps(settings.to_dict(), indent=2, sort_keys=True))
