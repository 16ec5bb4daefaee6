"""Reliability of ``metabench run``: the watchdog kills what hangs, a non-finite loss ends a
cell as ``diverged``, a run killed with SIGKILL is completed by ``--resume`` with no cell
lost or repeated, Ctrl-C stops cleanly, and two runs cannot write one folder.

End-to-end runs use the ``smoke`` profile on ``sinusoid-10shot`` with torch and the tiny
fake adapters of ``tests/fake_adapters.py`` (a plugin installed through a dist-info entry
point, as pip would), which plant a crash, a silent hang and a divergence.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.core import atomic
from bench.core.errors import Diverged
from bench.core.profiles import PROFILES
from bench.run.cells import _run_process
from bench.run.lock import RunLock, RunLocked, holder
from tests.fake_adapters import metabench

SMOKE = PROFILES["smoke"]
# the fake diverges at its second step; the memory probe runs a first step, then memory_steps more
SMOKE_MEMORY = "ok" if 1 + SMOKE.memory_steps < 2 else "diverged"


def smoke_run(results: Path, run_id: str, adapters: str, *extra: str) -> list[str]:
    # no parity phase: these fake adapters compute nothing parity could compare
    return ["run", "--profile", "smoke", "--device", "cpu", "--specs", "sinusoid-10shot", "--adapters", adapters,
            "--results-dir", str(results), "--run-id", run_id, "--phases", "timing,memory,accuracy", *extra]


def statuses(run_dir: Path) -> dict[str, dict[str, str]]:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return {c["cell_id"]: {p: s["status"] for p, s in c["phases"].items()} for c in manifest["cells"]}


# -- the watchdog -------------------------------------------------------------------------------

def test_watchdog_kills_a_silent_process_and_its_children_at_the_limit(tmp_path):
    """The bug it fixes: with a 1 s limit, a child that printed nothing ran its full 6 s."""
    pid_file = tmp_path / "grandchild.pid"
    code = ("import subprocess, sys, time; "
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    t0 = time.monotonic()
    out = _run_process([sys.executable, "-c", code], tmp_path / "log", 1.5, echo=lambda line: None)
    assert time.monotonic() - t0 < 10
    assert out.timed_out and out.returncode is None and out.seconds >= 1.5
    assert "killed after" in out.log_tail[-1] and "time limit of this process is 1.5 s" in out.log_tail[-1]
    time.sleep(0.2)  # the whole process group died, not just the child
    assert not running(int(pid_file.read_text()))


def running(pid: int) -> bool:
    """Alive and not a zombie (a killed orphan waits for init to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_watchdog_keeps_the_last_20_log_lines_and_the_exit_code(tmp_path):
    code = "import sys\nfor i in range(50): print(f'line {i}')\nsys.exit(3)"
    out = _run_process([sys.executable, "-c", code], tmp_path / "log", 30, echo=lambda line: None)
    assert not out.timed_out and out.returncode == 3
    assert out.log_tail == [f"line {i}" for i in range(30, 50)]
    assert (tmp_path / "log").read_text().count("\n") == 50


# -- atomic files and the run lock ----------------------------------------------------------------

def test_atomic_write_leaves_the_old_file_whole_when_the_writer_fails(tmp_path):
    path = tmp_path / "status.json"
    atomic.write_json(path, {"phases": "old"})
    with pytest.raises(RuntimeError), atomic.atomic_open(path) as f:
        f.write('{"phases": "half')
        raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == {"phases": "old"}
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]  # no temporary file left
    atomic.write_json(path, {"phases": "new"})
    assert json.loads(path.read_text()) == {"phases": "new"}


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    with RunLock(tmp_path):
        assert f"PID {os.getpid()}" in holder(tmp_path)
        with pytest.raises(RunLocked, match=f"being written by PID {os.getpid()}"), RunLock(tmp_path):
            pass
    assert holder(tmp_path) is None and not (tmp_path / ".lock").exists()


def test_a_lock_left_by_a_killed_run_is_stale_and_taken_over(tmp_path):
    # what SIGKILL leaves: the file, naming a process that holds nothing
    (tmp_path / ".lock").write_text(json.dumps({"pid": 999999, "host": "x", "since": "then"}))
    assert holder(tmp_path) is None
    with RunLock(tmp_path) as lock:
        assert lock.stale
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()


# -- divergence --------------------------------------------------------------------------------

class _NaNAtStep3:
    """Just enough of an adapter for the training loop: the loss is NaN from step 3 on."""

    def __init__(self):
        self.steps = 0

    def to_device(self, batch):
        return batch

    def sync(self, out=None):
        pass

    def outer_step(self, batch):
        self.steps += 1
        return np.float32(np.nan if self.steps >= 3 else 1.0)

    def predict(self, batch):
        return np.zeros_like(batch.query_y)


