"""The package version, in a module that imports nothing (the CLI's --version, pyproject)."""

__version__ = "0.1.0"
