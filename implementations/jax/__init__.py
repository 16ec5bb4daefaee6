"""JAX adapters: ``jax-maml`` and ``jax-protonet``.

Pure functions over parameter pytrees; each adapter's whole outer step (adaptation, query
loss, meta-gradient, optax update) is one ``jax.jit`` function, and the tasks of a
meta-batch are batched with ``vmap``.

This package is imported before ``jax`` (``bench.core.registry`` imports the adapter module,
whose package comes first), so the allocator defaults set here take effect.
"""

import os

# JAX grabs 75% of GPU memory at start-up by default: that would make every peak-memory
# reading the preallocation, and starve anything else sharing the device.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
