"""Matrix specs: a TOML file that expands, validated, into the list of trial configs.

A matrix names the axes to cross (dataset, model, the technique families, their
hyper-parameters, seeds), the budget and the target metric; :func:`load_matrix` validates it
and :meth:`Matrix.trials` expands it into canonical trial configs (the shared schema below).
Validation collects *every* problem (file, key path, what is wrong, a suggestion) before
raising one :class:`MatrixError`; loading reads only technique specs, never torch.

TOML shape (every key is optional; ``name`` defaults to the file name)::

    name = "demo"                        # lower case, digits, '_', '-'
    description = "what this compares"
    seeds = [0, 1, 2, 3, 4]              # or seeds = 5 (meaning 0..4); default [0]
    data_seeds = [0]                     # or an int, or "seed" (data seed = seed); default [0]

    [budget]                             # epochs and/or steps (max_steps), optional wall-time cap
    epochs = 10
    steps = 500                          # alias: max_steps
    max_seconds = 60
    batch_size = 128

    [target]                             # for time-to-target in reports
    metric = "val_acc"
    value = 0.9
    mode = "max"                         # or "min"

    [trainer]                            # accelerator, devices, precision, deterministic
    accelerator = "auto"
    precision = "bf16-mixed"             # Lightning's precision names
    memory_format = "channels_last"      # optional: NHWC convolutions ("contiguous" if unset)

    [health]                             # gradient-health instrumentation
    every_n_steps = 25                   # default; 1 = every step
    curvature = { every_n_steps = 50, iterations = 20, batch = 64 }  # opt-in sharpness probe

    [report]                             # how `techbench report` scores runs
    score = "final"                      # or "best" (best-validation epoch); default "final"
    min_effect = 0.005                   # optional: smallest score difference that matters

    [defaults]                           # one value per axis, for axes not swept
    optimizer = { name = "adam", lr = 0.001 }

    [axes]                               # the cartesian product
    dataset = ["digits", { name = "moons", n_samples = 2000 }]
    activation = ["relu", "tanh", "leaky_relu(alpha=0.2)", { name = "leaky_relu", alpha = [0.01, 0.1] }]

    [[exclude]]                          # prune the product: every key must match
    activation = "tanh"
    dataset = ["moons", "spirals"]       # a list matches any of its values

    [[include]]                          # extra trials: a sub-product, other axes from [defaults]
    activation = "selu"
    normalizer = "none"

    [tune]                               # fair comparisons: techbench.plan.tune
    budget = 16                          # search points per technique and context

    [scale]                              # a ladder of model sizes: techbench.plan.scale
    width = [1, 2, 4, 8]                 # multipliers of each model's width parameter
    budget = { tokens_per_parameter = 20 }   # or "fixed"; examples_per_parameter

Axes (keys of ``[axes]``, ``[defaults]``, ``[[include]]`` and ``[[exclude]]``):
``dataset``, ``model``, ``activation``, ``initializer``, ``bias_initializer`` (an initializer),
``normalizer``, ``norm_placement`` (``"before"``/``"after"`` the activation), ``regularizer``,
``optimizer``, ``schedule``, ``preprocessor``; exclude patterns may also name ``seed`` and
``data_seed``, and an include may set its own ``seeds``.

An axis value is a technique name, a ``"name(key=value, ...)"`` string, or a table
``{ name = ..., key = value }`` whose list values sweep that hyper-parameter; an axis may be one
value or a list of them. Technique names are looked up in the axis's family and every
hyper-parameter is validated against the spec (``spec.hyperparams``); values are stored coerced
(``lr = 1`` becomes ``1.0``) so equal configs hash equally. Exclude patterns match a technique by
name and by the parameters they give, compared with the spec's defaults filled in.

Expansion is a pure function of the spec: seeds (outer), data seeds, then the product of the
axes in the order above, each axis in the order written, sweeps in key order; excludes prune the
product only; includes follow, in file order; a config already produced is dropped. Each trial
config has every key of :data:`DEFAULT_CONFIG`; its id is :func:`trial_id`.
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
import re
import tomllib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import UsageError, did_you_mean
from ..schema import (
    AXES,
    AXIS_FAMILY,
    CURVATURE_BOUNDS,
    CURVATURE_DEFAULTS,
    DEFAULT_CONFIG,
    EPOCH_METRICS,
    NORM_PLACEMENTS,
    Trial,
    complete_config,
)
from ..techniques.spec import ParamError, TechniqueError, parse_technique_arg
from .scale import SCALE_FILTER_KEYS, scale_labels

__all__ = [
    "BUDGET_KEYS",
    "HEALTH_KEYS",
    "MAX_BATCH",
    "MAX_EPOCHS",
    "MAX_SECONDS",
    "MAX_SEEDS",
    "MAX_STEPS",
    "MAX_TRIALS",
    "MEMORY_FORMATS",
    "PATTERN_EXTRA",
    "REPORT_KEYS",
    "SCORE_RULES",
    "TARGET_KEYS",
    "TOP_KEYS",
    "TRAINER_KEYS",
    "Matrix",
    "MatrixError",
    "Problem",
    "axis_labels",
    "builtin_matrices",
    "config_labels",
    "describe_trial",
    "load_matrix",
    "load_matrix_dict",
    "loads_matrix",
    "matrix_path",
]

TOP_KEYS = (
    "name",
    "description",
    "seeds",
    "data_seeds",
    "budget",
    "target",
    "trainer",
    "health",
    "report",
    "defaults",
    "axes",
    "include",
    "exclude",
    "tune",
    "scale",
)
BUDGET_KEYS = ("epochs", "steps", "max_steps", "max_seconds", "batch_size")
TARGET_KEYS = ("metric", "value", "mode")
TRAINER_KEYS = ("accelerator", "devices", "precision", "deterministic", "memory_format")
MEMORY_FORMATS = ("contiguous", "channels_last")
"""``trainer.memory_format``; not in :data:`DEFAULT_CONFIG`, so trials that don't set it keep
their ids."""
HEALTH_KEYS = ("enabled", "every_n_steps", "curvature")
REPORT_KEYS = ("score", "min_effect")
SCORE_RULES = ("final", "best")
"""``[report] score``: the epoch a run is scored at (see :mod:`techbench.report.scoring`)."""
PATTERN_EXTRA = ("seed", "data_seed")
MAX_TRIALS = 100_000
MAX_SEEDS = 10_000
MAX_EPOCHS = 100_000
MAX_STEPS = 100_000_000
MAX_SECONDS = 7 * 24 * 3600
MAX_BATCH = 2**20
"""Upper bounds of the budget keys: beyond them a trial would never end (or never start), so
they are typos (``epochs = 99999999999999999999``), not plans."""
_NAME = re.compile(r"[a-z0-9][a-z0-9_\-]*")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a matrix: where (file, key path), what, and what to do instead."""

    source: str
    path: str
    message: str
    suggestion: str = ""

    def __str__(self) -> str:
        where = f"{self.source}: {self.path}: " if self.path else f"{self.source}: "
        return where + self.message + (f" ({self.suggestion})" if self.suggestion else "")


