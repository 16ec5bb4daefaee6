"""PyTorch pieces shared by the MAML and ProtoNet adapters: backbones over a parameter
dict (``torch.func`` style), device placement, sync, memory, self-description, and the
``torch.compile`` of the ``*-compile`` variants (``compile_step``)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from bench.core.adapter import Adapter, AdapterInfo, MemoryReading, Option
from bench.core.algorithms import MetaOptimizer
from bench.core.models import CONV_BLOCKS
from bench.measure.environment import cpu_model  # the CPU's model name, not 'x86_64'

Params = dict[str, torch.Tensor]


def configure(threads: int, device: str) -> None:
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process (pytest runs several adapters)
        pass
    # Precision is float32 everywhere: TF32 off, as JAX and TF are set to full float32 too.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def torch_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda requested but torch.cuda.is_available() is False")
    return torch.device(device)


def batch_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """BatchNorm over (N, H, W) of NCHW ``x`` with the batch's statistics (biased variance,
    two passes), written out from mean and variance instead of ``F.batch_norm``.

    Why: under ``torch.func.vmap``, torch 2.13's second derivative through ``F.batch_norm``
    is wrong (float64: 7.6e-2 from the per-task loop on a tiny Conv-4), while this form's
    vmapped second derivative matches the loop to 3e-15. So MAML's meta-gradient can vmap
    over tasks: 172 ms against the loop's 188 ms per Omniglot meta-gradient (meta-batch 8,
    2 threads; the written form alone costs ~15% against F.batch_norm in the same loop).
    ``tests/test_torch_adapters.py`` fails the day torch's own vmapped form is fixed."""
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    centered = x - mean
    var = (centered * centered).mean(dim=(0, 2, 3), keepdim=True)
    return centered * torch.rsqrt(var + eps) * weight[None, :, None, None] + bias[None, :, None, None]


def fused_batch_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """``F.batch_norm`` with the batch's statistics: one fused kernel, right wherever no
    vmapped second derivative goes through it (ProtoNet)."""
    return F.batch_norm(x, None, None, weight, bias, training=True, eps=eps)


def conv4_blocks(params: Params, x: torch.Tensor, use_batch_norm: bool, eps: float,
                 norm=batch_norm) -> list[torch.Tensor]:
    """NCHW images -> each block's output (conv, BatchNorm, ReLU, 2x2 max-pool), NCHW."""
    out = []
    for i in range(1, CONV_BLOCKS + 1):
        x = F.conv2d(x, params[f"conv{i}.weight"], params.get(f"conv{i}.bias"), padding=1)
        if use_batch_norm:
            x = norm(x, params[f"bn{i}.weight"], params[f"bn{i}.bias"], eps)
        x = F.max_pool2d(F.relu(x), 2)
        out.append(x)
    return out


def conv4(params: Params, x: torch.Tensor, use_batch_norm: bool, eps: float, norm=batch_norm) -> torch.Tensor:
    """NCHW images -> [n, features]. BatchNorm uses the batch's statistics (biased
    variance), never running statistics: MAML's transductive setting. ``norm`` is
    ``batch_norm`` (vmap-safe to second order) or ``fused_batch_norm``."""
    return conv4_blocks(params, x, use_batch_norm, eps, norm)[-1].flatten(1)  # (C, H, W): the canonical order


def pool_inputs(params: Params, x: torch.Tensor, use_batch_norm: bool, eps: float) -> list[np.ndarray]:
    """Conv-4 on NCHW ``x``: each block's max-pool input (conv, BatchNorm, ReLU) as float64
    numpy, for ``Adapter.max_pool_inputs``. BatchNorm written out (``batch_norm``) whatever
    the adapter's forward uses: the near-tie test compares the float64 and float32 passes
    of one form."""
    out = []
    with torch.no_grad():
        for i in range(1, CONV_BLOCKS + 1):
            z = F.conv2d(x, params[f"conv{i}.weight"], params.get(f"conv{i}.bias"), padding=1)
            if use_batch_norm:
                z = batch_norm(z, params[f"bn{i}.weight"], params[f"bn{i}.bias"], eps)
            z = F.relu(z)
            out.append(z.detach().cpu().double().numpy())
            x = F.max_pool2d(z, 2)
    return out


def block_activations(blocks: list[torch.Tensor]) -> dict[str, np.ndarray]:
    """``Adapter.activations``' layout: ``block1``.. in order, canonical (NCHW, or [n, units])."""
    return {f"block{i}": b.detach().cpu().numpy() for i, b in enumerate(blocks, 1)}


