"""``bench.check.gpu_check``, the prepared GPU check, run on the CPU (``--device cpu``) with torch
alone: every stage runs and lands in gpu_check.json; the smoke run's folder is complete."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np


def test_the_gpu_check_runs_its_stages_and_writes_its_report(data_env, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench.check.gpu_check", str(tmp_path), "--device", "cpu",
                           "--frameworks", "torch"], capture_output=True, text=True, env=data_env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [s["stage"] for s in report["stages"]] == ["dispatch torch-maml", "dispatch torch-protonet", "smoke"]
    assert all(s["returncode"] == 0 for s in report["stages"])
    for d in report["dispatch"]:
        assert d["sync_check_ok"] and 0 < d["dispatch_seconds"] <= d["synced_seconds"]
    run = next(p for p in tmp_path.iterdir() if (p / "manifest.json").exists())  # not _static
    assert (run / "summary.md").exists() and (run / "steps.csv").exists()
    assert "gpu check: all stages passed" in proc.stdout


def test_device_spread_compares_each_framework_across_devices_and_with_torch(data_env, monkeypatch):
    """The spread stage, with the CPU standing in for both devices: a framework agrees with
    itself exactly, and with torch within parity's tolerances."""
    from bench.check.gpu_check import device_spread

    for key in ("METABENCH_DATA_DIR", "METABENCH_CACHE_DIR", "PYTHONPATH"):
        monkeypatch.setenv(key, data_env[key])
    rows = device_spread(["torch", "jax"], specs=("sinusoid-10shot",), devices=("cpu", "cpu"))
    pairs = [("torch/cpu", "torch/cpu"), ("jax/cpu", "jax/cpu"), ("jax/cpu", "torch/cpu"), ("jax/cpu", "torch/cpu")]
    assert [(r["compared"], r["reference"], r["inputs"], r["dtype"]) for r in rows] == [
        (*pair, inputs, dtype) for pair in pairs for inputs in ("as sampled", "jittered 0.0001")
        for dtype in ("float64", "float32")]
    for row in rows[:8]:  # the same process twice: the same numbers
        assert row["support_loss"] == row["query_logits"] == row["meta_grad"] == 0.0
        assert {k for k in row if k.startswith("activation/")} == {"activation/block1", "activation/block2"}
    for row in rows[8:]:  # JAX against torch: parity's tolerances, jittered or not
        assert row["meta_grad"] < (1e-9 if row["dtype"] == "float64" else 1e-4), row


def test_jittered_episodes_have_no_tied_pixels_and_keep_their_labels():
    from dataclasses import replace

    from bench.check.contract import small_specs, synthetic_batch
    from bench.check.parity import jittered

    spec = next(s for s in small_specs("maml") if not s.is_regression)
    batch = synthetic_batch(spec, spec.episode, tasks=2)
    # binary images, as Omniglot's: ties everywhere
    batch = replace(batch, support_x=np.round(batch.support_x), query_x=np.round(batch.query_x))
    noisy = jittered(batch, 1e-4)
    for name in ("support_x", "query_x"):
        x, y = getattr(batch, name), getattr(noisy, name)
        assert y.dtype == np.float64 and y.shape == x.shape
        assert 0 < np.abs(y - x).max() < 1e-3
        assert len(np.unique(y)) == y.size  # no two pixels equal
    np.testing.assert_array_equal(noisy.support_y, batch.support_y)
    np.testing.assert_array_equal(noisy.query_y, batch.query_y)
