"""MAML (Finn et al. 2017), second and first order, with ``torch.func``.

A task's query loss after adaptation is a pure function of the parameters,
``task_loss(params, support, query)``; the meta-gradient is ``grad`` of the mean over the
meta-batch. First order stops the gradient through the inner gradients.

Tasks run vmapped or in a Python loop, by shape (the ``tasks`` option; "auto" by default).
BatchNorm is written out from mean and variance (``common.batch_norm``) in both: torch
2.13's vmapped second derivative through ``F.batch_norm`` is wrong, and outside vmap its
float32 statistics are imprecise on a CPU (the second-order meta-gradient 4.9e-4 from
float64 at 2 threads and 1.4e-2 at 1 thread, Omniglot 15 query images per class x 4 tasks,
against 2e-6 written out; ``F.batch_norm`` would be 1.2-1.6x faster in the loop). Under
vmap, a task's adapted weights make every query convolution a grouped one, which on a CPU
grows worse than a loop with the query set. Measured on 2 CPU threads, float32, Omniglot
Conv-4, both forms in one process, rounds alternated, medians, ms, vmap / loop (the loop
with ``F.batch_norm`` here; with the written-out form, rerun: 1 query x 1 task 28 / 25,
x 2 tasks 47 / 46, x 8 tasks 156 / 181; 5 query x 4 tasks 174 / 149; 15 query x 4 tasks
593 / 339; 20-way 1 query x 4 tasks 291 / 281; inner steps level to 1.5x faster looped):

    way shot query/class meta-batch inner-steps | outer step    | inner step
    5   1    1           8          1           | 141 / 144     | 36 / 24
    5   1    1           32         1           | 602 / 595     | 163 / 107
    5   1    1           8          5           | 575 / 632     | 35 / 26
    20  1    1           8          1           | 619 / 643     | 161 / 69
    5   1    5           8          1           | 462 / 208     | 39 / 28
    5   1    5           4          5           | 396 / 374     | 27 / 13
    5   1    15          4          1           | 565 / 189     | 20 / 13
    5   1    15          8          1           | 1161 / 342    | 40 / 25
    5   5    15          4          1           | 755 / 471     | 118 / 39
    20  1    5           4          1           | 960 / 459     | 77 / 32

So on a CPU, for Conv-4: inner steps and test-time adaptation loop over tasks, and the
meta-gradient loops from ``TASK_LOOP_QUERY_FROM`` (25) query images per task or with at most
``TASK_LOOP_UP_TO_TASKS`` (2) tasks (vmap over one task is overhead alone), vmapped otherwise;
results/20261206-cpu-baselines-grid has the rule against plain torch on 16 shapes.
The sinusoid MLP stays vmapped (25 tasks: 3.3 ms vmapped against 46.6 ms in a loop), and so
does an accelerator (not measured there). Both forms agree to 1e-13 in float64. In float32
the loop's meta-gradient is 1.2e-4 (15 query, 4 tasks) and 1.5e-3 (20-way) from float64, the
same at 1 and 2 threads: max-pool windows whose top two float32 cannot order
(``bench.check.near_ties``; 24-53 per task there). Task by task both forms are that far off (1 thread,
15 query: loop 1.2e-5 to 2.3e-4, vmap 1.3e-5 to 5.1e-5); the vmapped 4-task mean lands at
2.9e-6 (``tests/test_precision.py`` runs both forms).

``options["compile"]``: the outer step's meta-gradient (second order included: ``grad`` of
the vmapped task losses) as one ``torch.compile`` graph (Inductor, ``dynamic=False``,
``fullgraph``), compiled per shape; the inner step and test-time adaptation stay eager.
Everything compiles, Conv-4 and its written-out BatchNorm to second order included. Not a registered adapter yet: the
contract checks generated for every registered adapter compile a dozen graphs (shapes,
dtypes, algorithms), 4 min cold on 2 cores, more than the test suite can spend; ``metabench
baselines`` times it beside ``torch-maml`` and the plain version. Measured on a shared,
loaded machine (rough), 2 threads, one meta-gradient, float32: sinusoid (25 tasks) 0.64 ms
compiled against 8.0 ms eager, 12 s to compile, gradients within 2e-7 of eager; Omniglot
5-way 1-shot (4 tasks, 15 query per class) compiles (105 s) but runs slower, 2.0 s against
eager's 0.76 s. What is slow is Inductor's code, not the captured graph: the same graph
through AOT autograd without Inductor (``backend="aot_eager"``, 11 s to compile) ran 4.2 s
against eager's 13.8 s on the machine then (heavier load).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from bench.core.adapter import AdapterInfo, Option
from implementations.torch import common

# From this many query images per task, or with at most this many tasks, the meta-gradient
# runs in a loop over tasks on a CPU (the ``tasks`` option's "auto"; measured: the module's
# docstring and results/20261206-cpu-baselines-grid)
TASK_LOOP_QUERY_FROM = 25
TASK_LOOP_UP_TO_TASKS = 2


class TorchMAML(common.TorchAdapter):
    algorithms = ("maml", "fomaml")
    OPTIONS = {**common.TorchAdapter.OPTIONS,
               "tasks": Option(str, "auto", ("auto", "vmap", "loop"),
                               "how the meta-batch's tasks run: vmapped, in a Python loop (one task's "
                               "graph at a time, fused BatchNorm), or auto: by task size and device")}

    def __init__(self, spec, algorithm, params, device="cpu", options=None):
        super().__init__(spec, algorithm, params, device, options)
        if self._compiled and self.options.get("tasks") == "loop":
            raise ValueError("option tasks=loop runs eager: it cannot be combined with compile=true")
        self.set_params(params)
        self._vmapped_adapt = {steps: vmap(self._make_adapt(steps), in_dims=(None, 0, 0))
                               for steps in {1, self.inner_steps, self.test_inner_steps}}
        # the meta-gradient, compiled under options["compile"] (one graph per shape)
        self._meta_grad_step = self.step_function(self._meta_grad_func) if self._compiled else self._meta_grad

    # -- the maths -------------------------------------------------------------------------
    def features(self, params, x):
        """The body: the MLP's last hidden layer, or Conv-4's flattened features."""
        return common.mlp_features(params, x) if self.regression else common.conv4(params, x, self._bn, self._eps)

    @staticmethod
    def head(params, features):
        return F.linear(features, params["head.weight"], params["head.bias"])

    def forward(self, params, x):
        return self.head(params, self.features(params, x))

    def loss_of_outputs(self, out, y):
        return F.mse_loss(out, y) if self.regression else F.cross_entropy(out, y)

    def loss(self, params, x, y):
        return self.loss_of_outputs(self.forward(params, x), y)

    def _make_adapt(self, steps: int):
        def adapt(params, x, y):
            for _ in range(steps):
                g = grad(self.loss)(params, x, y)
                if self.first_order:
                    g = {k: v.detach() for k, v in g.items()}
                params = self.inner_update(params, g)
            return params
        return adapt

    def inner_update(self, params, grads):
        """One inner-loop step, ``params - inner_lr * grads`` (for the names in ``grads``):
        the one place both task forms, and ANIL's head, take it."""
        return {**params, **{k: params[k] - self.inner_lr * grads[k] for k in grads}}

    # -- the task loop: one task at a time, what wins on a CPU when tasks are large -----------
    def loop_features(self, params, x):
        """``features`` for one task outside ``vmap``, with the same written-out BatchNorm:
        ``F.batch_norm``'s float32 statistics on a CPU put the second-order meta-gradient
        4.9e-4 (2 threads) to 1.4e-2 (1 thread) from float64 at 15 query images per class,
        against 2e-6 for this form (module docstring); it would be 1.2-1.6x faster."""
        return self.features(params, x)

    def loop_loss(self, params, x, y):
        return self.loss_of_outputs(self.head(params, self.loop_features(params, x)), y)

    def loop_adapt(self, params, x, y, steps: int, create_graph: bool):
        """One task's inner loop by ``torch.autograd.grad`` (``higher``'s way): ``params``
        require grad; ``create_graph`` keeps the second-order graph for the meta-gradient."""
        for _ in range(steps):
            g = torch.autograd.grad(self.loop_loss(params, x, y), list(params.values()),
                                    create_graph=create_graph and not self.first_order)
            params = self.inner_update(params, dict(zip(params, g)))
        return params

    def _loop_meta_grad(self, b):
        """The meta-gradient task by task: each task's query loss differentiated on its own and
        the gradients summed, so one task's second-order graph is alive at a time."""
        params = {k: v.detach().requires_grad_() for k, v in self.params.items()}
        n = len(b)
        total = {k: torch.zeros_like(v) for k, v in params.items()}
        loss_sum = torch.zeros((), dtype=self._dtype, device=self._dev)
        for t in range(n):
            adapted = self.loop_adapt(params, b.support_x[t], b.support_y[t], self.inner_steps, create_graph=True)
            loss = self.loop_loss(adapted, b.query_x[t], b.query_y[t]) / n
            for k, g in zip(params, torch.autograd.grad(loss, list(params.values()))):
                total[k] += g
            loss_sum += loss.detach()
        return total, loss_sum

    def _loop_adapt_tasks(self, batch, steps: int):
        """Every task adapted in turn, stacked as ``vmap`` stacks them ([tasks, ...] per name)."""
        params = {k: v.detach().requires_grad_() for k, v in self.params.items()}
        per_task = [self.loop_adapt(params, batch.support_x[t], batch.support_y[t], steps, create_graph=False)
                    for t in range(len(batch))]
        return {k: torch.stack([a[k].detach() for a in per_task]) for k in params}

    def task_loop_for(self, query_per_task: int, tasks: int, meta_gradient: bool = False) -> bool:
        """Whether tasks run in a loop, for a batch of ``tasks`` tasks with ``query_per_task``
        query images each: the ``tasks`` option, or under "auto" the rule measured on a CPU
        for Conv-4 (module docstring): inner steps and test-time adaptation always, the
        meta-gradient from ``TASK_LOOP_QUERY_FROM`` query images per task or with at most
        ``TASK_LOOP_UP_TO_TASKS`` tasks (vmap over one task is overhead alone: 24 ms against
        the loop's 19). The sinusoid MLP, an accelerator and the compiled variant (which
        compiles the vmapped meta-gradient) keep vmap."""
        form = self.options["tasks"]
        if form != "auto":
            return form == "loop"
        if self._dev.type != "cpu" or self.regression or self._compiled:
            return False
        return not meta_gradient or query_per_task >= TASK_LOOP_QUERY_FROM or tasks <= TASK_LOOP_UP_TO_TASKS

    def task_forms(self) -> str:
        """Which form each step takes on the training shape: what ``describe`` records."""
        shape = self.config.train_shape
        query, tasks = shape.n_way * shape.n_query, self.config.meta_batch_size
        form = lambda loop: "a loop over tasks" if loop else "vmapped over tasks"
        return (f"inner steps and test-time adaptation {form(self.task_loop_for(query, tasks))}, the meta-gradient "
                f"{form(self.task_loop_for(query, tasks, meta_gradient=True))} ({tasks} tasks of {query} query "
                f"images in training; option tasks={self.options['tasks']})")

    def _task_query_loss(self, params, sx, sy, qx, qy):
        adapted = self._make_adapt(self.inner_steps)(params, sx, sy)
        return self.loss(adapted, qx, qy)

    def _meta_loss(self, params, b: common.TorchBatch):
        losses = vmap(self._task_query_loss, in_dims=(None, 0, 0, 0, 0))(
            params, b.support_x, b.support_y, b.query_x, b.query_y)
        return losses.mean()

    def _meta_grad(self, b):
        """The meta-gradient by reverse-mode autograd over the vmapped task losses (the inner
        gradients inside stay ``torch.func.grad``): the same numbers as ``grad_and_value`` of
        the meta-loss (bitwise, float32), and faster. Measured back to back on 2 threads, one
        meta-gradient, median: sinusoid (25 tasks) 2.09 ms against 2.91 ms; Omniglot 5-way
        1-shot (4 tasks, 15 query per class) 568 ms against 692 ms."""
        params = {k: v.detach().requires_grad_() for k, v in self.params.items()}
        loss = self._meta_loss(params, b)
        grads = torch.autograd.grad(loss, list(params.values()))
        return dict(zip(params, grads)), loss.detach()

    def _meta_grad_func(self, b):
        """The meta-gradient as one ``torch.func`` transform: what ``torch.compile`` captures
        in one graph (it does not trace ``torch.autograd.grad``)."""
        params = {k: v.detach() for k, v in self.params.items()}
        return torch.func.grad_and_value(self._meta_loss)(params, b)

    # -- contract --------------------------------------------------------------------------
    def describe(self) -> AdapterInfo:
        return self.describe_as(f"torch.func; {self.task_forms()}; BatchNorm written out from mean and variance "
                                "(second order included); Adam from torch.optim (fused)")

    def inner_step(self, batch):
        if self.task_loop_for(batch.query_x.shape[1], len(batch)):
            return self._loop_adapt_tasks(batch, 1)
        # self.params do not require grad: torch.func.grad builds only the inner graph
        return self._vmapped_adapt[1](self.params, batch.support_x, batch.support_y)

    def outer_step(self, batch):
        grads, loss = self._meta_grad_for(batch)
        self.apply_meta_grad(grads)
        return loss

    def _meta_grad_for(self, batch):
        if self.task_loop_for(batch.query_x.shape[1], len(batch), meta_gradient=True):
            return self._loop_meta_grad(batch)
        return self._meta_grad_step(batch)

    def _adapt_steps(self, batch, steps: int):
        if self.task_loop_for(batch.query_x.shape[1], len(batch)):
            return self._loop_adapt_tasks(batch, steps)
        return self._vmapped_adapt[steps](self.params, batch.support_x, batch.support_y)

    def _task_logits(self, batch, adapted):
        with torch.no_grad():
            if self.task_loop_for(batch.query_x.shape[1], len(batch)):
                return torch.stack([self.head({k: v[t] for k, v in adapted.items()},
                                              self.loop_features({k: v[t] for k, v in adapted.items()},
                                                                 batch.query_x[t]))
                                    for t in range(len(batch))])
            return vmap(self.forward, in_dims=(0, 0))(adapted, batch.query_x)

    def adapt(self, batch):
        return self._adapt_steps(batch, self.test_inner_steps)

    def predict(self, batch) -> np.ndarray:
        return self._task_logits(batch, self.adapt(batch)).cpu().numpy()

    def activations(self, batch):
        """The body's blocks on the first task's support set, from the current parameters."""
        with torch.no_grad():
            x = batch.support_x[0]
            blocks = (common.mlp_blocks(self.params, x) if self.regression
                      else common.conv4_blocks(self.params, x, self._bn, self._eps))
        return common.block_activations(blocks)

    def max_pool_inputs(self, batch):
        """The probe's passes on the first task: the support set with the meta-parameters,
        the query set with the parameters its training-time adaptation gives (this
        adapter's own inner loop, so the float32 pass carries its error too)."""
        adapted = self._vmapped_adapt[self.inner_steps](self.params, batch.support_x, batch.support_y)
        return {"support": common.pool_inputs(self.params, batch.support_x[0], self._bn, self._eps),
                "query": common.pool_inputs({k: v[0] for k, v in adapted.items()}, batch.query_x[0],
                                            self._bn, self._eps)}

    def probe(self, batch):
        with torch.no_grad():
            support_loss = vmap(self.loss, in_dims=(None, 0, 0))(self.params, batch.support_x, batch.support_y)
        logits = self._task_logits(batch, self._adapt_steps(batch, self.inner_steps))
        return self.probe_result(support_loss, logits, self._meta_grad_for(batch)[0])
