"""Scale ladders: cross a matrix with rungs of model width (and depth), each with its budget.

A ``[scale]`` section asks whether a technique's win, and its tuned hyper-parameters, hold as
the model grows (issue 24)::

    [scale]
    width = [1, 2, 4, 8]                     # multipliers of the model's width parameter
    depth = [1, 1, 2, 2]                     # optional; one per rung, like width
    budget = { tokens_per_parameter = 20 }   # or "fixed" (default), or examples_per_parameter
    transfer = "base"                        # with [tune]: "retune" (default) or "base"

Rung ``r`` (0 = the smallest) multiplies the hyper-parameter the model spec names in
``properties["scale_params"]`` (``{"width": "width", "depth": "depth"}``; ``channels`` for the
CNN) by ``width[r]`` (and ``depth[r]``), rounded half up, starting from the value the matrix
gives (the model axis as written, or the spec's default); every model of the matrix must declare
the parameters the ladder scales. Each trial's config carries ``scale = {"rung", "width_mult",
"depth_mult"}`` (:data:`techbench.schema.DEFAULT_CONFIG`; left out of the hash outside a ladder,
so matrices without ``[scale]`` keep their ids); rung-major expansion order, so the small rungs
run first. Trials of different rungs never share a stack (the model differs, and so does the
``scale`` key of :func:`techbench.plan.stacking.stack_key`).

Budget per rung: ``"fixed"`` keeps the matrix's ``[budget]`` at every rung. A proportional rule
sets each trial's steps from its own parameter count N: ``examples_per_parameter = R`` trains
``ceil(R N / batch_size)`` steps, ``tokens_per_parameter = R`` (language models only)
``ceil(R N / (batch_size x context))`` steps, Hoffmann et al. 2022 ("Training compute-optimal
large language models", arXiv 2203.15556: about 20 tokens per parameter). N counts every
parameter of the trial's network (the engine's ``num_parameters``), built on the meta device
with the trial's own techniques from the dataset's shapes, so no weights are allocated. A
``[budget] epochs`` given beside a proportional rule caps it (``--epochs`` too).

With ``[tune]``, ``transfer = "retune"`` searches and selects at every rung on that rung's
validation; ``"base"`` searches only rung 0 and every rung's finals take rung 0's selection
(:func:`techbench.plan.tune.build_plan`): a comparison of the two says whether a technique's
tuned settings transfer (standard vs muP parametrization, Yang et al. 2021, arXiv 2203.03466).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from ..errors import UsageError
from ..schema import AXIS_FAMILY, training_flops, trial_id

__all__ = [
    "BUDGET_RULES",
    "SCALE_FILTER_KEYS",
    "SCALE_KEYS",
    "TRANSFERS",
    "ScaleSpec",
    "describe_rungs",
    "scale_labels",
    "scaled_value",
]

SCALE_KEYS = ("width", "depth", "budget", "transfer")
BUDGET_RULES = ("tokens_per_parameter", "examples_per_parameter")
TRANSFERS = ("retune", "base")
SCALE_FILTER_KEYS = ("rung", "width_mult", "depth_mult")
"""``--filter`` keys of a ladder's trials (read from their config's ``scale``)."""
MAX_RUNGS = 64
_COUNTED = ("dataset", "data_seed", "model", "activation", "normalizer", "norm_placement",
            "regularizer")  # fmt: skip
"""The config keys a network's parameter count depends on."""


def scaled_value(base: int, mult: float) -> int:
    """``base x mult`` rounded half up (Python's ``round`` would round 2.5 to 2)."""
    return math.floor(base * mult + 0.5)


