"""``python cli.py show-config``: the settings a backtest with the same flags would use.

It takes ``backtest``'s flags (``--data``, ``--symbols``, ``--risk-pct`` ...), resolves them
the same way (defaults < config file < ``RATCHET_*`` env < flags, the interval and symbols
from the data folder) and prints each setting with its unit and where its value came from.
The output is valid TOML (comments aside), so it can be saved as a config file.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click

from ratchet.commands.backtest import strategy_options
from ratchet.commands.output import fit
from ratchet.common.alpaca_config import load_alpaca_config
from ratchet.common.config import PARAMS, public_settings
from ratchet.common.errors import DataError
from ratchet.common.logs import setup_logging
from ratchet.engine.datasets import plan_backtest


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(json.dumps(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)  # 2.0, 0.55, 1e-05: valid TOML floats
    return str(value)


def config_lines(values: dict[str, Any], sources: dict[str, str],
                 width: int | None, units: dict[str, str] | None = None) -> list[str]:
    """``name = value  # unit; source`` lines; a comment that does not fit goes above."""
    units = units if units is not None else {p.name: p.unit for p in PARAMS}
    out: list[str] = []
    for name, value in values.items():
        # an unset optional setting is a comment: TOML has no null
        setting = f"{name} = {_toml(value)}" if value is not None else f"# {name} = (not set)"
        note = "; ".join(x for x in (units.get(name, ""), f"from {sources.get(name, '?')}") if x)
        line = f"{setting:<28}  # {note}"
        if width is not None and len(line) > width:
            out.extend(fit(f"# {name}: {note}", width, "#   "))
            out.append(setting)
        else:
            out.append(line)
    return out


@click.command("show-config")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Bar folder, as for backtest [bundled data/bars].")
@click.option("--cash", type=float, default=None, help="Starting cash [100000].")
@click.option("--commission", type=float, default=None, help="Commission, fraction of value.")
@click.option("--volume-participation", type=float, default=None,
              help="Most of a bar's volume one order may fill, fraction.")
@click.option("--paper", is_flag=True,
              help="Show what `paper` would use (its default symbols, no data folder).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("-v", "--verbose", count=True, help="More logging.")
@strategy_options
def show_config(data: Path | None, cash: float | None, commission: float | None,
                volume_participation: float | None, paper: bool, as_json: bool, verbose: int,
                config_file: Path | None, **flags: Any) -> None:
    """Print the settings a backtest with these flags would use, with units and sources.

    Accepts the flags of `backtest`. Symbols are the ones that would be traded: --symbols,
    the config file, or every symbol in the data folder (--paper: the 20 default stocks).
    """
    from feeds.store import resolve_datasets
    from ratchet.commands.backtest import settings_and_sources
    from ratchet.commands.output import echo_lines, out_width

    setup_logging(verbose)
    flags.update(cash=cash, commission=commission, volume_participation=volume_participation)
    if paper:
        settings, sources = settings_and_sources(config_file, flags)
        where = "paper trading"
    else:
        settings, sources, data_dir, wanted = plan_backtest(data, config_file, flags)
        try:
            symbols = tuple(resolve_datasets(data_dir, wanted))
        except DataError:
            if wanted is None:
                raise
            symbols = wanted  # the backtest will say which are missing
        if wanted is None:
            sources["symbols"] = f"every symbol in {data_dir}"
        settings = settings.replace(symbols=symbols)
        where = f"a backtest on {data_dir}"
    values = public_settings(settings)
    # paper: its own [alpaca] table too (defaults < [alpaca] < RATCHET_ALPACA_*)
    alpaca, alpaca_sources = load_alpaca_config(config_file) if paper else (None, {})
    alpaca_values = dataclasses.asdict(alpaca) if alpaca is not None else {}
    if as_json:
        out = {"settings": values, "sources": sources}
        if alpaca is not None:
            out.update(alpaca=alpaca_values, alpaca_sources=alpaca_sources)
        click.echo(json.dumps(out, indent=2))
        return
    width = out_width()
    lines = [*fit(f"# Settings for {where}", width, "#   "), "# (defaults < config file < "
             "RATCHET_* environment < flags)", *config_lines(values, sources, width)]
    if alpaca is not None:
        units = {n: "seconds" if isinstance(v, float) else "" for n, v in alpaca_values.items()}
        units.update(warmup_days="calendar days", requests_per_minute="each API",
                     stream_silence="seconds", stop_grace="seconds")
        lines += ["", "[alpaca]  # paper only (RATCHET_ALPACA_<NAME>, paper flags override)",
                  *config_lines(alpaca_values, alpaca_sources, width, units)]
    echo_lines(lines)
