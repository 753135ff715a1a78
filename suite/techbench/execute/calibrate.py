"""Modelled time: the step time of a configuration measured alone, cached in the store.

Why: stacked trials share wall time, and on a shared machine wall time is noise anyway
(identical demo configurations took 0.19 s to 7.7 s under load). Seconds-to-target is therefore
*modelled*: the steps a trial took times the seconds one optimizer step of its configuration
takes when it trains alone. That per-step time is measured once per *compute signature* (the
stack key of :mod:`techbench.plan.stacking`: everything that fixes the computation's shape, without the
seed, initializers and optimizer hyper-parameters, which don't change its cost) and device, by
a short one-by-one run of :data:`CALIBRATION_STEPS` steps (preceded by a throw-away one the
first time in a process, which pays for warm-up), and cached in ``OUT/calibration.json`` so every trial of a signature gets the
same number and a resumed run doesn't measure again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

from ..plan.stacking import stack_key

CALIBRATION_STEPS = 20
FILE = "calibration.json"
_warm = False


def device_label(config: Mapping[str, Any]) -> str:
    """Where a trial of ``config`` runs here: the GPU's name, or the CPU with its thread count."""
    import torch

    accelerator = str((config.get("trainer") or {}).get("accelerator", "cpu")).lower()
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return f"cuda {torch.cuda.get_device_name(torch.cuda.current_device())}"
    return f"cpu x{torch.get_num_threads()}"


def signature(config: Mapping[str, Any]) -> str:
    """16 hex digits naming the configuration's compute signature on this device."""
    text = stack_key(config) + "|" + device_label(config)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def measure(config: Mapping[str, Any]) -> float:
    """Seconds per optimizer step of ``config`` trained alone (training only, no evaluation)."""
    from ..engine.trial import run_trial

    short = dict(config)
    short["budget"] = {
        **dict(config["budget"]),
        "epochs": None,
        "max_steps": CALIBRATION_STEPS,
        "max_seconds": None,
    }
    global _warm
    seconds = float("nan")
    for _ in range(1 if _warm else 2):
        outcome = run_trial(short)
        if outcome.status == "failed" or not outcome.meta.steps:
            return float("nan")
        train = outcome.meta.train_seconds or outcome.meta.wall_seconds
        seconds = train / outcome.meta.steps
    _warm = True
    return seconds


def step_seconds(store: Any, config: Mapping[str, Any]) -> float:
    """The cached per-step time of ``config``'s signature in ``store``, measured on first use.

    Concurrent executors serialise on the store's claim of the signature, so it is measured
    once; the cache file is replaced atomically.
    """
    sig = signature(config)
    path = store.root / FILE
    cached = _read(path).get(sig)
    if cached is not None:
        return float(cached["step_seconds"])
    with store.claim(f"calibrate-{sig}", wait=True):
        cached = _read(path).get(sig)
        if cached is not None:
            return float(cached["step_seconds"])
        value = measure(config)
        table = _read(path)
        table[sig] = {"step_seconds": value, "device": device_label(config)}
        tmp = store.scratch_path(FILE)
        tmp.write_text(json.dumps(table, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
    return value


def _read(path: Any) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            return data
    return {}
