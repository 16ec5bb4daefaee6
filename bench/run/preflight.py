"""Preflight: everything a run needs, checked before its first cell and before any file.

A run lasts an hour on a CPU and days on a cluster; a problem found by its first cell is
found once per cell, after the cost. So before ``metabench run`` writes anything it checks:

- the results folder is a writable folder (or can be created), and the run id is free, or
  with ``--resume`` names a run that exists, matches this plan and nobody is writing;
- the data of every planned Omniglot spec is present and readable (the zips open and pass
  their CRC checks, the split files list classes that the zips hold), or can be
  downloaded (not with ``METABENCH_OFFLINE=1``: then missing data is an error);
- ``--device cuda`` has a GPU (``nvidia-smi``), and every framework of the run sees it;
- every adapter's module imports (its framework installed), each framework in a short
  process of its own, as the cells will: the harness imports no framework.

Every problem found is one line; ``PreflightError`` carries them all and the CLI prints
each and exits 2.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

from bench.core import frameworks
from bench.core.errors import DataError, MetabenchError
from bench.report.results import NotARun, is_run, require_run  # noqa: F401 - runs are checked here too
from bench.run import executors

PROBE_TIMEOUT = 300  # seconds for one framework's import (TF on a loaded 2-core machine: ~20 s)
# A split-file line: <Alphabet>/characterNN/rotDDD (bench.core.data.omniglot.read_split).
_SPLIT_LINE = re.compile(r"^[^/\s]+/character\d+/rot(000|090|180|270)$")
_PNG = re.compile(r"^images_(?:background|evaluation)/([^/]+/character\d+)/\d{4}_\d{2}\.png$")


class PreflightError(MetabenchError):
    """Every problem preflight found, one line each (``str`` joins them with newlines)."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def check(plan, dry_run: bool = False) -> None:
    """Raise ``PreflightError`` listing every problem of ``plan`` (a ``bench.run.runner.RunPlan``).
    ``dry_run`` (``metabench run --dry-run``): the same checks, except that missing data
    files that the run would download are not fetched (nor a problem)."""
    problems = check_results_dir(plan.results_dir)
    if not problems:
        problems += check_run_id(plan)
    problems += check_data(plan.specs.values(), plan.data_dir, download=not dry_run)
    problems += check_executor(plan)
    # Cells that run elsewhere see their nodes' GPUs, not this machine's: here only the
    # imports are checked (the same installation on a shared filesystem); a node without
    # the device fails its cells, each with the framework's message.
    here = executors.runs_here(plan.executor, plan.cluster)
    problems += check_frameworks(plan.cells, plan.device if here else "cpu")
    if problems:
        raise PreflightError(problems)


def check_executor(plan) -> list[str]:
    """The engine ``--executor`` drives is installed."""
    module = {"slurm": "submitit", "ray": "ray"}.get(plan.executor)
    if module is None:
        return []
    try:
        __import__(module)
    except ImportError:
        return [f"--executor {plan.executor} needs the {module} package: pip install 'metabench[cluster]' "
                f"(or pip install {module})"]
    if plan.executor == "slurm" and plan.cluster.slurm_cluster != "local":
        import shutil

        missing = [tool for tool in ("sbatch", "srun", "sacct") if shutil.which(tool) is None]
        if missing:
            return [f"--executor slurm: {', '.join(missing)} not found on PATH; run metabench on a Slurm login "
                    f"node, or add --slurm-cluster local to try the jobs on this machine"]
    return []


# -- the results folder and the run id -------------------------------------------------------

def check_results_dir(results_dir: Path) -> list[str]:
    """A folder this process can create files in, or one it can create."""
    path = Path(results_dir)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file" if existing == path else f"cannot be created: {existing} is a file"
        return [f"--results-dir {path} {what}, not a folder; give a folder (created when missing)"]
    where = "" if existing == path else f" (it would be created in {existing})"
    if not os.access(existing, os.W_OK | os.X_OK):
        return [f"--results-dir {path} is not writable{where}; give a folder you can write to"]
    try:  # os.access answers for root as if every folder were writable (/proc, a read-only mount)
        import tempfile

        before = os.stat(existing)
        os.rmdir(tempfile.mkdtemp(prefix=".metabench-write-check-", dir=existing))
        with contextlib.suppress(OSError):  # the probe leaves no trace, its folder's times included
            os.utime(existing, ns=(before.st_atime_ns, before.st_mtime_ns))
    except OSError as e:
        return [f"--results-dir {path} is not writable{where} ({e.strerror or type(e).__name__}); "
                f"give a folder you can write to"]
    return []




