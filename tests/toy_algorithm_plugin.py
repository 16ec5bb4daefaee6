"""A toy algorithm from outside the repository (issue 24), as a plugin package that
``tests/test_algorithm_plugin.py`` installs the way pip would: its modules and a
dist-info whose ``entry_points.txt`` names both groups, ``metabench.algorithms`` (the
algorithm) and ``metabench.adapters`` (its adapters), in a folder that goes on PYTHONPATH.

"fotoy" is first-order MAML under a name and a spec section of its own (``[fotoy]``, its
settings a dataclass with ``setting`` bounds): the harness has never heard of either. Its
adapters are the built-in MAML adapters of torch and JAX serving "fotoy" (a plugin may
import ``implementations``: it is not the harness), listed by an entries module that
imports no framework.
"""

from __future__ import annotations

import importlib
import textwrap
from pathlib import Path

PACKAGE = "metabench_toy"
DIST = "metabench-toy"
ALGORITHM = "fotoy"
ADAPTERS = {"torch": "torch-fotoy", "jax": "jax-fotoy"}  # framework -> adapter name

MODULES = {
    f"{PACKAGE}/__init__.py": '"""A toy algorithm for metabench: imports nothing."""\n',
    f"{PACKAGE}/algorithm.py": '''
        """fotoy: first-order MAML with its own spec section, [fotoy]."""
        from dataclasses import dataclass

        from bench.core.algorithms import InnerLoop, Settings, setting
        from bench.core.algorithms.base import EpisodeShape
        from bench.core.algorithms.maml import DIAGNOSIS, MAML_MATHS, MAMLFamily


        @dataclass(frozen=True)
        class FoToySettings(Settings):
            """The [fotoy] section: no first_order field (always first order), no train_n_query."""
            inner_lr: float = setting(help="SGD step size of the inner loop")
            inner_steps: int = setting(1, help="inner steps while meta-training")
            test_inner_steps: int = setting(1, help="inner steps at evaluation")
            meta_batch_size: int = setting(4)
            meta_lr: float = setting(1e-3, help="Adam step size")


        class FoToy(MAMLFamily):
            """MAML's semantics, trained on the evaluation's episode shape, first order."""
            train_query_field = None

            def train_shape(self, spec):
                e = spec.episode
                return EpisodeShape(e.n_way, e.k_shot, e.k_shot)

            def inner_loop(self, spec):
                h = self.hyperparameters(spec)
                return InnerLoop(h.inner_lr, h.inner_steps, h.test_inner_steps, first_order=True)


        ALGORITHM = FoToy(
            "fotoy", "fotoy", FoToySettings, ("inner_step", "outer_step"),
            "toy first-order MAML from a plugin, with its own [fotoy] section",
            diagnosis=DIAGNOSIS, maths=MAML_MATHS,
            # what `metabench check` adds to its built-in specs, which have no [fotoy]
            check_settings={"inner_lr": 0.01, "inner_steps": 1, "test_inner_steps": 1, "meta_batch_size": 4,
                            "meta_lr": 0.001})
    ''',
    f"{PACKAGE}/entries.py": '''
        """The toy's adapters, for the registry: imports no framework."""
        from bench.core.registry import AdapterEntry

        ENTRIES = [
            AdapterEntry("torch-fotoy", "torch", ("fotoy",), "metabench_toy.torch_fotoy:TorchFoToy",
                         description="toy first-order MAML (plugin), torch.func"),
            AdapterEntry("jax-fotoy", "jax", ("fotoy",), "metabench_toy.jax_fotoy:JaxFoToy",
                         description="toy first-order MAML (plugin), JAX"),
        ]
    ''',
    f"{PACKAGE}/torch_fotoy.py": '''
        from implementations.torch.maml import TorchMAML


        class TorchFoToy(TorchMAML):
            """The built-in torch MAML; first order from the config's inner loop."""
            algorithms = ("fotoy",)
    ''',
    f"{PACKAGE}/jax_fotoy.py": '''
        from implementations.jax.maml import JaxMAML


        class JaxFoToy(JaxMAML):
            """The built-in JAX MAML; first order from the config's inner loop."""
            algorithms = ("fotoy",)
    ''',
}

ENTRY_POINTS = f"""[metabench.algorithms]
{ALGORITHM} = {PACKAGE}.algorithm:ALGORITHM

[metabench.adapters]
{ALGORITHM} = {PACKAGE}.entries:ENTRIES
"""


def install(site: Path, check_settings: bool = True) -> Path:
    """The plugin installed into ``site`` the way pip would (its package and a dist-info);
    ``check_settings=False``: its algorithm without them."""
    site.mkdir(parents=True, exist_ok=True)
    for rel, text in MODULES.items():
        text = textwrap.dedent(text).lstrip()
        if not check_settings and rel.endswith("algorithm.py"):
            text = text[:text.index("    # what `metabench check` adds")] + ")\n"
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
    info = site / f"{DIST.replace('-', '_')}-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {DIST}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    importlib.invalidate_caches()
    return site


# A spec of the plugin's own: the sinusoid on an 8-unit MLP, with a [fotoy] section and tiny
# smoke budgets (fast enough for the test suite in every phase).
SPEC = """
name = "toy-sinusoid"
description = "sinusoid regression for the toy algorithm"

[data]
dataset = "sinusoid"

[episode]
n_way = 1
k_shot = 5
n_query = 10

[model]
hidden = 8
batch_norm = "none"

[fotoy]
inner_lr = 0.01
inner_steps = 1
test_inner_steps = 1
meta_batch_size = 4
meta_lr = 0.001

[profiles.smoke]
meta_train_steps = 2
eval_episodes = 4
val_every = 1
val_episodes = 4

[profiles.smoke.fotoy]
meta_batch_size = 2
"""
