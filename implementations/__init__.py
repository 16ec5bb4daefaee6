"""Implementation adapters: one subpackage per framework, one module per algorithm.

Each subpackage imports its framework; the harness imports them only in that framework's
own process (``bench.measure.worker``), through ``bench.core.registry``.
"""