def check_run_id(plan) -> list[str]:
    from bench.run import lock

    run_dir = plan.run_dir
    if not plan.resume:
        if run_dir.exists() and (not run_dir.is_dir() or _written(run_dir)):
            return [f"--run-id {plan.run_id}: {run_dir} already exists; add --resume to complete that run, "
                    f"or choose another --run-id"]
        return []
    if not run_dir.is_dir() or not _written(run_dir):
        return [f"--resume: there is no run {plan.run_id} in {plan.results_dir} to resume; "
                f"drop --resume to start it, or give the --run-id of a folder there"]
    if not is_run(run_dir):
        return [f"--resume: {run_dir} holds no metabench run (no manifest.json, plan.json or cells/); "
                f"drop --resume and choose another --run-id"]
    problems = []
    try:
        old = recorded_plan(run_dir)
    except (OSError, ValueError) as e:  # written by hand, or by a version before atomic writes
        return [f"--resume: cannot read the plan of run {plan.run_id} ({type(e).__name__}: {e}); "
                f"start a new run (another --run-id)"]
    mismatch = plan_mismatch(old, plan.record())
    if mismatch:
        key, words = mismatch
        # a default (threads: this machine's cores; device: auto) can differ where the command does not
        pinned = [f"--{key}", str(old[key])] if key in ("threads", "device") else []
        problems.append(f"--resume: run {plan.run_id} was planned with {words}; resume it with the options it "
                        f"started with: {resume_command(recorded_command(run_dir), plan.run_id, pinned)}")
    held_by = lock.holder(run_dir)
    if held_by:
        problems.append(f"--resume: run {plan.run_id} is being written by {held_by}; "
                        f"wait for it to finish (or stop it), then resume")
    return problems


def _written(run_dir: Path) -> list[Path]:
    """What a run folder holds beyond a lock and temporary files: a run killed before it
    wrote its plan leaves only those, and its id is free again."""
    from bench.core.atomic import PART_PREFIX
    from bench.run.lock import LOCK_NAME

    return [p for p in run_dir.iterdir() if p.name != LOCK_NAME and not p.name.startswith(PART_PREFIX)]


def recorded_plan(run_dir: Path) -> dict:
    """The plan a run was started with: ``plan.json``, else what an older run's manifest says."""
    path = run_dir / "plan.json"
    if path.exists():
        return json.loads(path.read_text())
    manifest_path = run_dir / "manifest.json"
    if not manifest_path.exists():
        return {}
    m = json.loads(manifest_path.read_text())
    return {"profile": m.get("profile"), "device": m.get("device"), "threads": m.get("threads"),
            "cells": [c["cell_id"] for c in m.get("cells", [])]}


def recorded_command(run_dir: Path) -> str | None:
    for name in ("plan.json", "manifest.json"):
        try:
            command = json.loads((run_dir / name).read_text()).get("command")
        except (OSError, ValueError):
            continue
        if command:
            return command
    return None


def plan_mismatch(old: dict, new: dict) -> tuple[str, str] | None:
    """The first difference that would mix two plans' cells in one run: (the plan's key, in
    words); None if none. Only keys both plans record are compared (an older run's manifest
    records fewer)."""
    for key in ("profile", "device", "threads", "phases", "repeats", "order_seed"):
        if old.get(key) is not None and key in new and old[key] != new[key]:
            return key, f"--{key.replace('_', '-')} {_show(old[key])}, not {_show(new[key])}"
    if "cells" in old and sorted(old["cells"]) != sorted(new["cells"]):
        missing = sorted(set(old["cells"]) - set(new["cells"]))
        extra = sorted(set(new["cells"]) - set(old["cells"]))
        diff = "; ".join(([f"cell {missing[0]} that this command leaves out"] if missing else [])
                         + ([f"no cell {extra[0]}"] if extra else []))
        return "cells", f"other cells ({diff})"
    for name, digest in new.get("specs", {}).items():
        if old.get("specs", {}).get(name, digest) != digest:
            return "specs", (f"another spec {name}: plan.json records its digest {old['specs'][name]!s:.16}, "
                             f"this command's is {digest} (the spec file, or plan.json, was changed since)")
    return None


def _show(value) -> str:
    return ",".join(value) if isinstance(value, list) else str(value)


def resume_command(command: str | None, run_id: str, extra: list[str] = ()) -> str:
    """``command`` (as typed) with ``extra`` options and ``--run-id RUN_ID --resume``: what
    completes the run."""
    import shlex

    if not command or not command.startswith("metabench run"):
        return f"metabench run --run-id {shlex.quote(run_id)} --resume (with the options the run started with)"
    replaced = {"--run-id", "--resume", *extra[::2]}
    words, out, skip = shlex.split(command), [], False
    for word in words:
        if skip:
            skip = False
        elif word in replaced:
            skip = word != "--resume"  # the others take a value
        elif not any(word.startswith(f"{flag}=") for flag in replaced):
            out.append(word)
    return shlex.join([*out, *extra, "--run-id", run_id, "--resume"])