def mlp_blocks(params: Params, x: torch.Tensor) -> list[torch.Tensor]:
    """The MLP's body, layer by layer: each hidden layer after its ReLU."""
    h1 = F.relu(F.linear(x, params["fc1.weight"], params["fc1.bias"]))
    return [h1, F.relu(F.linear(h1, params["fc2.weight"], params["fc2.bias"]))]


def mlp_features(params: Params, x: torch.Tensor) -> torch.Tensor:
    """The MLP's body: its last hidden layer, which the head reads."""
    return mlp_blocks(params, x)[-1]


def mlp(params: Params, x: torch.Tensor) -> torch.Tensor:
    return F.linear(mlp_features(params, x), params["head.weight"], params["head.bias"])


def dtype_option(options: dict) -> torch.dtype:
    """``options["dtype"]``: "float32" (the benchmark) or "float64" (the float64 reference
    that ``metabench parity`` measures float32 rounding against)."""
    name = options.get("dtype", "float32")
    if name not in ("float32", "float64"):
        raise ValueError(f"option dtype must be float32 or float64, got {name!r}")
    return getattr(torch, name)


class TorchBatch:
    """An episode batch on the device: images NCHW, labels int64, floats in ``dtype``."""

    def __init__(self, batch, device: torch.device, dtype: torch.dtype = torch.float32):
        def move(a: np.ndarray) -> torch.Tensor:
            t = torch.from_numpy(np.ascontiguousarray(a))
            if t.dim() == 5:  # [B, n, H, W, C] -> [B, n, C, H, W]
                t = t.permute(0, 1, 4, 2, 3).contiguous()
            if t.is_floating_point():
                t = t.to(dtype)
            return t.to(device)

        self.support_x, self.support_y = move(batch.support_x), move(batch.support_y)
        self.query_x, self.query_y = move(batch.query_x), move(batch.query_y)
        self.shape = batch.shape  # the episodes' EpisodeShape

    def __len__(self) -> int:
        return self.support_x.shape[0]


def params_to_torch(params: dict[str, np.ndarray], device: torch.device,
                    dtype: torch.dtype = torch.float32) -> Params:
    return {k: torch.tensor(np.asarray(v), dtype=dtype, device=device) for k, v in params.items()}


def params_to_numpy(params: Params) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in params.items()}


def make_adam(params: Params, meta: MetaOptimizer, fused: bool = True):
    """torch.optim.Adam as the harness's ``MetaOptimizer`` says (eps added to the
    bias-corrected sqrt(v): the form optax and the TF adapters' Adam reproduce), and StepLR
    stepped after each update for its halving schedule.

    ``fused``: one fused kernel for every parameter (CPU and CUDA, float32 and float64)
    instead of torch's default on a CPU, a loop over parameters; as optax's and TF's Adam
    run inside their compiled steps. Measured on 1 thread, one update: sinusoid's MLP 65 us
    against 174 us (foreach: 151 us), 5% of the eager sinusoid outer step and a seventh of
    a compiled one; Conv-4 (64 filters) 176 us against 586 us. ``torch-maml-higher`` keeps
    the default, as the papers' code did. (Compiling ``opt.step`` instead would recompile
    whenever the schedule halves the step size.)"""
    opt = torch.optim.Adam(list(params.values()), lr=meta.lr, betas=(meta.b1, meta.b2), eps=meta.eps,
                           fused=fused or None)
    sched = torch.optim.lr_scheduler.StepLR(opt, meta.halve_every, gamma=0.5) if meta.halve_every else None
    return opt, sched


# -- torch.compile -----------------------------------------------------------------------
# The counter of the adapter whose compiled step function is running: the backend below adds
# to it each graph Inductor compiles. One backend function for every adapter, because
# dynamo's compiled code is cached per code object and guarded on the backend's identity:
# a backend per adapter would make every new adapter recompile what another one compiled.
_counting: list[list[int]] = []
# Cache entries per code object. The step functions' code is shared by every adapter of a
# class, and each spec, algorithm, dtype and batch shape is an entry of its own (the contract
# checks alone make 10 of MAML's meta-gradient); past torch's default of 8, dynamo would run
# the function eager, and the variant would time eager code under its name.
RECOMPILE_LIMIT = 256


def _inductor_counted(gm, example_inputs):
    """``torch.compile``'s default backend (Inductor), counting what it compiles."""
    if _counting:
        _counting[-1][0] += 1
    return torch._inductor.compile(gm, example_inputs)


