"""The matrix beyond one machine: ``--executor slurm`` (submitit) and ``--executor ray``.

No cluster exists here, so the engines' real local modes run the jobs: submitit's local
executor (real subprocess jobs, the same pickled call a Slurm node would run) and a real
Ray instance started for the run. The Slurm path up to ``sbatch`` is checked against fake
``sbatch``/``srun``/``sacct`` commands on PATH that record the job scripts and report the
state a test chooses (TIMEOUT, OUT_OF_MEMORY...). A job killed mid-run (the fake adapter
``fake-killer`` SIGKILLs the process running its cell) must come back as a failed cell
with the engine's reason, and ``--resume`` must complete the run.
"""

from __future__ import annotations

import json
import os
import pickle
import stat
import sys
from pathlib import Path

import pytest

from bench.core.cell import Cell
from bench.measure.hardware import mixed_hardware_note, odd_cells, placement_line
from bench.run.executors import FORWARDED_ENV, ClusterOptions, Job, RunContext, group_jobs, mark_lost
from bench.run.executors.ray_cluster import write_back
from bench.run.executors.slurm import PREEMPTED_GRACE_SECONDS, SlurmExecutor, left_preempted
from tests.fake_adapters import metabench


def fake_run(results: Path, run_id: str, adapters: str, *extra: str) -> list[str]:
    return ["run", "--profile", "smoke", "--specs", "sinusoid-10shot", "--adapters", adapters, "--algorithms",
            "maml", "--results-dir", str(results), "--run-id", run_id, "--phases", "timing,memory,accuracy", *extra]


def cells_of(run_dir: Path) -> dict[str, dict]:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return {c["cell_id"]: c for c in manifest["cells"]}


def phase_statuses(run_dir: Path) -> dict[str, dict[str, str]]:
    return {cid: {p: s["status"] for p, s in c["phases"].items()} for cid, c in cells_of(run_dir).items()}


CELL = dict(framework="fake", algorithm="maml", spec="sinusoid-10shot", spec_name="sinusoid-10shot",
            profile="smoke", device="cpu", threads=1)


# -- jobs, placements, hardware (no engine) ----------------------------------------------------

def test_cells_group_into_one_job_each_or_one_per_framework():
    cells = [Cell(adapter=a, **{**CELL, "framework": fw}) for a, fw in
             (("torch-maml", "torch"), ("torch-protonet", "torch"), ("jax-maml", "jax"))]
    per_cell = group_jobs(cells, ("timing",), profile="smoke", timeout=None, executor="slurm", group_by="cell")
    per_fw = group_jobs(cells, ("timing",), profile="smoke", timeout=None, executor="slurm", group_by="framework")
    assert [len(j.cells) for j in per_cell] == [1, 1, 1]
    assert {j.name: [c.adapter for c in j.cells] for j in per_fw} == {"torch": ["torch-maml", "torch-protonet"],
                                                                      "jax": ["jax-maml"]}
    # a job's time limit is its cells' watchdog limits summed: smoke timing 600 s each
    assert per_fw[0].time_limit_seconds() == 1200
    record = json.loads(json.dumps(per_fw[0].record()))  # plain JSON crosses to the node
    assert [Cell(**c) for c in record["cells"]] == cells[:2]


def test_slurm_resources_come_from_the_run_and_the_flags(tmp_path, monkeypatch):
    job = Job("torch", (Cell(adapter="torch-maml", **{**CELL, "framework": "torch"}),), ("timing", "accuracy"),
              "smoke", None, "slurm")
    ctx = RunContext(run_dir=tmp_path, threads=6, device="cuda")
    for key in FORWARDED_ENV:
        monkeypatch.delenv(key, raising=False)
    derived = SlurmExecutor(ClusterOptions()).parameters(job, ctx)
    # smoke: timing 600 s + memory/accuracy process 600 s (accuracy only asked: 600), +10 %
    assert derived == {"name": "metabench-torch", "timeout_min": 22, "nodes": 1, "tasks_per_node": 1,
                       "cpus_per_task": 6, "gpus_per_node": 1, "mem_gb": 8.0}
    flags = ClusterOptions(slurm_partition="a100", slurm_gpus=2, slurm_cpus=8, slurm_mem_gb=64, slurm_time_min=90,
                           slurm_account="ml", slurm_constraint="a100-80gb", slurm_exclusive=True)
    given = SlurmExecutor(flags).parameters(job, RunContext(run_dir=tmp_path, threads=6, device="cpu"))
    assert given == {"name": "metabench-torch", "timeout_min": 90, "nodes": 1, "tasks_per_node": 1,
                     "cpus_per_task": 8, "gpus_per_node": 2, "mem_gb": 64, "slurm_partition": "a100",
                     "slurm_account": "ml", "slurm_constraint": "a100-80gb", "slurm_exclusive": True}


