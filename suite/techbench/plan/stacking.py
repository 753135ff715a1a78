"""Which trials train together: the stack key of a trial, and the grouping of pending trials.

A *stack* is a set of trials that share everything fixing the computation's shape, so that one
vmapped forward/backward trains all of them (see :mod:`techbench.engine.population`). Members may differ
in ``seed`` (initial weights, batch order, dropout masks, noise), ``initializer`` and
``bias_initializer`` (weights are made per member, then stacked) and the optimizer's
hyper-parameters: with a stacked implementation (``spec.stacked``, all built-ins) under a
multiplicative schedule, one optimizer takes the members' ``float`` ones (lr, betas, momentum,
eps, decay) as per-member tensors and only members differing in a choice (eps placement,
``decay``) get another (:mod:`techbench.engine.member_hp`); otherwise each distinct setting gets its own
optimizer.
Members may also differ in the regularizer's numeric (int or float) hyper-parameters (lambda,
clip bound, noise scale, patience, ...): each member has its own regularizer instance.
Everything else (data and its split, model, activation, normalizer and placement, regularizer
kind and its non-numeric options such as l2's ``convention``, optimizer kind, the parametrization
and its settings (its multipliers follow the shapes it shares), schedule, batch
size, budget, trainer and health options) is the key.

This module is the one stacking policy: the executors and ``techbench run --dry-run`` both call
:func:`plan_units`, so a trial that can't stack is planned alone up front and never fails in a
stack first. Why a trial may not stack (said by ``--dry-run``): its trainer options (a precision
other than a plain one, e.g. ``bf16-mixed``'s autocast and scaler; more than one device), a
model that declares ``properties["stacks"] = False``, or a technique whose fast
implementation would couple members on stacked tensors. Optimizers must declare
``properties["elementwise"] = True`` (the update of every coordinate depends only on that
coordinate's history, so one optimizer over stacked tensors is K independent ones) or
``properties["stacks"] = True`` (reductions over one trial's own dimensions only: Muon); regularizers
stack when they use only the hooks of :data:`STACKED_HOOKS`, which the engine applies member by
member (early stopping stops one member, the others go on; gradient clipping and noise,
max-norm and decoupled weight decay act on each member's own rows,
:mod:`techbench.engine.stacked_hooks`),
and ``make_module`` when the spec declares ``properties["stacked_module"]`` (dropout: each
member's masks are drawn with its own generator, :mod:`techbench.engine.stacked_modules`); other
modules in the network run one by one.
Every task of :mod:`techbench.tasks` stacks (classification, regression, language models: the
stacked engine vmaps the tasks' own loss and metrics, :mod:`techbench.engine.population_tasks`). A
stack of one is the one-by-one path.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..schema import Trial, as_trial
from ..tasks import TASKS

MEMBER_KEYS = ("seed", "initializer", "bias_initializer")
"""Config keys that may differ inside a stack (besides the optimizer's hyper-parameters and the
regularizer's numeric ones, :data:`NUMERIC_PARAMS_OF`)."""

NUMERIC_PARAMS_OF = ("regularizer",)
"""Techniques whose numeric (int or float, not bool) hyper-parameters may differ in a stack."""

STACKED_HOOKS = frozenset(
    {"transform_batch", "penalty", "loss", "callbacks", "transform_gradients", "after_step"}
)
"""Regularizer hooks the stacked engine applies member by member (callbacks, such as early
stopping, are driven per member with that member's epoch metrics; ``transform_gradients`` and
``after_step`` act on views of the member's rows, :mod:`techbench.engine.stacked_hooks`)."""


PLAIN_PRECISIONS = frozenset({"32-true", "32", "64-true", "64", "bf16-true", "16-true"})
"""Trainer precisions a stack trains under: no autocast, no gradient scaler (the stacked step
calls ``backward`` and ``step`` itself)."""

GPU_ACCELERATORS = ("gpu", "cuda", "auto")
"""Trainer accelerators that train on a GPU when one is visible."""


@dataclass
class Stack:
    """Trials of one computation shape, in a stable order; ``reason`` says why it has one member
    when stacking was refused (empty when it stacks or stacking is off)."""

    key: str
    trials: list[Trial] = field(default_factory=list)
    reason: str = ""

    @property
    def ids(self) -> list[str]:
        return [t.id for t in self.trials]

    @property
    def configs(self) -> list[dict[str, Any]]:
        return [t.config for t in self.trials]


def stack_key(config: Mapping[str, Any]) -> str:
    """The canonical JSON of ``config`` without what members may vary (see the module docstring)."""
    shape = copy.deepcopy(dict(config))
    for key in MEMBER_KEYS:
        shape.pop(key, None)
    optimizer = shape.get("optimizer") or {}
    shape["optimizer"] = {"name": optimizer.get("name")}
    for family in NUMERIC_PARAMS_OF:
        part = shape.get(family)
        if isinstance(part, dict) and isinstance(part.get("params"), dict):
            part["params"] = {k: v for k, v in part["params"].items() if not _numeric(v)}
    return json.dumps(shape, sort_keys=True, separators=(",", ":"))


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def trainer_reason(config: Mapping[str, Any]) -> str:
    """Why ``config``'s trainer options keep it out of a stack ("" when they don't)."""
    trainer = config.get("trainer") or {}
    precision = str(trainer.get("precision", "32-true"))
    if precision not in PLAIN_PRECISIONS:
        return f"precision {precision!r} is not a plain precision (autocast or a scaler)"
    devices = trainer.get("devices", 1)
    accelerator = str(trainer.get("accelerator", "cpu")).lower()
    one = devices in (1, "1") or (isinstance(devices, list | tuple) and len(devices) == 1)
    if not one and not (devices == "auto" and accelerator == "cpu"):
        return f"devices {devices!r}: a stack trains on one device"
    return ""


def unstackable_reason(config: Mapping[str, Any], registry: Any = None) -> str:
    """Why ``config`` cannot train in a stack ("" when it can)."""
    from ..techniques.registry import default_registry

    why = trainer_reason(config)
    if why:
        return why
    get_spec = (registry or default_registry()).get_spec
    try:
        optimizer = get_spec(config["optimizer"]["name"], "optimizer")
        regularizer = get_spec(config["regularizer"]["name"], "regularizer")
        dataset = get_spec(config["dataset"]["name"], "dataset")
        model = get_spec(config["model"]["name"], "model")
    except Exception as exc:  # an unknown technique: the trial fails on its own, alone
        return f"cannot look up its techniques ({exc})"
    if model.properties.get("stacks", True) is False:
        return f"model {model.name!r} declares it can't train in a stack"
    task = dataset.properties.get("task", "classification")
    if task not in TASKS:
        return f"dataset {dataset.name!r} has an unknown task {task!r}"
    if not (optimizer.properties.get("elementwise") or optimizer.properties.get("stacks")):
        return f"optimizer {optimizer.name!r} does not declare an elementwise update (or stacks)"
    hooks = set(regularizer.properties.get("hooks", ("?",)))
    if regularizer.properties.get("stacked_module"):
        hooks.discard("make_module")
    if not hooks <= STACKED_HOOKS:
        extra = ", ".join(sorted(hooks - STACKED_HOOKS))
        return (
            f"regularizer {regularizer.name!r} uses hooks the stacked engine can't split ({extra})"
        )
    return ""


def slower_on_cpu_reason(config: Mapping[str, Any], registry: Any = None) -> str:
    """Why ``--stack auto`` trains ``config`` alone on a CPU although it could stack ("" when
    stacking pays there).

    Language models: on a CPU, ``vmap`` has no batching rule for the attention kernel, so it
    runs member by member, and vmapped linear layers lose the fused bias add; measured with
    ``benchmarks/stacking.py --workload charlm`` (8 members), a stack took 1.55x the time of
    its members one by one. On a GPU, and with ``--stack N``, they stack.
    """
    from ..techniques.registry import default_registry

    try:
        dataset = (registry or default_registry()).get_spec(config["dataset"]["name"], "dataset")
    except Exception:
        return ""
    if dataset.properties.get("task") == "language_model":
        return "language models stack slower than alone on a CPU (--stack N forces it)"
    return ""


def plan_stacks(
    trials: Iterable[Trial | Mapping[str, Any]],
    max_size: int | None,
    registry: Any = None,
    cpu_auto: bool = False,
) -> list[Stack]:
    """Group ``trials`` into stacks of at most ``max_size`` members (None: unlimited; 1: off).

    Order: stacks appear where their first member appeared; members keep their input order.
    Trials that can't stack become stacks of one with the reason; with ``cpu_auto`` (the
    ``--stack auto`` policy on a CPU) so do those :func:`slower_on_cpu_reason` names.
    """
    stacks: dict[str, list[Stack]] = {}
    order: list[Stack] = []
    reasons: dict[str, str] = {}
    for value in trials:
        trial = as_trial(value)
        config = trial.config
        key = stack_key(config)
        if max_size == 1:
            order.append(Stack(key, [trial]))
            continue
        if key not in reasons:
            reasons[key] = unstackable_reason(config, registry) or (
                slower_on_cpu_reason(config, registry) if cpu_auto else ""
            )
        if reasons[key]:
            order.append(Stack(key, [trial], reasons[key]))
            continue
        open_stacks = stacks.setdefault(key, [])
        if not open_stacks or (max_size is not None and len(open_stacks[-1].trials) >= max_size):
            open_stacks.append(Stack(key))
            order.append(open_stacks[-1])
        open_stacks[-1].trials.append(trial)
    return order


def visible_gpus() -> list[str]:
    """CUDA device ids this process may use (``CUDA_VISIBLE_DEVICES`` order); [] without CUDA."""
    try:
        import torch

        n = int(torch.cuda.device_count())
    except Exception:
        return []
    listed = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[:n] if listed else [str(i) for i in range(n)]


def on_gpu(configs: Iterable[Mapping[str, Any]]) -> bool:
    """Whether these trials train on a visible GPU."""
    accelerators = {str((c.get("trainer") or {}).get("accelerator", "cpu")) for c in configs}
    return bool(accelerators & set(GPU_ACCELERATORS) and visible_gpus())


def plan_units(trials: Sequence[Trial | Mapping[str, Any]], stack: str | int) -> list[Stack]:
    """The stacks that ``stack`` ("auto", "off" or a size) makes of ``trials``: the one policy
    the executors and ``--dry-run`` apply.

    "auto" caps stacks at 64 members when the trials run on a visible GPU (where a stack of tiny
    networks costs about one network's kernel launches), else at 16 (on a CPU the gain
    saturates once the stacked matrices fill the vector units), and on a CPU it runs alone the
    trials that stack slower there (:func:`slower_on_cpu_reason`). A stack too large for the
    device's memory is halved when it runs (the size is a cap, not a memory budget)."""
    planned = [as_trial(t) for t in trials]
    if stack in ("off", 0, 1, "1"):
        return plan_stacks(planned, 1)
    if stack == "auto":
        gpu = on_gpu(t.config for t in planned)
        return plan_stacks(planned, 64 if gpu else 16, cpu_auto=not gpu)
    return plan_stacks(planned, int(stack))


def describe_stacks(stacks: Sequence[Stack]) -> list[str]:
    """Lines for ``--dry-run``: how many trials stack, into how many stacks, and why others don't."""
    stacked = [s for s in stacks if len(s.trials) > 1]
    alone = [s for s in stacks if len(s.trials) == 1]
    n = sum(len(s.trials) for s in stacked)
    lines = [
        f"stacks: {n} trials in {len(stacked)} stacks"
        + (
            f" (sizes {min(len(s.trials) for s in stacked)}-{max(len(s.trials) for s in stacked)})"
            if stacked
            else ""
        )
        + f"; {len(alone)} alone (stacks of one)"
    ]
    why: dict[str, int] = {}
    for s in alone:
        if s.reason:
            why[s.reason] = why.get(s.reason, 0) + 1
    lines += [f"  {count} alone: {reason}" for reason, count in why.items()]
    return lines
