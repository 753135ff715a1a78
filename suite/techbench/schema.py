"""The trial contract, defined once: what a trial is, what it returns, what it records.

Everything downstream of the matrix (trials -> stacks -> runs -> store -> report) speaks these
nouns and imports them from here; this module imports nothing of techbench but
:mod:`techbench.errors`, and nothing heavy (no torch, pandas or pyarrow).

- **Config**: :data:`AXES` (in expansion order) and the registry family of each technique axis
  (:data:`AXIS_FAMILY`); :data:`DEFAULT_CONFIG` holds every key of a trial config with the value a
  matrix uses when it says nothing; :func:`complete_config` fills a partial config from it.
- **Identity**: :func:`trial_id`, the first 16 hex digits of the SHA-256 of the canonical JSON of
  the complete config; a rerun skips what is stored because equal configs hash equally. A
  :class:`Trial` is that id with its completed config, made once by the planners
  (:mod:`techbench.plan.matrix`, :mod:`techbench.plan.tune`) and carried to the store, so nothing
  downstream hashes or completes a config again.
- **Outcome**: :class:`TrialOutcome` with a :data:`STATUSES` status, the metric rows and a typed
  :class:`TrialMeta`; the runner returns it, executors move it between processes as
  :meth:`TrialOutcome.to_dict`, the store writes ``meta.json`` from it.
- **Rows**: the tidy long format of ``metrics.parquet`` (:data:`METRIC_FIELDS`,
  :func:`metric_row`) and the canonical metric keys (:func:`metric_key`): a row ``("val",
  "acc")`` is the series ``val_acc`` that a matrix's target, the report's tables and figures name.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

# -- config -----------------------------------------------------------------------------------

AXES: tuple[str, ...] = (
    "dataset",
    "model",
    "activation",
    "initializer",
    "bias_initializer",
    "normalizer",
    "norm_placement",
    "regularizer",
    "optimizer",
    "parametrization",
    "schedule",
    "preprocessor",
)
"""The axes of a matrix, in expansion order."""

AXIS_FAMILY: dict[str, str] = {
    a: "initializer" if a == "bias_initializer" else a for a in AXES if a != "norm_placement"
}
"""Technique axis (a config key holding ``{"name", "params"}``) -> registry family."""

NORM_PLACEMENTS = ("before", "after")
"""Values of the ``norm_placement`` axis: the normalizer goes before or after the activation."""

SECTIONS = ("budget", "target", "trainer", "health")
"""Config keys holding option tables (merged key by key by :func:`complete_config`)."""

DEFAULT_CONFIG: dict[str, Any] = {
    "dataset": {"name": "digits", "params": {}},
    "model": {"name": "mlp", "params": {"depth": 2, "width": 128}},
    "activation": {"name": "relu", "params": {}},
    "initializer": {"name": "he_normal", "params": {}},
    "bias_initializer": {"name": "zeros", "params": {}},
    "normalizer": {"name": "none", "params": {}},
    "norm_placement": "before",
    "regularizer": {"name": "none", "params": {}},
    "optimizer": {"name": "adam", "params": {"lr": 0.001}},
    "parametrization": {"name": "standard", "params": {}},
    "schedule": {"name": "constant", "params": {}},
    "preprocessor": {"name": "standardize", "params": {}},
    "seed": 0,
    "data_seed": 0,
    "budget": {"epochs": 10, "max_steps": None, "max_seconds": None, "batch_size": 128},
    "target": {"metric": "val_acc", "value": 0.9, "mode": "max"},
    "trainer": {"accelerator": "auto", "devices": 1, "precision": "32-true", "deterministic": True},
    "health": {"enabled": True, "every_n_steps": 25, "curvature": None},
    "scale": None,
}
"""Every key of a trial config, with the value a matrix uses when it says nothing.

