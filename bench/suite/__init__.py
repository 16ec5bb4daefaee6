"""The step-timing suite: pytest-benchmark tests driven by ``metabench run``, one cell per
pytest process (``pytest -c bench/suite/pytest.ini bench/suite --metabench-cell cell.json``)."""
