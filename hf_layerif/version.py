"""The package version (its own module, so that importing it runs no registration side effect)."""

__version__ = "0.1.0.dev0"
