"""CLI commands, one module each; ``cli.py`` imports them lazily."""
