"""One trial: build everything from a config through the registry, train, return the metrics.

:func:`run_trial` never raises for a problem in a plugin or a config: it returns a
:class:`TrialOutcome` with status "completed", "diverged" (NaN/inf loss, or a loss above
``DIVERGENCE_FACTOR`` = 1e3 times the first step's loss; ``meta.diverged_step`` says when) or
"failed" (``meta.error`` holds the traceback). Only ``KeyboardInterrupt``/``SystemExit``
propagate, so a matrix goes on after any trial.

The config, the outcome and its rows are defined in :mod:`techbench.schema`;
:func:`complete_config` fills a partial config and the id is over every key.

Reproducibility: the seed goes to ``random``, ``numpy`` and ``torch.manual_seed`` before the model
is built, batch order comes from its own ``torch.Generator`` (dropout masks from another,
:data:`techbench.techniques.families.MODULE_SEED_OFFSET`), and ``deterministic`` is passed to
Lightning, so the same trial run twice on CPU gives identical metrics. Torch's thread count is
left to the caller (the executor).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import random
import time
import traceback
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from ..schema import (
    AXIS_FAMILY,
    DEFAULT_CONFIG,
    Status,
    Trial,
    TrialMeta,
    TrialOutcome,
    complete_config,
    curvature_options,
    now_iso,
    stop_reason,
    training_flops,
    trial_id,
)
from ..techniques.provenance import technique_sources
from ..techniques.roles import RoleError, tag_roles
from ..versions import package_versions
from .lit import DIVERGENCE_FACTOR

__all__ = [
    "DEFAULT_CONFIG",
    "DIVERGENCE_FACTOR",
    "TrialOutcome",
    "build_model",
    "complete_config",
    "quiet_lightning",
    "run_stack",
    "run_trial",
    "training_compute",
    "trial_id",
]


def run_trial(
    config: Trial | Mapping[str, Any],
    *,
    logger: str | None = None,
    log_dir: str | None = None,
    callbacks: Sequence[Any] = (),
    registry: Any = None,
) -> TrialOutcome:
    """Train one trial (a planned :class:`Trial`, or a config, completed here) as a stack of
    one (:func:`run_stack`); never raises for a plugin or config error (status "failed").

    ``logger``: None (default; the outcome carries every metric), "csv", "tensorboard" or
    "mlflow", written under ``log_dir``; ``callbacks``: extra Lightning callbacks. Neither changes
    the results, so neither is part of the config. ``registry``: where names are looked up
    (anything with ``get_spec(name, family)``; default: the installed plugins).
    """
    (outcome,) = run_stack(
        [config], registry=registry, logger=logger, log_dir=log_dir, callbacks=callbacks
    )
    return outcome


def _seed_all(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _device_name(device: Any) -> str:
    import torch

    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} {torch.cuda.get_device_name(index)}"
    return str(device)


def build_model(cfg: Mapping[str, Any], specs: Mapping[str, Any], splits: Any) -> tuple[Any, Any]:
    """The trial's network and its regularizer, from the specs of every config key.

    Separate from training so that several seeds of one configuration can later be built and
    stacked. Call it after seeding torch (the model's initial weights come from the global RNG);
    data-dependent initializers (``properties["data_dependent"]``) are fitted with
    ``init.fit(model, x)`` on a seeded sample of the (preprocessed) training inputs.
    """
    import torch

    from ..techniques.families import trial_parts

    params = {key: cfg[key]["params"] for key in AXIS_FAMILY}
    weight_init = specs["initializer"].create(**params["initializer"])
    bias_init = specs["bias_initializer"].create(**params["bias_initializer"])
    regularizer = specs["regularizer"].create(**params["regularizer"])
    parts = trial_parts(cfg, specs, regularizer, weight_init, bias_init)
    model = specs["model"].create(splits.input_shape, splits.num_outputs, parts, **params["model"])
    if specs["initializer"].properties_for(params["initializer"]).get("data_dependent"):
        n = min(len(splits.x_train), max(int(cfg["budget"]["batch_size"]), 256))
        generator = torch.Generator().manual_seed(int(cfg["seed"]))
        pick = torch.randperm(len(splits.x_train), generator=generator)[:n]
        weight_init.fit(model, splits.x_train[pick])
    try:
        tag_roles(model)
    except RoleError as exc:  # an untold role fails only where a rule reads it
        optimizer = specs["optimizer"]
        if optimizer.properties.get("reads_roles"):
            raise RoleError(f"optimizer {optimizer.name!r} reads parameter roles: {exc}") from None
    _parametrize(cfg, specs, splits, model, parts)
    return model, regularizer


def _parametrize(
    cfg: Mapping[str, Any], specs: Mapping[str, Any], splits: Any, model: Any, parts: Any
) -> None:
    """Apply the trial's parametrization (:mod:`techbench.techniques.parametrize`): the base
    model's shapes, then each parameter's init multiplier and lr tag (nothing under
    ``standard``). A model or optimizer the parametrization can't serve fails the trial with
    the parametrization's one-line reason."""
    from ..techniques.parametrize import base_shapes, meta_parts, parametrize

    spec = specs["parametrization"]
    param = spec.create(**cfg["parametrization"]["params"])
    model_spec = specs["model"]
    full = model_spec.hyperparams(cfg["model"]["params"])
    shapes = base_shapes(
        param,
        lambda hp: model_spec.create(
            splits.input_shape, splits.num_outputs, meta_parts(parts), **hp
        ),
        full,
    )
    if shapes is None:
        return
    opt_params = cfg["optimizer"]["params"]
    rule = specs["optimizer"].properties_for(opt_params).get("update_rule")
    parametrize(model, param, shapes, rule)


def prepare(cfg: Mapping[str, Any], registry: Any) -> tuple[dict[str, Any], Any]:
    """The specs of every technique of ``cfg`` and its preprocessed data splits."""
    from ..techniques.registry import default_registry

    get_spec = (registry or default_registry()).get_spec
    specs = {key: get_spec(cfg[key]["name"], fam) for key, fam in AXIS_FAMILY.items()}
    params = {key: cfg[key]["params"] for key in AXIS_FAMILY}
    splits = specs["dataset"].create(int(cfg["data_seed"]), **params["dataset"])
    if splits.x_train.is_floating_point():
        pre = specs["preprocessor"].create(**params["preprocessor"])
        pre.fit(splits.x_train)
        splits = dataclasses.replace(
            splits,
            x_train=pre.transform(splits.x_train),
            x_val=pre.transform(splits.x_val),
            x_test=pre.transform(splits.x_test),
        )
    elif cfg["preprocessor"]["name"] != "none":
        raise ValueError(
            f"dataset {cfg['dataset']['name']!r} gives {splits.x_train.dtype} inputs (token ids), "
            f"which preprocessor {cfg['preprocessor']['name']!r} cannot transform; "
            'set preprocessor = "none"'
        )
    return specs, splits


def _total_steps(splits: Any, budget: Mapping[str, Any]) -> int:
    """Optimizer steps the budget allows: the smaller of epochs x batches per epoch and
    ``max_steps`` (the schedules' horizon)."""
    import torch

    from .lit import ShuffledBatches

    batch_size = int(budget["batch_size"])
    per_epoch = ShuffledBatches(
        splits.x_train, splits.y_train, batch_size, torch.Generator()
    ).num_minibatches
    epochs, max_steps = budget.get("epochs"), budget.get("max_steps")
    candidates = [per_epoch * int(epochs)] if epochs is not None else []
    if max_steps is not None:
        candidates.append(int(max_steps))
    if not candidates:
        raise ValueError("budget needs epochs or max_steps")
    return max(min(candidates), 1)


def _channels_last(model: Any, splits: Any) -> tuple[Any, Any]:
    """The model's 4-D weights and the image inputs in NHWC order (``torch.channels_last``):
    the layout tensor-core convolutions run fastest in; values are unchanged."""
    import torch

    fmt = torch.channels_last

    def nhwc(x: Any) -> Any:
        return x.contiguous(memory_format=fmt) if x.dim() == 4 else x

    split = dataclasses.replace(
        splits, x_train=nhwc(splits.x_train), x_val=nhwc(splits.x_val), x_test=nhwc(splits.x_test)
    )
    return model.to(memory_format=fmt), split


class quiet_lightning:
    """Silence Lightning's informational logging and its advice warnings inside a trial."""

    _names = ("pytorch_lightning", "lightning", "lightning_fabric", "lightning.pytorch")

    def __enter__(self) -> None:
        self._levels = {}
        for name in self._names:
            log = logging.getLogger(name)
            self._levels[name] = log.level
            log.setLevel(logging.WARNING)
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        for pattern in (
            ".*does not have many workers.*",
            ".*smaller than the logging interval.*",
            ".*IterableDataset.*",
            ".*LightningModule.*configure_optimizers.*",
            ".*`training_step` returned `None`.*",
            ".*GPU available but not used.*",
            ".*Trying to infer the `batch_size`.*",
            ".*LeafSpec.*is deprecated.*",
        ):
            warnings.filterwarnings("ignore", message=pattern)

    def __exit__(self, *exc: Any) -> None:
        self._warnings.__exit__(*exc)
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)