@dataclass(frozen=True)
class ScaleSpec:
    """A validated ``[scale]`` section (see the module docstring).

    ``params[model name][kind]`` = (hyper-parameter, spec default) for kind "width"/"depth";
    ``rule`` is "fixed" or one of :data:`BUDGET_RULES` with its ``ratio``; ``transfer`` is None
    without ``[tune]``. ``registry`` and ``source`` serve the parameter count (its failures name
    the matrix file)."""

    width: tuple[float, ...]
    depth: tuple[float, ...]
    params: Mapping[str, Mapping[str, tuple[str, Any]]]
    rule: str = "fixed"
    ratio: float = 0.0
    transfer: str | None = None
    source: str = "<matrix>"
    registry: Any = field(default=None, compare=False, repr=False)
    _cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def rungs(self) -> int:
        return len(self.width or self.depth)

    def mults(self, rung: int) -> tuple[float, float]:
        """``(width_mult, depth_mult)`` of ``rung`` (1.0 for a kind the ladder leaves alone)."""
        w = self.width[rung] if self.width else 1.0
        d = self.depth[rung] if self.depth else 1.0
        return float(w), float(d)

    def apply(self, config: Mapping[str, Any], rung: int) -> dict[str, Any]:
        """``config`` (complete) at ``rung``: its model scaled, its ``scale`` key and budget."""
        out = copy.deepcopy(dict(config))
        wm, dm = self.mults(rung)
        model = out["model"]
        for kind, mult, given in (("width", wm, self.width), ("depth", dm, self.depth)):
            if given:
                name, default = self.params[model["name"]][kind]
                model["params"][name] = scaled_value(model["params"].get(name, default), mult)
        out["scale"] = {"rung": rung, "width_mult": wm, "depth_mult": dm}
        if self.rule != "fixed":
            out["budget"] = {**out["budget"], "max_steps": self.rule_steps(out)}
        return out

    def expand(self, configs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Every config at every rung, rung-major."""
        return [self.apply(c, r) for r in range(self.rungs) for c in configs]

    def rung_zero(self, configs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        """``trial id of config at rung r -> the config at rung 0``, for each config and rung
        (what :func:`techbench.plan.tune.build_plan` transfers from and labels contexts by)."""
        out = {}
        for config in configs:
            zero = self.apply(config, 0)
            for r in range(self.rungs):
                out[trial_id(self.apply(config, r) if r else zero)] = zero
        return out

    def describe(self) -> dict[str, Any]:
        """JSON-safe summary (in ``matrix.json``)."""
        return {
            "width": list(self.width),
            "depth": list(self.depth),
            "budget": "fixed" if self.rule == "fixed" else {self.rule: self.ratio},
            **({"transfer": self.transfer} if self.transfer else {}),
        }

    # parameter counts and budgets -----------------------------------------------------------

    def rule_steps(self, config: Mapping[str, Any]) -> int:
        """Steps of the proportional rule for ``config``: ``ceil(ratio N / per step)``."""
        per_step = int(config["budget"]["batch_size"]) * self.per_example(config)
        return max(1, math.ceil(self.ratio * self.count(config) / per_step))

    def per_example(self, config: Mapping[str, Any]) -> int:
        """Tokens per example under the tokens rule (a language model's context), else 1."""
        shape, _, task = self.facts(config)
        return int(shape[0]) if task == "language_model" and self.rule == BUDGET_RULES[0] else 1

    def count(self, config: Mapping[str, Any]) -> int:
        """Parameters of ``config``'s network (cached per network)."""
        key = "n" + json.dumps({k: config[k] for k in _COUNTED}, sort_keys=True)
        if key not in self._cache:
            self._cache[key] = self._build_count(config)
        return int(self._cache[key])

    def facts(self, config: Mapping[str, Any]) -> tuple[tuple[int, ...], int, str]:
        """``(input_shape, num_outputs, task)`` of ``config``'s dataset (loaded once)."""
        key = "d" + json.dumps([config["dataset"], config["data_seed"]], sort_keys=True)
        if key not in self._cache:
            ds = config["dataset"]
            try:
                spec = self._registry().get_spec(ds["name"], "dataset")
                splits = spec.create(int(config["data_seed"]), **ds["params"])
            except Exception as exc:
                self._fail(f"cannot load dataset {ds['name']!r} to count parameters: {exc}")
            self._cache[key] = (tuple(splits.input_shape), int(splits.num_outputs), splits.task)
            self._cache["t" + key] = len(splits.x_train)
        return self._cache[key]

    def train_examples(self, config: Mapping[str, Any]) -> int:
        """Training examples (windows for a language model) of ``config``'s dataset."""
        self.facts(config)
        key = "d" + json.dumps([config["dataset"], config["data_seed"]], sort_keys=True)
        return int(self._cache["t" + key])

    def _registry(self) -> Any:
        if self.registry is not None:
            return self.registry
        from ..techniques.registry import default_registry

        return default_registry()

    def _fail(self, message: str) -> NoReturn:
        first = (str(message).strip().splitlines() or [""])[0]
        raise UsageError(f"{self.source}: scale: {first}")

    def _build_count(self, config: Mapping[str, Any]) -> int:
        """Build the network as the engine does (``engine.trial.build_model``: the trial's
        activation, normalizer and regularizer module; initializers skipped, they add no
        parameters) on the meta device, else on the CPU, and count its parameters."""
        import torch

        from ..techniques.families import trial_parts

        shape, outputs, _ = self.facts(config)
        get = self._registry().get_spec
        p = {k: config[k]["params"] for k in AXIS_FAMILY}
        try:
            specs = {k: get(config[k]["name"], k) for k in ("activation", "normalizer")}
            reg = get(config["regularizer"]["name"], "regularizer").create(**p["regularizer"])
            model_spec = get(config["model"]["name"], "model")
            parts = trial_parts(config, specs, reg, _untouched, _untouched)
        except Exception as exc:
            self._fail(f"model {config['model']['name']!r}: {exc}")
        for device in ("meta", "cpu"):
            try:
                with torch.device(device):
                    model = model_spec.create(shape, outputs, parts, **p["model"])
                return sum(q.numel() for q in model.parameters())
            except Exception as exc:
                error = exc
        label = f"{config['model']['name']}({config['model']['params']})"
        self._fail(f"cannot build model {label} to count its parameters: {error}")


def _untouched(tensor: Any) -> None:
    """An initializer that leaves the tensor as made (meta tensors hold no values)."""


def scale_labels(key: str, config: Mapping[str, Any]) -> set[str]:
    """What ``--filter rung=2`` (``width_mult=4``, ``depth_mult=1``) matches in ``config``."""
    scale = config.get("scale")
    if not scale:
        return set()
    value = scale[key]
    labels = {str(value)}
    if isinstance(value, float) and value.is_integer():
        labels.add(str(int(value)))
    return labels


# -- dry run ----------------------------------------------------------------------------------


def describe_rungs(
    scale: ScaleSpec,
    trials: Sequence[Any],
    networks: Sequence[Mapping[str, Any]],
    finals: Callable[[int], int] | None = None,
) -> list[str]:
    """``--dry-run`` lines: per rung its multipliers, the parameter counts, budget and compute
    of the rung's ``networks`` (the matrix's configs at every rung, unfiltered), and its number
    of ``trials`` (a tuned matrix's search trials, and ``finals(rung)`` final trials)."""
    n_trials = [0] * scale.rungs
    for t in trials:
        n_trials[int(getattr(t, "config", t)["scale"]["rung"])] += 1
    by_rung: list[list[Mapping[str, Any]]] = [[] for _ in range(scale.rungs)]
    for c in networks:
        by_rung[int(c["scale"]["rung"])].append(c)
    rule = "fixed" if scale.rule == "fixed" else f"{scale.ratio:g} {scale.rule.replace('_', ' ')}"
    head = f"scale: {scale.rungs} rungs, budget {rule}"
    head += f", transfer {scale.transfer}" if scale.transfer else ""
    rows = [["rung", "width", "depth", "parameters", "budget", "compute (6ND)"]]
    rows[0] += ["search", "finals"] if finals is not None else ["trials"]
    for r, configs in enumerate(by_rung):
        wm, dm = scale.mults(r)
        counts, steps, flops = _counted(scale, configs)
        row = [str(r), f"x{wm:g}", f"x{dm:g}", _span(counts), _budget_text(configs, steps)]
        row += [_span(flops, "{:.2g}"), str(n_trials[r])]
        rows.append(row + ([str(finals(r))] if finals is not None else []))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    table = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return [head, *("  " + line.rstrip() for line in table)]


def _counted(scale: ScaleSpec, configs: Sequence[Mapping[str, Any]]) -> tuple[list, list, list]:
    """Parameter counts, steps (where the budget fixes them) and compute of distinct networks."""
    counts, steps, flops = [], [], []
    for c in configs:
        try:
            n = scale.count(c)
        except Exception:  # a dataset not on this machine: the table says "?"
            continue
        counts.append(n)
        budget = c["budget"]
        s = budget.get("max_steps") if budget.get("epochs") is None else None
        if s is not None:
            steps.append(s)
            per = int(budget["batch_size"]) * _tokens(scale, c)
            flops.append(training_flops(n, s * per))
        elif budget.get("max_steps") is None:  # epochs only: every example, every epoch
            seen = int(budget["epochs"]) * scale.train_examples(c) * _tokens(scale, c)
            flops.append(training_flops(n, seen))
    return counts, steps, flops


def _tokens(scale: ScaleSpec, config: Mapping[str, Any]) -> int:
    shape, _, task = scale.facts(config)
    return int(shape[0]) if task == "language_model" else 1


def _budget_text(configs: Sequence[Mapping[str, Any]], steps: list) -> str:
    if not configs:
        return "-"
    budget = configs[0]["budget"]
    epochs = budget.get("epochs")
    if epochs is None:
        return f"steps={_span(steps or [budget.get('max_steps')])}"
    caps = [c["budget"]["max_steps"] for c in configs if c["budget"].get("max_steps")]
    return f"epochs={epochs}" + (f", steps<={_span(caps)}" if caps else "")


def _span(values: Sequence[Any], fmt: str = "{:,}") -> str:
    if not values:
        return "-" if fmt != "{:,}" else "?"
    lo, hi = min(values), max(values)
    return fmt.format(lo) if lo == hi else f"{fmt.format(lo)}-{fmt.format(hi)}"