class MatrixError(UsageError):
    """A matrix spec is invalid; ``problems`` lists every problem found (one per line in str)."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def _label(value: Any) -> str:
    if isinstance(value, Mapping):
        params = value.get("params") or {}
        if not params:
            return str(value["name"])
        return f"{value['name']}(" + ", ".join(f"{k}={v!r}" for k, v in params.items()) + ")"
    return str(value)


@dataclass
class Matrix:
    """A validated matrix spec; :meth:`trials` is its (pure, ordered) expansion."""

    name: str
    source: str
    description: str = ""
    seeds: list[int] = field(default_factory=lambda: [0])
    data_seeds: list[int] | str = field(default_factory=lambda: [0])
    budget: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_CONFIG["budget"]))
    target: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_CONFIG["target"]))
    trainer: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_CONFIG["trainer"]))
    health: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_CONFIG["health"]))
    report: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    axes: dict[str, list[Any]] = field(default_factory=dict)
    include: list[dict[str, Any]] = field(default_factory=list)
    exclude: list[dict[str, list[Any]]] = field(default_factory=list)
    spec_defaults: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict, repr=False)
    tune: Any = None  # a techbench.plan.tune.TuneSpec when the matrix has [tune]
    seed_plan: Any = None  # a techbench.plan.seedplan.SeedPlan when the matrix has [seeds] plan
    scale: Any = None  # a techbench.plan.scale.ScaleSpec when the matrix has [scale]
    only: dict[str, list[str]] = field(default_factory=dict)
    """Narrowing (``--filter``): keep the configs whose value on each key has one of these labels
    (:func:`axis_labels`); for a tuned matrix it applies before the search, so to both phases."""

    def _seed_pairs(self, seeds: Sequence[int]) -> list[tuple[int, int]]:
        if self.data_seeds == "seed":
            return [(s, s) for s in seeds]
        assert isinstance(self.data_seeds, list)
        return [(s, d) for s in seeds for d in self.data_seeds]

    def _base(self) -> dict[str, Any]:
        sections = {"budget": self.budget, "target": self.target, "trainer": self.trainer}
        return complete_config({**self.defaults, **sections, "health": self.health})

    def _excluded(self, config: Mapping[str, Any]) -> bool:
        return any(
            all(self._matches(k, config[k], vs) for k, vs in p.items()) for p in self.exclude
        )

    def _matches(self, key: str, actual: Any, options: list[Any]) -> bool:
        for want in options:
            if not isinstance(want, Mapping):
                if actual == want:
                    return True
                continue
            if actual["name"] != want["name"]:
                continue
            fam = AXIS_FAMILY[key]
            have = {**self.spec_defaults.get((fam, actual["name"]), {}), **actual["params"]}
            if all(have.get(k) == v for k, v in want["params"].items()):
                return True
        return False

    def _product(
        self, axes: Mapping[str, list[Any]], seeds: Sequence[int], prune: bool
    ) -> list[dict]:
        base = self._base()
        names = [a for a in AXES if a in axes]
        out = []
        for seed, data_seed in self._seed_pairs(seeds):
            for combo in itertools.product(*(axes[a] for a in names)):
                config = copy.deepcopy(base)
                config.update(copy.deepcopy(dict(zip(names, combo, strict=True))))
                config["seed"], config["data_seed"] = seed, data_seed
                if prune and self._excluded(config):
                    continue
                out.append(config)
        return out

    def planned(self) -> list[Trial]:
        """The trials (id + complete config), in a stable order, without duplicates; with
        ``[tune]``, the search trials (the finals follow from their results:
        :mod:`techbench.plan.tune`). The one place a matrix's trials get their ids."""
        if self.tune is not None:
            return self.tune_plan().search_trials()
        return self._expand()

    def trials(self) -> list[dict[str, Any]]:
        """The configs of :meth:`planned` (for callers that want plain dicts)."""
        return [t.config for t in self.planned()]

    def tune_plan(self) -> Any:
        """The :class:`techbench.plan.tune.TunePlan` of a tuned matrix (groups, points, seeds)."""
        from .tune import build_plan

        untuned = copy.copy(self)
        untuned.tune, untuned.seeds, untuned.only = None, [0], {}
        bases = [t.config for t in untuned._expand()]
        follow = self.data_seeds == "seed"
        if self.scale is None:
            return build_plan(self.tune, bases, follow, self._kept)
        zero = self.scale.rung_zero(untuned._configs())
        return build_plan(self.tune, bases, follow, self._kept, zero, self.scale.transfer)

    def unfiltered(self) -> list[dict[str, Any]]:
        """The configs ``--filter`` chooses from: an untuned matrix's trials without
        :attr:`only`; for a tuned one, each technique in each context at seed 0."""
        whole = copy.copy(self)
        whole.only = {}
        if self.tune is not None:
            whole.tune, whole.seeds = None, [0]
        return [t.config for t in whole._expand()]

    def _configs(self) -> list[dict[str, Any]]:
        """The product and the includes, before a scale ladder crosses them."""
        configs = self._product(self.axes, self.seeds, prune=True)
        for inc in self.include:
            seeds = inc.get("seeds", self.seeds)
            axes = {k: v for k, v in inc.items() if k != "seeds"}
            configs.extend(self._product(axes, seeds, prune=False))
        return configs

    def _expand(self) -> list[Trial]:
        configs = self._configs()
        if self.scale is not None:
            configs = self.scale.expand(configs)
        seen: set[str] = set()
        unique = []
        for config in configs:
            trial = Trial.of(config)
            if trial.id not in seen and self._kept(config):
                seen.add(trial.id)
                unique.append(trial)
        return unique

    def _kept(self, config: Mapping[str, Any]) -> bool:
        return all(config_labels(k, config) & set(wanted) for k, wanted in self.only.items())

    def describe(self, n_trials: int | None = None) -> dict[str, Any]:
        """JSON-safe summary (written to ``OUT/matrix.json``)."""
        return {
            "name": self.name,
            "source": self.source,
            "description": self.description,
            "seeds": self.seeds,
            "data_seeds": self.data_seeds,
            "budget": self.budget,
            "target": self.target,
            "trainer": self.trainer,
            "health": self.health,
            "report": self.report,
            "defaults": {k: _label(v) for k, v in self.defaults.items()},
            "axes": {k: [_label(v) for v in vs] for k, vs in self.axes.items()},
            "include": [
                {k: ([_label(x) for x in v] if k != "seeds" else v) for k, v in inc.items()}
                for inc in self.include
            ],
            "exclude": [{k: [_label(x) for x in v] for k, v in p.items()} for p in self.exclude],
            "n_trials": len(self.planned()) if n_trials is None else n_trials,
            **({"tune": self.tune.describe()} if self.tune is not None else {}),
            **({"seed_plan": vars(self.seed_plan)} if self.seed_plan is not None else {}),
            **({"scale": self.scale.describe()} if self.scale is not None else {}),
            **({"only": self.only} if self.only else {}),
        }