class _Handle:
    def __init__(self, state):
        self.job_id, self.state = "7", state


def test_a_job_left_preempted_past_the_grace_period_is_over():
    seen: dict[str, float] = {}
    assert not left_preempted(_Handle("PREEMPTED"), seen, now=100.0)
    assert not left_preempted(_Handle("PREEMPTED"), seen, now=100.0 + PREEMPTED_GRACE_SECONDS - 1)
    assert left_preempted(_Handle("PREEMPTED"), seen, now=100.0 + PREEMPTED_GRACE_SECONDS)
    assert not left_preempted(_Handle("RUNNING"), seen, now=1e6) and seen == {}  # requeued: forgotten


def test_a_lost_job_leaves_each_unfinished_cell_failed_with_the_reason(tmp_path):
    done, lost = (Cell(adapter=a, **CELL) for a in ("fake-a", "fake-b"))
    (tmp_path / "cells" / done.cell_id).mkdir(parents=True)
    (tmp_path / "cells" / done.cell_id / "status.json").write_text('{"phases": {}}')
    job = Job("fake", (done, lost), ("timing", "memory", "accuracy"), "smoke", None, "slurm")
    assert mark_lost(tmp_path, job, "slurm job 9 on n1 ended TIMEOUT", {"executor": "slurm", "job_id": "9"}) == \
        [lost.cell_id]
    status = json.loads((tmp_path / "cells" / lost.cell_id / "status.json").read_text())
    assert {p: (s["status"], s["detail"]) for p, s in status["phases"].items()} == {
        p: ("failed", "slurm job 9 on n1 ended TIMEOUT") for p in ("timing", "memory", "accuracy")}
    assert status["placement"]["job_id"] == "9"
    assert Cell.load(tmp_path / "cells" / lost.cell_id / "cell.json") == lost


def test_a_ray_task_folder_is_written_back_status_last_over_an_earlier_attempt(tmp_path):
    old = tmp_path / "cells" / "c1"
    old.mkdir(parents=True)
    (old / "stale.txt").write_text("from a killed attempt")
    write_back(tmp_path, {"cells/c1/status.json": b"{}", "cells/c1/benchmark.json": b"[]", "parity.csv": b"a\n"})
    assert sorted(p.name for p in old.iterdir()) == ["benchmark.json", "status.json"]
    assert (tmp_path / "parity.csv").read_bytes() == b"a\n"
    assert old.joinpath("status.json").stat().st_mtime_ns >= old.joinpath("benchmark.json").stat().st_mtime_ns


def test_the_report_names_cells_on_other_hardware(tmp_path):
    for cell, cpu, host in (("a", "EPYC", "n1"), ("b", "EPYC", "n2"), ("c", "Xeon", "n3")):
        d = tmp_path / "cells" / cell
        d.mkdir(parents=True)
        (d / "environment.json").write_text(json.dumps({"cpu": cpu, "cpu_count": 8, "gpu": None}))
        (d / "status.json").write_text(json.dumps({"placement": {"executor": "slurm", "host": host,
                                                                 "job_id": cell}}))
    assert odd_cells(tmp_path) == {"c": "Xeon x8"}
    note = mixed_hardware_note(tmp_path)
    assert note.startswith("**MIXED HARDWARE**: 1 of 3 cells") and "c on Xeon x8" in note and "(EPYC x8)" in note
    assert placement_line(tmp_path) == "slurm (3 cells); 3 hosts, 3 scheduler jobs"
    (tmp_path / "cells" / "c" / "environment.json").write_text(json.dumps({"cpu": "EPYC", "cpu_count": 8}))
    assert mixed_hardware_note(tmp_path) == ""


# -- the Slurm path up to sbatch, against fake Slurm commands --------------------------------------

FAKE_SBATCH = """#!/bin/sh
n=$(ls "$FAKE_SLURM_DIR" | grep -c '^script-')
id=$((4242 + n))
cp "$1" "$FAKE_SLURM_DIR/script-$id.sh"
echo "Submitted batch job $id"
"""
FAKE_SACCT = """#!/bin/sh
echo "JobID|State|NodeList"
while [ $# -gt 0 ]; do
  if [ "$1" = "-j" ]; then echo "$2|$FAKE_SACCT_STATE|node7"; shift; fi
  shift
done
"""


@pytest.fixture
def fake_slurm(tmp_path, plugin_env) -> dict[str, str]:
    bin_dir, log = tmp_path / "bin", tmp_path / "submitted"
    bin_dir.mkdir()
    log.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("sacct", FAKE_SACCT), ("srun", "#!/bin/sh\nexit 1\n"),
                       ("scancel", "#!/bin/sh\nexit 0\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    return {**plugin_env, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_SLURM_DIR": str(log),
            "FAKE_SACCT_STATE": "TIMEOUT"}


