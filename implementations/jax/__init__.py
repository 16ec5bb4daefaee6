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

# The entries the registry lists (the framework record's ``entries``); the adapters' own
# modules import the framework, this one does not.
from bench.core.registry import AdapterEntry  # noqa: E402 - after the environment defaults above

ENTRIES = [
    AdapterEntry("jax-maml", "jax", ("maml", "fomaml"), "implementations.jax.maml:JaxMAML",
                 description="pure-function MAML, outer step jitted once, tasks vmapped (im2col convs on CPU)"),
    AdapterEntry("jax-maml-xlaconv", "jax", ("maml", "fomaml"), "implementations.jax.maml:JaxMAML",
                 options={"conv": "xla"}, default=False,
                 description="as jax-maml, lax.conv_general_dilated also on CPU (grouped convs under vmap)"),
    AdapterEntry("jax-anil", "jax", ("anil",), "implementations.jax.anil:JaxANIL",
                 description="pure-function ANIL (inner loop on the head), jitted, tasks vmapped"),
    AdapterEntry("jax-protonet", "jax", ("protonet",), "implementations.jax.protonet:JaxProtoNet",
                 description="Prototypical Networks, step jitted"),
    AdapterEntry("jax-reptile", "jax", ("reptile",), "implementations.jax.reptile:JaxReptile",
                 description="pure-function Reptile, outer step jitted once, tasks vmapped"),
]
