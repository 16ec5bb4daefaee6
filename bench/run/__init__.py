"""Running a benchmark: the plan of cells (``plan``), the checks before it starts
(``preflight``), the orchestration of cells' processes (``runner``, ``cells``) on an
executor (``executors``: local, Slurm, Ray), one writer per run folder (``lock``); a run
ends in its report (``bench.report``)."""
