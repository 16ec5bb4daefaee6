"""The ``metabench`` command (``main``) and the adapter scaffold (``scaffold``)."""

from bench.cli.main import main

__all__ = ["main"]