def run_stack(
    configs: Sequence[Trial | Mapping[str, Any]],
    *,
    registry: Any = None,
    logger: str | None = None,
    log_dir: str | None = None,
    callbacks: Sequence[Any] = (),
) -> list[TrialOutcome]:
    """Train the trials of one stack together (:mod:`techbench.engine.population`); one outcome each,
    in the order of ``configs``. A trial alone is a stack of one (:func:`run_trial`).

    The configs must share a :func:`techbench.plan.stacking.stack_key`. It never raises for a plugin or
    config error: the stack's members are then all "failed" with the traceback (one member's
    plugin code failing fails the stack, never the matrix). ``logger``, ``log_dir`` and
    ``callbacks`` go to the stack's trainer (see :func:`run_trial`).
    """
    started_at, wall0 = now_iso(), time.perf_counter()
    trials: list[Trial] = []
    try:
        trials = [c if isinstance(c, Trial) else Trial.of(c) for c in configs]
        cfgs = [t.config for t in trials]
        logging_to = (logger, log_dir, trials[0].id) if logger else None
        module, order, device, num_parameters, splits = _train_stack(
            cfgs, registry, logging_to, callbacks
        )
    except Exception:
        error, wall = traceback.format_exc(), time.perf_counter() - wall0
        if not trials:  # the configs themselves are bad: no provenance to record
            return [TrialOutcome.failed(c, error, started_at) for c in configs]
        return [_failed(t, error, started_at, wall, registry) for t in trials]
    wall = time.perf_counter() - wall0
    outcomes: dict[int, TrialOutcome] = {}
    for k, member in zip(order, module.members, strict=True):
        metrics = member.rows + (member.health.rows if member.health is not None else [])
        curvature = member.curvature
        metrics += curvature.rows if curvature is not None else []
        metrics = _until_divergence(metrics, member.diverged_step)
        meta = TrialMeta(
            started_at=started_at,
            finished_at=now_iso(),
            wall_seconds=wall,
            train_seconds=member.train_seconds,
            device=device,
            versions=package_versions(),
            techniques=_sources(cfgs[k], registry),
            diverged_step=member.diverged_step,
            steps=member.steps_done,
            epochs=member.epochs_done,
            num_parameters=num_parameters,
            health_overhead=member.health.seconds if member.health is not None else None,
            curvature_overhead=curvature.seconds if curvature is not None else None,
            curvature_probes=curvature.probes if curvature is not None else None,
            stack_size=len(cfgs),
            stack_wall_seconds=wall if len(cfgs) > 1 else None,
            data_fingerprint=splits.fingerprint,
            data_info=dict(splits.info),
            compute=training_compute(splits, cfgs[k]["budget"], num_parameters, member.steps_done),
            **_rung(cfgs[k]),
        )
        status: Status = "diverged" if member.diverged_step is not None else "completed"
        meta.stop_reason = stop_reason(status, cfgs[k], meta.steps, meta.epochs)
        outcomes[k] = TrialOutcome(trials[k].id, cfgs[k], status, metrics, meta)
    return [outcomes[k] for k in range(len(cfgs))]


