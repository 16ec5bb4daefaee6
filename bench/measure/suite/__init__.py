"""The step-timing suite: pytest-benchmark tests driven by ``metabench run``, one cell per
pytest process (``pytest -c bench/measure/suite/pytest.ini bench/measure/suite --metabench-cell cell.json``)."""
