"""Cascade shared kernel: configuration, data, feature schema, artifacts and the CLI."""

__version__ = "0.1.0"
