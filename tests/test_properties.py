"""Bad input, by property (hypothesis): whatever a user types or a disk holds, metabench
answers with exit 0 or one line and exit 2, never a traceback, and never writes outside
the folder it was given or over a committed table with less.

Strategies, each run for ``EXAMPLES`` examples: spec files (a built-in spec's TOML with
fields replaced by arbitrary values), ``--set`` / ``--sweep`` values, adapter option
strings, run ids, and damaged run folders (truncated, garbage or missing JSON and CSV).
Everything runs in this process through ``bench.cli.main.main``: the same code paths as the
command line, without a process start per example.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import string
import tomllib
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")  # installed by nox's tests session
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from bench.cli.main import main  # noqa: E402
from bench.core.errors import MetabenchError  # noqa: E402
from tests import synthetic as syn  # noqa: E402

EXAMPLES = 200
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SPEC_TEXT = (Path(__file__).resolve().parent.parent / "bench" / "core" / "specs" / "omniglot-5w1s.toml").read_text()
SPEC = tomllib.loads(SPEC_TEXT)


def cli(*argv: str) -> tuple[int, str]:
    """``metabench ARGV`` in this process: (exit code, stderr). An exception escaping main
    is the traceback a user would see: the property fails on it."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(list(argv))
        except SystemExit as e:  # argparse's own errors: exit 2 with its usage line
            code = e.code if isinstance(e.code, int) else 2
    return code, err.getvalue()


def one_line_error(code: int, stderr: str) -> None:
    assert code in (0, 2), (code, stderr)
    assert "Traceback" not in stderr
    if code == 2:
        said = [line for line in stderr.splitlines() if line.strip() and not line.startswith("usage:")]
        assert said, "exit 2 without saying why"


# -- values a TOML field might hold -----------------------------------------------------------------

toml_values = st.one_of(
    st.integers(min_value=-10**12, max_value=10**12), st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(), st.text(max_size=300), st.lists(st.integers(-5, 5), max_size=3),
    st.text(alphabet=string.ascii_letters + string.digits + "._-", min_size=1, max_size=400),
)
fields = st.sampled_from([(section, key) for section, table in SPEC.items() if isinstance(table, dict)
                          for key, value in table.items() if not isinstance(value, dict)]
                         + [(None, "name"), (None, "seed"), (None, "description")])