# -- data ------------------------------------------------------------------------------------

def check_data(specs, data_dir, download: bool = True) -> list[str]:
    """Problems with the data files of the Omniglot ``specs`` (each file checked once).
    Without ``download``, files that are missing but downloadable are left for the run."""
    from bench.core import paths

    specs = [s for s in specs if s.data.dataset == "omniglot"]
    if not specs:
        return []
    root = paths.data_dir(data_dir)
    if root.exists() and not root.is_dir():
        return [f"--data-dir {root} is a file, not a folder; give the folder that holds omniglot/ "
                f"(or set METABENCH_DATA_DIR to it)"]
    splits = list(dict.fromkeys(split for s in specs for split in (s.data.train_split, s.data.val_split,
                                                                     s.data.test_split)))
    missing = _missing_offline(root, splits)
    if missing and os.environ.get("METABENCH_OFFLINE"):
        return [missing]
    if missing and not download:  # the run itself downloads them, then checks them
        return []
    problems, characters = _check_zips(root)
    if problems:
        return problems  # split files are checked against the zips' contents
    for split in splits:
        problems += _check_split(root, split, characters)
    return problems


def _missing_offline(root: Path, splits) -> str | None:
    """Without network, every missing file in one line: usually it is the whole folder."""
    from bench.core.data.omniglot import ZIP_NAMES, split_remote, zip_remote

    remotes = [zip_remote(n) for n in ZIP_NAMES] + [split_remote(s) for s in splits]
    missing = [r.relpath for r in remotes if not (root / r.relpath).is_file()]
    if not missing:
        return None
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    return (f"missing data: {shown} not in {root}, and METABENCH_OFFLINE forbids downloading; point --data-dir "
            f"or METABENCH_DATA_DIR at the folder holding omniglot/ (the official zips and Vinyals split "
            f"files, README: Data), or unset METABENCH_OFFLINE to download them")


def _fetch(remote, root: Path) -> tuple[Path | None, str | None]:
    """The local file (downloaded when missing and allowed), or the one-line problem."""
    from bench.core.data.omniglot import ensure_file

    try:
        return ensure_file(remote, root), None
    except DataError as e:
        return None, str(e)


def _check_zips(root: Path) -> tuple[list[str], set[str]]:
    """Problems of the two official zips, and the characters (``Alphabet/characterNN``) they hold."""
    from bench.core.data.omniglot import DRAWERS, ZIP_NAMES, zip_remote

    problems, characters = [], set()
    for name in ZIP_NAMES:
        path, problem = _fetch(zip_remote(name), root)
        if problem:
            problems.append(problem)
            continue
        fix = "delete it and run again to re-download it, or replace it with the official zip"
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()  # every member's CRC: 0.4 s for both zips
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            problems.append(f"damaged data file {path} ({e}); {fix}")
            continue
        if bad is not None:
            problems.append(f"damaged data file {path} (member {bad} fails its CRC check); {fix}")
            continue
        counts = Counter(m.group(1) for m in map(_PNG.match, names) if m)
        short = sorted(c for c, n in counts.items() if n != DRAWERS)
        if not counts:
            problems.append(f"damaged data file {path}: no images_*/Alphabet/characterNN/*.png entries; {fix}")
        elif short:
            problems.append(f"damaged data file {path}: {short[0]} has {counts[short[0]]} images, expected "
                            f"{DRAWERS}; {fix}")
        characters |= set(counts)
    return problems, characters


