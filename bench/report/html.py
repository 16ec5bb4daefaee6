"""The HTML pages: each run's ``report.html`` and the results folder's ``index.html``.

Interactive figures are Vega-Lite specifications (https://vega.github.io/vega-lite/) built
here from the run's own tables and drawn by the Vega runtime in the browser: hover a point
for its value and CI, click a framework in the legend to show it alone (shift-click for
more). Why Vega-Lite: a figure is a JSON document that Python builds and a test can read
(colours, scales, fields) without a browser; its runtime (vega, vega-lite, vega-embed:
828 KB, BSD-3-Clause, ``bench/report/static``) is one set of files. In a results folder it is
copied once beside the run folders (``<results>/_static/``, by ``metabench run`` and
``metabench index``), and each page loads it from there: the committed pages share one copy
(plotly.js alone is 3.5 MB, inlined per page would put it in every run folder). A run folder
with no ``_static`` beside it gets the runtime inlined into its page, since a report writes
nothing outside its run folder. Either way a page opens from ``file://`` with no network.

Colours are the figures': each framework's record's (``bench.core.frameworks``), the same
in every page and every PNG.
"""

from __future__ import annotations

import html
import json
import os
import shutil
from pathlib import Path

import pandas as pd

from bench.core.algorithms import all_algorithms