def axis_labels(key: str, value: Any) -> set[str]:
    """The labels a ``--filter`` value matches: a technique by name or full label
    (``adam``, ``techbench:adam``, ``adam(lr=0.003)``), anything else by its text (``seed=0``)."""
    if key in AXIS_FAMILY and isinstance(value, Mapping):
        return {str(value["name"]), _label(value), *_qualified(value["name"], AXIS_FAMILY[key])}
    return {str(value)}


@functools.cache
def _qualified(name: str, family: str) -> tuple[str, ...]:
    """``dist:name`` of a technique, so ``--filter regularizer=techbench:l2`` matches ``l2``."""
    from ..techniques.registry import default_registry

    try:
        return (default_registry().resolve(name, family).full_name,)
    except TechniqueError:
        return ()


def config_labels(key: str, config: Mapping[str, Any]) -> set[str]:
    """The labels ``--filter key=...`` matches in ``config``: :func:`axis_labels`, or a scale
    ladder's rung (``rung``, ``width_mult``, ``depth_mult``: :func:`techbench.plan.scale.scale_labels`)."""
    if key in SCALE_FILTER_KEYS:
        return scale_labels(key, config)
    return axis_labels(key, config[key])


def describe_trial(config: Mapping[str, Any], keys: Sequence[str] | None = None) -> str:
    """One line: ``activation=relu optimizer=adam(lr=0.001) seed=0`` (all axes unless ``keys``)."""
    keys = list(keys) if keys is not None else [*AXES, "seed", "data_seed"]
    return " ".join(f"{k}={_label(config[k])}" for k in keys)


