"""Baselines (issue 12): metabench's default MAML adapters against MAML written plainly in
each framework, ``python -m bench.check.baselines OUT_DIR`` (``bench.check.baselines.run``). Importing
this package imports no framework: the plain versions are imported in their framework's
own process (``bench.check.baselines.worker``)."""

from bench.check.baselines.run import main

__all__ = ["main"]
