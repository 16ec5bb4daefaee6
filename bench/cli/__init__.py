"""The ``metabench`` command (``bench.cli.main``) and the adapter scaffold (``bench.cli.scaffold``)."""