def toml_literal(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {float("inf"): "inf", float("-inf"): "-inf"}.get(value, "nan" if value != value else repr(value))
    if isinstance(value, str):  # JSON's escapes are TOML's (a lone surrogate stays invalid: a bad file)
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    return str(value)


def with_field(text: str, section: str | None, key: str, value) -> str:
    """``text`` (a spec's TOML) with ``section.key``'s line replaced by ``key = value``."""
    lines, current = [], None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            current = stripped.split("#")[0].strip().strip("[]")
        if current == section and "=" in stripped and stripped.split("=")[0].strip() == key:
            line = f"{key} = {toml_literal(value)}"
        lines.append(line)
    return "\n".join(lines) + "\n"


@PROPERTY
@given(changes=st.lists(st.tuples(fields, toml_values), min_size=1, max_size=3), garbage=st.booleans(),
       cut=st.integers(0, len(SPEC_TEXT)))
def test_spec_files_validate_or_get_one_line(tmp_path_factory, changes, garbage, cut):
    text = SPEC_TEXT
    for (section, key), value in changes:
        text = with_field(text, section, key, value)
    if garbage:  # a file cut short, as a crashed editor leaves it
        text = text[:cut]
    path = tmp_path_factory.mktemp("spec") / "spec.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    one_line_error(*cli("validate", str(path)))


# -- --set and --sweep ------------------------------------------------------------------------------

override_text = st.one_of(
    st.builds(lambda f, v: f"{f[0]}.{f[1]}={toml_literal(v)}" if f[0] else f"{f[1]}={toml_literal(v)}",
              fields, toml_values),
    st.text(max_size=200),
    st.builds(lambda a, b: f"{a}={b}", st.text(string.ascii_lowercase + "._", max_size=30), st.text(max_size=30)),
)


@pytest.fixture
def no_framework_probe(monkeypatch):
    """The dry run's preflight without its per-framework import probe (a process that
    imports torch: seconds, 200 times over); every other check runs."""
    import bench.run.preflight

    monkeypatch.setattr(bench.run.preflight, "check_frameworks", lambda cells, device: [])


@PROPERTY
@given(value=override_text, sweep=st.booleans())
def test_set_and_sweep_values_validate_or_get_one_line(tmp_path_factory, no_framework_probe, value, sweep):
    results = tmp_path_factory.mktemp("results")
    flag = "--sweep" if sweep else "--set"
    one_line_error(*cli("run", "--dry-run", "--profile", "smoke", "--frameworks", "torch", "--specs",
                        "sinusoid-10shot", "--results-dir", str(results), flag, value))
    assert not list(results.iterdir())  # a dry run writes nothing


# -- adapter option strings --------------------------------------------------------------------------

@PROPERTY
@given(options=st.lists(st.one_of(st.text(max_size=40), st.builds(
    lambda k, v: f"{k}={v}", st.sampled_from(["compile", "dtype", "pool", "nosuch", ""]),
    st.one_of(st.text(max_size=20), st.sampled_from(["true", "maybe", "float64", "1", "[1, 2]", '"x"'])))),
    min_size=1, max_size=3))
def test_adapter_option_strings_are_accepted_or_refused_in_one_line(options):
    from bench.core import registry
    from implementations.torch.maml import TorchMAML

    name = "torch-maml@" + "@".join(options)
    try:
        entry = registry.get(name)
    except MetabenchError as e:
        assert "\n" not in str(e) and str(e)
        return
    problems = TorchMAML.option_problems(entry.options)
    assert all(isinstance(p, str) and p and "\n" not in p for p in problems)


# -- run ids ----------------------------------------------------------------------------------------

@PROPERTY
@given(run_id=st.one_of(st.text(max_size=400), st.text(alphabet=string.ascii_letters + string.digits + "._-",
                                                        min_size=1, max_size=400)))
def test_run_ids_are_folder_names_or_one_line(tmp_path_factory, no_framework_probe, run_id):
    results = tmp_path_factory.mktemp("results")
    code, err = cli("run", "--dry-run", "--profile", "smoke", "--frameworks", "torch", "--specs",
                    "sinusoid-10shot", "--results-dir", str(results), "--run-id", run_id)
    one_line_error(code, err)
    assert not list(results.iterdir())
    if code == 0:  # an accepted id names a folder this file system can hold
        (results / run_id).mkdir()


# -- damaged run folders -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    run = syn.make_run(tmp_path_factory.mktemp("pristine"), "run", processes=3)
    from bench.report.report import write_report

    write_report(run)
    return run


def damage_targets(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and p.suffix in (".json", ".csv"))


@PROPERTY
@given(data=st.data(), how=st.sampled_from(["truncate", "garbage", "delete", "empty", "wrong-json"]),
       command=st.sampled_from(["report", "compare"]))
def test_damaged_run_folders_get_one_line_and_lose_nothing(tmp_path_factory, monkeypatch, pristine, data, how,
                                                           command):
    """The figures are left out (``write_plots`` stubbed): they read the same frames as the
    tables, and drawing three per example would take minutes."""
    import bench.report.plots

    monkeypatch.setattr(bench.report.plots, "write_plots", lambda *a, **k: [])
    root = tmp_path_factory.mktemp("damaged")
    run = Path(shutil.copytree(pristine, root / "run"))
    target = run / data.draw(st.sampled_from(damage_targets(run)))
    raw = target.read_bytes()
    if how == "truncate":
        target.write_bytes(raw[:data.draw(st.integers(0, max(len(raw) - 1, 0)))])
    elif how == "garbage":
        target.write_bytes(data.draw(st.binary(max_size=200)))
    elif how == "delete":
        target.unlink()
    elif how == "empty":
        target.write_bytes(b"")
    else:
        target.write_text(data.draw(st.sampled_from(["[]", "null", "3", '"x"', '{"phases": 3}', '{"cells": 1}'])))
    rows = {p: len(p.read_text(errors="replace").splitlines()) for p in run.glob("*.csv")}
    outside = sorted(p.name for p in root.iterdir())
    argv = ("report", str(run)) if command == "report" else ("compare", str(pristine), str(run))
    code, err = cli(*argv)
    one_line_error(code, err)
    assert sorted(p.name for p in root.iterdir()) == outside  # nothing written beside the run
    for path, before in rows.items():  # a committed table never replaced by a shorter one
        if path.exists() and path != target:
            assert len(path.read_text(errors="replace").splitlines()) >= before, path.name
