"""The ``cascade`` command line, on the top floor of the house: thin wiring of the layers below."""

from cascade.cli.main import app

__all__ = ["app"]