STATIC = Path(__file__).parent / "static"
ASSETS = ("vega.min.js", "vega-lite.min.js", "vega-embed.min.js")
ASSET_DIR = "_static"  # beside the run folders: <results>/_static/
STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 1.5em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: .8em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
code { font-size: 90%; }
img { max-width: 100%; }
.figure { margin: 1em 0 2em; }
.note { color: #555; font-size: 13px; }
.status-ok { color: #1a7f37; } .status-failed, .status-timeout { color: #cf222e; font-weight: bold; }
"""


def install_assets(results_dir: Path) -> Path:
    """The Vega runtime in ``results_dir/_static/`` (copied where absent or different:
    the page's scripts always match the harness that wrote it)."""
    target = Path(results_dir) / ASSET_DIR
    target.mkdir(parents=True, exist_ok=True)
    for name in (*ASSETS, "LICENSE-vega.txt"):
        src, dst = STATIC / name, target / name
        if not dst.exists() or dst.read_bytes() != src.read_bytes():
            shutil.copyfile(src, dst)
    return target


def runtime_scripts(page_dir: Path, assets: Path) -> str:
    """The page's ``<script>`` elements: the shared ``assets`` folder's files by relative
    path where that folder holds them all, else the files' text inline."""
    if all((assets / name).is_file() for name in ASSETS):
        rel = os.path.relpath(assets, page_dir).replace(os.sep, "/")
        return "\n".join(f'<script src="{rel}/{name}"></script>' for name in ASSETS)
    return "\n".join(f"<script>\n{(STATIC / name).read_text(encoding='utf-8')}\n</script>" for name in ASSETS)


def page(title: str, body: str, scripts: str) -> str:
    """A whole page; ``scripts``: the Vega runtime's elements (``runtime_scripts``)."""
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{STYLE}</style>\n{scripts}\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def chart(element_id: str, spec: dict) -> str:
    """A figure: its element and the script that draws ``spec`` into it. A failure to
    draw is a console error (the browser test fails on those)."""
    return (f'<div class="figure" id="{element_id}"></div>\n<script>\n'
            f'vegaEmbed("#{element_id}", {json.dumps(spec, separators=(",", ":"), allow_nan=False)}, '
            '{"actions": false, "renderer": "svg"}).catch(function (e) { console.error(e); });\n</script>')


def colour_scale(frameworks) -> dict:
    """The figures' palette as a Vega-Lite colour scale over ``frameworks``."""
    from matplotlib.colors import to_hex

    from bench.core.frameworks import get as framework_record

    domain = sorted(set(frameworks))
    return {"domain": domain, "range": [to_hex(framework_record(f).colour) for f in domain]}


def _records(frame: pd.DataFrame) -> list[dict]:
    """JSON-safe rows: NaN as null (Vega reads null as missing)."""
    return json.loads(frame.to_json(orient="records"))


# Click a framework in the legend to show it alone (shift-click adds): the others fade.
_LEGEND_TOGGLE = {"name": "framework_shown", "select": {"type": "point", "fields": ["framework"]}, "bind": "legend"}
_FADE = {"condition": {"param": "framework_shown", "value": 1}, "value": 0.12}


def step_time_spec(steps: pd.DataFrame) -> dict | None:
    """Median step time per adapter with its 95% CI, one panel per spec, algorithm and
    phase; log scale (steps span µs to s); colour by framework."""
    if steps.empty:
        return None
    cols = ["framework", "adapter", "algorithm", "spec", "phase", "compilation", "median", "median_ci_low",
            "median_ci_high", "rounds", "processes"]
    t = steps[[c for c in cols if c in steps.columns]].copy()
    for c in ("median", "median_ci_low", "median_ci_high"):
        if c in t:
            t[c.replace("median", "ms")] = 1e3 * t[c]
    if "ms_ci_low" not in t:
        t["ms_ci_low"] = t["ms_ci_high"] = t["ms"]
    # no CI (too few processes or rounds to tell): a rule of no length, never a missing
    # value (Vega warns of an infinite extent)
    t["ms_ci_low"], t["ms_ci_high"] = t["ms_ci_low"].fillna(t["ms"]), t["ms_ci_high"].fillna(t["ms"])
    t = t.drop(columns=[c for c in ("median", "median_ci_low", "median_ci_high") if c in t])
    t["panel"] = t["spec"] + " / " + t["algorithm"] + " / " + t["phase"]
    x = {"field": "ms", "type": "quantitative", "scale": {"type": "log"}, "title": "ms (log scale)"}
    colour = {"field": "framework", "type": "nominal", "scale": colour_scale(t["framework"]), "title": "framework"}
    tooltip = [{"field": f, "type": "nominal"} for f in ("adapter", "compilation", "panel") if f in t] + [
        {"field": "ms", "type": "quantitative", "format": ".3~g", "title": "median ms"},
        {"field": "ms_ci_low", "type": "quantitative", "format": ".3~g", "title": "95% CI low"},
        {"field": "ms_ci_high", "type": "quantitative", "format": ".3~g", "title": "95% CI high"},
        *[{"field": f, "type": "quantitative"} for f in ("rounds", "processes") if f in t]]
    return panels_spec("step time per adapter, median and 95% CI", t, x, "ms_ci_low", "ms_ci_high", colour, tooltip)


def panels_spec(description: str, t: pd.DataFrame, x: dict, low: str, high: str, colour: dict, tooltip: list) -> dict:
    """One panel per ``t["panel"]`` (in order of appearance), stacked: in each, a point per
    adapter at ``x`` and a rule from ``low`` to ``high``, on an x scale of its own (a panel
    compares its adapters; step times span µs to s across panels). Panels are views of one
    ``vconcat`` (not a facet: a layered facet with a y scale of its own per panel makes
    Vega warn), sharing one data set, one colour legend and its toggle."""
    y = {"field": "adapter", "type": "nominal", "title": None, "sort": sorted(t["adapter"].unique())}
    views = []
    for i, panel in enumerate(dict.fromkeys(t["panel"])):
        point = {"mark": {"type": "point", "filled": True, "size": 70},
                 "encoding": {"y": y, "x": x, "color": colour, "opacity": _FADE, "tooltip": tooltip}}
        if i == 0:  # the legend's toggle, defined once; every panel fades by it
            point["params"] = [_LEGEND_TOGGLE]
        views.append({"title": {"text": panel, "anchor": "start", "fontSize": 12}, "width": 520,
                      "transform": [{"filter": {"field": "panel", "equal": panel}}],
                      "layer": [{"mark": {"type": "rule", "strokeWidth": 2},
                                 "encoding": {"y": y, "x": {**x, "field": low}, "x2": {"field": high},
                                              "color": colour, "opacity": _FADE, "tooltip": tooltip}}, point]})
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "description": description,
        "data": {"values": _records(t)},
        "vconcat": views,
        "resolve": {"scale": {"x": "independent"}},
    }


def accuracy_spec(accuracy: pd.DataFrame) -> dict | None:
    """Mean accuracy (or loss) per adapter with its 95% CI, one panel per spec,
    algorithm and metric."""
    if accuracy.empty:
        return None
    t = accuracy[["framework", "adapter", "algorithm", "spec", "metric", "mean", "ci95", "seed"]].copy()
    t = t.groupby(["framework", "adapter", "algorithm", "spec", "metric"], as_index=False).agg(
        mean=("mean", "mean"), ci95=("ci95", "mean"), seeds=("seed", "nunique"))
    t["low"], t["high"] = t["mean"] - t["ci95"].fillna(0.0), t["mean"] + t["ci95"].fillna(0.0)
    t["panel"] = t["spec"] + " / " + t["algorithm"] + " / " + t["metric"]
    colour = {"field": "framework", "type": "nominal", "scale": colour_scale(t["framework"]), "title": "framework"}
    x = {"field": "mean", "type": "quantitative", "scale": {"zero": False}, "title": "mean over episodes and seeds"}
    tooltip = [{"field": "adapter", "type": "nominal"}, {"field": "panel", "type": "nominal"},
               {"field": "mean", "type": "quantitative", "format": ".4~g"},
               {"field": "ci95", "type": "quantitative", "format": ".2~g", "title": "95% CI half-width"},
               {"field": "seeds", "type": "quantitative"}]
    return panels_spec("accuracy per adapter, mean and 95% CI", t, x, "low", "high", colour, tooltip)


def markdown_html(text: str) -> str:
    """The summary's markdown as HTML (CommonMark with tables: markdown-it-py)."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def status_table(status: pd.DataFrame) -> str:
    """Every cell's phases and their status."""
    if status.empty:
        return "<p>No cells.</p>"
    cols = [c for c in ("adapter", "algorithm", "spec", "seed", "phase", "status", "seconds", "detail")
            if c in status.columns]
    rows = []
    for r in status[cols].itertuples(index=False):
        cells = []
        for c, v in zip(cols, r):
            text = "" if v is None or (isinstance(v, float) and pd.isna(v)) else (
                f"{v:.1f}" if c == "seconds" else str(v))
            cls = f' class="status-{html.escape(text)}"' if c == "status" else ""
            cells.append(f"<td{cls}>{html.escape(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(f"<th>{c}</th>" for c in cols)
    return f'<table id="cells"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def run_report_html(run_dir: Path, tabs: dict[str, pd.DataFrame], summary_md: str) -> str:
    """A run's ``report.html``: its summary (the same markdown as summary.md, with its
    tables), the interactive figures, every cell's status."""
    figures = [("step-times", "Step times (interactive)", step_time_spec(tabs.get("steps", pd.DataFrame()))),
               ("accuracy", "Accuracy (interactive)", accuracy_spec(tabs.get("accuracy", pd.DataFrame())))]
    drawn = []
    for element_id, title, spec in figures:
        if spec is not None:
            drawn += [f"<h2>{title}</h2>", '<p class="note">Hover a point for its value and CI; click a framework '
                      "in the legend to show it alone (shift-click adds one, double-click clears).</p>",
                      chart(element_id, spec)]
    # the figures right after the summary's answer (its comparison tables), before the details
    summary = markdown_html(summary_md)
    after = summary.find("<h2>", summary.find("<h2>Comparison</h2>") + 1) if "<h2>Comparison</h2>" in summary else -1
    head, tail = (summary[:after], summary[after:]) if after > 0 else (summary, "")
    parts = [f'<div id="summary">{head}', *drawn, f"{tail}</div>",
             "<h2>Cells</h2>", status_table(tabs.get("status", pd.DataFrame()))]
    run_dir = Path(run_dir)
    return page(f"metabench run {run_dir.name}", "\n".join(parts),
                runtime_scripts(run_dir, run_dir.parent / ASSET_DIR))


def write_run_html(run_dir: Path, tabs: dict[str, pd.DataFrame], summary_md: str) -> Path:
    from bench.core import atomic

    run_dir = Path(run_dir)
    path = run_dir / "report.html"  # nothing written outside the run folder
    atomic.write_text(path, run_report_html(run_dir, tabs, summary_md))
    return path


def _run_versions(run_dir: Path) -> dict[str, str]:
    """adapter -> "<framework> <version>" from one of its cells' ``describe()``."""
    from bench.report.results import adapter_info

    out = {}
    for cell in sorted((run_dir / "cells").glob("*")):
        adapter = cell.name.split("__")[0]
        if adapter not in out:
            info = adapter_info(cell)
            if info.get("framework_version"):
                out[adapter] = f"{info.get('framework', '')} {info['framework_version']}"
    return out


def history_frame(results_dir: Path, runs=None) -> pd.DataFrame:
    """One row per committed run, adapter and step phase: its median step time with CI,
    and the run's date, commit, machine and framework version. Smoke runs are left out
    (their budgets make their numbers incomparable)."""
    from bench.report.results import read_manifest

    frames = []
    for manifest_path in sorted(Path(results_dir).glob("*/manifest.json")):
        run_dir = manifest_path.parent
        if runs is not None and run_dir.name not in runs:
            continue
        steps_path = run_dir / "steps.csv"
        m = read_manifest(manifest_path)
        if m.get("profile") == "smoke" or not steps_path.exists() or steps_path.stat().st_size < 10:
            continue
        steps = pd.read_csv(steps_path)
        if steps.empty or "median" not in steps:
            continue
        env = m.get("harness_environment", {})
        versions = _run_versions(run_dir)
        t = pd.DataFrame({
            "run": run_dir.name, "started": m.get("started"), "commit": (env.get("git", {}).get("sha") or "?")[:7],
            "machine": f"{env.get('cpu')} x{env.get('cpu_count')}, {m.get('device')}, {m.get('threads')} threads",
            "framework": steps["framework"], "adapter": steps["adapter"],
            "version": steps["adapter"].map(versions).fillna(""),
            "panel": (steps["spec"] + " / " + steps["algorithm"] + " / " + steps["phase"]
                      + (" / meta-batch " + steps["meta_batch_size"].astype("Int64").astype(str)
                         if "meta_batch_size" in steps else "")),
            "ms": 1e3 * steps["median"],
            "ms_ci_low": 1e3 * steps.get("median_ci_low", steps["median"]).fillna(steps["median"]),
            "ms_ci_high": 1e3 * steps.get("median_ci_high", steps["median"]).fillna(steps["median"]),
        })
        frames.append(t)
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True).sort_values(["started", "run", "adapter"], ignore_index=True)


def machine_changes(history: pd.DataFrame) -> pd.DataFrame:
    """The runs (in date order) whose machine differs from the run before: where a step's
    time may move for reasons that are not the code."""
    runs = history.drop_duplicates("run")[["run", "started", "machine"]]
    return runs[runs["machine"] != runs["machine"].shift()].iloc[1:]


def history_spec(history: pd.DataFrame) -> dict | None:
    """Each adapter's median step time (95% CI) across runs, per spec / algorithm / phase /
    meta-batch chosen from a menu; colour by framework; machine changes as dashed rules.
    Panels with a single run are left out of the menu."""
    if history.empty:
        return None
    counts = history.groupby("panel")["run"].nunique()
    panels = sorted(counts[counts >= 2].index) or sorted(counts.index)
    first = next(iter(all_algorithms()))  # the first algorithm's meta-training step on images, if any
    preferred = [p for p in panels if f"/ {first} / outer_step" in p and p.startswith("omniglot")]
    default = preferred[0] if preferred else panels[0]
    data = history[history["panel"].isin(panels)]
    colour = {"field": "framework", "type": "nominal", "scale": colour_scale(data["framework"]), "title": "framework"}
    x = {"field": "started", "type": "temporal", "title": "run started"}
    tooltip = [{"field": f, "type": "nominal"} for f in ("run", "adapter", "version", "commit", "machine")] + [
        {"field": "ms", "type": "quantitative", "format": ".3~g", "title": "median ms"},
        {"field": "ms_ci_low", "type": "quantitative", "format": ".3~g", "title": "95% CI low"},
        {"field": "ms_ci_high", "type": "quantitative", "format": ".3~g", "title": "95% CI high"}]
    changes = machine_changes(history)
    y = {"field": "ms", "type": "quantitative", "scale": {"type": "log"}, "title": "median step ms (log scale)"}
    layers = [
        {"mark": {"type": "rule", "strokeWidth": 2}, "transform": [{"filter": "datum.panel == panel"}],
         "encoding": {"x": x, "y": {**y, "field": "ms_ci_low"}, "y2": {"field": "ms_ci_high"}, "color": colour,
                      "opacity": _FADE, "tooltip": tooltip}},
        {"mark": {"type": "line", "point": {"filled": True, "size": 60}},
         "transform": [{"filter": "datum.panel == panel"}], "params": [_LEGEND_TOGGLE],
         "encoding": {"x": x, "y": y, "color": colour, "detail": {"field": "adapter"}, "opacity": _FADE,
                      "tooltip": tooltip}},
    ]
    if not changes.empty:
        layers.append({"data": {"values": _records(changes)}, "mark": {"type": "rule", "strokeDash": [4, 4],
                                                                        "color": "#888"},
                       "encoding": {"x": x, "tooltip": [{"field": "machine", "type": "nominal",
                                                         "title": "machine from here on"},
                                                        {"field": "run", "type": "nominal"}]}})
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "description": "median step time across committed runs",
        "params": [{"name": "panel", "value": default,
                    "bind": {"input": "select", "options": panels, "name": "spec / algorithm / phase: "}}],
        "data": {"values": _records(data)},
        "width": 760, "height": 340,
        "layer": layers,
    }


def index_html(results_dir: Path, table: pd.DataFrame, runs=None) -> str:
    """``results/index.html``: every committed run (newest first, linked to its report),
    then each adapter's step time across the runs (asv's history graphs are the model);
    ``table``: the runs' index (``bench.report.report.index_table``); ``runs``: only these
    run folders."""
    results_dir = Path(results_dir)
    rows = []
    for r in table.itertuples(index=False):
        name = r.run.split("`")[1].rstrip("/")
        link = f"{name}/report.html" if (results_dir / name / "report.html").exists() else f"{name}/summary.md"
        rows.append(f'<tr><td><a href="{html.escape(link)}">{html.escape(name)}</a></td><td>{html.escape(r.date)}'
                    f"</td><td>{html.escape(str(r.profile))}</td><td>{html.escape(r.machine)}</td>"
                    f"<td><code>{html.escape(r.git.replace('`', ''))}</code></td>"
                    f"<td>{markdown_html(r.headline).strip().removeprefix('<p>').removesuffix('</p>')}</td></tr>")
    history = history_frame(results_dir, runs)
    spec = history_spec(history)
    changes = machine_changes(history) if not history.empty else pd.DataFrame()
    parts = ["<h1>metabench: committed runs</h1>",
             "<h2>Step time across runs</h2>",
             '<p class="note">Each adapter\'s median step time with its 95% CI, per run, for the spec, algorithm, '
             "phase and meta-batch chosen below (smoke runs left out). Dashed lines: the machine changed from that "
             "run on. Hover for the run, commit, framework version and machine; click a framework in the legend "
             "to show it alone.</p>",
             chart("history", spec) if spec else "<p>No timed runs yet.</p>"]
    if not changes.empty:
        parts.append('<p class="note">Machine changes: ' + "; ".join(
            f"{html.escape(c.run)}: {html.escape(c.machine)}" for c in changes.itertuples(index=False)) + "</p>")
    parts += ["<h2>Runs</h2>",
              '<table id="runs"><thead><tr><th>run</th><th>date</th><th>profile</th><th>machine</th><th>git</th>'
              f'<th>headline</th></tr></thead><tbody>{"".join(rows)}</tbody></table>']
    return page("metabench: committed runs", "\n".join(parts), runtime_scripts(results_dir, results_dir / ASSET_DIR))


def write_index_html(results_dir: Path, table: pd.DataFrame) -> Path:
    from bench.core import atomic

    results_dir = Path(results_dir)
    install_assets(results_dir)
    path = results_dir / "index.html"
    atomic.write_text(path, index_html(results_dir, table))
    return path