def test_training_stops_at_the_first_non_finite_loss_with_step_and_value():
    from bench.core.spec import load_spec
    from bench.measure.training import train_and_evaluate

    spec = load_spec("sinusoid-10shot").with_profile("cpu", "maml")
    adapter = _NaNAtStep3()
    with pytest.raises(Diverged) as info:
        train_and_evaluate(adapter, spec, "maml")
    assert info.value.step == 3 and np.isnan(info.value.value) and info.value.phase == "accuracy"
    assert adapter.steps == 3  # not one step more on NaNs
    assert str(info.value) == "non-finite loss nan at step 3"


# -- planted failures in one run ----------------------------------------------------------------

@pytest.fixture(scope="module")
def planted_run(tmp_path_factory, plugin_env) -> tuple[Path, subprocess.CompletedProcess]:
    results = tmp_path_factory.mktemp("planted")
    # 15 s: a torch smoke process on sinusoid takes ~4-5 s (one core, the other busy); the
    # hanging cell sits idle until its two processes are killed, 2 x 15 s
    r = metabench(*smoke_run(results, "planted", "torch-maml,fake-crash,fake-hang,fake-diverge",
                             "--algorithms", "maml", "--cell-timeout", "15"), env=plugin_env)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    return results / "planted", r


def test_crashing_hanging_and_diverging_cells_get_their_status_in_the_manifest(planted_run):
    run_dir, _ = planted_run
    assert statuses(run_dir) == {
        "torch-maml__maml__sinusoid-10shot": {"timing": "ok", "memory": "ok", "accuracy": "ok"},
        "fake-crash__maml__sinusoid-10shot": {"timing": "failed", "memory": "failed", "accuracy": "failed"},
        "fake-hang__maml__sinusoid-10shot": {"timing": "timeout", "memory": "timeout", "accuracy": "timeout"},
        # the second step of the memory probe, of training and of timing is NaN
        "fake-diverge__maml__sinusoid-10shot": {"timing": "diverged", "memory": SMOKE_MEMORY, "accuracy": "diverged"},
    }


def test_each_phase_status_says_why_in_one_line_with_the_log_tail(planted_run):
    run_dir, _ = planted_run
    cells = {c["adapter"]: c["phases"] for c in json.loads((run_dir / "manifest.json").read_text())["cells"]}
    hang = cells["fake-hang"]["timing"]
    assert re.fullmatch(r"killed after 1[5-9] s \(time limit 15 s\)", hang["detail"]) and hang["returncode"] is None
    assert 15 <= hang["seconds"] < 30 and "the time limit of this process is 15 s" in hang["log_tail"][-1]
    assert cells["fake-diverge"]["accuracy"]["detail"] == "non-finite loss nan at step 2"
    last_round = 1 + SMOKE.warmup_rounds + SMOKE.rounds  # after the first (compiling) step
    assert cells["fake-diverge"]["timing"]["detail"] == f"non-finite loss nan at step {last_round} (last timed round)"
    crash = cells["fake-crash"]["timing"]
    assert crash["returncode"] == 1 and "planted crash in outer_step" in crash["detail"]
    assert "planted crash in outer_step" in cells["fake-crash"]["memory"]["detail"]
    for phases in cells.values():
        for name, s in phases.items():
            # the timing phase also lists its processes (one each in smoke)
            extra = {"processes"} if name == "timing" else set()
            assert set(s) == {"status", "returncode", "seconds", "detail", "log_tail", "machine", *extra}
            assert len(s["log_tail"]) <= 20 and (s["detail"] is None) == (s["status"] == "ok")


def test_the_summary_lists_the_three_failures_with_their_status(planted_run):
    run_dir, r = planted_run
    failures = (run_dir / "summary.md").read_text().split("## Failures")[1]
    assert "fake-hang__maml__sinusoid-10shot / timing: timeout" in failures
    assert "fake-diverge__maml__sinusoid-10shot / accuracy: diverged" in failures
    assert "fake-crash__maml__sinusoid-10shot / timing: failed" in failures
    assert "torch-maml" not in failures
    assert "metabench: 3 failure(s)" in r.stdout
    assert "fake-hang__maml__sinusoid-10shot (timing timeout, memory timeout, accuracy timeout)" in r.stdout


