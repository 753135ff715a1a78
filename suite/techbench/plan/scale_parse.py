"""Parsing and validation of a matrix's ``[scale]`` section (the ladder itself, its expansion
and parameter counts: :mod:`techbench.plan.scale`). Problems go to the matrix parser, one line
each naming the key, like every other section's."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..schema import DEFAULT_CONFIG
from .scale import BUDGET_RULES, MAX_RUNGS, SCALE_KEYS, TRANSFERS, ScaleSpec, scaled_value

__all__ = ["ladder_models", "parse_scale"]


def parse_scale(
    p: Any,
    raw: Any,
    models: Sequence[Mapping[str, Any]],
    datasets: Sequence[str],
    tuned: bool,
    budget_given: Mapping[str, Any],
) -> ScaleSpec | None:
    """Validate ``[scale]``; problems go to the matrix parser ``p`` (one line each, naming the
    key). ``models``: every model value the matrix can run (``{"name", "params"}``);
    ``datasets``: its dataset names; ``budget_given``: the ``[budget]`` table as written."""
    if not isinstance(raw, Mapping):
        p.problem("scale", "must be a table", "write [scale] width = [1, 2, 4]")
        return None
    n0 = len(p.problems)
    p.unknown_keys(raw, SCALE_KEYS, "scale")
    width = _mults(p, raw, "width")
    depth = _mults(p, raw, "depth")
    if width is not None and depth is not None:
        if not width and not depth:
            p.problem("scale", "names no rungs", "give width = [1, 2, 4] and/or depth = [...]")
        elif width and depth and len(width) != len(depth):
            p.problem("scale.depth", f"has {len(depth)} rungs, width has {len(width)}",
                      "give one depth multiplier per width multiplier")  # fmt: skip
        else:
            n = len(width or depth)
            sizes = list(zip(width or [1.0] * n, depth or [1.0] * n, strict=True))
            for r, (a, b) in enumerate(itertools.pairwise(sizes)):
                if a == b:
                    p.problem("scale", f"rungs {r} and {r + 1} are the same size (width "
                              f"x{a[0]:g}, depth x{a[1]:g})", "each rung must grow")  # fmt: skip
    rule, ratio = _rule(p, raw.get("budget", "fixed"), datasets)
    if rule != "fixed" and ("steps" in budget_given or "max_steps" in budget_given):
        p.problem("budget.steps", f"scale.budget {rule} sets each rung's steps",
                  "remove budget.steps (budget.epochs, if given, caps them)")  # fmt: skip
    transfer = raw.get("transfer")
    if transfer is not None and not tuned:
        p.problem("scale.transfer", "needs a [tune] section (it says how tuned settings move "
                  "between rungs)", "add [tune] or remove transfer")  # fmt: skip
    elif transfer is not None and transfer not in TRANSFERS:
        from ..errors import did_you_mean

        p.problem("scale.transfer", f"must be 'retune' or 'base', got {transfer!r}",
                  did_you_mean(str(transfer), TRANSFERS))  # fmt: skip
    params = _model_params(p, models, width or (), depth or ())
    if len(p.problems) > n0:
        return None
    assert width is not None and depth is not None
    return ScaleSpec(
        width=tuple(width),
        depth=tuple(depth),
        params=params,
        rule=rule,
        ratio=ratio,
        transfer=(transfer or "retune") if tuned else None,
        source=p.source,
        registry=p.registry,
    )


def _mults(p: Any, raw: Mapping[str, Any], key: str) -> list[float] | None:
    """``scale.width``/``scale.depth``: increasing positive multipliers ([] when absent)."""
    value = raw.get(key, [])
    path = f"scale.{key}"
    good = isinstance(value, list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and 0 < v < math.inf for v in value
    )
    if not good:
        p.problem(path, f"must be a list of positive multipliers, got {value!r}",
                  f"e.g. {key} = [1, 2, 4, 8]")  # fmt: skip
        return None
    if len(value) > MAX_RUNGS:
        p.problem(path, f"has {len(value)} rungs, more than {MAX_RUNGS}")
        return None
    if any(b < a for a, b in itertools.pairwise(value)):
        p.problem(path, f"must not shrink from rung to rung (rung 0 is the smallest), got {value}")
        return None
    return [float(v) for v in value]


def _rule(p: Any, raw: Any, datasets: Sequence[str]) -> tuple[str, float]:
    """``scale.budget``: "fixed" or ``{ tokens_per_parameter = R }`` / examples_per_parameter."""
    if raw == "fixed":
        return "fixed", 0.0
    hint = 'budget = "fixed" or budget = { tokens_per_parameter = 20 } (or examples_per_parameter)'
    if not isinstance(raw, Mapping) or len(raw) != 1:
        p.problem("scale.budget", f"must be one rule, got {raw!r}", hint)
        return "fixed", 0.0
    ((rule, ratio),) = raw.items()
    path = f"scale.budget.{rule}"
    if rule not in BUDGET_RULES:
        from ..errors import did_you_mean

        p.problem(path, f"unknown rule {rule!r}", did_you_mean(str(rule), BUDGET_RULES) or hint)
        return "fixed", 0.0
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio < math.inf:
        p.problem(path, f"must be a number > 0, got {ratio!r}")
        return "fixed", 0.0
    if rule == "tokens_per_parameter":
        for name in datasets:
            spec = p.spec("dataset", name, "scale.budget")
            task = spec.properties.get("task") if spec is not None else "language_model"
            if task != "language_model":
                p.problem(path, f"dataset {name!r} is a {task} task, not a language model",
                          "use examples_per_parameter")  # fmt: skip
    return str(rule), float(ratio)


def _model_params(
    p: Any, models: Sequence[Mapping[str, Any]], width: Sequence[float], depth: Sequence[float]
) -> dict[str, dict[str, tuple[str, Any]]]:
    """Per model name, the (parameter, default) the ladder scales; every scaled value checked
    against the spec's range at every rung."""
    out: dict[str, dict[str, tuple[str, Any]]] = {}
    for model in models:
        spec = p.spec("model", model["name"], "scale")
        if spec is None:
            continue
        declared = spec.properties.get("scale_params")
        if not isinstance(declared, Mapping):
            p.problem("scale", f"model {model['name']!r} declares no scale_params, so a ladder "
                      "can't scale it", 'its spec needs properties["scale_params"] = '
                      '{"width": "<its width parameter>"}')  # fmt: skip
            continue
        named = out.setdefault(model["name"], {})
        for kind, mults in (("width", width), ("depth", depth)):
            if not mults:
                continue
            name = declared.get(kind)
            known = [q.name for q in spec.params]
            if name not in known:
                p.problem(f"scale.{kind}", f"model {model['name']!r} declares no {kind} "
                          f"parameter in its scale_params ({dict(declared)})")  # fmt: skip
                continue
            default = spec.param(str(name)).default
            named[kind] = (str(name), default)
            base = model["params"].get(name, default)
            for i, mult in enumerate(mults):
                value = scaled_value(base, mult)
                try:
                    spec.param(name).validate(spec.qualified_name, value)
                except Exception as exc:
                    p.problem(f"scale.{kind}[{i}]", f"x{mult:g} makes {model['name']} "
                              f"{name}={value}: {exc}")  # fmt: skip
    return out


def ladder_models(
    axes: Mapping[str, list[Any]], defaults: Mapping[str, Any], include: Sequence[Mapping]
) -> list[dict[str, Any]]:
    """Every model value a matrix can run (what :func:`parse_scale` checks)."""
    values = list(axes.get("model", []))
    for inc in include:
        values.extend(inc.get("model", []))
    if "model" not in axes:
        values.append(defaults.get("model", DEFAULT_CONFIG["model"]))
    return [dict(v) for v in values if isinstance(v, Mapping)]
