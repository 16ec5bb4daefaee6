"""One cell's measurements, in the framework's own process: the timing suite (``suite``,
``timing``), training and evaluation (``training``), and the process that runs them
(``worker``), with what they ran on (``environment``, ``hardware``, ``machine_load``).
Imports ``bench.core`` only."""
