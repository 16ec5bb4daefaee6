"""The autograd backend that this package's adapters share: AutogradAdapter holds everything
but the algorithm (threads, device, transfers, sync, parameters, memory, Adam), and the
Conv-4 body in autograd.numpy, which another adapter of this package (a MAML) would reuse.
autograd differentiates numpy code: the backend stays numpy.
"""

from importlib import metadata

import autograd.numpy as anp
import numpy as np

from bench.core.adapter import Adapter, AdapterInfo, MemoryReading
from bench.core.episodes import EpisodeBatch
from bench.core.models import CONV_BLOCKS
from bench.measure.environment import cpu_model

FRAMEWORK_DISTRIBUTION = "autograd"  # the distribution that installs autograd


def framework_version() -> str:
    """The installed version of autograd, recorded with every measurement."""
    try:
        return metadata.version(FRAMEWORK_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


def conv3x3(x, w):
    """NHWC ``x``, OIHW ``w``: 3x3 convolution, stride 1, zero padding 1, as nine shifted
    matrix products (autograd has no convolution)."""
    n, h, wd, c = x.shape
    x = anp.concatenate([anp.zeros((n, 1, wd, c), x.dtype), x, anp.zeros((n, 1, wd, c), x.dtype)], axis=1)
    x = anp.concatenate([anp.zeros((n, h + 2, 1, c), x.dtype), x, anp.zeros((n, h + 2, 1, c), x.dtype)], axis=2)
    return sum(anp.tensordot(x[:, i:i + h, j:j + wd, :], w[:, :, i, j], axes=([3], [1]))
               for i in range(3) for j in range(3))


def batch_norm(x, gamma, beta, eps):
    """BatchNorm of NHWC ``x`` with the batch's statistics (biased variance). They are summed
    in float64: numpy sums a float32 reduction over non-contiguous axes one element after
    another, which put float32's first block 1.6e-4 from float64 (torch's sums: 1e-7)."""
    x64 = x.astype(np.float64)
    mean = anp.mean(x64, axis=(0, 1, 2), keepdims=True)
    var = anp.mean((x64 - mean) ** 2, axis=(0, 1, 2), keepdims=True)
    return ((x64 - mean) / anp.sqrt(var + eps)).astype(x.dtype) * gamma + beta


def conv4(p, x, eps):
    """Conv-4 (bench/core/models.py): conv -> BatchNorm (the batch's statistics, biased
    variance) -> ReLU -> 2x2 max-pool (floor), flattened in (C, H, W) order."""
    for i in range(1, CONV_BLOCKS + 1):
        x = conv3x3(x, p[f"conv{i}.weight"])
        if f"bn{i}.weight" in p:
            x = batch_norm(x, p[f"bn{i}.weight"], p[f"bn{i}.bias"], eps)
        else:
            x = x + p[f"conv{i}.bias"]
        x = anp.maximum(x, 0.0)
        n, h, w, c = x.shape
        x = x[:, :h // 2 * 2, :w // 2 * 2, :].reshape(n, h // 2, 2, w // 2, 2, c).max(axis=4).max(axis=2)
    return anp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


class AutogradAdapter(Adapter):
    framework = "autograd"  # one process per framework: this names it

    # -- backend: numpy arrays on the CPU, a numpy Adam
    @classmethod
    def configure(cls, threads, device):
        if device != "cpu":
            raise RuntimeError("autograd runs on the CPU only")

    def __init__(self, spec, algorithm, params, device="cpu", options=None):
        super().__init__(spec, algorithm, params, device, options)
        self.dtype = np.dtype(self.options["dtype"])  # float32, or float64: parity's diagnostic
        self.eps = self.config.model.bn_eps
        self.set_params(params)

    def describe(self):
        return AdapterInfo("autograd", framework_version(), "cpu", cpu_model(), "eager", self.dtype.name, 1,
                           notes="numpy through autograd; conv as nine matrix products",
                           compilation_detail="numpy op by op, autograd's tape recorded each call")

    def to_device(self, batch):
        f = lambda a: a.astype(self.dtype) if a.dtype.kind == "f" else a
        return EpisodeBatch(f(batch.support_x), batch.support_y, f(batch.query_x), f(batch.query_y),
                            batch.provenance, batch.shape)

    def sync(self, outputs=None):
        pass  # numpy computes before it returns

    def get_params(self):
        return {k: v.copy() for k, v in self.params.items()}

    def set_params(self, params):
        self.params = {k: np.array(v, self.dtype) for k, v in params.items()}
        self._m = {k: np.zeros_like(v) for k, v in self.params.items()}
        self._v = {k: np.zeros_like(v) for k, v in self.params.items()}
        self._updates = 0

    def reset_peak_memory(self):
        pass

    def peak_memory(self):
        return MemoryReading(None, None)  # the harness records the process's RSS growth

    def compilation_count(self):
        return None

    def _adam_step(self, grads):
        """Adam as self.meta_optimizer says (eps added to the bias-corrected sqrt(v))."""
        opt, t = self.meta_optimizer, self._updates + 1
        lr = opt.step_size(self._updates)
        for k, g in grads.items():
            self._m[k] = opt.b1 * self._m[k] + (1 - opt.b1) * g
            self._v[k] = opt.b2 * self._v[k] + (1 - opt.b2) * g * g
            m_hat, v_hat = self._m[k] / (1 - opt.b1 ** t), self._v[k] / (1 - opt.b2 ** t)
            self.params[k] = (self.params[k] - lr * m_hat / (np.sqrt(v_hat) + opt.eps)).astype(self.dtype)
        self._updates = t