def training_compute(splits: Any, budget: Mapping[str, Any], parameters: int, steps: int) -> float:
    """The training FLOPs proxy 6 N D of :class:`TrialMeta` ``compute``: N parameters, D the
    examples the ``steps`` batches held (their tokens for a language model), counted on the
    batches the engine draws (:class:`techbench.engine.lit.ShuffledBatches`)."""
    import torch

    from .lit import ShuffledBatches

    batches = ShuffledBatches(
        splits.x_train, splits.y_train, int(budget["batch_size"]), torch.Generator()
    )
    sizes = [hi - lo for lo, hi in itertools.pairwise(batches.bounds)]
    epochs, rest = divmod(int(steps), len(sizes))
    examples = epochs * len(splits.x_train) + sum(sizes[:rest])
    per_example = int(splits.x_train.shape[1]) if splits.task == "language_model" else 1
    return training_flops(parameters, examples * per_example)


def _rung(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The meta's ``rung`` and ``width_mult`` from a ladder trial's config (none outside one)."""
    scale = cfg.get("scale")
    if not scale:
        return {}
    return {"rung": int(scale["rung"]), "width_mult": float(scale["width_mult"])}


def _failed(trial: Trial, error: str, started_at: str, wall: float, registry: Any) -> TrialOutcome:
    """A member of a stack that failed as a whole: the traceback, the time and provenance."""
    meta = TrialMeta(
        started_at=started_at,
        finished_at=now_iso(),
        wall_seconds=wall,
        versions=package_versions(),
        techniques=_sources(trial.config, registry),
        error=error,
        stop_reason="failed",
        **_rung(trial.config),
    )
    return TrialOutcome(trial.id, dict(trial.config), "failed", [], meta)


def _until_divergence(rows: list[dict[str, Any]], step: int | None) -> list[dict[str, Any]]:
    """A diverged trial's rows end at its diverged step (the steps run until the divergence
    check read the losses are not the trial's); time rows are kept."""
    if step is None:
        return rows
    return [r for r in rows if r["split"] == "time" or r["step"] <= step]


def _sources(cfg: Mapping[str, Any], registry: Any) -> dict[str, Any] | None:
    """:func:`techbench.techniques.provenance.technique_sources`, or None: provenance never fails a trial."""
    try:
        return technique_sources(cfg, registry)
    except Exception:
        return None


def _curvature_record(cfg: Mapping[str, Any], opt_spec: Any) -> Any:
    """The trial's curvature probe record, or None when ``health.curvature`` is off."""
    options = curvature_options(cfg["health"])
    if options is None:
        return None
    from .curvature_probe import CurvatureRecord

    hp = cfg["optimizer"]["params"]
    full = opt_spec.hyperparams(hp)
    stability = opt_spec.properties_for(hp).get("stability")
    return CurvatureRecord(options, stability, float(full.get("lr", 1.0)))


def _train_stack(
    cfgs: list[dict[str, Any]],
    registry: Any,
    logging_to: tuple[str, str | None, str] | None = None,
    callbacks: Sequence[Any] = (),
) -> tuple[Any, list[int], str, int, Any]:
    from .health import GradientHealth
    from .lit import build_logger, build_trainer
    from .member_hp import create_stacked, optimizer_stacks_hyperparams, shared_key
    from .population import StackedModule
    from .stack_layout import order_members
    from .stack_members import Member
    from .stacked_data import StackedDataModule

    first = cfgs[0]
    specs, splits = prepare(first, registry)
    from ..techniques.registry import default_registry

    lookup = (registry or default_registry()).get_spec
    opt_spec, sched_spec = specs["optimizer"], specs["schedule"]
    schedule_params = first["schedule"]["params"]
    stacked_opt = optimizer_stacks_hyperparams(opt_spec, sched_spec, schedule_params)
    group_key = (lambda hp: shared_key(opt_spec, opt_spec.hyperparams(hp))) if stacked_opt else None
    order = order_members(cfgs, group_key)
    members = []
    num_parameters = 0
    for k in order:
        cfg = cfgs[k]
        member_specs = dict(specs)
        for key in ("initializer", "bias_initializer"):
            member_specs[key] = lookup(cfg[key]["name"], AXIS_FAMILY[key])
        _seed_all(int(cfg["seed"]))
        model, regularizer = build_model(cfg, member_specs, splits)
        if len(cfgs) == 1 and cfg["trainer"].get("memory_format") == "channels_last":
            model, splits = _channels_last(model, splits)
        num_parameters = sum(p.numel() for p in model.parameters())
        health = None
        if cfg["health"]["enabled"]:
            every = int(cfg["health"]["every_n_steps"])
            act_properties = specs["activation"].properties_for(cfg["activation"]["params"])
            health = GradientHealth(every, act_properties)
        curvature = _curvature_record(cfg, opt_spec)
        members.append(
            Member(
                model,
                int(cfg["seed"]),
                dict(cfg["optimizer"]["params"]),
                regularizer,
                health,
                curvature=curvature,
                regularizer_params=dict(cfg["regularizer"]["params"]),
            )
        )
    module = StackedModule(
        members,
        splits.task,
        optimizer_factory=lambda ps, hp: opt_spec.create(ps, **hp),
        schedule_factory=lambda opt, total: sched_spec.create(opt, total, **schedule_params),
        total_steps=_total_steps(splits, first["budget"]),
        stacked_optimizer_factory=(
            (lambda ps, settings: create_stacked(opt_spec, ps, settings)) if stacked_opt else None
        ),
        group_key=group_key,
    )
    datamodule = StackedDataModule(
        splits, int(first["budget"]["batch_size"]), [m.seed for m in members]
    )
    trainer_cfg = dict(first["trainer"])
    if trainer_cfg.get("deterministic") and trainer_cfg.get("accelerator") != "cpu":
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    with quiet_lightning():
        trainer = build_trainer(
            trainer_cfg,
            first["budget"],
            callbacks=list(callbacks),
            logger=build_logger(*logging_to) if logging_to else False,
        )
        device = _device_name(trainer.strategy.root_device)
        trainer.fit(module, datamodule=datamodule)
    return module, order, device, num_parameters, splits