def test_the_healthy_cell_is_complete_and_no_failed_cell_has_numbers(planted_run):
    run_dir, _ = planted_run
    timings = pd.read_csv(run_dir / "timings.csv")
    assert set(timings["adapter"]) == {"torch-maml"}  # the diverged cell's timings never reach a median
    assert len(timings[timings["phase"] == "outer_step"]) == SMOKE.rounds
    accuracy = pd.read_csv(run_dir / "accuracy.csv")
    assert list(accuracy["adapter"]) == ["torch-maml"] and accuracy["mean"].notna().all()
    memory_adapters = {"torch-maml"} | ({"fake-diverge"} if SMOKE_MEMORY == "ok" else set())
    assert set(pd.read_csv(run_dir / "memory.csv")["adapter"]) == memory_adapters
    assert not (run_dir / "cells" / "fake-diverge__maml__sinusoid-10shot" / "benchmark.json").exists()


# -- SIGKILL, then --resume ---------------------------------------------------------------------

RESUME_ADAPTERS = ("torch-maml,fake-steady,fake-steady-b", "--algorithms", "maml")  # 3 cells, torch's first


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 300) -> None:
    t0 = time.monotonic()
    while not predicate():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() - t0 < timeout
        time.sleep(0.1)


def cell_processes(cell_dir: Path) -> list[int]:
    """Live processes whose command line names the cell's folder (its timing or worker process)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(cell_dir).encode() in cmdline.read_bytes() and running(int(cmdline.parent.name)):
                pids.append(int(cmdline.parent.name))
        except OSError:  # exited while we looked
            continue
    return pids


def _result(run_dir: Path) -> dict:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    accuracy = pd.read_csv(run_dir / "accuracy.csv")
    timings = pd.read_csv(run_dir / "timings.csv")
    return {
        "cells": sorted(c["cell_id"] for c in manifest["cells"]),
        "statuses": statuses(run_dir),
        "accuracy rows": sorted(map(tuple, accuracy[["adapter", "algorithm", "spec"]].values.tolist())),
        "rounds per phase": timings.groupby(["adapter", "algorithm", "phase"]).size().to_dict(),
        "fingerprints": {name: s["episodes"] for name, s in manifest["specs"].items()},
    }


def test_a_run_killed_mid_cell_resumes_to_the_same_result_as_an_uninterrupted_run(tmp_path, plugin_env):
    whole = metabench(*smoke_run(tmp_path, "whole", *RESUME_ADAPTERS), env=plugin_env)
    assert whole.returncode == 0, whole.stdout[-3000:] + whole.stderr[-3000:]

    args = smoke_run(tmp_path, "killed", *RESUME_ADAPTERS)
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", *args], env=plugin_env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    cells = tmp_path / "killed" / "cells"
    first, second = (cells / f"{a}__maml__sinusoid-10shot" for a in ("torch-maml", "fake-steady"))
    _wait_for(lambda: (first / "status.json").exists() and (second / "timing" / "0" / "timing.log").exists(), proc)
    time.sleep(1.0)  # inside the second cell's timing process
    assert cell_processes(second)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert not (second / "status.json").exists()  # killed mid-cell, before its bookkeeping
    t0 = time.monotonic()
    while cell_processes(second):  # the kernel kills the orphaned cell too: nothing writes on
        assert time.monotonic() - t0 < 5, cell_processes(second)
        time.sleep(0.1)
    assert (tmp_path / "killed" / ".lock").exists() and holder(tmp_path / "killed") is None  # stale

    resumed = metabench(*args, "--resume", env=plugin_env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "[1/3] torch-maml maml sinusoid-10shot: done before, kept" in resumed.stdout
    assert "lock is cleared" in resumed.stdout
    got, want = _result(tmp_path / "killed"), _result(tmp_path / "whole")
    assert got == want
    assert len(got["accuracy rows"]) == len(set(got["accuracy rows"])) == 3  # no cell lost or repeated
    assert set(got["rounds per phase"].values()) == {PROFILES["smoke"].rounds}  # none twice
    leftovers = [p for p in (tmp_path / "killed").rglob("*") if p.name.startswith((atomic.PART_PREFIX, ".lock"))]
    assert leftovers == []


def test_ctrl_c_finishes_the_current_cell_then_prints_the_resume_command(tmp_path, plugin_env):
    args = smoke_run(tmp_path, "stopped", "fake-steady")
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", *args], env=plugin_env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = tmp_path / "stopped" / "cells" / "fake-steady__maml__sinusoid-10shot"
    _wait_for(lambda: (first / "timing" / "0" / "timing.log").exists(), proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, out[-2000:] + err[-2000:]
    assert "stopping after this cell" in out and "stopped by Ctrl-C after 1 of 2 cells; 1 to run" in out
    assert json.loads((first / "status.json").read_text())["phases"]["accuracy"]["status"] == "ok"
    assert not (tmp_path / "stopped" / "cells" / "fake-steady__fomaml__sinusoid-10shot").exists()
    resume = out.split("resume with: ")[1].splitlines()[0]
    assert resume.endswith("--run-id stopped --resume")
    again = metabench(*shlex.split(resume)[1:], env=plugin_env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "fake-steady maml sinusoid-10shot: done before, kept" in again.stdout
    assert len(pd.read_csv(tmp_path / "stopped" / "accuracy.csv")) == 2


@pytest.mark.parametrize("signals", [(signal.SIGINT, signal.SIGINT), (signal.SIGTERM,)],
                         ids=["ctrl-c twice", "sigterm from a scheduler"])
def test_a_second_ctrl_c_or_a_sigterm_stops_the_current_cell_at_once(signals, tmp_path, plugin_env):
    args = smoke_run(tmp_path, "halted", "fake-hang", "--algorithms", "maml")
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", *args], env=plugin_env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    cell = tmp_path / "halted" / "cells" / "fake-hang__maml__sinusoid-10shot"
    _wait_for(lambda: (cell / "timing" / "0" / "timing.log").exists(), proc)
    for sig in signals:
        proc.send_signal(sig)
        time.sleep(0.5)
    out, err = proc.communicate(timeout=60)  # the hanging cell would run for an hour
    by = "SIGTERM" if signal.SIGTERM in signals else "Ctrl-C"
    assert proc.returncode == 130 and f"stopped by {by} after 0 of 1 cells" in out and "resume with:" in out
    assert not (cell / "status.json").exists()  # unfinished: --resume runs it again
    assert not (tmp_path / "halted" / ".lock").exists()


def test_profiles_give_each_phase_a_time_limit_that_cell_timeout_overrides():
    from bench.run.cells import time_limit

    smoke = time_limit("smoke", None)
    assert smoke(["timing"]) == 600 and smoke(["memory", "accuracy"]) == 300 + 600  # one worker process
    assert time_limit("paper", None)(["accuracy"]) > time_limit("cpu", None)(["accuracy"]) > 600
    assert time_limit("cpu", 25.0)(["memory", "accuracy"]) == 25.0
    assert all(set(p.time_limits) == {"timing", "memory", "accuracy"} for p in PROFILES.values())


def test_a_run_killed_before_its_plan_was_written_leaves_its_id_free(tmp_path, plugin_env):
    """SIGKILL between creating the folder and writing plan.json leaves a lock and nothing else."""
    (tmp_path / "early").mkdir()
    (tmp_path / "early" / ".lock").write_text(json.dumps({"pid": 999999, "host": "x", "since": "then"}))
    resumed = metabench(*smoke_run(tmp_path, "early", "fake-steady-b", "--phases", "timing", "--resume"),
                        env=plugin_env)
    assert resumed.returncode == 2 and "there is no run early" in resumed.stderr
    fresh = metabench(*smoke_run(tmp_path, "early", "fake-steady-b", "--phases", "timing"), env=plugin_env)
    assert fresh.returncode == 0, fresh.stdout[-2000:] + fresh.stderr[-2000:]
    assert statuses(tmp_path / "early") == {"fake-steady-b__maml__sinusoid-10shot": {"timing": "ok"}}


def test_failures_name_each_bad_phase_with_its_status_and_unfinished_cells(tmp_path):
    from bench.run.runner import failures

    def cell(name: str, phases: dict | None) -> None:
        d = tmp_path / "cells" / name
        d.mkdir(parents=True)
        (d / "cell.json").write_text("{}")
        if phases is not None:
            (d / "status.json").write_text(json.dumps({"phases": {p: {"status": s} for p, s in phases.items()}}))

    cell("a", {"timing": "ok", "memory": "failed", "accuracy": "diverged"})
    cell("b", {"timing": "timeout"})
    cell("c", None)  # killed before its status was written
    cell("d", {"timing": "ok"})
    assert failures(tmp_path) == ["a (memory, accuracy diverged)", "b (timing timeout)", "c (did not finish)"]


def test_two_runs_into_one_folder_cannot_interleave(tmp_path, plugin_env):
    args = smoke_run(tmp_path, "shared", "fake-steady")
    first = subprocess.Popen([sys.executable, "-m", "bench.cli", *args], env=plugin_env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for(lambda: (tmp_path / "shared" / "cells").exists(), first)
    again = metabench(*args, env=plugin_env)
    assert again.returncode == 2 and "--run-id shared: " in again.stderr and "already exists" in again.stderr
    resumed = metabench(*args, "--resume", env=plugin_env)
    assert resumed.returncode == 2 and resumed.stderr.count("\n") == 1
    assert f"run shared is being written by PID {first.pid} on " in resumed.stderr
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, out[-2000:] + err[-2000:]
    assert set(statuses(tmp_path / "shared")) == {"fake-steady__maml__sinusoid-10shot",
                                                  "fake-steady__fomaml__sinusoid-10shot"}