def _check_split(root: Path, split: str, characters: set[str]) -> list[str]:
    from bench.core.data.omniglot import SPLIT_CLASS_COUNTS, split_remote

    path, problem = _fetch(split_remote(split), root)
    if problem:
        return [problem]
    fix = ("replace it with the published file (data/omniglot/splits/vinyals/ of "
           "github.com/jakesnell/prototypical-networks)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        return [f"damaged split file {path} ({e}); {fix}"]
    classes = 0
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        if not _SPLIT_LINE.match(line):
            return [f"damaged split file {path}, line {n}: {line[:60]!r} is not Alphabet/characterNN/rotDDD; {fix}"]
        character = line.rsplit("/", 1)[0]
        if character not in characters:
            return [f"split file {path}, line {n}, names {character}, which neither zip holds: the split "
                    f"files and the zips do not belong together; {fix}, or use the official zips"]
        classes += 1
    if classes != SPLIT_CLASS_COUNTS[split]:
        return [f"split file {path} lists {classes} classes, the published one {SPLIT_CLASS_COUNTS[split]} "
                f"(truncated?); {fix}"]
    return []


# -- device and frameworks ---------------------------------------------------------------------

def gpu_problem() -> str | None:
    """Why ``--device cuda`` cannot run here, asked of ``nvidia-smi``; None when a GPU answers."""
    fix = "use --device cpu, or --device auto (a GPU when there is one)"
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        return f"--device cuda: no NVIDIA GPU here (nvidia-smi not found); {fix}"
    except (OSError, subprocess.SubprocessError) as e:
        return f"--device cuda: nvidia-smi failed ({e}); {fix}"
    if out.returncode != 0 or "GPU" not in out.stdout:
        said = (out.stderr or out.stdout).strip().splitlines()
        return f"--device cuda: no NVIDIA GPU here (nvidia-smi: {said[0] if said else 'no GPU listed'}); {fix}"
    return None


def check_frameworks(cells, device: str) -> list[str]:
    """Import every planned adapter's module, one process per framework, all at once; with
    ``--device cuda``, ask each built-in framework whether it sees the GPU."""
    from bench.core import registry

    if device == "cuda":
        problem = gpu_problem()
        if problem:
            return [problem]
    adapters: dict[str, dict[str, dict]] = {}
    for cell in cells:
        entry = registry.get(cell.adapter)
        adapters.setdefault(entry.framework, {})[entry.name] = {"target": entry.target,
                                                                 "options": _jsonable(entry.options)}
    probes = {fw: subprocess.Popen([sys.executable, "-m", "bench.run.preflight", fw, device, json.dumps(entries)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, **registry.child_env()})
              for fw, entries in adapters.items()}
    problems = []
    for framework, proc in probes.items():
        try:
            out, err = proc.communicate(timeout=PROBE_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            problems.append(f"importing {framework} took over {PROBE_TIMEOUT} s; check its installation "
                            f"(python -c 'import {framework}')")
            continue
        try:
            problems += json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            last = (err.strip().splitlines() or ["no output"])[-1]
            problems.append(f"the {framework} import check crashed (exit {proc.returncode}: {last}); "
                            f"check its installation (python -c 'import {framework}')")
    return problems


def _jsonable(options: dict) -> dict | None:
    """The entry's options as the probe process will see them; None (not checked) when JSON
    cannot carry them unchanged."""
    try:
        return options if json.loads(json.dumps(options)) == options else None
    except (TypeError, ValueError):
        return None


def _install_hint(framework: str, missing: str | None) -> str:
    """The fix for a missing package: the framework's extra when the package is one of its
    record's (``bench.core.frameworks``)."""
    top = (missing or "").split(".")[0]
    record = frameworks.get(framework)
    if record.extra and top in record.import_names:
        return f"pip install 'metabench[{record.extra}]'"
    return f"install the package that provides {top or 'it'}"


def probe(framework: str, device: str, adapters: dict[str, dict]) -> list[str]:
    """In the framework's own process: the problems importing each adapter's class
    (``adapters``: name -> {"target": "module:Class", "options": {...}}), configuring it with
    its registry entry's options, and, on ``cuda``, seeing a GPU."""
    import importlib

    problems = []
    for adapter, entry in adapters.items():
        module, _, name = entry["target"].partition(":")
        try:
            cls = getattr(importlib.import_module(module), name)
        except ImportError as e:
            # an adapter whose import error already names its fix (torch-maml-higher) is not told twice
            hint = "" if "pip install" in str(e) else f"; {_install_hint(framework, getattr(e, 'name', None))}"
            problems.append(f"adapter {adapter}: cannot import {module} ({e}){hint}")
            continue
        except Exception as e:  # a plugin broken beyond a missing package, or no such class
            problems.append(f"adapter {adapter}: loading {entry['target']} fails ({type(e).__name__}: {e}); "
                            f"fix or uninstall the plugin")
            continue
        # a typo in an option would benchmark the default under the variant's name: refused here
        check_options = getattr(cls, "option_problems", None)
        if entry.get("options") is not None and check_options is not None:
            fix = "fix the option after '@' in --adapters" if "@" in adapter else "fix its registry entry"
            problems += [f"adapter {adapter}: {p}; {fix}" for p in check_options(entry["options"])]
    record = frameworks.get(framework)  # each framework, in its own words, on whether it sees a GPU
    if device == "cuda" and record.gpu_probe is not None and not problems:
        try:
            record.gpu_probe()
        except Exception as e:
            words = " ".join(str(e).split())[:200]
            problems.append(f"--device cuda: {framework} cannot use the GPU ({words}); {record.gpu_fix}")
    return problems


if __name__ == "__main__":
    # python -m bench.run.preflight FRAMEWORK DEVICE '{"adapter": {"target": ..., "options": ...}}':
    # prints a JSON list of problems
    print(json.dumps(probe(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))))
