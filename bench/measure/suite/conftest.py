"""Fixtures and hooks of the timing suite.

The cell comes from ``--metabench-cell``; the environment is recorded through
pytest-benchmark's machine-info hook, so ``pytest-benchmark compare`` shows it too.
"""

from __future__ import annotations

import os

import pytest

from bench.core import registry
from bench.core.algorithms import get as get_algorithm
from bench.core.cell import Cell, build, pin_threads
from bench.measure.environment import collect_environment


def pytest_addoption(parser):
    parser.addoption("--metabench-cell", required=True, help="cell JSON written by metabench run")


def _cell(config) -> Cell:
    return Cell.load(config.getoption("--metabench-cell"))


def pytest_configure(config):
    cell = _cell(config)
    config._metabench_cores = pin_threads(cell.threads)  # before any framework import


def pytest_generate_tests(metafunc):
    if "phase" in metafunc.fixturenames:
        cell = _cell(metafunc.config)
        metafunc.parametrize("phase", get_algorithm(cell.algorithm).phases)


@pytest.fixture(scope="session")
def cell(pytestconfig) -> Cell:
    return _cell(pytestconfig)


@pytest.fixture(scope="session")
def built(cell):
    """(adapter, spec): built once per process; the episodes are sampled per test."""
    adapter, spec, _ = build(cell)
    return adapter, spec


def pytest_benchmark_update_machine_info(config, machine_info):
    cell = _cell(config)
    machine_info["metabench"] = collect_environment(cell.framework, cell.device, cell.threads,
                                                    registry.get(cell.adapter).target)
    machine_info["metabench"]["pinned_cores"] = getattr(config, "_metabench_cores", [])
    machine_info["metabench"]["pid"] = os.getpid()
