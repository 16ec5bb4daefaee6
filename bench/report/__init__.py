"""What a run's files say: the report and its tables, figures and HTML pages
(``report``, ``tables``, ``plots``, ``sweeps``, ``html``), comparisons of runs
(``compare``) and the README's generated blocks (``answer``, ``readme``). Reads results
folders; imports ``bench.check``, ``bench.measure`` and ``bench.core``."""
