"""``metabench parity``: every framework computes what PyTorch computes, on real episodes.

TensorFlow ProtoNet is not in the float32 check yet: on training episodes 0..3 one
max-pool window holds two values 3e-8 apart that TF's float32 rounds to a tie, sending a
gradient to the other element (meta-gradient error 1.8e-3 against torch's float32-vs-
float64 floor of 3.5e-4). In float64 it agrees with torch to 5e-12. Open in issue 4.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from bench.parity import params_after_error, relative_error


def _parity(env, *args):
    return subprocess.run([sys.executable, "-m", "bench.cli", "parity", *args], capture_output=True, text=True,
                          env=env, timeout=1200)


def test_jax_matches_torch_for_every_algorithm(data_env):
    r = _parity(data_env, "--frameworks", "jax", "--specs", "omniglot-5w1s,sinusoid-10shot",
                "--algorithms", "maml,fomaml,protonet")
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    assert "all 5 comparisons within" in r.stdout


def test_tensorflow_matches_torch_for_maml(data_env):
    r = _parity(data_env, "--frameworks", "tensorflow", "--specs", "omniglot-5w1s,sinusoid-10shot",
                "--algorithms", "maml,fomaml")
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    assert "all 4 comparisons within" in r.stdout


def test_unknown_framework_is_a_one_line_error(data_env):
    r = _parity(data_env, "--frameworks", "mxnet", "--specs", "sinusoid-10shot", "--algorithms", "maml")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "mxnet" in r.stderr


def test_relative_error_is_taken_over_the_whole_quantity():
    ref = np.array([1.0, 0.0, -2.0])
    assert relative_error(ref + np.array([0.0, 1e-6, 0.0]), ref) == 1e-6 / 2.0
    assert relative_error(np.zeros(2), ref) == float("inf")  # a shape mismatch never passes


def test_params_after_ignores_entries_whose_gradient_is_noise_but_bounds_them():
    init = {"0/init/w": np.zeros(3)}
    ref = {**init, "0/meta_grad/w": np.array([1.0, 1e-9, 0.5]), "0/params_after/w": np.array([-1e-3, -1e-3, -1e-3])}
    flipped = {**init, "0/params_after/w": np.array([-1e-3, 1e-3, -1e-3])}  # noise entry moved the other way
    assert params_after_error(flipped, ref, "0/", lr=1e-3, tolerance=1e-4) == 0.0
    too_far = {**init, "0/params_after/w": np.array([-1e-3, 5e-3, -1e-3])}  # more than one step
    assert params_after_error(too_far, ref, "0/", lr=1e-3, tolerance=1e-4) == float("inf")
    wrong = {**init, "0/params_after/w": np.array([1e-3, -1e-3, -1e-3])}  # a real entry moved the other way
    assert params_after_error(wrong, ref, "0/", lr=1e-3, tolerance=1e-4) == 2.0
