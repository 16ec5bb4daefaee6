"""The HTML pages (``bench/report/html.py``): each run's ``report.html`` and ``results/index.html``.

Their figures are Vega-Lite specifications, asserted here as data (colours, scales, the
legend toggle, the CIs in the tooltips), and then drawn by a real headless Chromium (from
Debian's archive: ``.ci/chromium.sh``, run by the nox session), which must load both
committed pages from ``file://`` with no console message and find the headline table and
a drawn figure in each.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from bench.report import html as pages
from tests.conftest import REPO

RESULTS = REPO / "results"


def committed_runs() -> set[str]:
    """The run folders git tracks (a test run, such as CI's smoke run, may sit beside them)."""
    out = subprocess.run(["git", "ls-files", "results/*/manifest.json"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    return {Path(line).parent.name for line in out.splitlines()}


def _steps(frameworks=("torch", "jax")) -> pd.DataFrame:
    rows = []
    for fw in frameworks:
        for phase, ms in (("outer_step", 120.0), ("inner_step", 30.0)):
            rows.append({"framework": fw, "adapter": f"{fw}-maml", "algorithm": "maml", "spec": "omniglot-5w1s",
                         "phase": phase, "compilation": "eager", "median": ms / 1e3, "median_ci_low": 0.9 * ms / 1e3,
                         "median_ci_high": 1.1 * ms / 1e3, "rounds": 45, "processes": 3})
    return pd.DataFrame(rows)


def _layer(spec, mark, panel=0):
    return next(layer for layer in spec["vconcat"][panel]["layer"] if layer["mark"]["type"] == mark)


def test_step_time_figure_uses_the_palette_shows_cis_and_toggles_frameworks():
    from matplotlib.colors import to_hex

    from bench.report.plots import framework_colour

    spec = pages.step_time_spec(_steps(("torch", "jax", "tensorflow")))
    point, rule = _layer(spec, "point"), _layer(spec, "rule")
    scale = point["encoding"]["color"]["scale"]
    # one colour per framework, the PNG figures' own
    assert dict(zip(scale["domain"], scale["range"])) == {fw: to_hex(framework_colour(fw))
                                                          for fw in ("jax", "tensorflow", "torch")}
    assert point["encoding"]["x"]["scale"]["type"] == "log" and point["encoding"]["x"]["field"] == "ms"
    assert rule["encoding"]["x"]["field"] == "ms_ci_low" and rule["encoding"]["x2"]["field"] == "ms_ci_high"
    assert {t["field"] for t in point["encoding"]["tooltip"]} >= {"ms", "ms_ci_low", "ms_ci_high", "adapter"}
    assert point["params"][0]["bind"] == "legend"  # click a framework to show it alone
    assert "params" not in _layer(spec, "point", 1) and _layer(spec, "point", 1)["encoding"]["opacity"]["condition"]
    # a panel per spec / algorithm / phase, none empty
    assert [v["transform"][0]["filter"]["equal"] for v in spec["vconcat"]] == [
        "omniglot-5w1s / maml / outer_step", "omniglot-5w1s / maml / inner_step"]
    values = spec["data"]["values"]
    assert {v["panel"] for v in values} == {"omniglot-5w1s / maml / outer_step", "omniglot-5w1s / maml / inner_step"}
    assert next(v for v in values if v["framework"] == "jax" and v["phase"] == "outer_step")["ms"] == pytest.approx(120)


def test_a_plugin_framework_gets_its_own_deterministic_colour_in_the_page():
    a = pages.colour_scale(["torch", "mlx"])
    b = pages.colour_scale(["mlx", "jax"])
    assert dict(zip(a["domain"], a["range"]))["mlx"] == dict(zip(b["domain"], b["range"]))["mlx"]
    assert len(set(a["range"])) == 2


def test_history_marks_machine_changes_and_offers_every_panel_with_two_runs():
    rows = []
    for i, machine in enumerate(("cpu A x2", "cpu A x2", "cpu B x8")):
        for fw in ("torch", "jax"):
            rows.append({"run": f"run{i}", "started": f"2026-12-0{i + 1}T00:00:00Z", "commit": f"c{i}",
                         "machine": machine, "framework": fw, "adapter": f"{fw}-maml", "version": f"{fw} 1.{i}",
                         "panel": "omniglot-5w1s / maml / outer_step / meta-batch 8", "ms": 100.0 + i,
                         "ms_ci_low": 95.0, "ms_ci_high": 110.0})
    rows.append({**rows[0], "panel": "sinusoid / maml / outer_step / meta-batch 25"})  # one run only
    history = pd.DataFrame(rows)
    changes = pages.machine_changes(history)
    assert list(changes["run"]) == ["run2"]
    spec = pages.history_spec(history)
    assert spec["params"][0]["bind"]["options"] == ["omniglot-5w1s / maml / outer_step / meta-batch 8"]
    assert spec["params"][0]["value"] == "omniglot-5w1s / maml / outer_step / meta-batch 8"
    dashed = [layer for layer in spec["layer"] if layer["mark"].get("strokeDash")]
    assert len(dashed) == 1 and dashed[0]["data"]["values"][0]["machine"] == "cpu B x8"
    line = next(layer for layer in spec["layer"] if layer["mark"]["type"] == "line")
    assert {t["field"] for t in line["encoding"]["tooltip"]} >= {"commit", "version", "machine", "ms_ci_low"}


def test_a_run_report_holds_the_summary_figures_and_every_cell(tmp_path):
    status = pd.DataFrame([{"adapter": "torch-maml", "algorithm": "maml", "spec": "s", "seed": 0, "phase": "timing",
                            "status": "failed", "seconds": 1.0, "detail": "<boom> & co"}])
    text = pages.run_report_html(tmp_path / "run", {"steps": _steps(), "status": status},
                                 "# run\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    assert '<div id="summary"><h1>run</h1>' in text and "<table>" in text
    assert 'id="step-times"' in text and "vegaEmbed(" in text
    assert '<td class="status-failed">failed</td>' in text and "&lt;boom&gt; &amp; co" in text  # escaped
    # no runtime beside the run: inlined (a report writes nothing outside its run folder)
    assert "<script src=" not in text and text.count("<script>") == len(pages.ASSETS) + 1
    pages.install_assets(tmp_path)  # a results folder's shared copy: loaded from there
    text = pages.run_report_html(tmp_path / "run", {"steps": _steps(), "status": status}, "# run\n")
    assert '<script src="../_static/vega.min.js">' in text and "vegaEmbed(" in text


def test_a_missing_ci_is_a_rule_of_no_length_never_a_missing_value():
    steps = _steps().assign(median_ci_low=float("nan"), median_ci_high=float("nan"))
    values = pages.step_time_spec(steps)["data"]["values"]
    assert all(v["ms_ci_low"] == v["ms_ci_high"] == v["ms"] for v in values)


def test_the_committed_pages_are_what_the_harness_writes_and_share_one_runtime():
    index = (RESULTS / "index.html").read_text()
    from bench.report.report import index_table

    assert index == pages.index_html(RESULTS, index_table(RESULTS, committed_runs()), committed_runs())
    assert 'id="history"' in index and index.count("<tr>") == len(committed_runs()) + 1  # the runs and a header
    for name in pages.ASSETS:
        assert (RESULTS / "_static" / name).read_bytes() == (pages.STATIC / name).read_bytes()
    committed = sum(p.stat().st_size for p in RESULTS.rglob("*.html")) + sum(
        p.stat().st_size for p in (RESULTS / "_static").iterdir())
    assert committed < 5 * 2**20, f"the committed HTML and its runtime hold {committed / 2**20:.1f} MiB"


# ---------------------------------------------------------------- the real browser


def _chromium() -> str:
    found = os.environ.get("METABENCH_CHROMIUM") or next(
        (shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if not found:
        pytest.fail("no Chromium: `nox -s tests` unpacks one (bash .ci/chromium.sh, Debian's package); "
                    "or set METABENCH_CHROMIUM to a chromium binary")
    return found


def _load(page: Path) -> tuple[str, list[str]]:
    """The page's DOM after its scripts ran, and every console message it logged."""
    binary = _chromium()
    env = dict(os.environ)
    root = Path(binary).parents[3] if "/usr/lib/chromium/" in binary else None
    if root is not None:  # unpacked by .ci/chromium.sh: its libraries beside it
        libs = [str(root / "usr/lib/x86_64-linux-gnu"), str(root / "usr/lib/chromium"),
                str(root / "usr/lib/x86_64-linux-gnu/pulseaudio")]
        env["LD_LIBRARY_PATH"] = ":".join(libs + [env.get("LD_LIBRARY_PATH", "")])
    proc = subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", "--virtual-time-budget=10000", "--dump-dom", page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console


@pytest.mark.slow
def test_a_real_browser_draws_the_committed_index_and_run_report():
    newest = RESULTS / sorted(committed_runs())[-1]
    for page, figure in ((RESULTS / "index.html", "history"), (newest / "report.html", "step-times")):
        dom, console = _load(page)
        assert not console, f"{page}: console messages: {console}"
        assert re.search(r"<table", dom), page  # the headline table (index: the runs)
        drawn = re.search(rf'<div class="figure[^"]*" id="{figure}"[^>]*>(.*?)</div>\s*<script', dom, re.S)
        assert drawn and "<svg" in drawn.group(1) and "<path" in drawn.group(1), f"{page}: no figure drawn"
