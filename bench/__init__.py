"""metabench: the harness.

Owns specs, episodes, timing, statistics, running and reporting. It never imports a
deep-learning framework: adapters are loaded by name, each framework in a process of
its own (see ``bench.core.registry`` and ``bench.run.runner``).
"""

__version__ = "0.1.0"
