"""The engine: K trials of one shape trained together as one LightningModule; the only one.

Why: the networks technique comparisons use are small, so one trial leaves a GPU launch-bound
and a CPU's vector units idle; stacking the parameters of K members (``torch.func``'s
``stack_module_state``) and running one ``vmap``-ed forward/backward over them does K trials'
work in about one trial's kernel launches. A trial alone is a stack of one, which pays for none
of that: its own network is called directly, its own parameters are the leaves, the plain
optimizer steps them, and Lightning's backward and step run where the precision needs them
(mixed precision); the rest (losses, hooks, health, evaluation, lives) is the same code at K = 1.
Its rows are checked against the plain reference loop of :mod:`techbench.testing.reference_loop`.

Member i is trial i: its network is built exactly as a trial alone builds it
(seeded with its seed, its initializers, data-dependent ones fitted on its own sample), then
stacked; every random stream is per member and seeded as for the trial alone (batch order
from ``Generator(seed)``, regularizer noise from ``Generator(seed + 0x7E57)``, dropout masks
from ``Generator(seed + MODULE_SEED_OFFSET)``, drawn outside ``vmap`` and fed in by
:mod:`techbench.engine.stacked_modules`, with each member's own ``p``); its loss is its own mean loss
(:mod:`techbench.engine.stacked_losses`: the stack's objective is the sum of the members' losses);
optimizers are elementwise: when the optimizer has a stacked implementation (``spec.stacked``)
and the schedule is multiplicative, one optimizer per shared setting takes the members'
``float`` hyper-parameters as per-member tensors (:mod:`techbench.engine.member_hp`; its group ``lr``
is the schedule's multiplier), else one ``fast`` optimizer per distinct setting, with the
schedule over it. Each member has its own regularizer instance (its own hyper-parameters):
``penalty`` and ``loss`` hooks run member by member (:mod:`techbench.engine.stacked_losses`),
``transform_batch`` in a loop with each member's generator; ``transform_gradients`` and
``after_step`` run on the member's own network, whose parameters and gradients are views of its
rows of the stack, in the order of a trial alone (backward, health's pre-transform norm, transforms,
health's gradient metrics, optimizer step, after-step hooks, schedule), or once for a run of
members through a regularizer's stacked implementation (:mod:`techbench.engine.stacked_hooks`).
Epoch-end evaluation, best-validation weights and test metrics are per member: the task's own
metrics vmapped (:mod:`techbench.engine.population_tasks`), for classification, regression and language
models alike. So a member's rows equal the reference loop's rows within float tolerance (vmapped
matmuls round differently), which ``tests/test_population.py`` checks.

Per-member life is :class:`~techbench.engine.stack_members.MemberLives`: a member whose loss diverges
(checked every :data:`~techbench.engine.lit.LOSS_FLUSH_EVERY` steps, as for a trial alone) or whose
early stopping fires is *frozen* (its rows end where the trial's rows end alone) and the others go
on; its later computation is masked out of the objective and no regularizer hook acts on it.

The pieces: the per-member batches (:mod:`techbench.engine.stacked_data`), the order of members and
the optimizer groups over the stacked tensors (:mod:`techbench.engine.stack_layout`), each member's
loss and penalty (:mod:`techbench.engine.stacked_losses`); this module holds the stacked state and the
training step that ties them together.

Gradient health (when enabled) is :class:`~techbench.engine.stacked_health.StackedHealth`: on a
snapshot step the stacked forward also returns every activation layer's output, and the
statistics are reduced over the member dimension of the stacked outputs, gradients
and weights, with one host transfer per snapshot for the whole stack; each member's
:class:`~techbench.engine.health.GradientHealth` receives the rows it records when run alone.
The curvature probe (opt-in) is :class:`~techbench.engine.curvature_probe.StackedCurvature`:
one vmapped Hessian-vector product per Lanczos step for the whole stack, after the optimizer
step of a probe step.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from ..techniques.families import NOISE_SEED_OFFSET, STACKED_DIMS, bind_module_generator
from ..techniques.parametrize import LR_MULT_ATTR, lr_multiplier, scale_updates
from ..techniques.roles import ROLE_ATTR, role_of
from . import stack_single
from .lit import EVAL_CHUNK, task_loss
from .population_tasks import member_metrics
from .stack_layout import meta_skeleton, setting_groups
from .stack_members import Member, MemberLives
from .stacked_hooks import StackedHooks
from .stacked_losses import MemberLosses
from .stacked_modules import StackedSamples

warnings.filterwarnings(
    "ignore",
    message=r"There is a performance drop because we have not yet implemented the batching rule "
    r"for aten::_scaled_dot_product_flash_attention_for_cpu",
)
"""On a CPU, vmap runs PyTorch's fused attention member by member (no batching rule for the CPU
kernel): the same kernel as a trial alone, so the same numbers; the warning says so."""


class StackedModule(pl.LightningModule):
    """Trains the members of one stack; ``members[i].rows`` are trial i's metric rows.

    ``optimizer_factory(params, hp)`` and ``schedule_factory(optimizer, total_steps)`` come from
    the plugins; members with equal optimizer hyper-parameters share one optimizer over their
    stacked tensors (members are ordered so that each group is a contiguous slice). With
    ``stacked_optimizer_factory(params, settings)`` (a stacked implementation taking each
    member's hyper-parameters) members with equal ``group_key(hp)`` (the shared, non-numeric
    settings) share one: usually the whole stack, one leaf per parameter.
    """

    model: nn.Module  # a stack of one's own network (:mod:`techbench.engine.stack_single`)

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
        self.single = len(self.members) == 1
        model0 = self.members[0].model
        self._samples: StackedSamples | None = None
        if self.single:
            stack_single.init_single(self, model0)
        else:
            self._init_stack(model0, group_key)
        self.regularizer = self.members[0].regularizer
        from ..techniques.families import Regularizer
        from .callbacks import overrides

        self._transform_batch = overrides(self.regularizer, "transform_batch", Regularizer)
        self.member_losses = MemberLosses(
            task,
            self.loss_fn,
            self.base,
            [m.regularizer for m in self.members],
            replaced=overrides(self.regularizer, "loss", Regularizer),
            penalized=overrides(self.regularizer, "penalty", Regularizer),
            # vmapped hooks may use members[0]'s instance only when every member's is set alike
            shared=all(
                m.regularizer_params == self.members[0].regularizer_params for m in self.members
            ),
        )
        self.hooks = StackedHooks(
            [m.regularizer for m in self.members], [m.model for m in self.members]
        )
        self.lives = MemberLives(self.members, task)
        self._schedulers: list[Any] = []
        self._generators: list[torch.Generator] = []
        self.best: dict[str, torch.Tensor] | None = None
        self.steps_done = 0
        self._fit_start = 0.0
        self.eval_seconds = 0.0
        self._count_step: Callable[[], None] | None = None
        self._health: Any = None
        self._curvature: Any = None

    def __setattr__(self, name: str, value: Any) -> None:
        # per-step and per-hook state (Lightning sets _current_fx_name about 30 times an epoch)
        # is never a parameter, buffer or submodule: skip nn.Module's slower __setattr__
        if name in _PLAIN_STATE:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def _init_stack(self, model0: nn.Module, group_key: Any) -> None:
        """K > 1: the members' parameters stacked into one leaf per (group, parameter)."""
        # a list, so that Lightning's device moves skip the parameter-less skeleton
        self._skeleton = [meta_skeleton(self.members[0].model)]
        params, buffers = stack_module_state([m.model for m in self.members])
        groups = setting_groups(
            [m.optimizer_params for m in self.members],
            group_key if self.stacked_optimizer_factory is not None else None,
        )
        self.group_slices = [slice(lo, hi) for lo, hi, _ in groups]
        self.group_params = [hp for _, _, hp in groups]
        # one leaf per (group, parameter): each group's optimizer owns its slice of the stack
        self.leaves = nn.ParameterList(
            nn.Parameter(v[s].detach().clone()) for s in self.group_slices for v in params.values()
        )
        self.names = list(params)
        roles = dict(model0.named_parameters())
        for j, leaf in enumerate(self.leaves):  # a stacked bias [K, n] is still a bias
            setattr(leaf, STACKED_DIMS, 1)
            param = roles[self.names[j % len(self.names)]]
            role = role_of(param)
            if role is not None:
                setattr(leaf, ROLE_ATTR, role)
            if lr_multiplier(param) != 1.0:  # a parametrization's per-tensor lr (shared)
                setattr(leaf, LR_MULT_ATTR, lr_multiplier(param))
        self._index = {name: j for j, name in enumerate(self.names)}
        self._group_of = [
            g for g, s in enumerate(self.group_slices) for _ in range(s.start, s.stop)
        ]
        for name, value in buffers.items():
            self.register_buffer("stack__" + name.replace(".", "__"), value.detach().clone())
        self.buffer_names = list(buffers)
        where = {id(module): name for name, module in model0.named_modules()}
        skeleton = dict(self.base.named_modules())
        self._act_modules = [
            skeleton[where[id(a)]] for a in getattr(model0, "activation_layers", [])
        ]
        self._samples = StackedSamples.of(
            self.base, [m.model for m in self.members], [m.seed for m in self.members]
        )

    # -- the stacked state ---------------------------------------------------------------------

    def stacked_params(self) -> dict[str, torch.Tensor]:
        """Parameter name -> ``[K, ...]`` (a concatenation of the groups' leaves when several)."""
        if self.single:
            return {n: p.unsqueeze(0) for n, p in self.model.named_parameters()}
        n = len(self.names)
        out = {}
        for j, name in enumerate(self.names):
            parts = [self.leaves[g * n + j] for g in range(len(self.group_slices))]
            out[name] = parts[0] if len(parts) == 1 else torch.cat(list(parts))
        return out

    def stacked_grads(self) -> dict[str, torch.Tensor | None]:
        """Parameter name -> its gradient ``[K, ...]`` (None when a group's leaf has none)."""
        if self.single:
            return {
                n: None if p.grad is None else p.grad.unsqueeze(0)
                for n, p in self.model.named_parameters()
            }
        n, out = len(self.names), {}
        for j, name in enumerate(self.names):
            grads = [self.leaves[g * n + j].grad for g in range(len(self.group_slices))]
            parts = [g for g in grads if g is not None]
            out[name] = (
                None if len(parts) < len(grads) else torch.cat(parts) if grads[1:] else parts[0]
            )
        return out

    def stacked_buffers(self) -> dict[str, torch.Tensor]:
        if self.single:
            return {n: b.unsqueeze(0) for n, b in self.model.named_buffers()}
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
        if self.single:  # the plain optimizer over the network's own parameters
            opt = self.optimizer_factory(list(self.model.parameters()), self.group_params[0])
            scale_updates(opt)
            if self.schedule_factory is not None:
                self._schedulers.append(self.schedule_factory(opt, self.total_steps))
            return [opt]
        n = len(self.names)
        optimizers = []
        for g, hp in enumerate(self.group_params):
            leaves = list(self.leaves[g * n : (g + 1) * n])
            if self.stacked_optimizer_factory is not None:
                settings = [m.optimizer_params for m in self.members[self.group_slices[g]]]
                opt = self.stacked_optimizer_factory(leaves, settings)
            else:
                opt = self.optimizer_factory(leaves, hp)
            scale_updates(opt)  # a parametrization's per-tensor lr, stacked or not
            optimizers.append(opt)
            if self.schedule_factory is not None:
                self._schedulers.append(self.schedule_factory(opt, self.total_steps))
        return optimizers

    def on_fit_start(self) -> None:
        from ._lightning_compat import plain_precision, step_counter, trainer_callbacks
        from .callbacks import step_hooks

        self._direct = plain_precision(self.trainer)
        if not self._direct and not self.single:
            raise RuntimeError("stacked training needs a plain precision on one device")
        self._count_step = step_counter(self.trainer) if self._direct else None
        # a stack of one also drives the trainer's own callbacks per step (see StepCallback)
        self._cb_hooks = step_hooks(trainer_callbacks(self.trainer)) if self.single else {}
        device = self.device
        self._generators = [
            torch.Generator(device=device).manual_seed(m.seed + NOISE_SEED_OFFSET)
            for m in self.members
        ]
        if self._samples is not None:
            self._samples.start(device)
        if self.single:
            bind_module_generator(self.model, self.members[0].seed, device)
        tensors = self.trainer.datamodule.tensors  # type: ignore[attr-defined]
        dtype = next(self.parameters()).dtype
        for name, t in tensors.items():
            if t.is_floating_point() and t.dtype != dtype:  # e.g. "64-true" precision
                tensors[name] = t.to(dtype)
        if self.hooks.active and not self.single:
            # each member's parameters become views of its rows of the stack, so that its
            # regularizer's gradient and after-step hooks act on them with no copies
            for m in self.members:
                m.model.to(device=device, dtype=dtype)
            self.hooks.bind(
                self._leaf,
                self.trainer.optimizers,
                self._group_of,
                stacked=self.stacked_optimizer_factory is not None,
            )
        self.lives.start(device, self)
        if all(m.health is not None for m in self.members):
            from ..techniques.families import Regularizer
            from .callbacks import overrides
            from .stacked_health import StackedHealth

            self._health = StackedHealth(
                [m.health for m in self.members],
                self.members[0].model,
                self,
                pre_transform=overrides(self.regularizer, "transform_gradients", Regularizer),
            )
            self._health.start()
        if all(m.curvature is not None for m in self.members):
            from .curvature_probe import StackedCurvature, start_probe

            self._curvature = StackedCurvature(
                [m.curvature for m in self.members], [m.seed for m in self.members]
            )
            start_probe(self, self._curvature)
        self._fit_start = time.perf_counter()

    def training_step(self, batch: Any, batch_idx: int) -> None:
        trainer = self.trainer
        epoch, max_steps = self.current_epoch, trainer.max_steps
        for x, y in batch:
            if trainer.should_stop or 0 <= max_steps <= trainer.global_step:
                break
            if self.single:
                stack_single.step_single(self, x[0], y[0], epoch)
            else:
                self._step(x, y, epoch)

    def _step(self, x: torch.Tensor, y: torch.Tensor, epoch: int) -> None:
        step = self.steps_done
        if self._transform_batch:
            pairs = [
                m.regularizer.transform_batch(x[k], y[k], self._generators[k])
                for k, m in enumerate(self.members)
            ]
            x = torch.stack([p[0] for p in pairs])
            y = torch.stack([p[1] for p in pairs])
        health = self._health
        snap = health is not None and health.due(step) and not self.lives.all_ended
        params, buffers = self.stacked_params(), self.stacked_buffers()
        samples = () if self._samples is None else self._samples.draw(params, buffers, x)
        if snap:
            out, acts = vmap(self._forward_capture)(params, buffers, x, samples)
            health.begin(step, epoch, acts)
        else:
            out = vmap(self._forward)(params, buffers, x, samples)
        losses = self.member_losses(out, y, params)
        assert self.lives.alive is not None
        objective = torch.where(self.lives.alive, losses, torch.zeros_like(losses)).sum()
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
            self.hooks.after_step(self.lives.live())
        if snap:
            health.end([not m.frozen for m in self.members])
        curvature = self._curvature
        if curvature is not None and curvature.due(step) and not self.lives.all_ended:
            curvature.probe(step, epoch, self, [not m.frozen for m in self.members])
        for scheduler in self._schedulers:
            scheduler.step()
        flush = self.lives.record(losses, step, epoch)
        self.steps_done += 1
        if flush:
            self._flush_losses()

    # -- per-member gradient and after-step hooks on views of the stack -----------------------

    def _rows(self, lo: int, hi: int) -> list[torch.Tensor]:
        """Gradient rows of members ``lo..hi-1`` (one optimizer group) of every parameter."""
        g, n = self._group_of[lo], len(self.names)
        start = self.group_slices[g].start
        leaves = self.leaves[g * n : (g + 1) * n]
        return [leaf.grad[lo - start : hi - start] for leaf in leaves if leaf.grad is not None]

    def _transform_gradients(self, step: int) -> None:
        """Every live member's ``transform_gradients`` (after health's pre-transform norm and
        before its gradient metrics, as in the order of a trial alone)."""
        live = self.lives.live()
        bound = self.hooks.needs_grads(live, self._group_of)
        self.hooks.bind_grads(bound)
        self.hooks.transform_gradients(live, self._group_of, step, self._generators, self._rows)
        self.hooks.release_grads(bound)

    def _flush_losses(self) -> None:
        diverged = self.lives.flush()
        if diverged:
            self._freeze(diverged)

    def _freeze(self, ks: Sequence[int]) -> None:
        """Members ``ks`` diverged: their epoch-end time row and test rows now, as a trial alone
        run records them when it stops; then they drop out of the objective."""
        seconds = time.perf_counter() - self._fit_start - self.eval_seconds
        test = self._test_values()
        self.lives.clock(ks, self.steps_done, self.current_epoch, seconds)
        self.lives.freeze(ks)
        self.lives.add_test_rows(ks, test, self.steps_done)
        if self.lives.all_ended:
            self.trainer.should_stop = True

    # -- evaluation ----------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(
        self,
        params: Mapping[str, torch.Tensor],
        buffers: Mapping[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        current: bool = False,
    ) -> torch.Tensor:
        """Per member ``[K, M]`` the task's metrics over (x, y) in eval mode, in the chunks of
        :func:`techbench.engine.population_tasks.member_metrics`; ``current``: ``params`` are the
        current weights (a stack of one then calls its network as it is)."""
        was_training = self.base.training
        self.base.eval()
        try:
            if self.single and current:  # one member at its current weights
                model = self.model

                def run(xb: torch.Tensor) -> torch.Tensor:
                    return model(xb).unsqueeze(0)
            elif self.single:  # its best weights in its own network: no vmap
                p0 = {n: v[0] for n, v in params.items()}
                b0 = {n: v[0] for n, v in buffers.items()}

                def run(xb: torch.Tensor) -> torch.Tensor:
                    return functional_call(self.model, (p0, b0), (xb,)).unsqueeze(0)
            else:
                forward = vmap(self._forward, in_dims=(0, 0, None))

                def run(xb: torch.Tensor) -> torch.Tensor:
                    return forward(params, buffers, xb)

            return member_metrics(self.task, run, x, y, EVAL_CHUNK, self.loss_fn)
        finally:
            self.base.train(was_training)

    def on_train_epoch_end(self) -> None:
        self._flush_losses()
        now = time.perf_counter()
        seconds = now - self._fit_start - self.eval_seconds
        step, epoch = self.steps_done, self.current_epoch
        live = self.lives.live()
        self.lives.clock(live, step, epoch, seconds)
        if not live:
            return
        t = self.trainer.datamodule.tensors  # type: ignore[attr-defined]
        params = {k: v.detach() for k, v in self.stacked_params().items()}
        buffers = self.stacked_buffers()
        train = self.evaluate(params, buffers, t["x_train"], t["y_train"], current=True)
        val = self.evaluate(params, buffers, t["x_val"], t["y_val"], current=True)
        values = torch.cat([train, val], dim=1).tolist()  # [K][2M], one transfer
        metrics, improved = self.lives.epoch_metrics(live, step, epoch, values, train.shape[1])
        if self.single:
            self._publish(metrics[0], step)
        if improved:
            self._keep_best(improved, params, buffers)
        stopped = self.lives.callbacks_stop(live, metrics, epoch, step, self)
        if stopped:  # members their callbacks stop end now, with their test rows
            self.lives.add_test_rows(stopped, self._test_values(), self.steps_done)
            self.lives.freeze(stopped)
            if self.lives.all_ended:
                self.trainer.should_stop = True
        self.eval_seconds += time.perf_counter() - now

    def _publish(self, metrics: Mapping[str, float], step: int) -> None:
        """A stack of one's epoch metrics for the trainer's callbacks and loggers (written
        straight into ``callback_metrics``: ``self.log`` costs milliseconds per call)."""
        trainer = self.trainer
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})
        for logger in trainer.loggers:
            logger.log_metrics({**metrics, "epoch": self.current_epoch}, step=step)

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
        if self.single:
            torch._foreach_copy_(
                [self.best[n] for n in state], [v.detach() for v in state.values()]
            )
            return
        index = torch.tensor(list(ks), device=self.device)
        for name, v in state.items():
            self.best[name][index] = v.detach()[index]

    def on_train_end(self) -> None:
        self._flush_losses()
        live = self.lives.live()
        if live:
            self.lives.add_test_rows(live, self._test_values(), self.steps_done)

    def _test_values(self) -> dict[str, list[list[float]]]:
        """Test metrics ``[K][M]`` of every member at its final and at its best-validation
        weights."""
        t = self.trainer.datamodule.tensors  # type: ignore[attr-defined]
        params = {k: v.detach() for k, v in self.stacked_params().items()}
        buffers = self.stacked_buffers()
        out = {"final": self.evaluate(params, buffers, t["x_test"], t["y_test"], current=True)}
        if self.best is not None:
            best_p = {n: self.best[n] for n in self.names}
            best_b = {n: self.best[n] for n in self.buffer_names}
            out["best"] = self.evaluate(best_p, best_b, t["x_test"], t["y_test"])
        return {key: value.tolist() for key, value in out.items()}

    # -- gradient health -----------------------------------------------------------------------

    def _forward_capture(
        self, params: Any, buffers: Any, x: torch.Tensor, samples: Sequence[torch.Tensor] = ()
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """:meth:`_forward` that also returns every activation layer's output (vmap stacks
        them to ``[K, ...]``), for the gradient-health snapshot of this step."""
        return self._capture(lambda xb: self._forward(params, buffers, xb, samples), x)

    def _capture(
        self, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """``forward(x)`` and every activation layer's output in it."""
        captured: dict[int, torch.Tensor] = {}
        handles = [
            module.register_forward_hook(
                lambda mod, inputs, output, i=i: captured.__setitem__(i, output)
            )
            for i, module in enumerate(self._act_modules)
        ]
        try:
            out = forward(x)
        finally:
            for handle in handles:
                handle.remove()
        return out, tuple(captured[i] for i in range(len(self._act_modules)))


_PLAIN_STATE = frozenset(
    {
        "_current_fx_name",
        "steps_done",
        "eval_seconds",
        "_fit_start",
        "_count_step",
        "_direct",
        "_cb_hooks",
        "_health",
        "_curvature",
        "best",
    }
)
"""Attributes of :class:`StackedModule` set with ``object.__setattr__`` (plain Python state)."""
