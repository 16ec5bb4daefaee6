"""Baselines (issue 12): metabench's default MAML adapters against MAML written plainly in
each framework, ``python -m bench.baselines OUT_DIR`` (``bench.baselines.run``). Importing
this package imports no framework: the plain versions are imported in their framework's
own process (``bench.baselines.worker``)."""

from bench.baselines.run import main

__all__ = ["main"]
