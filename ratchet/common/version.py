"""The one place the project's version is written (setup.cfg, ``--version`` and run folders
read it)."""

__version__ = "0.2.0"