``seed`` drives initial weights, batch order, dropout and noise; ``data_seed`` data generation
and the split. ``scale``: a scale ladder's rung of this trial (``{"rung", "width_mult",
"depth_mult"}``, :mod:`techbench.plan.scale`), None outside a ladder. The id is over every key
but the :data:`OMITTED_AT_DEFAULT` ones at their default, so changing a default here changes
ids."""


def default_config() -> dict[str, Any]:
    """A fresh deep copy of :data:`DEFAULT_CONFIG` (callers may mutate it)."""
    return copy.deepcopy(DEFAULT_CONFIG)


def complete_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with every key of :data:`DEFAULT_CONFIG` filled (a deep copy).

    A technique given replaces the default whole (``{"name": "sgd"}`` gets ``params: {}``); a
    technique may also be given as a string ``"name"``. Budget/target/trainer/health merge key by
    key. ``ValueError`` for unknown keys or a malformed technique.
    """
    out = default_config()
    unknown = set(config) - set(DEFAULT_CONFIG)
    if unknown:
        raise ValueError(f"unknown trial config keys: {', '.join(sorted(unknown))}")
    for key, value in config.items():
        if key in AXIS_FAMILY:
            if isinstance(value, str):
                value = {"name": value, "params": {}}
            value = dict(value)
            if set(value) - {"name", "params"} or "name" not in value:
                raise ValueError(f"config[{key!r}] must be {{'name': ..., 'params': {{...}}}}")
            out[key] = {"name": value["name"], "params": dict(value.get("params") or {})}
        elif key in SECTIONS:
            out[key].update(copy.deepcopy(dict(value)))
        else:
            out[key] = copy.deepcopy(value)
    return out


OMITTED_AT_DEFAULT: dict[tuple[str, ...], Any] = {
    ("parametrization",): {"name": "standard", "params": {}},
    ("scale",): None,
    ("health", "curvature"): None,
}
"""Config keys added after 0.3.0 (a path of keys -> its default): :func:`canonical_config` leaves
each out while it holds its default, so a trial that does not use a newer option keeps the id it
had in 0.3.0 and 0.3.0 stores keep resuming. Each entry's default is also in
:data:`DEFAULT_CONFIG`, so code reading a completed config always finds the key."""


CURVATURE_DEFAULTS: dict[str, int] = {
    "every_n_steps": 50,
    "iterations": 20,
    "batch": 64,
    "plain": False,
}
"""The curvature probe's options (``health.curvature``, None: off): a probe every
``every_n_steps`` optimizer steps (and at step 0), at most ``iterations`` Lanczos steps (a
run stops at convergence; later probes start from the previous probe's top Ritz vector and
converge in a few), on a probe batch of ``batch`` training examples (the whole split when it
is smaller). For an optimizer whose threshold is on the preconditioned sharpness (Adam, RMSprop,
Adagrad) only that one is computed unless ``plain`` is true (then the Hessian's own too, at
about twice the probe's cost); see :mod:`techbench.engine.curvature_probe`."""

CURVATURE_BOUNDS: dict[str, tuple[int, int]] = {
    "every_n_steps": (1, 100_000_000),
    "iterations": (2, 1000),
    "batch": (2, 2**20),
}
"""Inclusive integer bounds of each curvature option (the matrix loader checks them)."""


def curvature_options(health: Mapping[str, Any]) -> dict[str, int] | None:
    """A config's ``health.curvature`` with its defaults filled (None when off; ``True``
    means every default)."""
    given = health.get("curvature")
    if given is None or given is False:
        return None
    return {**CURVATURE_DEFAULTS, **({} if given is True else dict(given))}


