"""``bench/check/baselines/profile.py``: operations sorted into kinds both frameworks have, XLA's
thunk events told from the runtime's own spans, and the report's table."""

from __future__ import annotations

import pytest

from bench.check.baselines import profile


@pytest.mark.parametrize("name, kind", [
    ("ynn_fusion.113", "convolution, matrix multiply"),     # XLA:CPU's YNNPACK call
    ("dot.28", "convolution, matrix multiply"),
    ("convolution.4", "convolution, matrix multiply"),
    ("aten::mkldnn_convolution", "convolution, matrix multiply"),
    ("aten::convolution_backward", "convolution, matrix multiply"),
    ("aten::mm", "convolution, matrix multiply"),
    ("wrapped_iota.2", "iota (index arrays)"),
    ("wrapped_reduce-window", "pooling"),
    ("aten::max_pool2d_with_indices", "pooling"),
    ("aten::native_batch_norm_backward", "batch norm"),
    ("transpose_copy_fusion.5", "copy / layout"),
    ("concatenate.12", "copy / layout"),
    ("aten::copy_", "copy / layout"),
    ("broadcast_multiply_fusion.13", "other (elementwise, reductions)"),
    ("aten::mul", "other (elementwise, reductions)"),
    ("aten::add_", "other (elementwise, reductions)"),   # "add" is not "addmm"
])
def test_operations_fall_into_the_kind_both_frameworks_share(name, kind):
    assert profile.kind_of(name) == kind


def test_xla_operations_are_told_from_the_runtimes_own_events():
    assert profile._is_xla_op("loop_multiply_fusion.3", "XLA:CPU worker")
    assert profile._is_xla_op("wrapped_iota.2", "tf_pjrt_thread_pool")
    for name in ("PjitFunction(step)", "ThunkExecutor::Execute", "TfrtCpuExecutable::Execute", "$profiler.py:1"):
        assert not profile._is_xla_op(name, "worker"), name
    assert not profile._is_xla_op("fusion.1", "python3")  # the Python thread runs no kernels


def test_the_report_puts_kinds_side_by_side_per_workload():
    def result(framework, kinds, wall):
        return {"framework": framework, "adapter": f"{framework}-maml", "workload": "maml", "spec": "omniglot-5w1s",
                "algorithm": "maml", "meta_batch": 8, "threads": 2, "steps": 5, "first_step_s": 1.0,
                "untraced_median_s": wall, "traced_step_s": wall * 1.02,
                "ops_s_per_step": {f"{k}-op": v for k, v in kinds.items()}, "kinds_s_per_step": kinds}

    md = profile.report([result("jax", {"convolution, matrix multiply": 0.098, "copy / layout": 0.064}, 0.197),
                         result("torch", {"convolution, matrix multiply": 0.058}, 0.161)])
    lines = md.splitlines()
    assert "## omniglot-5w1s / maml, meta-batch 8, 2 threads" in lines
    assert "| convolution, matrix multiply | 98.0 (60%) | 58.0 (100%) |" in lines
    assert "| copy / layout | 64.0 (40%) | 0.0 (0%) |" in lines
    assert "| summed ops | 162.0 | 58.0 |" in lines and "| untraced median | 197.0 | 161.0 |" in lines
    assert "## omniglot-5w1s / protonet" not in md  # no result, no section
