"""Whether an adapter is right before it is timed: the contract checks (``contract``),
numerical parity across frameworks (``parity``, ``near_ties``), the GPU check
(``gpu_check``) and the plain per-framework baselines (``baselines``). Imports
``bench.measure`` and ``bench.core``."""