def test_slurm_jobs_are_submitted_with_their_resources_and_a_lost_job_is_a_failed_cell(tmp_path, fake_slurm):
    r = metabench(*fake_run(tmp_path, "slurm", "fake-steady,fake-steady-b", "--executor", "slurm",
                            "--slurm-partition", "gpu-a100", "--slurm-gpus", "1", "--slurm-cpus", "3",
                            "--slurm-mem-gb", "12", "--slurm-constraint", "a100", "--slurm-exclusive"),
                  env=fake_slurm, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr  # every cell failed: the scheduler timed them out
    scripts = sorted(Path(fake_slurm["FAKE_SLURM_DIR"]).glob("script-*.sh"))
    assert len(scripts) == 2  # one job per cell
    text = scripts[0].read_text()
    for line in ("#SBATCH --partition=gpu-a100", "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=3",
                 "#SBATCH --mem=12GB", "#SBATCH --constraint=a100", "#SBATCH --exclusive", "#SBATCH --nodes=1",
                 "#SBATCH --time=28", "#SBATCH --job-name=metabench-fake-steady__maml__sinusoid-10shot"):
        assert line in text, (line, text)
    # its environment: what the cells need of ours, set in the script (a cluster may not export it)
    assert f"export METABENCH_DATA_DIR={fake_slurm['METABENCH_DATA_DIR']}" in text
    assert f"export PYTHONPATH={fake_slurm['PYTHONPATH']}" in text
    # the command each job runs: this Python, submitit's runner of the pickled call below
    assert f"{sys.executable} -u -m submitit.core._submit" in text
    run_dir = tmp_path / "slurm"
    calls = {}
    for pkl in sorted((run_dir / "slurm").glob("*/*_submitted.pkl")):
        with open(pkl, "rb") as f:
            delayed = pickle.load(f)
        record, where = delayed.args
        assert delayed.function.__qualname__ == "slurm_job" and where == str(run_dir.resolve())
        calls[pkl.parent.name] = [c["adapter"] for c in record["cells"]]
    assert calls == {"4242": ["fake-steady"], "4243": ["fake-steady-b"]}
    cells = cells_of(run_dir)
    for cell_id, job_id in (("fake-steady__maml__sinusoid-10shot", "4242"),
                            ("fake-steady-b__maml__sinusoid-10shot", "4243")):
        phases = cells[cell_id]["phases"]
        assert {p: s["status"] for p, s in phases.items()} == {"timing": "failed", "memory": "failed",
                                                               "accuracy": "failed"}
        assert phases["timing"]["detail"].startswith(f"slurm job {job_id} on node7 ended TIMEOUT")
        assert cells[cell_id]["placement"]["job_id"] == job_id
    summary = (run_dir / "summary.md").read_text()
    assert "ended TIMEOUT" in summary and "slurm (2 cells); 1 host, 2 scheduler jobs" in summary

    # one job per framework: both fake cells in one job; the resume runs only what failed
    r = metabench(*fake_run(tmp_path, "grouped", "fake-steady,fake-steady-b", "--executor", "slurm",
                            "--group-by", "framework"), env={**fake_slurm, "FAKE_SACCT_STATE": "OUT_OF_MEMORY"})
    assert r.returncode == 1
    assert len(list(Path(fake_slurm["FAKE_SLURM_DIR"]).glob("script-*.sh"))) == 3
    assert {c["phases"]["accuracy"]["detail"].split(":")[0] for c in cells_of(tmp_path / "grouped").values()} == \
        {"slurm job 4244 on node7 ended OUT_OF_MEMORY"}


def test_slurm_without_its_commands_is_refused_before_anything_is_written(tmp_path, plugin_env):
    r = metabench(*fake_run(tmp_path, "nosbatch", "fake-steady", "--executor", "slurm"),
                  env={**plugin_env, "PATH": str(Path(sys.executable).parent)})
    assert r.returncode == 2
    assert "--executor slurm: sbatch, srun, sacct not found on PATH" in r.stderr
    assert "--slurm-cluster local" in r.stderr and not (tmp_path / "nosbatch").exists()


# -- the engines' local modes run real jobs -------------------------------------------------------

def _structure(run_dir: Path) -> dict:
    """What must not depend on the executor: each cell's files and phase statuses, the
    episode fingerprints, and the accuracy (same seed, same threads: the same numbers)."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    out = {"specs": manifest["specs"]}
    for cell_dir in sorted((run_dir / "cells").iterdir()):
        status = json.loads((cell_dir / "status.json").read_text())
        accuracy = json.loads((cell_dir / "accuracy.json").read_text())
        out[cell_dir.name] = {"files": sorted(p.name for p in cell_dir.iterdir()),
                              "phases": {p: s["status"] for p, s in status["phases"].items()},
                              "accuracy": (accuracy["mean"], accuracy["ci95"]),
                              "episodes": (cell_dir / "episodes.csv").read_text()}
    return out


# torch's MAML on both kinds of spec (an MLP on the sinusoid, Conv-4 on Omniglot) at 1 thread:
# the smoke matrix's path for every cell kind, small enough to run three times in the suite
SMOKE_MATRIX = ("run", "--profile", "smoke", "--frameworks", "torch", "--algorithms", "maml", "--specs",
                "sinusoid-10shot,omniglot-5w1s", "--threads", "1")


@pytest.mark.slow
def test_the_smoke_matrix_through_submitit_and_ray_matches_a_local_run(tmp_path, data_env):
    runs = {"local": (), "slurm": ("--executor", "slurm", "--slurm-cluster", "local"), "ray": ("--executor", "ray")}
    structures = {}
    for name, flags in runs.items():
        r = metabench(*SMOKE_MATRIX, "--results-dir", str(tmp_path), "--run-id", name, *flags, env=data_env)
        assert r.returncode == 0, f"{name}: {r.stdout[-3000:]}{r.stderr[-3000:]}"
        structures[name] = _structure(tmp_path / name)
        placements = {c["placement"]["executor"] for c in cells_of(tmp_path / name).values()}
        assert placements == {name}
    assert set(structures["local"]) == {"specs", "torch-maml__maml__sinusoid-10shot", "torch-maml__maml__omniglot-5w1s"}
    assert structures["slurm"] == structures["local"]
    assert structures["ray"] == structures["local"]
    slurm_cell = cells_of(tmp_path / "slurm")["torch-maml__maml__omniglot-5w1s"]
    assert slurm_cell["placement"]["cluster"] == "local" and slurm_cell["placement"]["job_id"]


@pytest.mark.slow
@pytest.mark.parametrize("executor", [("--executor", "slurm", "--slurm-cluster", "local"), ("--executor", "ray")],
                         ids=["submitit-local", "ray"])
def test_a_job_killed_mid_run_is_a_failed_cell_and_resume_completes_the_run(tmp_path, plugin_env, executor):
    env = {**plugin_env, "FAKE_KILL_MARKER": str(tmp_path / "killed-once")}
    args = fake_run(tmp_path, "killed", "fake-killer,fake-steady", "--threads", "1", *executor)
    r = metabench(*args, env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    statuses = phase_statuses(tmp_path / "killed")
    assert statuses["fake-steady__maml__sinusoid-10shot"] == {"timing": "ok", "memory": "ok", "accuracy": "ok"}
    killed = cells_of(tmp_path / "killed")["fake-killer__maml__sinusoid-10shot"]["phases"]
    assert {s["status"] for s in killed.values()} == {"failed"}
    detail = killed["timing"]["detail"]
    if executor[1] == "ray":
        assert detail.startswith("ray task fake-killer__maml__sinusoid-10shot failed: "), detail
        assert "WorkerCrashedError" in detail or "died" in detail, detail
    else:
        assert detail.startswith("submitit local job ") and " ended " in detail, detail
    # a run started on one executor may be finished on another: resume here, locally
    r = metabench(*args[:-len(executor)], "--resume", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "fake-steady maml sinusoid-10shot: done before, kept" in r.stdout
    assert {c: set(s.values()) for c, s in phase_statuses(tmp_path / "killed").items()} == {
        "fake-killer__maml__sinusoid-10shot": {"ok"}, "fake-steady__maml__sinusoid-10shot": {"ok"}}
    assert cells_of(tmp_path / "killed")["fake-killer__maml__sinusoid-10shot"]["placement"]["executor"] == "local"


def test_a_cluster_run_resolves_its_device_then_its_profile_once():
    """``--executor slurm --slurm-gpus 1`` from a CPU login node: the cells run on a GPU, so
    the device is cuda and the profile (not given) paper; the CLI no longer picks a profile
    from the login node's own device."""
    from bench.run.runner import RunRequest, resolve

    p = resolve(RunRequest(executor="slurm", cluster=ClusterOptions(slurm_gpus=1), frameworks=("torch",),
                           specs=("sinusoid-10shot",)))
    assert (p.device, p.profile) == ("cuda", "paper")
    assert {c.device for c in p.cells} == {"cuda"}
    here = resolve(RunRequest(device="cpu", frameworks=("torch",), specs=("sinusoid-10shot",)))
    assert (here.device, here.profile) == ("cpu", "cpu")
