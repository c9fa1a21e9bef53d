"""ratchet command line: backtest, paper trading, the loopback Alpaca server, data, reports.

Run ``python cli.py --help``. Each command lives in ``ratchet/commands/<name>.py`` and is imported
only when it runs, so ``--help`` stays fast and one broken extra never blocks the others.
"""

from __future__ import annotations

import gc
import importlib
import logging
import sys
from typing import Any

import click

from ratchet.common.errors import RatchetError, UserError
from ratchet.common.lazyimport import defer_backtrader_extras
from ratchet.common.version import __version__

logger = logging.getLogger(__name__)

# Backtrader's indicator/analyzer/observer modules load only if a command uses them.
defer_backtrader_extras()

#: command name -> (module, attribute, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "backtest": ("ratchet.commands.backtest", "backtest", "Run the strategy over Parquet bars."),
    "paper": ("ratchet.commands.paper", "paper", "Run the strategy on Alpaca paper trading."),
    "alpaca-sim": ("ratchet.commands.sim", "alpaca_sim",
                   "Run the loopback Alpaca-compatible server."),
    "data": ("ratchet.commands.data", "data", "Download, import and inspect bar data."),
    "sweep": ("ratchet.commands.sweep", "sweep",
              "Sweep settings on Dask; walk-forward optimisation."),
    "report": ("ratchet.commands.report", "report", "Write an HTML report of one or more runs."),
    "train": ("ratchet.commands.train", "train", "Train and validate an ML signal model."),
    "runs": ("ratchet.commands.runs", "runs", "List past runs, newest first."),
    "show-config": ("ratchet.commands.show_config", "show_config",
                    "Print the settings a run would use, with their sources."),
    "alert-test": ("ratchet.commands.alert_test", "alert_test", "Send a test alert to alert URLs."),
    "parity": ("ratchet.commands.parity", "parity", "Compare a paper run with its backtest."),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[cmd_name]
        collect = gc.isenabled()
        gc.disable()  # importing creates thousands of objects that live to the end
        try:
            command = getattr(importlib.import_module(module), attr)
        finally:
            if collect:
                # Later collections no longer walk what exists now (modules, classes,
                # functions: ~0.05-0.1 s of CPU over a backtest run otherwise).
                gc.freeze()
                gc.enable()
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, helptext) for name, (_, _, helptext) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ratchet")
def cli() -> None:
    """ratchet: one Backtrader strategy, backtested on Parquet bars and run on Alpaca."""


def main(argv: list[str] | None = None, prog_name: str = "cli.py") -> Any:
    """Entry point: user errors become one line on stderr and a non-zero exit code."""
    try:
        return cli.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        return sys.exit(exc.exit_code)
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        return sys.exit(exc.exit_code)
    except RatchetError as exc:
        logger.debug("fatal error", exc_info=True)
        click.echo(f"error: {exc}", err=True)
        return sys.exit(getattr(exc, "exit_code", 1))
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return sys.exit(130)


def console(prog_name: str = "ratchet") -> None:
    """The installed ``ratchet`` command (setup.cfg ``console_scripts``); exits the process."""
    code = main(prog_name=prog_name)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    console(prog_name="cli.py")
