"""ANIL (Raghu et al. 2020, "Rapid Learning or Feature Reuse?"): MAML whose inner loop adapts
the head alone. The body's features of a task's support and query sets are computed once;
the head takes ``inner_steps`` gradient steps on the support features; the meta-gradient
reaches the body through those features (second order in the head's steps).

It reads MAML's ``[maml]`` section (inner step size and steps, meta-batch, meta step size),
so every spec that configures MAML configures ANIL. Its inner step is cheaper than MAML's:
one forward pass of the body per set, and gradients of a linear layer only.
"""

from __future__ import annotations

from bench.algorithms.maml import MAMLFamily

ANIL = MAMLFamily("anil", "maml", ("inner_step", "outer_step"),
                  "ANIL: MAML with the inner loop on the head only (features computed once per set)")
