"""``bench.gpu_check``, the prepared GPU check, run on the CPU (``--device cpu``) with torch
alone: every stage runs and lands in gpu_check.json; the smoke run's folder is complete."""

from __future__ import annotations

import json
import subprocess
import sys


def test_the_gpu_check_runs_its_stages_and_writes_its_report(data_env, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check", str(tmp_path), "--device", "cpu",
                           "--frameworks", "torch"], capture_output=True, text=True, env=data_env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [s["stage"] for s in report["stages"]] == ["dispatch torch-maml", "dispatch torch-protonet", "smoke"]
    assert all(s["returncode"] == 0 for s in report["stages"])
    for d in report["dispatch"]:
        assert d["sync_check_ok"] and 0 < d["dispatch_seconds"] <= d["synced_seconds"]
    run = next(p for p in tmp_path.iterdir() if p.is_dir())
    assert (run / "summary.md").exists() and (run / "steps.csv").exists()
    assert "gpu check: all stages passed" in proc.stdout