class _Parser:
    def __init__(self, source: str, registry: Any) -> None:
        self.source = source
        self.problems: list[Problem] = []
        self.registry = registry
        self.spec_defaults: dict[tuple[str, str], dict[str, Any]] = {}

    def problem(self, path: str, message: str, suggestion: str = "") -> None:
        self.problems.append(Problem(self.source, path, message, suggestion))

    def unknown_keys(self, table: Mapping[str, Any], known: Sequence[str], path: str) -> None:
        for key in table:
            if key not in known:
                where = f"{path}.{key}" if path else str(key)
                hint = did_you_mean(str(key), known)
                if path and key in TOP_KEYS:
                    hint = f"{key!r} is a top-level key: move it above the first [table] header"
                self.problem(where, f"unknown key {key!r}", hint)

    def table(self, data: Mapping[str, Any], key: str) -> dict[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, Mapping):
            self.problem(key, f"must be a table, got {_kind(value)}", f"write [{key}] ...")
            return {}
        return dict(value)

    # scalars -------------------------------------------------------------------------------

    def int_value(
        self, value: Any, path: str, low: int, optional: bool = False, high: int | None = None
    ) -> int | None:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(path, f"must be an integer >= {low}, got {_kind(value)} {value!r}")
            return None
        if value < low:
            self.problem(path, f"must be >= {low}, got {value}")
            return None
        if high is not None and value > high:
            self.problem(path, f"must be <= {high}, got {value}", "a run this long never ends")
            return None
        return value

    def bool_into(self, raw: Mapping[str, Any], key: str, path: str, out: dict[str, Any]) -> None:
        """``out[key] = raw[key]`` when it is given and a boolean, else a problem at ``path``."""
        if key not in raw:
            return
        if isinstance(raw[key], bool):
            out[key] = raw[key]
        else:
            self.problem(path, f"must be true or false, got {raw[key]!r}")

    def seed_list(self, value: Any, path: str, allow_seed: bool = False) -> list[int] | str | None:
        if allow_seed and value == "seed":
            return "seed"
        if isinstance(value, int) and not isinstance(value, bool):
            if 1 <= value <= MAX_SEEDS:
                return list(range(value))
            self.problem(path, f"a seed count must be in [1, {MAX_SEEDS}], got {value}")
            return None
        if isinstance(value, list) and value:
            seeds = []
            for i, s in enumerate(value):
                if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**32:
                    self.problem(
                        f"{path}[{i}]", f"a seed must be an integer in [0, 2**32), got {s!r}"
                    )
                    return None
                seeds.append(s)
            if len(set(seeds)) != len(seeds):
                self.problem(path, "seeds must not repeat", f"got {seeds}")
                return None
            return seeds
        hint = "a count like 5, a non-empty list like [0, 1, 2]"
        hint += ', or "seed" to follow the seed' if allow_seed else ""
        self.problem(path, f"must be {hint}; got {_kind(value)} {value!r}")
        return None

    # sections ------------------------------------------------------------------------------

    def budget(self, data: Mapping[str, Any]) -> dict[str, Any]:
        raw = self.table(data, "budget")
        self.unknown_keys(raw, BUDGET_KEYS, "budget")
        out = dict(DEFAULT_CONFIG["budget"])
        if "steps" in raw and "max_steps" in raw:
            self.problem("budget.steps", "give steps or max_steps, not both", "they are aliases")
        steps = raw.get("steps", raw.get("max_steps"))
        skey = "budget.steps" if "steps" in raw else "budget.max_steps"
        if steps is not None:
            out["max_steps"] = self.int_value(steps, skey, 1, high=MAX_STEPS)
            if "epochs" not in raw:
                out["epochs"] = None
        if "epochs" in raw:
            out["epochs"] = self.int_value(raw["epochs"], "budget.epochs", 1, high=MAX_EPOCHS)
        if "batch_size" in raw:
            out["batch_size"] = self.int_value(
                raw["batch_size"], "budget.batch_size", 1, high=MAX_BATCH
            )
        if "max_seconds" in raw:
            secs = raw["max_seconds"]
            if isinstance(secs, bool) or not isinstance(secs, int | float) or not secs > 0:
                self.problem("budget.max_seconds", f"must be a number > 0, got {secs!r}")
            elif math.isinf(secs):
                out["max_seconds"] = None
            elif secs > MAX_SECONDS:
                self.problem("budget.max_seconds", f"must be <= {MAX_SECONDS} (7 days), got "
                             f"{secs!r}", "inf means no time cap")  # fmt: skip
            else:
                out["max_seconds"] = float(secs)
        if out["epochs"] is None and out["max_steps"] is None and not self.problems:
            self.problem("budget", "needs epochs or steps")
        return out

    def target(self, data: Mapping[str, Any]) -> dict[str, Any]:
        raw = self.table(data, "target")
        self.unknown_keys(raw, TARGET_KEYS, "target")
        out = dict(DEFAULT_CONFIG["target"])
        if "metric" in raw:
            m = raw["metric"]
            if not isinstance(m, str) or not m:
                self.problem("target.metric", f"must be a metric name like 'val_acc', got {m!r}")
            elif m not in EPOCH_METRICS:
                self.problem(
                    "target.metric", f"unknown metric {m!r}", did_you_mean(m, EPOCH_METRICS)
                )
            else:
                out["metric"] = m
        if "value" in raw:
            v = raw["value"]
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                self.problem("target.value", f"must be a finite number, got {v!r}")
            else:
                out["value"] = float(v)
        if "mode" in raw:
            mode = raw["mode"]
            if mode not in ("max", "min"):
                self.problem("target.mode", f"must be 'max' or 'min', got {mode!r}")
            else:
                out["mode"] = mode
        elif "metric" in raw and str(out["metric"]).endswith("loss"):
            out["mode"] = "min"
        return out

    def trainer(self, data: Mapping[str, Any]) -> dict[str, Any]:
        raw = self.table(data, "trainer")
        self.unknown_keys(raw, TRAINER_KEYS, "trainer")
        out = dict(DEFAULT_CONFIG["trainer"])
        for key in ("accelerator", "precision"):
            if key in raw:
                if isinstance(raw[key], str) and raw[key]:
                    out[key] = raw[key]
                else:
                    self.problem(f"trainer.{key}", f"must be a non-empty string, got {raw[key]!r}")
        if "devices" in raw:
            d = raw["devices"]
            if d == "auto" or (isinstance(d, int) and not isinstance(d, bool) and d >= 1):
                out["devices"] = d
            else:
                self.problem("trainer.devices", f"must be an integer >= 1 or 'auto', got {d!r}")
        if "memory_format" in raw:
            if raw["memory_format"] in MEMORY_FORMATS:
                out["memory_format"] = raw["memory_format"]
            else:
                self.problem(
                    "trainer.memory_format",
                    f"must be one of {', '.join(MEMORY_FORMATS)}, got {raw['memory_format']!r}",
                )
        self.bool_into(raw, "deterministic", "trainer.deterministic", out)
        return out

    def health(self, data: Mapping[str, Any]) -> dict[str, Any]:
        raw = self.table(data, "health")
        self.unknown_keys(raw, HEALTH_KEYS, "health")
        out = dict(DEFAULT_CONFIG["health"])
        self.bool_into(raw, "enabled", "health.enabled", out)
        if "every_n_steps" in raw:
            out["every_n_steps"] = self.int_value(
                raw["every_n_steps"], "health.every_n_steps", 1, high=MAX_STEPS
            )
        if "curvature" in raw:
            out["curvature"] = self.curvature(raw["curvature"])
        return out

    def curvature(self, raw: Any) -> dict[str, int] | None:
        """``[health] curvature``: a table of :data:`CURVATURE_DEFAULTS` keys (stored with every
        default filled, so equal probes hash equally), ``true`` (the defaults) or ``false``."""
        if isinstance(raw, bool):
            return dict(CURVATURE_DEFAULTS) if raw else None
        if not isinstance(raw, Mapping):
            self.problem(
                "health.curvature",
                f"must be a table, true or false, got {_kind(raw)}",
                "curvature = { every_n_steps = 50, iterations = 20, batch = 64 }",
            )
            return None
        self.unknown_keys(raw, tuple(CURVATURE_DEFAULTS), "health.curvature")
        out = dict(CURVATURE_DEFAULTS)
        for key, (low, high) in CURVATURE_BOUNDS.items():
            if key in raw:
                value = self.int_value(raw[key], f"health.curvature.{key}", low, high=high)
                if value is not None:
                    out[key] = value
        self.bool_into(raw, "plain", "health.curvature.plain", out)
        return out

    def report(self, data: Mapping[str, Any]) -> dict[str, Any]:
        raw = self.table(data, "report")
        self.unknown_keys(raw, REPORT_KEYS, "report")
        if "score" in raw and raw["score"] not in SCORE_RULES:
            self.problem("report.score", f"must be one of {SCORE_RULES}, got {raw['score']!r}")
            return {}
        effect = raw.get("min_effect", 1.0)
        if (
            isinstance(effect, bool)
            or not isinstance(effect, int | float)
            or not 0 < effect < math.inf
        ):
            self.problem("report.min_effect", f"must be a positive number, got {effect!r}")
            return {}
        return {k: raw[k] for k in REPORT_KEYS if k in raw}

    # axis values ---------------------------------------------------------------------------

    def spec(self, axis: str, name: str, path: str) -> Any:
        family = AXIS_FAMILY[axis]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                spec = self.registry.get_spec(name, family)
        except TechniqueError as exc:
            self.problem(path, str(exc))
            return None
        self.spec_defaults[(family, self.config_name(axis, name, spec))] = spec.defaults()
        return spec

    def config_name(self, axis: str, name: str, spec: Any) -> str:
        """The name a trial's config records (``Registry.config_name``: plain for a built-in,
        ``dist:name`` for a third-party technique named so); a registry without it (a test's
        dictionary of specs) records the spec's name."""
        recorded = getattr(self.registry, "config_name", None)
        return spec.name if recorded is None else str(recorded(name, AXIS_FAMILY[axis]))

    def param(self, spec: Any, key: str, value: Any, path: str) -> tuple[bool, Any]:
        known = [p.name for p in spec.params]
        if key not in known:
            hint = did_you_mean(key, known) if known else f"{spec.name} has no hyper-parameters"
            self.problem(path, f"unknown parameter {key!r} of {spec.qualified_name}", hint)
            return False, None
        try:
            return True, spec.param(key).validate(spec.qualified_name, value)
        except ParamError as exc:
            self.problem(path, str(exc))
            return False, None

    def axis_values(self, axis: str, raw: Any, path: str, sweep: bool) -> list:
        """Canonical values of one axis entry (a value or a list); ``sweep`` allows lists."""
        items = raw if isinstance(raw, list) else [raw]
        if isinstance(raw, list) and not sweep:
            self.problem(path, "must be a single value here, not a list", "sweep values in [axes]")
            return []
        if not items:
            self.problem(path, "must not be an empty list", "remove the axis to use the default")
            return []
        out: list[Any] = []
        for i, item in enumerate(items):
            where = f"{path}[{i}]" if isinstance(raw, list) else path
            out.extend(self.axis_value(axis, item, where, sweep))
        return out

    def axis_value(self, axis: str, item: Any, path: str, sweep: bool) -> list:
        if axis == "norm_placement":
            if item in NORM_PLACEMENTS:
                return [item]
            hint = did_you_mean(str(item), NORM_PLACEMENTS)
            self.problem(path, f"norm_placement must be 'before' or 'after', got {item!r}", hint)
            return []
        if isinstance(item, str):
            try:
                name, params = parse_technique_arg(item)
            except ParamError as exc:
                self.problem(path, str(exc))
                return []
            table: dict[str, Any] = {"name": name, **params}
        elif isinstance(item, Mapping):
            table = dict(item)
            if not isinstance(table.get("name"), str):
                got = "no name" if "name" not in table else f"name {table['name']!r}"
                self.problem(path, f'a technique table needs name = "...", got {got}')
                return []
        else:
            self.problem(
                path,
                f"must be a technique name or a table {{ name = ... }}, got {_kind(item)} {item!r}",
            )
            return []
        name = table.pop("name")
        spec = self.spec(axis, name, f"{path}.name" if isinstance(item, Mapping) else path)
        if spec is None:
            return []
        name = self.config_name(axis, name, spec)
        choices: list[list[tuple[str, Any]]] = []
        ok = True
        for key, value in table.items():
            where = f"{path}.{key}"
            values = value if isinstance(value, list) else [value]
            if isinstance(value, list) and not sweep:
                self.problem(
                    where, "a list sweeps a hyper-parameter, which is allowed only in [axes]"
                )
                ok = False
                continue
            if isinstance(value, list) and not value:
                self.problem(where, "an empty sweep", "give at least one value")
                ok = False
                continue
            column: list[tuple[str, Any]] = []
            for j, v in enumerate(values):
                good, coerced = self.param(
                    spec, key, v, f"{where}[{j}]" if isinstance(value, list) else where
                )
                ok = ok and good
                if good and coerced not in [c for _, c in column]:
                    column.append((key, coerced))
            choices.append(column)
        if not ok:
            return []
        return [{"name": name, "params": dict(combo)} for combo in itertools.product(*choices)]

    def axes_table(self, raw: Any, path: str, sweep: bool, extra: Sequence[str] = ()) -> dict:
        if not isinstance(raw, Mapping):
            self.problem(path, f"must be a table, got {_kind(raw)}")
            return {}
        known = [*AXES, *extra]
        self.unknown_keys(raw, known, path)
        out: dict[str, Any] = {}
        for axis in AXES:
            if axis in raw:
                values = self.axis_values(axis, raw[axis], f"{path}.{axis}", sweep)
                if values:
                    out[axis] = values if sweep else values[0]
        return out

    def pattern(self, raw: Any, path: str) -> dict[str, list[Any]]:
        if not isinstance(raw, Mapping) or not raw:
            self.problem(path, "must be a non-empty table of axis = value(s)")
            return {}
        self.unknown_keys(raw, [*AXES, *PATTERN_EXTRA], path)
        out: dict[str, list[Any]] = {}
        for key, value in raw.items():
            where = f"{path}.{key}"
            if key in PATTERN_EXTRA:
                vals = value if isinstance(value, list) else [value]
                if any(isinstance(v, bool) or not isinstance(v, int) for v in vals) or not vals:
                    self.problem(where, f"must be an integer or a list of integers, got {value!r}")
                else:
                    out[key] = vals
            elif key in AXES:
                items = value if isinstance(value, list) else [value]
                vals = []
                for i, item in enumerate(items):
                    w = f"{where}[{i}]" if isinstance(value, list) else where
                    vals.extend(self.axis_value(key, item, w, sweep=True))
                if vals:
                    out[key] = vals
        return out