def canonical_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` (a copy) without the :data:`OMITTED_AT_DEFAULT` keys that hold their default:
    what :func:`trial_id` hashes."""
    out = copy.deepcopy(dict(config))
    for path, default in OMITTED_AT_DEFAULT.items():
        *parents, last = path
        node: Any = out
        for key in parents:
            node = node.get(key) if isinstance(node, Mapping) else None
        if isinstance(node, dict) and last in node and node[last] == default:
            del node[last]
    return out


def trial_id(config: Mapping[str, Any]) -> str:
    """First 16 hex digits of the SHA-256 of the canonical JSON of ``config``.

    Canonical (:func:`canonical_config`): keys sorted, no whitespace, the newer keys at their
    default left out. Pass a complete config (:func:`complete_config`): the id is over every
    other key, so a partial config hashes differently from its completion.
    """
    text = json.dumps(canonical_config(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Trial:
    """One planned trial: its id and its complete config (the id's source; never mutated).

    Made once, by :meth:`of`, where trials are planned; executors, the engine and the store
    carry it, so the id a trial is stored under is the one it was planned with. Picklable (it
    crosses process and Ray boundaries as is).
    """

    id: str
    config: dict[str, Any] = field(compare=False, repr=False)

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> Trial:
        """The trial of ``config`` (completed, :func:`complete_config`; ``ValueError`` when it
        can't be)."""
        full = complete_config(config)
        return cls(trial_id(full), full)


def as_trial(value: Trial | Mapping[str, Any]) -> Trial:
    """``value`` itself, or the :class:`Trial` of a config handed to the Python API (``execute``,
    ``plan_stacks``) by a caller that planned no trials. A mapping that is no trial config (a
    custom ``run_fn``'s, with keys of its own) is taken as given: its hash is its id."""
    if isinstance(value, Trial):
        return value
    try:
        return Trial.of(value)
    except ValueError:
        return Trial(trial_id(value), dict(value))


StopReason = Literal["epochs", "steps", "time budget", "stopped early", "diverged", "failed"]
STOP_REASONS: tuple[StopReason, ...] = (
    "epochs",
    "steps",
    "time budget",
    "stopped early",
    "diverged",
    "failed",
)
"""Why a trial stopped: its epoch or step budget ran out, its time budget did, early stopping
ended it, it diverged, or it failed."""


def stop_reason(
    status: str, config: Mapping[str, Any], steps: int | None, epochs: int | None
) -> StopReason:
    """Why a trial with ``status`` that ran ``steps`` steps in ``epochs`` epochs under
    ``config``'s budget stopped (the engine records it; the report derives it only for stores
    written before :attr:`TrialMeta.stop_reason` existed)."""
    if status in ("diverged", "failed"):
        return "diverged" if status == "diverged" else "failed"
    budget = config.get("budget") or {}
    max_steps = budget.get("max_steps")
    if max_steps is not None and steps is not None and steps >= max_steps:
        return "steps"
    planned = budget.get("epochs")
    if planned is not None and epochs is not None and epochs < planned:
        return "time budget" if budget.get("max_seconds") is not None else "stopped early"
    return "epochs"


# -- outcome ----------------------------------------------------------------------------------

Status = Literal["completed", "diverged", "failed"]
STATUSES: tuple[Status, ...] = ("completed", "diverged", "failed")
"""``completed``: trained to its budget; ``diverged``: NaN/inf or blown-up loss (frozen at
``diverged_step``); ``failed``: an exception (``error`` holds the traceback)."""

FINISHED: frozenset[str] = frozenset({"completed", "diverged"})
"""Statuses a rerun skips (failed trials are retried only on request)."""


def training_flops(parameters: int, tokens: float) -> float:
    """6 N D: the forward-and-backward FLOPs of training a dense network of N ``parameters`` on
    D ``tokens`` (examples for a non-sequence model; Kaplan et al. 2020, "Scaling laws for neural
    language models", sec. 2.1), the proxy :class:`TrialMeta` ``compute`` records and a ladder's
    ``--dry-run`` plans."""
    return 6.0 * parameters * tokens


def now_iso() -> str:
    """UTC now as ISO 8601 with milliseconds and a ``Z`` (the timestamps of :class:`TrialMeta`)."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class TrialMeta:
    """What a trial records besides its config, status and rows (the scalars of ``meta.json``).

    ``epochs`` is the number of epochs run (the budget's epochs live in the config);
    ``health_overhead`` the seconds the gradient-health callback took; ``curvature_overhead``
    the seconds the curvature probe took over its ``curvature_probes`` probes (for a stacked
    trial, its stack's: the probe runs once for all members); ``versions`` the package
    versions of the process that ran it. Time: ``wall_seconds`` is the trial's own wall time
    (for a stacked trial, its stack's: ``stack_size`` members shared ``stack_wall_seconds``);
    ``step_seconds`` is the step time of its configuration measured alone
    (:mod:`techbench.execute.calibrate`) and ``modelled_seconds`` = ``steps`` x ``step_seconds``, the
    time a report compares; ``techniques`` per technique key of the config, the technique and
    the distribution and version that supplied it (:mod:`techbench.techniques.provenance`; None when not
    recorded). Data: ``data_fingerprint`` is a content hash of the data the dataset plugin read
    or generated (``DatasetSplits.fingerprint``; None when the parameters and seed fix the data)
    and ``data_info`` the dataset's facts (``DatasetSplits.info``). ``stop_reason``: why the trial
    stopped (:func:`stop_reason`; None in stores written by 0.3.0); ``stack_error``: the last
    line of the error of the stack the trial was in, when that stack failed and the trial was
    run again alone. Scale: ``rung`` (0 = the smallest) and ``width_mult`` of a scale ladder's
    trial (:mod:`techbench.plan.scale`; None outside a ladder); ``compute`` the training FLOPs
    proxy 6 x ``num_parameters`` x examples seen (tokens seen for a language model: the
    training windows' tokens over ``steps`` steps), the forward-and-backward cost of a dense
    network (Kaplan et al. 2020, "Scaling laws for neural language models", sec. 2.1: C = 6ND);
    None in stores written before it existed. Keys a newer writer adds land in ``extra`` and are
    written back unchanged.
    """

    started_at: str | None = None
    finished_at: str | None = None
    wall_seconds: float = 0.0
    train_seconds: float = 0.0
    device: str | None = None
    versions: dict[str, Any] = field(default_factory=dict)
    techniques: dict[str, Any] | None = None
    diverged_step: int | None = None
    error: str | None = None
    steps: int = 0
    epochs: int = 0
    num_parameters: int | None = None
    health_overhead: float | None = None
    curvature_overhead: float | None = None
    curvature_probes: int | None = None
    stack_size: int = 1
    stack_wall_seconds: float | None = None
    step_seconds: float | None = None
    modelled_seconds: float | None = None
    data_fingerprint: str | None = None
    data_info: dict[str, Any] = field(default_factory=dict)
    stop_reason: str | None = None
    stack_error: str | None = None
    rung: int | None = None
    width_mult: float | None = None
    compute: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The flat JSON object stored in ``meta.json`` (``extra`` merged in)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**self.extra, **out}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialMeta:
        """Inverse of :meth:`to_dict`; unknown keys go to ``extra`` (outcome keys are dropped)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names and k not in OUTCOME_KEYS}
        return cls(**known, extra=extra)


META_FIELDS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(TrialMeta) if f.name != "extra"
)
"""The scalar fields every stored trial's meta has."""

OUTCOME_KEYS = ("trial_id", "config", "status", "matrix")
"""The keys ``meta.json`` holds besides the :data:`META_FIELDS`."""


@dataclass
class TrialOutcome:
    """What a trial returns and the store writes: ``meta.json`` + ``metrics.parquet``."""

    trial_id: str
    config: dict[str, Any]
    status: Status
    metrics: list[dict[str, Any]] = field(default_factory=list)
    meta: TrialMeta = field(default_factory=TrialMeta)

    def metric(self, split: str, metric: str, layer: str = "") -> list[float]:
        """The values of one series, in row order (a convenience for tests and scripts)."""
        return [
            r["value"]
            for r in self.metrics
            if r["split"] == split and r["metric"] == metric and r["layer"] == layer
        ]

    @classmethod
    def failed(
        cls, trial: Trial | Mapping[str, Any], error: str, started_at: str | None = None
    ) -> TrialOutcome:
        """A ``failed`` outcome for a trial that produced none (its plugin or process died);
        ``trial`` may be a config from a caller of the Python API (:func:`as_trial`)."""
        from .versions import package_versions

        meta = TrialMeta(
            started_at=started_at or now_iso(),
            finished_at=now_iso(),
            versions=package_versions(),
            error=error,
            stop_reason="failed",
        )
        planned = as_trial(trial)
        return cls(planned.id, dict(planned.config), "failed", [], meta)

    def to_dict(self) -> dict[str, Any]:
        """A plain mapping (picklable and JSON-able) to move an outcome between processes."""
        return {
            "trial_id": self.trial_id,
            "config": self.config,
            "status": self.status,
            "metrics": self.metrics,
            "meta": self.meta.to_dict(),
        }

    @classmethod
    def from_value(cls, value: Any) -> TrialOutcome:
        """An outcome from itself, its :meth:`to_dict`, or any object with the same attributes.

        ``ValueError`` when the status is not one of :data:`STATUSES`.
        """
        if isinstance(value, TrialOutcome):
            return value
        get = value.get if isinstance(value, Mapping) else lambda k: getattr(value, k, None)
        status = get("status")
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        meta = get("meta")
        if not isinstance(meta, TrialMeta):
            meta = TrialMeta.from_dict(dict(meta or {}))
        return cls(
            str(get("trial_id")),
            dict(get("config") or {}),
            status,
            list(get("metrics") or []),
            meta,
        )


# -- metric rows ------------------------------------------------------------------------------

METRIC_FIELDS: tuple[tuple[str, str], ...] = (
    ("step", "int64"),
    ("epoch", "int64"),
    ("split", "string"),
    ("metric", "string"),
    ("layer", "string"),
    ("value", "float64"),
)
"""The columns of ``metrics.parquet`` with their Arrow types, in order (tidy long format)."""

METRIC_COLUMNS: tuple[str, ...] = tuple(name for name, _ in METRIC_FIELDS)


def metric_row(
    step: int, epoch: int, split: str, metric: str, value: float, layer: str = ""
) -> dict[str, Any]:
    """One metric row: ``value`` of ``split``/``metric`` (of ``layer``; "" for the whole model)
    after ``step`` optimizer steps in epoch ``epoch``.

    Splits: ``train`` (``loss`` per step; ``epoch_loss``/``epoch_acc`` over the training set at
    an epoch's end), ``val`` and ``test`` (``loss``, ``acc``; test also ``best_loss``/``best_acc``
    at the best-validation weights), ``time`` (``seconds``), ``health`` (gradient health).
    Language models add ``bpc`` and ``ppl`` wherever ``loss`` is an epoch or test metric
    (:mod:`techbench.tasks` lists each task's metrics).
    """
    return {
        "step": step,
        "epoch": epoch,
        "split": split,
        "metric": metric,
        "layer": layer,
        "value": value,
    }


_EPOCH_PREFIX = {"train": "epoch_"}
"""Epoch-level series whose stored metric name carries a prefix (train ``epoch_acc`` is
``train_acc``: the unprefixed train ``loss`` is the per-step minibatch loss)."""


def metric_key(split: str, metric: str) -> str:
    """The canonical name of a stored (split, metric) series: ``("val", "acc")`` -> ``val_acc``,
    ``("train", "epoch_acc")`` -> ``train_acc``, ``("train", "loss")`` -> ``train_step_loss``.

    These are the names a matrix's ``[target] metric``, the early-stopping monitor, the report's
    tables and figures use.
    """
    prefix = _EPOCH_PREFIX.get(split, "")
    if prefix and metric.startswith(prefix):
        return f"{split}_{metric[len(prefix) :]}"
    if prefix:
        return f"{split}_step_{metric}"
    return f"{split}_{metric}"


def metric_series(key: str) -> tuple[str, str]:
    """Inverse of :func:`metric_key`: ``val_acc`` -> ``("val", "acc")``; a bare name such as
    ``acc`` means the validation series. ``ValueError`` for a key with no split."""
    if "_" not in key:
        return "val", key
    split, metric = key.split("_", 1)
    prefix = _EPOCH_PREFIX.get(split, "")
    if prefix:
        if metric.startswith("step_"):
            return split, metric[len("step_") :]
        return split, prefix + metric
    return split, metric


EPOCH_METRICS: tuple[str, ...] = (
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "train_bpc",
    "val_bpc",
    "train_ppl",
    "val_ppl",
)
"""The series epochs record (each task records its own, :func:`techbench.tasks.metric_names`:
accuracy for classification and language models, bits per character and perplexity for language
models only); a target names one."""
