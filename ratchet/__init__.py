"""ratchet: the project's own code that has no place in the design-card folders
(``ratchet.common``: settings, errors, logging, files; ``ratchet.engine``: backtest and
paper sessions as a library; ``ratchet.commands``: the CLI commands; ``ratchet.cli``: the
``ratchet`` console command)."""