def _kind(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def load_matrix_dict(
    data: Mapping[str, Any], source: str = "<matrix>", registry: Any = None
) -> Matrix:
    """Validate a parsed TOML document; raise :class:`MatrixError` listing every problem."""
    if registry is None:
        from ..techniques.registry import default_registry

        registry = default_registry()
    p = _Parser(source, registry)
    if not isinstance(data, Mapping):
        raise MatrixError([Problem(source, "", f"a matrix must be a table, got {_kind(data)}")])
    p.unknown_keys(data, TOP_KEYS, "")
    name = data.get("name")
    if name is None:
        stem = Path(source).stem
        name = stem if _NAME.fullmatch(stem or "") else None
        if name is None:
            p.problem("name", "missing", 'add name = "my-matrix"')
    elif not isinstance(name, str) or not _NAME.fullmatch(name):
        p.problem("name", f"must be lower case letters, digits, '_' or '-', got {name!r}")
    description = data.get("description", "")
    if not isinstance(description, str):
        p.problem("description", f"must be a string, got {_kind(description)}")
        description = ""
    seeds, seed_plan = _seeds(p, data.get("seeds", [0]))
    data_seeds = p.seed_list(data.get("data_seeds", [0]), "data_seeds", allow_seed=True)
    budget = p.budget(data)
    target = p.target(data)
    trainer = p.trainer(data)
    health = p.health(data)
    report = p.report(data)
    defaults = p.axes_table(data.get("defaults", {}), "defaults", sweep=False)
    axes = p.axes_table(data.get("axes", {}), "axes", sweep=True)
    include: list[dict[str, Any]] = []
    exclude: list[dict[str, list[Any]]] = []
    for key, target_list in (("include", include), ("exclude", exclude)):
        raw = data.get(key, [])
        if not isinstance(raw, list):
            p.problem(key, f"must be an array of tables, got {_kind(raw)}", f"write [[{key}]]")
            continue
        for i, entry in enumerate(raw):
            path = f"{key}[{i}]"
            if key == "exclude":
                pat = p.pattern(entry, path)
                if pat:
                    target_list.append(pat)
                continue
            inc = p.axes_table(entry, path, sweep=True, extra=("seeds",))
            if isinstance(entry, Mapping) and "seeds" in entry:
                s = p.seed_list(entry["seeds"], f"{path}.seeds")
                if s is not None:
                    inc["seeds"] = s
            if isinstance(entry, Mapping) and not entry:
                p.problem(path, "an empty include adds nothing", "name at least one axis")
            target_list.append(inc)
    if not p.problems and not any(data.get(k) for k in ("axes", "defaults", "include")):
        p.problem("axes", "the matrix names nothing to run (no [axes], [defaults] or [[include]])",
                  'e.g. [axes] activation = ["relu", "tanh"]')  # fmt: skip
    tune = None
    if "tune" in data:
        from .tune import parse_tune

        tune = parse_tune(
            p, data["tune"], _axis_techniques(axes, defaults, include), target, "seeds" in data
        )
    scale = None
    if "scale" in data:
        from .scale_parse import ladder_models, parse_scale

        given = data["budget"] if isinstance(data.get("budget"), Mapping) else {}
        datasets = _axis_techniques(axes, defaults, include)["dataset"]
        models = ladder_models(axes, defaults, include)
        scale = parse_scale(p, data["scale"], models, datasets, "tune" in data, given)
        if scale is not None and scale.rule != "fixed" and "epochs" not in given:
            budget["epochs"] = None
    if not p.problems:
        n_seeds = len(seeds or []) * (1 if data_seeds == "seed" else len(data_seeds or []))
        total = n_seeds * math.prod(len(v) for v in axes.values())
        for inc in include:
            n_inc = len(inc.get("seeds", seeds or []))
            total += n_inc * math.prod(len(v) for k, v in inc.items() if k != "seeds")
        if tune is not None:
            total *= tune.budget * len(tune.seeds) * tune.studies
        if scale is not None:
            total *= scale.rungs
        if total > MAX_TRIALS:
            p.problem(
                "axes", f"expands to {total} trials, more than {MAX_TRIALS}", "split the matrix"
            )
    if p.problems:
        raise MatrixError(p.problems)
    return Matrix(
        name=str(name),
        source=source,
        description=description,
        seeds=[int(x) for x in seeds or []],
        data_seeds=data_seeds if data_seeds is not None else [0],
        budget=budget,
        target=target,
        trainer=trainer,
        health=health,
        report=report,
        defaults=defaults,
        axes=axes,
        include=include,
        exclude=exclude,
        spec_defaults=p.spec_defaults,
        tune=tune,
        seed_plan=seed_plan,
        scale=scale,
    )


def _seeds(p: _Parser, raw: Any) -> tuple[list[int] | str | None, Any]:
    """``seeds``: a list, a count, or ``[seeds] plan = {...}`` (a two-stage seed plan,
    :mod:`techbench.plan.seedplan`: the pilot seeds run first)."""
    if not isinstance(raw, Mapping):
        return p.seed_list(raw, "seeds"), None
    from .seedplan import parse_values

    p.unknown_keys(raw, ["plan"], "seeds")
    if "plan" not in raw:
        p.problem("seeds", "a [seeds] table takes plan = { pilot = 5, max = 40, power = 0.8 }")
        return None, None
    plan, problems = parse_values(raw["plan"])
    for key, what in problems:
        p.problem(f"seeds.plan{'.' + key if key else ''}", what)
    return (list(range(plan.pilot)) if plan else None), plan


def _axis_techniques(
    axes: Mapping[str, list[Any]], defaults: Mapping[str, Any], include: Sequence[Mapping]
) -> dict[str, list[str]]:
    """Technique names that can appear on each technique axis, in first-seen order."""
    out: dict[str, list[str]] = {}
    for axis in AXIS_FAMILY:
        values = list(axes.get(axis, []))
        for inc in include:
            values.extend(inc.get(axis, []))
        if axis not in axes:
            values.append(defaults.get(axis, DEFAULT_CONFIG[axis]))
        names = [v["name"] for v in values if isinstance(v, Mapping)]
        out[axis] = list(dict.fromkeys(names))
    return out


def builtin_matrices() -> list[str]:
    """Names of the ready-made matrices shipped as package data."""
    root = resources.files("techbench") / "matrices"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def _read_matrix_text(path: Path) -> str:
    """The file's text (a UTF-8 byte-order mark dropped); one :class:`Problem` when unreadable."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MatrixError([Problem(str(path), "", f"cannot read: {exc.strerror or exc}")]) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise MatrixError(
            [
                Problem(
                    str(path),
                    "",
                    f"not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line})",
                    "save the file as UTF-8",
                )
            ]
        ) from None


def matrix_path(name_or_path: str | Path) -> tuple[str, str]:
    """``(source label, TOML text)`` of a matrix file or of a ready-made matrix by name.

    A file wins over a ready-made matrix of the same name, a ready-made matrix over a folder
    (``--out demo`` makes a folder ``demo`` that must not hide the matrix ``demo``)."""
    path = Path(name_or_path)
    names = builtin_matrices()
    folder_only = path.is_dir() and str(name_or_path) in names
    if not folder_only and (path.suffix == ".toml" or path.exists() or "/" in str(name_or_path)):
        if path.is_dir():
            raise MatrixError(
                [Problem(str(path), "", "is a folder, not a matrix file", "give a .toml file")]
            )
        return str(path), _read_matrix_text(path)
    if str(name_or_path) not in names:
        raise MatrixError(
            [
                Problem(
                    str(name_or_path),
                    "",
                    "no such matrix file or ready-made matrix",
                    did_you_mean(str(name_or_path), names),
                )
            ]
        )
    res = resources.files("techbench") / "matrices" / f"{name_or_path}.toml"
    return f"{name_or_path}.toml", res.read_text(encoding="utf-8")


def load_matrix(name_or_path: str | Path, registry: Any = None) -> Matrix:
    """Load and validate a matrix file, or a ready-made matrix by name (``"smoke"``)."""
    source, text = matrix_path(name_or_path)
    return loads_matrix(text, source, registry)


def loads_matrix(text: str, source: str = "<matrix>", registry: Any = None) -> Matrix:
    """Parse TOML text and validate it (see :func:`load_matrix_dict`)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MatrixError([Problem(source, "", f"invalid TOML: {exc}")]) from None
    return load_matrix_dict(data, source, registry)