def compile_step(fn, counter: list[int]):
    """``fn`` under ``torch.compile`` (Inductor, static shapes, one graph or an error), each
    compilation counted in ``counter[0]`` (``compilation_count``: the harness's recompilation
    check). ``fullgraph``: a graph break would split the step into compiled pieces and eager
    glue, which is not what the variant claims to time."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    torch._dynamo.config.fail_on_recompile_limit_hit = True  # never eager under a compiled name
    compiled = torch.compile(fn, backend=_inductor_counted, dynamic=False, fullgraph=True)

    def run(*args):
        _counting.append(counter)
        try:
            return compiled(*args)
        finally:
            _counting.pop()
    return run


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> MemoryReading:
    if device.type == "cuda":
        return MemoryReading(int(torch.cuda.max_memory_allocated(device)), "torch.cuda.max_memory_allocated")
    return MemoryReading(None, None)


def describe(device: torch.device, notes: str, compiled: bool = False) -> AdapterInfo:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        precision = "float32, TF32 off (matmul and cuDNN)"
    else:
        name = cpu_model()
        precision = "float32"
    return AdapterInfo(framework="torch", framework_version=torch.__version__, device=device.type,
                       device_name=name, compilation="torch.compile" if compiled else "eager",
                       precision=precision,
                       threads=torch.get_num_threads(), notes=notes,
                       extra={"interop_threads": torch.get_num_interop_threads(),
                              "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None})


class TorchAdapter(Adapter):
    """What the torch adapters share: device and dtype, parameters as plain leaf tensors
    with a torch.optim Adam (the harness's ``self.meta_optimizer``), the
    meta-gradient applied through ``.grad``, sync, memory and the parity probe's layout."""

    framework = "torch"
    OPTIONS = {**Adapter.OPTIONS,
               "compile": Option(bool, False, (), "torch.compile (Inductor, dynamic=False) of every step "
                                                  "function (the *-compile variants)")}

    @classmethod
    def configure(cls, threads: int, device: str) -> None:
        configure(threads, device)

    def __init__(self, spec, algorithm, params, device="cpu", options=None):
        super().__init__(spec, algorithm, params, device, options)
        self._dev = torch_device(device)
        self._dtype = dtype_option(self.options)
        self._bn, self._eps = self.config.model.batch_norm, self.config.model.bn_eps
        self._compiled = self.options["compile"]
        self._compiles = [0]  # graphs compiled for this adapter's step functions

    def step_function(self, fn):
        """``fn`` as the adapter runs it: compiled under the ``compile`` option, else itself."""
        return compile_step(fn, self._compiles) if self._compiled else fn

    def compilation_count(self) -> int | None:
        return self._compiles[0] if self._compiled else None

    def describe_as(self, notes: str) -> AdapterInfo:
        return describe(self._dev, notes + ("; torch.compile (Inductor, dynamic=False, fullgraph) of each step "
                                            "function" if self._compiled else ""), self._compiled)

    def to_device(self, batch):
        return TorchBatch(batch, self._dev, self._dtype)

    def sync(self, outputs=None) -> None:
        sync(self._dev)

    def get_params(self):
        return params_to_numpy(self.params)

    def set_params(self, params):
        self.params = params_to_torch(params, self._dev, self._dtype)
        self.opt, self.sched = make_adam(self.params, self.meta_optimizer)

    def apply_meta_grad(self, grads: Params) -> None:
        """One Adam update from a meta-gradient computed by ``torch.func``."""
        for k, p in self.params.items():
            g = grads[k]
            # torch 2.13's fused Adam reads a gradient as if it had its parameter's strides:
            # autograd returns conv weights' gradients channels_last on a CPU (oneDNN), and
            # fused Adam then moved 46% of conv2.weight the wrong way (float64, ProtoNet)
            p.grad = g if g.stride() == p.stride() else torch.empty_like(p).copy_(g)
        self.opt.step()
        if self.sched is not None:
            self.sched.step()

    def gemm(self, n: int):
        g = torch.Generator(device=self._dev).manual_seed(0)
        a, b = (torch.rand(n, n, generator=g, device=self._dev) for _ in range(2))

        def step():
            c = a @ b
            sync(self._dev)
            return c
        return step

    def reset_peak_memory(self) -> None:
        reset_peak_memory(self._dev)

    def peak_memory(self) -> MemoryReading:
        return peak_memory(self._dev)

    @staticmethod
    def probe_result(support_loss, logits, grads: Params) -> dict[str, np.ndarray]:
        out = {"support_loss": support_loss.cpu().numpy(), "query_logits": logits.cpu().numpy()}
        out.update({f"meta_grad/{k}": v.cpu().numpy() for k, v in grads.items()})
        return out
