"""Checks made before a run starts, so a matrix that cannot work fails in a second, not per trial.

Each check returns one line per problem; ``techbench run`` prints them all and exits 2:

- the expansion is not empty (excludes or ``--filter`` may remove every trial);
- every distinct dataset whose data comes from outside the package (declared ``source`` other
  than "bundled"/"synthetic") loads, so missing files are reported once, with the dataset's own
  message (which says where it looked and which parameter or variable to set);
- every requested accelerator exists on this machine (``cuda`` without CUDA fails every trial);
- the target metric is recorded for the dataset's task (regression records no accuracy);
- every (model, parametrization, optimizer) the trials pair can be parametrized: ``mup`` needs
  the model's width hyper-parameter and the optimizer's ``update_rule``
  (:mod:`techbench.techniques.parametrize`), which a trial would otherwise learn only when it
  fails.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ..schema import EPOCH_METRICS
from ..tasks import TASKS, metric_names

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
"""Accelerator names Lightning accepts that this check knows how to test for."""

IN_PACKAGE_SOURCES = ("bundled", "synthetic")
"""Dataset ``source`` properties that need nothing from the machine (not loaded by the check)."""


def preflight(trials: Sequence[Mapping[str, Any]], registry: Any = None) -> list[str]:
    """Every problem that would make trials of ``trials`` fail before they train; [] if none."""
    if not trials:
        return ["the matrix expands to no trials (its excludes or --filter remove every one)"]
    if registry is None:
        from ..techniques.registry import default_registry

        registry = default_registry()
    return [
        *_datasets(trials, registry),
        *_accelerators(trials),
        *_targets(trials, registry),
        *_parametrizations(trials, registry),
    ]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _datasets(trials: Sequence[Mapping[str, Any]], registry: Any) -> list[str]:
    seen: dict[str, Mapping[str, Any]] = {}
    for t in trials:
        ds = t["dataset"]
        seen.setdefault(json.dumps(ds, sort_keys=True), t)
    problems = []
    for t in seen.values():
        ds = t["dataset"]
        try:
            spec = registry.get_spec(ds["name"], "dataset")
        except Exception as exc:
            problems.append(f"dataset {ds['name']}: {_first_line(exc)}")
            continue
        if spec.properties.get("source") in IN_PACKAGE_SOURCES:
            continue
        try:
            spec.create(int(t["data_seed"]), **ds["params"])
        except Exception as exc:
            problems.append(f"dataset {ds['name']}: cannot load: {_first_line(exc)}")
    return problems


def accelerator_problem(name: str) -> str | None:
    """Why accelerator ``name`` cannot be used on this machine, or None."""
    if name in ("auto", "cpu"):
        return None
    if name not in ACCELERATORS:
        return f"unknown accelerator {name!r} (expected one of: {', '.join(ACCELERATORS)})"
    import torch

    if name in ("gpu", "cuda") and not torch.cuda.is_available():
        return f"accelerator {name!r} requested but CUDA is not available on this machine"
    if name == "mps" and not torch.backends.mps.is_available():
        return "accelerator 'mps' requested but MPS is not available on this machine"
    if name == "tpu":
        import importlib.util

        if importlib.util.find_spec("torch_xla") is None:
            return "accelerator 'tpu' requested but torch_xla is not installed"
    return None


def _accelerators(trials: Sequence[Mapping[str, Any]]) -> list[str]:
    names = sorted({str(t["trainer"].get("accelerator", "auto")) for t in trials})
    return [p for p in map(accelerator_problem, names) if p is not None]


def _targets(trials: Sequence[Mapping[str, Any]], registry: Any) -> list[str]:
    problems = []
    pairs = sorted({(t["dataset"]["name"], str(t["target"]["metric"])) for t in trials})
    for dataset, metric in pairs:
        if metric not in EPOCH_METRICS:
            from ..errors import did_you_mean

            hint = did_you_mean(metric, EPOCH_METRICS)
            problems.append(f"target metric {metric!r} is not recorded ({hint})")
            continue
        try:
            task = registry.get_spec(dataset, "dataset").properties.get("task")
        except Exception:
            continue
        if task not in TASKS:
            continue
        recorded = {f"{s}_{name}" for s in ("train", "val") for name in metric_names(task)}
        if metric in recorded:
            continue
        if task == "regression" and metric.endswith("_acc"):
            loss = metric.replace("_acc", "_loss")
            problems.append(
                f"target metric {metric!r}: dataset {dataset} is a regression task and records "
                f"no accuracy (did you mean {loss!r}?)"
            )
        else:
            problems.append(
                f"target metric {metric!r}: dataset {dataset} is a {task} task and records "
                f"{', '.join(sorted(recorded))}"
            )
    return problems


def _parametrizations(trials: Sequence[Mapping[str, Any]], registry: Any) -> list[str]:
    """One line per distinct (parametrization, model, optimizer rule) that cannot work."""
    seen: dict[str, str] = {}
    for t in trials:
        par = t.get("parametrization") or {"name": "standard", "params": {}}
        if par["name"] == "standard":
            continue
        key = json.dumps([par, t["model"], t["optimizer"]], sort_keys=True)
        if key in seen:
            continue
        seen[key] = ""
        try:
            method = registry.get_spec(par["name"], "parametrization").create(**par["params"])
            model = registry.get_spec(t["model"]["name"], "model")
            method.base_model_params(model.hyperparams(t["model"]["params"]))
            optimizer = registry.get_spec(t["optimizer"]["name"], "optimizer")
            rule = optimizer.properties_for(t["optimizer"]["params"]).get("update_rule")
            method.scale("hidden", (2, 2), (1, 1), rule)
        except Exception as exc:
            seen[key] = (
                f"parametrization {par['name']} with model {t['model']['name']} and optimizer "
                f"{t['optimizer']['name']}: {_first_line(exc)}"
            )
    return [line for line in seen.values() if line]
