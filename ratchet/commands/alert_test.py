"""``python cli.py alert-test URL...``: send one test alert and say whether it arrived."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from alerts.config import alert_settings
from alerts.dispatch import AlertDispatcher, DispatchConfig
from alerts.events import AlertEvent, Category
from ratchet.common.logs import setup_logging


@click.command("alert-test")
@click.argument("urls", nargs=-1)
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Take the URLs from alerts = [...] in this config file.")
@click.option("--timeout", type=float, default=10.0, show_default=True,
              help="Seconds to wait for each endpoint.")
@click.option("--verbose", "-v", count=True, help="-v info, -vv debug.")
def alert_test(urls: tuple[str, ...], config_file: Path | None, timeout: float,
               verbose: int) -> None:
    """Send one test message to each alert URL (or RATCHET_ALERTS / the config's alerts)."""
    setup_logging(verbose)
    found, _ = alert_settings(config_file, urls, None)
    if not found:
        raise click.UsageError("no alert URL: pass one (e.g. ntfy://my-topic), set "
                               "RATCHET_ALERTS, or put alerts = [...] in --config")
    dispatcher = AlertDispatcher(found, "all", prefix="ratchet: ",
                                 config=DispatchConfig(timeout=timeout, retries=0))
    event = AlertEvent("test", Category.INFO, "test alert",
                       "If you read this, ratchet's alerts reach you here.",
                       datetime.now(UTC))
    results = dispatcher.send_now(event)
    for label, ok in results.items():
        click.echo(f"{label}: {'delivered' if ok else 'NOT delivered'}"
                   + ("" if ok else " (check the URL, the service and the network; -vv "
                                     "shows Apprise's reason)"))
    if not all(results.values()):
        sys.exit(1)
