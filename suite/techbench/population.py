"""The population engine: K trials of one shape trained together as one LightningModule.

Why: the networks technique comparisons use are small, so one trial leaves a GPU launch-bound
and a CPU's vector units idle; stacking the parameters of K members (``torch.func``'s
``stack_module_state``) and running one ``vmap``-ed forward/backward over them does K trials'
work in about one trial's kernel launches.

Member i is trial i: its network is built exactly as :func:`techbench.trial.run_trial` builds it
(seeded with its seed, its initializers, data-dependent ones fitted on its own sample), then
stacked; every random stream is per member and seeded as in the one-by-one path (batch order
from ``Generator(seed)``, regularizer noise from ``Generator(seed + 0x7E57)``, dropout masks
from ``Generator(seed + MODULE_SEED_OFFSET)``, drawn outside ``vmap`` and fed in by
:mod:`techbench.stacked_modules`, with each member's own ``p``); its loss is its
own mean loss (the stack's objective is the sum of the members' losses, whose gradient with
respect to member i's parameters is member i's gradient); optimizers are elementwise: when the
optimizer has a stacked implementation (``spec.stacked``) and the schedule is multiplicative,
one optimizer per shared setting takes the members' ``float`` hyper-parameters as per-member
tensors (:mod:`techbench.member_hp`; its group ``lr`` is the schedule's multiplier), else one
``fast`` optimizer per distinct setting, with the schedule over it. Each member has its own
regularizer instance (its own hyper-parameters): ``penalty`` and ``loss`` hooks run member by
member inside ``vmap`` through ``functional_call`` (a loop of ``functional_call`` when the
members' hyper-parameters differ), ``transform_batch`` in a loop with each member's generator;
``transform_gradients`` and ``after_step`` run on the member's own network, whose parameters and
gradients are views of its rows of the stack, in the one-by-one order (backward, health's
pre-transform norm, transforms, health's gradient metrics, optimizer step, after-step hooks,
schedule), or once for a run of members through a regularizer's stacked implementation
(:mod:`techbench.stacked_hooks`). Epoch-end evaluation, best-validation weights and test
metrics are per member: the task's own metrics vmapped (:mod:`techbench.population_tasks`), for
classification, regression and language models alike. So a member's rows equal the one-by-one run's rows within float
tolerance (vmapped matmuls round differently), which ``tests/test_population.py`` checks.

Per-member life: the per-step losses of all members go to the host every
:data:`~techbench.lit.LOSS_FLUSH_EVERY` steps, as in the one-by-one path; a member whose loss is
non-finite or blew up is *frozen* at that flush (its rows end where the one-by-one run's end: the
divergence step is exact, its final metrics are taken then) and the others go on; its later
computation is masked out of the objective and no regularizer hook acts on it.

Gradient health (when enabled) is :class:`~techbench.stacked_health.StackedHealth`: on a
snapshot step the stacked forward also returns every activation layer's output, and the
one-by-one statistics are reduced over the member dimension of the stacked outputs, gradients
and weights, with one host transfer per snapshot for the whole stack; each member's
:class:`~techbench.health.GradientHealth` receives the rows it records when run alone.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from .callbacks import stub_trainer
from .families import STACKED_DIMS
from .lit import EVAL_CHUNK, LOSS_FLUSH_EVERY, STEPS_PER_BATCH, scan_losses, task_loss
from .population_tasks import member_metrics
from .schema import metric_row
from .stacked_hooks import StackedHooks
from .stacked_modules import StackedSamples
from .tasks import epoch_rows, rows_for_test

NOISE_SEED_OFFSET = 0x7E57
"""The regularizer-noise generator of a member is seeded with ``seed + NOISE_SEED_OFFSET``, as in
the one-by-one path (:class:`techbench.lit.TechniqueModule`)."""

warnings.filterwarnings(
    "ignore",
    message=r"There is a performance drop because we have not yet implemented the batching rule "
    r"for aten::_scaled_dot_product_flash_attention_for_cpu",
)
"""On a CPU, vmap runs PyTorch's fused attention member by member (no batching rule for the CPU
kernel): the same kernel as the one-by-one path, so the same numbers; the warning says so."""


@dataclass
class Member:
    """One trial of the stack: its network (a real module: the layout gradient health reads), seed,
    optimizer hyper-parameters, the regularizer and what it records."""

    model: nn.Module
    seed: int
    optimizer_params: dict[str, Any]
    regularizer: Any
    health: Any = None
    regularizer_params: dict[str, Any] | None = None
    callbacks: list[Any] = field(default_factory=list)
    trainer: Any = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    diverged_step: int | None = None
    frozen: bool = False
    first_loss: float | None = None
    best_val_loss: float = math.inf
    steps_done: int = 0
    epochs_done: int = 0
    train_seconds: float = 0.0


class StackedBatches:
    """Per-member shuffled minibatches of one in-memory split: ``x[K, B, ...]``, ``y[K, B]``.

    Member k's permutation each epoch comes from its own generator exactly as
    :class:`techbench.lit.ShuffledBatches` draws it, and the batch bounds are the same (a tail
    of one sample folded into the previous batch), so member k sees trial k's batches.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        generators: Sequence[torch.Generator],
        group: int = STEPS_PER_BATCH,
    ) -> None:
        from .lit import ShuffledBatches

        self.x, self.y, self.generators = x, y, list(generators)
        self.bounds = ShuffledBatches(x, y, batch_size, torch.Generator()).bounds
        self.group = max(int(group), 1)

    @property
    def num_minibatches(self) -> int:
        return len(self.bounds) - 1

    def __len__(self) -> int:
        return -(-self.num_minibatches // self.group)

    def __iter__(self) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
        n = len(self.x)
        perms = torch.stack([torch.randperm(n, generator=g) for g in self.generators])
        perms = perms.to(self.x.device)
        xs, ys = self.x[perms], self.y[perms]
        pairs = [(xs[:, lo:hi], ys[:, lo:hi]) for lo, hi in itertools.pairwise(self.bounds)]
        for i in range(0, len(pairs), self.group):
            yield pairs[i : i + self.group]


class StackedDataModule(pl.LightningDataModule):
    """The shared splits on the training device, batched per member (:class:`StackedBatches`)."""

    def __init__(self, splits: Any, batch_size: int, seeds: Sequence[int]) -> None:
        super().__init__()
        self.splits = splits
        self.batch_size = batch_size
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.tensors: dict[str, torch.Tensor] = {}

    def setup(self, stage: str | None = None) -> None:
        device = (
            self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        )
        for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
            self.tensors[name] = getattr(self.splits, name).to(device)

    def train_dataloader(self) -> StackedBatches:
        t = self.tensors
        return StackedBatches(t["x_train"], t["y_train"], self.batch_size, self.generators)

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        return batch  # already on the device


class _Probe(nn.Module):
    """Calls a regularizer hook on the wrapped network inside ``functional_call``, so that the
    hook sees one member's parameters (vmap hides the member dimension)."""

    def __init__(self, net: nn.Module, hook: Callable[[nn.Module], Any]) -> None:
        super().__init__()
        self.net = net
        self.hook = hook

    def forward(self) -> Any:
        return self.hook(self.net)


class StackedModule(pl.LightningModule):
    """Trains the members of one stack; ``members[i].rows`` are trial i's metric rows.

    ``optimizer_factory(params, hp)`` and ``schedule_factory(optimizer, total_steps)`` come from
    the plugins; members with equal optimizer hyper-parameters share one optimizer over their
    stacked tensors (members are ordered so that each group is a contiguous slice). With
    ``stacked_optimizer_factory(params, settings)`` (a stacked implementation taking each
    member's hyper-parameters) members with equal ``group_key(hp)`` (the shared, non-numeric
    settings) share one: usually the whole stack, one leaf per parameter.
    """

    def __init__(
        self,
        members: Sequence[Member],
        task: str,
        optimizer_factory: Callable[[Any, dict[str, Any]], torch.optim.Optimizer],
        schedule_factory: Callable[[torch.optim.Optimizer, int], Any] | None,
        total_steps: int,
        stacked_optimizer_factory: (
            Callable[[Any, Sequence[Mapping[str, Any]]], torch.optim.Optimizer] | None
        ) = None,
        group_key: Callable[[Mapping[str, Any]], Any] | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.members = list(members)
        self.task = task
        self.loss_fn = task_loss(task)
        self.optimizer_factory = optimizer_factory
        self.schedule_factory = schedule_factory
        self.stacked_optimizer_factory = stacked_optimizer_factory
        self.total_steps = total_steps
        # a list, so that Lightning's device moves skip the parameter-less skeleton
        self._skeleton = [meta_skeleton(self.members[0].model)]
        params, buffers = stack_module_state([m.model for m in self.members])
        groups = _groups(
            [m.optimizer_params for m in self.members],
            group_key if stacked_optimizer_factory is not None else None,
        )
        self.group_slices = [slice(lo, hi) for lo, hi, _ in groups]
        self.group_params = [hp for _, _, hp in groups]
        # one leaf per (group, parameter): each group's optimizer owns its slice of the stack
        self.leaves = nn.ParameterList(
            nn.Parameter(v[s].detach().clone()) for s in self.group_slices for v in params.values()
        )
        for leaf in self.leaves:  # a stacked bias [K, n] is still a bias to an optimizer
            setattr(leaf, STACKED_DIMS, 1)
        self.names = list(params)
        self._index = {name: j for j, name in enumerate(self.names)}
        self._group_of = [
            g for g, s in enumerate(self.group_slices) for _ in range(s.start, s.stop)
        ]
        for name, value in buffers.items():
            self.register_buffer("stack__" + name.replace(".", "__"), value.detach().clone())
        self.buffer_names = list(buffers)
        model0 = self.members[0].model
        where = {id(module): name for name, module in model0.named_modules()}
        skeleton = dict(self.base.named_modules())
        self._act_modules = [
            skeleton[where[id(a)]] for a in getattr(model0, "activation_layers", [])
        ]
        self.regularizer = self.members[0].regularizer
        self._samples = StackedSamples.of(
            self.base, [m.model for m in self.members], [m.seed for m in self.members]
        )
        from .callbacks import overrides
        from .families import Regularizer

        self._uses = {
            hook: overrides(self.regularizer, hook, Regularizer)
            for hook in ("transform_batch", "penalty", "loss")
        }
        # vmapped hooks may use members[0]'s instance only when every member's is set alike
        self._shared_regularizer = all(
            m.regularizer_params == self.members[0].regularizer_params for m in self.members
        )
        self.hooks = StackedHooks(
            [m.regularizer for m in self.members], [m.model for m in self.members]
        )
        self._losses: list[torch.Tensor] = []
        self._loss_steps: list[tuple[int, int]] = []
        self._schedulers: list[Any] = []
        self._generators: list[torch.Generator] = []
        self._alive: torch.Tensor | None = None
        self.best: dict[str, torch.Tensor] | None = None
        self.steps_done = 0
        self._fit_start = 0.0
        self.eval_seconds = 0.0
        self._count_step: Callable[[], None] | None = None
        self._health: Any = None

    # -- the stacked state ---------------------------------------------------------------------

    def stacked_params(self) -> dict[str, torch.Tensor]:
        """Parameter name -> ``[K, ...]`` (a concatenation of the groups' leaves when several)."""
        n = len(self.names)
        out = {}
        for j, name in enumerate(self.names):
            parts = [self.leaves[g * n + j] for g in range(len(self.group_slices))]
            out[name] = parts[0] if len(parts) == 1 else torch.cat(list(parts))
        return out

    def stacked_grads(self) -> dict[str, torch.Tensor | None]:
        """Parameter name -> its gradient ``[K, ...]`` (None when a group's leaf has none)."""
        n, out = len(self.names), {}
        for j, name in enumerate(self.names):
            grads = [self.leaves[g * n + j].grad for g in range(len(self.group_slices))]
            parts = [g for g in grads if g is not None]
            out[name] = (
                None if len(parts) < len(grads) else torch.cat(parts) if grads[1:] else parts[0]
            )
        return out

    def stacked_buffers(self) -> dict[str, torch.Tensor]:
        return {n: getattr(self, "stack__" + n.replace(".", "__")) for n in self.buffer_names}

    def _leaf(self, name: str, k: int) -> tuple[nn.Parameter, int]:
        """The leaf holding member k's parameter ``name`` and the member's row in it."""
        g = self._group_of[k]
        return self.leaves[g * len(self.names) + self._index[name]], k - self.group_slices[g].start

    def member_tensor(self, name: str, k: int) -> torch.Tensor:
        """Member k's slice of parameter ``name`` (a view of its group's leaf)."""
        leaf, row = self._leaf(name, k)
        return leaf[row]

    @property
    def base(self) -> nn.Module:
        """The network's skeleton (meta tensors) that ``functional_call`` fills per member."""
        return self._skeleton[0]

    def _forward(
        self, params: Any, buffers: Any, x: torch.Tensor, samples: Sequence[torch.Tensor] = ()
    ) -> torch.Tensor:
        if samples and self._samples is not None:  # one member's dropout masks (vmap slices)
            with self._samples.feeding(samples):
                return functional_call(self.base, (params, buffers), (x,))
        return functional_call(self.base, (params, buffers), (x,))

    # -- Lightning hooks -----------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        n = len(self.names)
        optimizers = []
        for g, hp in enumerate(self.group_params):
            leaves = list(self.leaves[g * n : (g + 1) * n])
            if self.stacked_optimizer_factory is not None:
                settings = [m.optimizer_params for m in self.members[self.group_slices[g]]]
                opt = self.stacked_optimizer_factory(leaves, settings)
            else:
                opt = self.optimizer_factory(leaves, hp)
            optimizers.append(opt)
            if self.schedule_factory is not None:
                self._schedulers.append(self.schedule_factory(opt, self.total_steps))
        return optimizers

    def on_fit_start(self) -> None:
        from ._lightning_compat import plain_precision, step_counter

        if not plain_precision(self.trainer):
            raise RuntimeError("stacked training needs a plain precision on one device")
        self._count_step = step_counter(self.trainer)
        device = self.device
        self._generators = [
            torch.Generator(device=device).manual_seed(m.seed + NOISE_SEED_OFFSET)
            for m in self.members
        ]
        self._alive = torch.ones(len(self.members), dtype=torch.bool, device=device)
        if self._samples is not None:
            self._samples.start(device)
        tensors = self.trainer.datamodule.tensors  # type: ignore[attr-defined]
        dtype = self.leaves[0].dtype
        for name, t in tensors.items():
            if t.is_floating_point() and t.dtype != dtype:  # e.g. "64-true" precision
                tensors[name] = t.to(dtype)
        if self.hooks.active:
            # each member's parameters become views of its rows of the stack, so that its
            # regularizer's gradient and after-step hooks act on them with no copies
            for m in self.members:
                m.model.to(device=device, dtype=dtype)
            self.hooks.bind(self._leaf, self.trainer.optimizers, self._group_of)
        for m in self.members:
            m.callbacks = list(m.regularizer.callbacks())
            if m.callbacks:
                m.trainer = stub_trainer()
                for cb in m.callbacks:
                    cb.setup(m.trainer, self, "fit")
        if all(m.health is not None for m in self.members):
            from .callbacks import overrides
            from .families import Regularizer
            from .stacked_health import StackedHealth

            self._health = StackedHealth(
                [m.health for m in self.members],
                self.members[0].model,
                self,
                pre_transform=overrides(self.regularizer, "transform_gradients", Regularizer),
            )
            self._health.start()
        self._fit_start = time.perf_counter()

    def training_step(self, batch: Any, batch_idx: int) -> None:
        trainer = self.trainer
        epoch, max_steps = self.current_epoch, trainer.max_steps
        for x, y in batch:
            if trainer.should_stop or 0 <= max_steps <= trainer.global_step:
                break
            self._step(x, y, epoch)

    def _step(self, x: torch.Tensor, y: torch.Tensor, epoch: int) -> None:
        step = self.steps_done
        if self._uses["transform_batch"]:
            pairs = [
                m.regularizer.transform_batch(x[k], y[k], self._generators[k])
                for k, m in enumerate(self.members)
            ]
            x = torch.stack([p[0] for p in pairs])
            y = torch.stack([p[1] for p in pairs])
        health = self._health
        snap = health is not None and health.due(step) and not all(m.frozen for m in self.members)
        params, buffers = self.stacked_params(), self.stacked_buffers()
        samples = () if self._samples is None else self._samples.draw(params, buffers, x)
        if snap:
            out, acts = vmap(self._forward_capture)(params, buffers, x, samples)
            health.begin(step, epoch, acts)
        else:
            out = vmap(self._forward)(params, buffers, x, samples)
        losses = self._member_losses(out, y, params)
        assert self._alive is not None
        objective = torch.where(self._alive, losses, torch.zeros_like(losses)).sum()
        for opt in self.trainer.optimizers:
            opt.zero_grad(set_to_none=True)
        objective.backward()
        if snap:
            health.after_backward()  # gradient transforms go after this
        if self.hooks.active:
            self._transform_gradients(step)
        if snap:
            health.before_update()
        for opt in self.trainer.optimizers:
            opt.step()
        assert self._count_step is not None
        self._count_step()
        if self.hooks.active:
            self.hooks.after_step(self._live())
        if snap:
            health.end([not m.frozen for m in self.members])
        for scheduler in self._schedulers:
            scheduler.step()
        self._losses.append(losses.detach())
        self._loss_steps.append((step, epoch))
        self.steps_done += 1
        if len(self._losses) >= LOSS_FLUSH_EVERY:
            self._flush_losses()

    def _member_losses(
        self, out: torch.Tensor, y: torch.Tensor, params: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """Each member's training loss ``[K]``: task (or regularizer) loss plus penalty."""
        r = self.regularizer
        replaced = self._uses["loss"]

        def loss_with(reg: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
            def member_loss(o: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                if replaced:
                    value = reg.loss(o, t)
                    if value is not None:
                        return value
                return self.loss_fn(o, t)

            return member_loss

        if not replaced and self.task == "classification":
            # the per-member mean cross-entropy in one call (vmap costs more than the math)
            flat = nn.functional.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none")
            losses = flat.view(y.shape[0], -1).mean(dim=1)
        elif replaced and not self._shared_regularizer:
            losses = torch.stack(
                [loss_with(m.regularizer)(out[k], y[k]) for k, m in enumerate(self.members)]
            )
        else:
            losses = vmap(loss_with(r))(out, y)
        if self._uses["penalty"]:
            named = {"net." + k: v for k, v in params.items()}

            def penalty_with(reg: Any) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
                probe = _Probe(self.base, reg.penalty)

                def member_penalty(p: dict[str, torch.Tensor]) -> torch.Tensor:
                    term = functional_call(probe, p, ())
                    if term is None:
                        return torch.zeros((), dtype=losses.dtype, device=losses.device)
                    return term

                return member_penalty

            if self._shared_regularizer:
                losses = losses + vmap(penalty_with(r))(named)
            else:  # members set differently: one call each
                terms = [
                    penalty_with(m.regularizer)({n: v[k] for n, v in named.items()})
                    for k, m in enumerate(self.members)
                ]
                losses = losses + torch.stack(terms).to(losses.device)
        return losses

    # -- per-member gradient and after-step hooks on views of the stack -----------------------

    def _live(self) -> list[int]:
        return [k for k, m in enumerate(self.members) if not m.frozen]

    def _rows(self, lo: int, hi: int) -> list[torch.Tensor]:
        """Gradient rows of members ``lo..hi-1`` (one optimizer group) of every parameter."""
        g, n = self._group_of[lo], len(self.names)
        start = self.group_slices[g].start
        leaves = self.leaves[g * n : (g + 1) * n]
        return [leaf.grad[lo - start : hi - start] for leaf in leaves if leaf.grad is not None]

    def _transform_gradients(self, step: int) -> None:
        """Every live member's ``transform_gradients`` (after health's pre-transform norm and
        before its gradient metrics, as in the one-by-one order)."""
        live = self._live()
        bound = self.hooks.needs_grads(live, self._group_of)
        self.hooks.bind_grads(bound)
        self.hooks.transform_gradients(live, self._group_of, step, self._generators, self._rows)
        self.hooks.release_grads(bound)

    def _flush_losses(self) -> None:
        if not self._losses:
            return
        values = torch.stack(self._losses).double().t().tolist()  # [K][steps]
        newly_frozen = []
        for k, m in enumerate(self.members):
            if m.frozen:
                continue
            rows, m.first_loss, m.diverged_step = scan_losses(
                self._loss_steps, values[k], m.first_loss
            )
            m.rows += rows
            if m.diverged_step is not None:
                newly_frozen.append(k)
        self._losses.clear()
        self._loss_steps.clear()
        if newly_frozen:
            self._freeze(newly_frozen)

    def _freeze(self, ks: Sequence[int]) -> None:
        """Members ``ks`` diverged: their epoch-end time row and test rows now, as the one-by-one
        run records them when it stops; then they drop out of the objective."""
        assert self._alive is not None
        seconds = time.perf_counter() - self._fit_start - self.eval_seconds
        test = self._test_values()
        for k in ks:
            m = self.members[k]
            m.frozen = True
            self._alive[k] = False
            m.steps_done = self.steps_done
            m.epochs_done = self.current_epoch + 1
            m.train_seconds = seconds
            m.rows.append(
                metric_row(self.steps_done, self.current_epoch, "time", "seconds", seconds)
            )
            m.rows += self._test_rows(k, test, max(m.epochs_done - 1, 0))
        if all(m.frozen for m in self.members):
            self.trainer.should_stop = True

    # -- evaluation ----------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(
        self,
        params: Mapping[str, torch.Tensor],
        buffers: Mapping[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
    ) -> torch.Tensor:
        """Per member ``[K, M]`` the task's metrics over (x, y) in eval mode, in the chunks of
        :meth:`techbench.lit.TechniqueModule.evaluate`
        (:func:`techbench.population_tasks.member_metrics`)."""
        was_training = self.base.training
        self.base.eval()
        try:
            forward = vmap(self._forward, in_dims=(0, 0, None))
            return member_metrics(
                self.task, lambda xb: forward(params, buffers, xb), x, y, EVAL_CHUNK, self.loss_fn
            )
        finally:
            self.base.train(was_training)

    def on_train_epoch_end(self) -> None:
        self._flush_losses()
        now = time.perf_counter()
        seconds = now - self._fit_start - self.eval_seconds
        step, epoch = self.steps_done, self.current_epoch
        live = [k for k, m in enumerate(self.members) if not m.frozen]
        for k in live:
            m = self.members[k]
            m.train_seconds, m.epochs_done, m.steps_done = seconds, epoch + 1, step
            m.rows.append(metric_row(step, epoch, "time", "seconds", seconds))
        if not live:
            return
        t = self.trainer.datamodule.tensors  # type: ignore[attr-defined]
        params = {k: v.detach() for k, v in self.stacked_params().items()}
        buffers = self.stacked_buffers()
        train = self.evaluate(params, buffers, t["x_train"], t["y_train"])
        val = self.evaluate(params, buffers, t["x_val"], t["y_val"])
        values = torch.cat([train, val], dim=1).tolist()  # [K][2M], one transfer
        improved = []
        metrics: dict[int, dict[str, float]] = {}
        for k in live:
            m = self.members[k]
            rows, metrics[k] = epoch_rows(
                self.task, step, epoch, values[k][: train.shape[1]], values[k][train.shape[1] :]
            )
            m.rows += rows
            if metrics[k]["val_loss"] < m.best_val_loss:
                m.best_val_loss = metrics[k]["val_loss"]
                improved.append(k)
        if improved:
            self._keep_best(improved, params, buffers)
        self._member_callbacks(live, metrics, epoch, step)
        self.eval_seconds += time.perf_counter() - now

    def _member_callbacks(
        self, live: Sequence[int], metrics: Mapping[int, dict[str, float]], epoch: int, step: int
    ) -> None:
        """Each member's regularizer callbacks (early stopping) see that member's epoch metrics
        through its own :func:`techbench.callbacks.stub_trainer`, as Lightning's would after the module's epoch
        end; a member they stop ends now, with its test rows, and the others go on."""
        stopped = []
        for k in live:
            m = self.members[k]
            if not m.callbacks:
                continue
            trainer = m.trainer
            trainer.callback_metrics = {key: torch.tensor(v) for key, v in metrics[k].items()}
            trainer.current_epoch, trainer.global_step = epoch, step
            for cb in m.callbacks:
                cb.on_validation_end(trainer, self)
            for cb in m.callbacks:
                cb.on_train_epoch_end(trainer, self)
            if trainer.should_stop:
                stopped.append(k)
        if stopped:
            assert self._alive is not None
            test = self._test_values()
            for k in stopped:
                m = self.members[k]
                m.rows += self._test_rows(k, test, max(m.epochs_done - 1, 0))
                m.frozen = True
                self._alive[k] = False
            if all(m.frozen for m in self.members):
                self.trainer.should_stop = True

    def _keep_best(
        self,
        ks: Sequence[int],
        params: Mapping[str, torch.Tensor],
        buffers: Mapping[str, torch.Tensor],
    ) -> None:
        state = {**params, **buffers}
        if self.best is None:
            self.best = {name: v.detach().clone() for name, v in state.items()}
            return
        index = torch.tensor(list(ks), device=self.device)
        for name, v in state.items():
            self.best[name][index] = v.detach()[index]

    def on_train_end(self) -> None:
        self._flush_losses()
        live = [k for k, m in enumerate(self.members) if not m.frozen]
        if not live:
            return
        test = self._test_values()
        for k in live:
            m = self.members[k]
            m.rows += self._test_rows(k, test, max(m.epochs_done - 1, 0))

    def _test_values(self) -> dict[str, list[list[float]]]:
        """Test metrics ``[K][M]`` of every member at its final and at its best-validation
        weights."""
        t = self.trainer.datamodule.tensors  # type: ignore[attr-defined]
        params = {k: v.detach() for k, v in self.stacked_params().items()}
        buffers = self.stacked_buffers()
        out = {"final": self.evaluate(params, buffers, t["x_test"], t["y_test"])}
        if self.best is not None:
            best_p = {n: self.best[n] for n in self.names}
            best_b = {n: self.best[n] for n in self.buffer_names}
            out["best"] = self.evaluate(best_p, best_b, t["x_test"], t["y_test"])
        return {key: value.tolist() for key, value in out.items()}

    def _test_rows(
        self, k: int, test: Mapping[str, list[list[float]]], epoch: int
    ) -> list[dict[str, Any]]:
        m = self.members[k]
        best = test["best"][k] if "best" in test and math.isfinite(m.best_val_loss) else None
        step = self.steps_done if not m.frozen else m.steps_done
        return rows_for_test(self.task, step, epoch, test["final"][k], best)

    # -- gradient health -----------------------------------------------------------------------

    def _forward_capture(
        self, params: Any, buffers: Any, x: torch.Tensor, samples: Sequence[torch.Tensor] = ()
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """:meth:`_forward` that also returns every activation layer's output (vmap stacks
        them to ``[K, ...]``), for the gradient-health snapshot of this step."""
        captured: dict[int, torch.Tensor] = {}
        handles = [
            module.register_forward_hook(
                lambda mod, inputs, output, i=i: captured.__setitem__(i, output)
            )
            for i, module in enumerate(self._act_modules)
        ]
        try:
            out = self._forward(params, buffers, x, samples)
        finally:
            for handle in handles:
                handle.remove()
        return out, tuple(captured[i] for i in range(len(self._act_modules)))


def meta_skeleton(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with meta tensors, for ``functional_call``; tied parameters stay tied
    (``.to("meta")`` would untie them: a tied head would keep a meta weight)."""
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)


def _groups(
    settings: Sequence[Mapping[str, Any]], key: Callable[[Mapping[str, Any]], Any] | None = None
) -> list[tuple[int, int, dict[str, Any]]]:
    """Contiguous runs of optimizer settings equal under ``key`` (default: equal settings):
    ``(start, stop, first setting)``.

    The caller orders members so that equal keys are adjacent (:func:`order_members`).
    """
    out: list[tuple[int, int, dict[str, Any]]] = []
    keys: list[Any] = []
    for i, hp in enumerate(settings):
        k = dict(hp) if key is None else key(hp)
        if out and keys[-1] == k:
            out[-1] = (out[-1][0], i + 1, out[-1][2])
        else:
            out.append((i, i + 1, dict(hp)))
            keys.append(k)
    return out


def order_members(
    configs: Sequence[Mapping[str, Any]], key: Callable[[Mapping[str, Any]], Any] | None = None
) -> list[int]:
    """Indices of ``configs`` with equal optimizer settings (equal ``key(settings)`` when
    given) adjacent, in first appearance order."""
    import json

    keys = [
        json.dumps(c["optimizer"]["params"], sort_keys=True)
        if key is None
        else key(c["optimizer"]["params"])
        for c in configs
    ]
    first = {key: i for i, key in reversed(list(enumerate(keys)))}
    return sorted(range(len(configs)), key=lambda i: (first[keys[i]], i))
