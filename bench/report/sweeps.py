"""How cost grows with the work: a ``--sweep`` run's step times and peak memory against
each swept value, with the fitted growth exponent.

``metabench run --sweep maml.inner_steps=1,2,5`` makes one spec per value
(``omniglot-5w1s@maml.inner_steps=2``: ``bench.core.spec``). Here the cells' spec references are
read back: a key whose value differs between cells of one base spec and algorithm is swept;
the other keys' values fix a series. For each series, framework and step phase (and peak
memory), the growth exponent ``b`` of ``y ~ x^b`` is the least-squares slope of
``log y`` on ``log x``: 1 is linear growth (second-order MAML's memory in inner steps), 0
flat (first-order's), below 1 a per-step cost that shrinks with the work (dispatch-bound
steps of small ops).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench.core.spec import OVERRIDE_SEP, parse_override

# y: a step phase's median seconds or peak MiB; y_low, y_high: the median's 95% CI (NaN for
# memory, and where too few processes tell one)
POINT_COLUMNS = ["base", "algorithm", "framework", "adapter", "key", "fixed", "value", "quantity", "y", "y_low",
                 "y_high"]


def _number(text: str) -> float | None:
    try:
        x = float(text)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _refs(run_dir: Path) -> dict[str, tuple[str, dict[str, str]]]:
    """spec name -> (base reference, its overrides) for every cell of the run."""
    out = {}
    for path in sorted(Path(run_dir).glob("cells/*/cell.json")):
        cell = json.loads(path.read_text())
        base, *extra = str(cell["spec"]).split(OVERRIDE_SEP)
        out[cell["spec_name"]] = (base, dict(parse_override(o, "spec reference") for o in extra))
    return out


def sweep_points(run_dir: Path, steps: pd.DataFrame, memory: pd.DataFrame) -> pd.DataFrame:
    """One row per (cell, quantity) of a swept key: ``quantity`` is a step phase (``y``
    its median seconds) or ``peak memory`` (``y`` in MiB)."""
    refs = _refs(run_dir)
    ys = []
    if not steps.empty:
        s = steps[steps["phase"] != "sample_episodes"]
        ci = [(getattr(r, "median_ci_low", math.nan), getattr(r, "median_ci_high", math.nan)) for r in s.itertuples()]
        ys += [(r.spec, r.algorithm, r.framework, r.adapter, r.phase, r.median, *c) for r, c in zip(s.itertuples(), ci)]
    if not memory.empty:
        ys += [(r.spec, r.algorithm, r.framework, r.adapter, "peak memory", r.peak_mib, math.nan, math.nan)
               for r in memory.itertuples()]
    rows = []
    for spec, algorithm, framework, adapter, quantity, y, y_low, y_high in ys:
        if spec not in refs or not refs[spec][1]:
            continue
        base, over = refs[spec]
        siblings = [o for b, o in refs.values() if b == base]
        for key, text in over.items():
            x = _number(text)
            if x is None or x <= 0 or len({o.get(key) for o in siblings}) < 2:
                continue  # not swept (a --set), or not a positive number
            fixed = ", ".join(f"{k}={v}" for k, v in sorted(over.items()) if k != key)
            rows.append((base, algorithm, framework, adapter, key, fixed, x, quantity, float(y), float(y_low),
                         float(y_high)))
    return pd.DataFrame(rows, columns=POINT_COLUMNS)


def spec_labels(run_dir: Path) -> dict[str, str]:
    """A short label for each spec of a ``--sweep`` or ``--set`` run: its base and the
    fields it changes, ``omniglot-5w1s inner_steps=1, meta_batch_size=16`` for
    ``omniglot-5w1s_maml.inner_steps-1_maml.meta_batch_size-16`` (fields in alphabetical
    order; a spec file's base by its file name's stem)."""
    stem = lambda base: Path(base).stem if base.endswith(".toml") else base
    return {name: f"{stem(base)} " + ", ".join(f"{k.split('.')[-1]}={v}" for k, v in sorted(over.items()))
            for name, (base, over) in _refs(run_dir).items() if over}


def exponents(points: pd.DataFrame) -> pd.DataFrame:
    """The fitted exponent of each series (two or more distinct values), with its ends."""
    rows = []
    for key, g in points.groupby(["base", "algorithm", "key", "fixed", "quantity", "framework"], sort=True):
        g = g.groupby("value", as_index=False)["y"].median().sort_values("value")
        if len(g) < 2 or (g["y"] <= 0).any():
            continue
        exponent = float(np.polyfit(np.log(g["value"]), np.log(g["y"]), 1)[0])
        slope = float(np.polyfit(g["value"], g["y"], 1)[0])  # linear growth per unit, beside a fixed cost
        rows.append((*key, g["value"].iloc[0], g["y"].iloc[0], g["value"].iloc[-1], g["y"].iloc[-1], exponent,
                     slope))
    return pd.DataFrame(rows, columns=["base", "algorithm", "key", "fixed", "quantity", "framework", "x_low", "y_low",
                                       "x_high", "y_high", "exponent", "slope"])


def _fmt(quantity: str, y: float) -> str:
    from bench.report.tables import format_seconds

    return f"{y:.1f} MiB" if quantity == "peak memory" else format_seconds(y)


def sweep_markdown(points: pd.DataFrame) -> str:
    """One table: a row per base spec / algorithm / swept key / quantity (and fixed
    values), a column per framework: its value at the sweep's ends and the exponent."""
    fits = exponents(points)
    if fits.empty:
        return ""
    table = {}
    for r in fits.itertuples():
        row = (f"{r.base} / {r.algorithm} / {r.key}" + (f" ({r.fixed})" if r.fixed else ""), r.quantity)
        table.setdefault(row, {})[r.framework] = (f"{_fmt(r.quantity, r.y_low)} -> {_fmt(r.quantity, r.y_high)}, "
                                                  f"b = {round(r.exponent, 2) + 0.0:.2f}, {'-' if r.slope < 0 else '+'}"
                                                  f"{_fmt(r.quantity, abs(r.slope))} per unit")
    frameworks = sorted(fits["framework"].unique())
    out = pd.DataFrame([{"workload / swept key": k[0], "quantity": k[1], **{f: v.get(f, "") for f in frameworks}}
                        for k, v in table.items()])
    lo, hi = fits["x_low"].min(), fits["x_high"].max()
    return (f"Each cell: the value at the lowest and highest swept value ({lo:g} and {hi:g} where the sweep spans "
            f"them); b, the growth exponent of y ~ x^b (least squares on log-log); and the linear growth per "
            f"unit of the swept value (least squares of y ~ a + s x: per inner step, per task), which a fixed "
            f"cost (weights, the framework's own buffers) does not pull below 1 as it does b.\n\n"
            f"{out.to_markdown(index=False)}\n")
