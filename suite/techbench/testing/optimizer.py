"""Conformance checks for optimizers.

Reference protocol
------------------
An optimizer's ``spec.reference`` is any object with two attributes (for instance
``techbench_builtins.optimizers_impl.UpdateRule``):

``init_state(p, **hp) -> dict``
    the state of one parameter tensor before the first step (``p`` is float64).
``step(p, g, state, t, **hp) -> p_new``
    one update of one parameter tensor: ``p`` and ``g`` are float64 tensors of the same shape,
    ``t`` is the step count starting at 1, ``state`` is the dict from ``init_state`` (update it
    in place). Returns the new parameter value; never modifies ``p`` or ``g``.

``hp`` is always the full validated hyper-parameter dict (``spec.hyperparams(...)``), so a
reference accepts every declared parameter by name (``**_`` for those it does not use). Each
parameter tensor is updated independently (every built-in rule is per tensor).

The fast side is ``spec.create(params, **hp) -> torch.optim.Optimizer``.

The seeded problem
------------------
Three float64 parameters: a 3x4 weight ``W`` and a bias ``b`` of a softmax regression on 16
fixed samples (cross-entropy), and a vector ``c`` of 6 coordinates on an ill-conditioned
quadratic ``0.5 * sum(a_i (c_i - c*_i)^2)`` with curvatures ``a`` from 1e-4 to 10 (so some
gradients are tiny and the epsilon matters). At every step the loss's gradient is computed by
autograd at the *fast* optimizer's current parameters; the same gradient is fed to the reference,
which keeps its own copy of the parameters. After step ``t`` the two must agree within float64
tolerance (rtol 1e-7, atol 1e-9); a failure names the hyper-parameters, the step and the parameter
index.

Checks
------
``steps_match_reference``
    ``K = 20`` steps with the default hyper-parameters.
``float32_steps``
    ``10`` steps with the default hyper-parameters with the fast side in float32 (the training
    dtype) against the float64 reference fed the same (float32) gradients; float32 tolerance
    (rtol 1e-5, atol 1e-6).
``hyperparams_honoured``
    12 steps for each declared parameter set to one other valid value (baseline: defaults with
    ``eps = 1e-3`` so that it matters, ``lr = 0.05`` so that gradient signs change within the
    run and ``weight_decay = 0.05`` so that options about the decay matter): fast and reference
    still agree, and the trajectory differs from the baseline's (an
    ignored hyper-parameter fails here).
``variants_explicit``
    for ``eps_placement`` (with ``eps = 1e-2``) and ``bias_correction``: the two settings give
    different trajectories (bias correction from step 1) and each matches the reference; for
    ``decay`` (which parameters ``weight_decay`` acts on, with ``weight_decay = 0.1``): under
    ``"weights"`` the 1-D parameters ``b`` and ``c``, stepped 5 times on fixed gradients, end
    exactly where they end with ``weight_decay = 0`` while ``W`` does not, and ``"all"`` changes
    ``b`` and ``c`` too; both settings match the reference on the seeded problem.
``state_dict_round_trip``
    on the same problem in float32 (the training dtype; torch's NAdam keeps a float32 state
    scalar that ``load_state_dict`` casts to the parameter dtype, so a float64 round trip drifts by
    1e-14): after 7 steps the ``state_dict`` is saved through ``torch.save``, loaded into a fresh
    optimizer on a copy of the parameters, and 8 more steps must equal the uninterrupted run
    exactly.
``stacked``
    (optimizers declaring ``properties["elementwise"]`` or ``["stacks"]``, which the stacked
    engine relies on) one
    optimizer over the stacked parameters of ``K = 3`` members (each its own problem, seeded by
    its index) for 12 steps: member i's slice equals 12 standalone fast steps of member i (rtol
    1e-7, atol 1e-9), with the baseline's ``weight_decay``. An update that reduces over a whole
    tensor (a norm, a trust ratio) couples the members and fails here; so does one that tells
    weights from biases by ``p.dim()`` (a stacked bias has two dimensions): the stacked tensors
    carry :data:`techbench.techniques.families.STACKED_DIMS`, read through ``trial_ndim``.
``stacked_hyperparams``
    (optimizers declaring a stacked implementation, ``spec.stacked``; its contract is in
    :mod:`techbench.techniques.families`) ``K = 4`` members on their own problems (seeded by index), each
    with its own value of *every* ``float`` hyper-parameter, a seeded draw from its search range
    (``Param.search`` on its scale) or, for one without, from 0.5x to 2x its default (1e-3 to
    1e-1 for a default of 0) within its valid range; a hyper-parameter whose members could not
    all differ fails the check, named. The shared ones at the defaults and then at each other
    choice
    (``decay="all"``, ``eps_placement="inside"``, ...), under a schedule multiplier
    ``f_t = 1 / (1 + 0.1 t)`` (the stacked optimizer's group ``lr``; each param group's ``lr``
    of the standalone optimizers is its initial one, member k's, times ``f_t``, as a
    multiplicative schedule sets it; Muon's AdamW group starts at ``adam_lr``): after each of 12
    steps member k of the one stacked optimizer equals member k's standalone fast optimizer,
    float64 rtol 1e-9 (atol 1e-12), and in float32 (the training dtype; defaults) rtol 1e-5.
    An implementation that couples members (a norm over the whole stacked tensor) or uses one
    member's values for all fails here.
``stacked_member_values``
    (optimizers declaring ``spec.stacked``) what the stacked engine reads of member k
    (:class:`techbench.engine.stacked_hooks.MemberOptimizer`, which regularizers' ``after_step`` see:
    decoupled weight decay steps by its ``lr``) equals member k's value of every ``float``
    hyper-parameter, ``lr`` times the schedule multiplier, before and after a step. An
    optimizer without ``member_hyperparams()`` (:class:`techbench.techniques.families.StackedOptimizer`),
    or one keeping its members' values elsewhere, fails here: the engine would read the
    multiplier (1.0) as every member's ``lr``.
``torch_muon``, ``polar_factor``
    (optimizers declaring ``properties["orthogonalized"]``: Muon) the step against
    ``torch.optim.Muon`` and the Newton-Schulz direction against the SVD's polar factor
    (:mod:`techbench.testing.optimizer_muon`).
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Callable, Mapping
from typing import Any

from ..techniques.families import STACKED_DIMS
from ..techniques.spec import Param, TechniqueError, TechniqueSpec
from .core import Check, CheckFailure
from .tolerances import assert_close, tolerance

K_STEPS = 20
FLOAT32_STEPS = 10
HONOURED_STEPS = 12
ROUND_TRIP_AT = 7
ROUND_TRIP_MORE = 8
PARAM_NAMES = ("W", "b", "c")


def make_problem(seed: int = 0, dtype: Any = None) -> tuple[list[Any], Callable[[list[Any]], Any]]:
    """Initial parameters ``[W, b, c]`` (float64 by default) and ``loss(params) -> scalar``."""
    import torch

    if dtype is not None and dtype != torch.float64:
        params, loss64 = make_problem(seed)
        return [p.to(dtype) for p in params], _cast_loss(loss64, dtype)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (16,), generator=gen)
    curv = torch.logspace(-4, 1, 6, dtype=torch.float64)
    target = torch.randn(6, generator=gen, dtype=torch.float64)
    w0 = 0.5 * torch.randn(3, 4, generator=gen, dtype=torch.float64)
    b0 = 0.1 * torch.randn(3, generator=gen, dtype=torch.float64)
    c0 = torch.randn(6, generator=gen, dtype=torch.float64)

    def loss(params: list[Any]) -> Any:
        w, b, c = params
        ce = torch.nn.functional.cross_entropy(x @ w.T + b, y)
        return ce + 0.5 * (curv * (c - target) ** 2).sum()

    return [w0, b0, c0], loss


def _cast_loss(loss64: Callable[[list[Any]], Any], dtype: Any) -> Callable[[list[Any]], Any]:
    import torch

    def loss(params: list[Any]) -> Any:
        return loss64([p.to(torch.float64) for p in params]).to(dtype)

    return loss


def _fresh_params(initial: list[Any]) -> list[Any]:
    return [p.clone().requires_grad_(True) for p in initial]


def _grads(params: list[Any], loss: Callable[[list[Any]], Any]) -> list[Any]:
    import torch

    for p in params:
        p.grad = None
    value = loss(params)
    return list(torch.autograd.grad(value, params))


def _fast_step(opt: Any, params: list[Any], loss: Callable[[list[Any]], Any]) -> list[Any]:
    grads = _grads(params, loss)
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    opt.step()
    return grads


def _label(spec: TechniqueSpec, hp: Mapping[str, Any]) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in hp.items())
    return f"{spec.qualified_name}({args})"


def run_fast(spec: TechniqueSpec, hp: Mapping[str, Any], steps: int = K_STEPS) -> list[list[Any]]:
    """The fast optimizer's parameters after each of ``steps`` steps (detached copies)."""
    initial, loss = make_problem()
    params = _fresh_params(initial)
    opt = spec.create(params, **hp)
    out = []
    for _ in range(steps):
        _fast_step(opt, params, loss)
        out.append([p.detach().clone() for p in params])
    return out


def compare_with_reference(
    spec: TechniqueSpec, hp: Mapping[str, Any], steps: int = K_STEPS, dtype: Any = None
) -> list[list[Any]]:
    """Run fast and reference side by side; raise naming the first step where they disagree.

    ``dtype`` is the fast side's (float64 by default); the reference always runs in float64,
    fed the fast side's gradients, and the comparison uses ``dtype``'s tolerance.
    """
    import torch

    dtype = torch.float64 if dtype is None else dtype
    hp = spec.hyperparams(hp)
    ref = spec.load_reference()
    initial, loss = make_problem(dtype=dtype)
    params = _fresh_params(initial)
    opt = spec.create(params, **hp)
    ref_params = [p.detach().to(torch.float64) for p in initial]
    ref_states = [ref.init_state(p.clone(), **hp) for p in ref_params]
    fast_traj, ref_traj = [], []
    for t in range(1, steps + 1):
        grads = _fast_step(opt, params, loss)
        with torch.no_grad():
            for i, (g, state) in enumerate(zip(grads, ref_states, strict=True)):
                ref_params[i] = torch.as_tensor(
                    ref.step(ref_params[i].clone(), g.detach().to(torch.float64), state, t, **hp),
                    dtype=torch.float64,
                )
        fast_traj.append([p.detach().clone() for p in params])
        ref_traj.append(list(ref_params))
    rtol, atol = tolerance(dtype)
    for i in range(len(params)):
        a = torch.stack([step[i] for step in fast_traj]).to(torch.float64)
        e = torch.stack([step[i] for step in ref_traj])
        if torch.allclose(a, e, rtol=rtol, atol=atol) and bool(torch.isfinite(a).all()):
            continue
        for t, (fa, fe) in enumerate(zip(a, e, strict=True), start=1):
            assert_close(
                fa,
                fe,
                what=f"{_label(spec, hp)}: step {t}, parameter {i} ({PARAM_NAMES[i]}, shape "
                f"{tuple(fa.shape)}): fast ({str(dtype).replace('torch.', '')}) vs reference",
                dtype=dtype,
            )
    return fast_traj


def _max_gap(a: list[list[Any]], b: list[list[Any]]) -> float:
    return max(
        float((x - y).abs().max() / (y.abs().max() + 1e-12))
        for step_a, step_b in zip(a, b, strict=True)
        for x, y in zip(step_a, step_b, strict=True)
    )


def alternative_value(p: Param, value: Any) -> Any:
    """Another valid value of ``p`` that should change the trajectory, or None."""
    if p.type is bool:
        return not value
    if p.choices is not None:
        others = [c for c in p.choices if c != value]
        return others[0] if others else None
    if p.type is int:
        candidates: list[Any] = [value + 1, value - 1]
    elif value == 0:
        candidates = [0.1, 0.01, 1e-3]
    elif abs(value) < 1e-3:
        candidates = [value * 10, value * 0.1]
    else:
        candidates = [value * 0.5, value * 0.9, value * 1.1]
    for c in candidates:
        try:
            p.validate("probe", c)
        except ValueError:
            continue
        return c
    return None


def _baseline(spec: TechniqueSpec) -> dict[str, Any]:
    hp = spec.defaults()
    for name, value in (("eps", 1e-3), ("lr", 0.05), ("weight_decay", 0.05)):
        if name in hp:
            with contextlib.suppress(ValueError):
                hp[name] = spec.param(name).validate(spec.qualified_name, value)
    return hp


def check_steps_match_reference(spec: TechniqueSpec) -> None:
    compare_with_reference(spec, spec.defaults())


def check_float32_steps(spec: TechniqueSpec) -> None:
    import torch

    compare_with_reference(spec, spec.defaults(), steps=FLOAT32_STEPS, dtype=torch.float32)


def check_hyperparams_honoured(spec: TechniqueSpec) -> None:
    base = _baseline(spec)
    base_traj = compare_with_reference(spec, base, steps=HONOURED_STEPS)
    for p in spec.params:
        alt = alternative_value(p, base[p.name])
        if alt is None:
            continue
        hp = {**base, p.name: alt}
        traj = compare_with_reference(spec, hp, steps=HONOURED_STEPS)
        gap = _max_gap(traj, base_traj)
        if gap < 1e-6:
            raise CheckFailure(
                f"{spec.qualified_name}: hyper-parameter {p.name}={alt!r} (baseline "
                f"{base[p.name]!r}) is ignored: over {HONOURED_STEPS} steps the parameters differ "
                f"from the baseline's by at most {gap:.3g} (relative)"
            )


def check_variants_explicit(spec: TechniqueSpec) -> None:
    names = {p.name for p in spec.params}
    if "eps_placement" in names:
        hp = spec.defaults()
        if "eps" in names:
            hp["eps"] = 1e-2
        inside = compare_with_reference(spec, {**hp, "eps_placement": "inside"})
        outside = compare_with_reference(spec, {**hp, "eps_placement": "outside"})
        gap = _max_gap(inside, outside)
        if gap < 1e-6:
            raise CheckFailure(
                f"{spec.qualified_name}: eps_placement 'inside' and 'outside' give the same "
                f"trajectory with eps=1e-2 (max relative gap {gap:.3g}); the option is ignored"
            )
    if "bias_correction" in names:
        hp = spec.defaults()
        on = compare_with_reference(spec, {**hp, "bias_correction": True}, steps=3)
        off = compare_with_reference(spec, {**hp, "bias_correction": False}, steps=3)
        gap = _max_gap(on[:1], off[:1])
        if gap < 1e-6:
            raise CheckFailure(
                f"{spec.qualified_name}: bias_correction=True and False agree at step 1 (max "
                f"relative gap {gap:.3g}); bias correction must change the early steps"
            )
    if {"decay", "weight_decay"} <= names:
        _check_decay_choice(spec)


def _fixed_gradient_run(spec: TechniqueSpec, hp: Mapping[str, Any], steps: int = 5) -> list[Any]:
    """The fast side's parameters after ``steps`` steps on fixed gradients (so that each
    parameter's path depends on its own hyper-parameters only)."""
    import torch

    initial, _ = make_problem()
    gen = torch.Generator().manual_seed(3)
    fixed = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in initial]
    params = _fresh_params(initial)
    opt = spec.create(params, **spec.hyperparams(hp))
    for _ in range(steps):
        for p, g in zip(params, fixed, strict=True):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in params]


def _check_decay_choice(spec: TechniqueSpec) -> None:
    import torch

    hp = {**spec.defaults(), "weight_decay": 0.1}
    compare_with_reference(spec, {**hp, "decay": "weights"}, steps=5)
    compare_with_reference(spec, {**hp, "decay": "all"}, steps=5)
    weights = _fixed_gradient_run(spec, {**hp, "decay": "weights"})
    every = _fixed_gradient_run(spec, {**hp, "decay": "all"})
    undecayed = _fixed_gradient_run(spec, {**hp, "weight_decay": 0.0})
    for i in (1, 2):
        if not torch.equal(weights[i], undecayed[i]):
            raise CheckFailure(
                f"{spec.qualified_name}: with decay='weights' the 1-D parameter {PARAM_NAMES[i]} "
                "(a bias) still decays; only tensors of two or more dimensions may"
            )
        if torch.equal(every[i], undecayed[i]):
            raise CheckFailure(
                f"{spec.qualified_name}: with decay='all' the 1-D parameter {PARAM_NAMES[i]} "
                "does not decay"
            )
    if torch.equal(weights[0], undecayed[0]):
        raise CheckFailure(
            f"{spec.qualified_name}: with decay='weights' and weight_decay=0.1 the weight "
            f"{PARAM_NAMES[0]} does not decay"
        )


def check_state_dict_round_trip(spec: TechniqueSpec) -> None:
    import torch

    hp = _baseline(spec)
    initial, loss = make_problem(dtype=torch.float32)
    params = _fresh_params(initial)
    opt = spec.create(params, **hp)
    for _ in range(ROUND_TRIP_AT):
        _fast_step(opt, params, loss)
    buffer = io.BytesIO()
    torch.save(copy.deepcopy(opt.state_dict()), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    resumed_params = [p.detach().clone().requires_grad_(True) for p in params]
    resumed = spec.create(resumed_params, **hp)
    resumed.load_state_dict(saved)
    for k in range(1, ROUND_TRIP_MORE + 1):
        _fast_step(opt, params, loss)
        _fast_step(resumed, resumed_params, loss)
        for i, (a, b) in enumerate(zip(resumed_params, params, strict=True)):
            assert_close(
                a.detach(),
                b.detach(),
                what=f"{_label(spec, hp)}: state_dict saved after step {ROUND_TRIP_AT}, resumed "
                f"step {ROUND_TRIP_AT + k}, parameter {i} ({PARAM_NAMES[i]}): resumed vs "
                "uninterrupted",
                rtol=0.0,
                atol=0.0,
            )


STACK_MEMBERS = 3
STACKED_STEPS = 12


def check_stacked(spec: TechniqueSpec) -> None:
    import torch

    hp = _baseline(spec)
    problems = [make_problem(seed=k) for k in range(STACK_MEMBERS)]
    alone = []
    for initial, loss in problems:
        params = _fresh_params(initial)
        opt = spec.create(params, **hp)
        for _ in range(STACKED_STEPS):
            _fast_step(opt, params, loss)
        alone.append([p.detach() for p in params])
    stacked = [
        torch.stack([initial[i] for initial, _ in problems]).requires_grad_(True)
        for i in range(len(PARAM_NAMES))
    ]
    for p in stacked:  # as the stacked engine marks them (techbench.techniques.families.trial_ndim)
        setattr(p, STACKED_DIMS, 1)
    opt = spec.create(stacked, **hp)
    for _ in range(STACKED_STEPS):
        members = [
            [p[k].detach().clone().requires_grad_(True) for p in stacked]
            for k in range(STACK_MEMBERS)
        ]
        grads = [_grads(m, loss) for m, (_, loss) in zip(members, problems, strict=True)]
        for i, p in enumerate(stacked):
            p.grad = torch.stack([g[i] for g in grads])
        opt.step()
    for k in range(STACK_MEMBERS):
        for i, p in enumerate(stacked):
            assert_close(
                p[k].detach(),
                alone[k][i],
                what=f"{_label(spec, hp)}: member {k} of {STACK_MEMBERS} stacked, after "
                f"{STACKED_STEPS} steps, parameter {i} ({PARAM_NAMES[i]}): stacked vs alone",
                rtol=1e-7,
                atol=1e-9,
            )


HP_MEMBERS = 4
HP_STEPS = 12


def _multiplier(t: int) -> float:
    """The schedule factor of step ``t`` in ``stacked_hyperparams`` (a 1/t-style decay)."""
    return 1.0 / (1.0 + 0.1 * t)


def member_settings(spec: TechniqueSpec, shared: Mapping[str, Any], seed: int = 0) -> list[dict]:
    """``HP_MEMBERS`` validated settings: ``shared`` with every ``float`` hyper-parameter drawn
    per member (seeded; :func:`member_value`), so that members differ in all of them.

    Raises :class:`CheckFailure` naming a ``float`` hyper-parameter whose members' values could
    not all be made to differ (declare a search range for it)."""
    import random

    from ..engine.member_hp import member_names

    rng = random.Random(seed)
    numeric = set(member_names(spec))
    out = []
    for _ in range(HP_MEMBERS):
        hp = dict(shared)
        for p in spec.params:
            if p.name in numeric:
                hp[p.name] = member_value(p, rng.random())
        out.append(spec.hyperparams(hp))
    for name in sorted(numeric):
        values = [hp[name] for hp in out]
        if len(set(values)) < len(values):
            raise CheckFailure(
                f"{spec.qualified_name}: stacked_hyperparams could not give {HP_MEMBERS} members "
                f"different values of the float hyper-parameter {name} (got {values}; default "
                f"{spec.param(name).default!r}, valid {spec.param(name).allowed()}): declare "
                "its search range (Param.search) so that the check can vary it"
            )
    return out


def member_value(p: Param, u: float) -> Any:
    """A ``float`` hyper-parameter's value at ``u`` in [0, 1]: on its search range
    (``Param.search`` on its scale); without one, ``default * 2**(2u - 1)`` (0.5x to 2x its
    default; ``10**(2u - 3)``, 1e-3 to 1e-1, for a default of 0), drawn nearer the default
    until it is valid. Falls back to the default when nothing nearer is valid."""
    if p.search is not None:
        return p.from_unit(u)
    if p.choices is not None:
        return p.choices[min(int(u * len(p.choices)), len(p.choices) - 1)]
    default = float(p.default) if p.default is not None else 0.0
    value = default * 2.0 ** (2 * u - 1) if default else 10.0 ** (2 * u - 3)
    for _ in range(30):
        try:
            return p.validate("stacked_hyperparams", float(f"{value:.6g}"))
        except ValueError:
            value = (value + default) / 2
    return p.default


def _shared_variants(spec: TechniqueSpec) -> list[dict[str, Any]]:
    """The defaults, then each non-``float`` hyper-parameter at each other valid value."""
    from ..engine.member_hp import member_names

    base = spec.defaults()
    out = [base]
    numeric = set(member_names(spec))
    for p in spec.params:
        if p.name in numeric:
            continue
        values = list(p.choices) if p.choices is not None else [alternative_value(p, base[p.name])]
        out += [{**base, p.name: v} for v in values if v is not None and v != base[p.name]]
    return out


def compare_stacked_hyperparams(
    spec: TechniqueSpec, settings: list[dict[str, Any]], dtype: Any = None
) -> None:
    """Member k of ``spec.stacked`` over the stacked problems equals ``spec.create`` with
    ``settings[k]`` after each of ``HP_STEPS`` steps (see ``stacked_hyperparams``)."""
    import torch

    from ..engine.member_hp import create_stacked

    dtype = torch.float64 if dtype is None else dtype
    problems = [make_problem(seed=k, dtype=dtype) for k in range(len(settings))]
    alone: list[list[list[Any]]] = []
    for (initial, loss), hp in zip(problems, settings, strict=True):
        params = _fresh_params(initial)
        opt = spec.create(params, **hp)
        traj = []
        for t in range(HP_STEPS):
            for group in opt.param_groups:  # as a multiplicative LRScheduler sets it
                group.setdefault("initial_lr", group["lr"])
                group["lr"] = group["initial_lr"] * _multiplier(t)
            _fast_step(opt, params, loss)
            traj.append([p.detach().clone() for p in params])
        alone.append(traj)
    stacked = [
        torch.stack([initial[i] for initial, _ in problems]).requires_grad_(True)
        for i in range(len(PARAM_NAMES))
    ]
    for p in stacked:
        setattr(p, STACKED_DIMS, 1)
    opt = create_stacked(spec, stacked, settings)
    if len(opt.param_groups) != 1 or opt.param_groups[0]["lr"] != 1.0:
        raise CheckFailure(
            f"{spec.qualified_name}: a stacked optimizer has one param group whose lr (the "
            f"schedule's multiplier) starts at 1.0; got lrs {[g['lr'] for g in opt.param_groups]}"
        )
    rtol, atol = (1e-9, 1e-12) if dtype == torch.float64 else tolerance(dtype)
    for t in range(HP_STEPS):
        opt.param_groups[0]["lr"] = _multiplier(t)
        members = [
            [p[k].detach().clone().requires_grad_(True) for p in stacked]
            for k in range(len(settings))
        ]
        grads = [_grads(m, loss) for m, (_, loss) in zip(members, problems, strict=True)]
        for i, p in enumerate(stacked):
            p.grad = torch.stack([g[i] for g in grads])
        opt.step()
        for k, hp in enumerate(settings):
            for i, p in enumerate(stacked):
                assert_close(
                    p[k].detach(),
                    alone[k][t][i],
                    what=f"{_label(spec, hp)}: member {k} of {len(settings)} with per-member "
                    f"hyper-parameters, step {t + 1}, parameter {i} ({PARAM_NAMES[i]}), "
                    f"{str(dtype).replace('torch.', '')}: stacked implementation vs alone",
                    rtol=rtol,
                    atol=atol,
                )


def check_stacked_hyperparams(spec: TechniqueSpec) -> None:
    import torch

    for i, shared in enumerate(_shared_variants(spec)):
        compare_stacked_hyperparams(spec, member_settings(spec, shared, seed=i))
    compare_stacked_hyperparams(spec, member_settings(spec, spec.defaults()), torch.float32)


def check_stacked_member_values(spec: TechniqueSpec) -> None:
    """What the engine reads of member k (:class:`techbench.engine.stacked_hooks.MemberOptimizer`,
    through :class:`techbench.techniques.families.StackedOptimizer`) is member k's values, under a
    schedule multiplier, after a step."""
    import torch

    from ..engine.member_hp import create_stacked, member_names
    from ..engine.stacked_hooks import MemberOptimizer

    settings = member_settings(spec, spec.defaults(), seed=7)
    initial, loss = make_problem()
    stacked = [torch.stack([p] * len(settings)).requires_grad_(True) for p in initial]
    for p in stacked:
        setattr(p, STACKED_DIMS, 1)
    try:
        opt = create_stacked(spec, stacked, settings)
    except TechniqueError as exc:
        raise CheckFailure(str(exc)) from None
    for t in range(2):
        multiplier = _multiplier(t)
        opt.param_groups[0]["lr"] = multiplier
        for k, hp in enumerate(settings):
            try:
                seen = MemberOptimizer(opt, {}, k, stacked=True).param_groups[0]
            except Exception as exc:
                raise CheckFailure(
                    f"{spec.qualified_name}: the engine cannot read member {k}'s values of the "
                    f"stacked optimizer: {type(exc).__name__}: {exc}"
                ) from None
            for name in member_names(spec):
                want = hp[name] * multiplier if name == "lr" else hp[name]
                got = seen.get(name)
                if got is None or not math.isclose(got, want, rel_tol=1e-12, abs_tol=0.0):
                    raise CheckFailure(
                        f"{_label(spec, hp)}: member {k} of {len(settings)}: the engine reads "
                        f"{name}={got!r} through member_hyperparams(), the member's value is "
                        f"{want!r} (schedule multiplier {multiplier}); a stacked optimizer must "
                        "show each member's values there (techbench.techniques.families.StackedOptimizer)"
                    )
        total = sum(loss([p[k] for p in stacked]) for k in range(len(settings)))
        for p, g in zip(stacked, torch.autograd.grad(total, stacked), strict=True):
            p.grad = g
        opt.step()


def checks(spec: TechniqueSpec) -> list[Check]:
    """The optimizer conformance checks (see the module docstring)."""
    out = [
        Check("steps_match_reference", check_steps_match_reference),
        Check("float32_steps", check_float32_steps),
        Check("hyperparams_honoured", check_hyperparams_honoured),
        Check("state_dict_round_trip", check_state_dict_round_trip),
    ]
    if {"eps_placement", "bias_correction", "decay"} & {p.name for p in spec.params}:
        out.insert(2, Check("variants_explicit", check_variants_explicit))
    if spec.properties.get("elementwise") or spec.properties.get("stacks"):
        out.append(Check("stacked", check_stacked))
    if "update_rule" in spec.properties:
        from .parametrization import check_lr_multiplier

        out.append(Check("lr_multiplier", check_lr_multiplier))
    if spec.stacked is not None:
        out.append(Check("stacked_hyperparams", check_stacked_hyperparams))
        out.append(Check("stacked_member_values", check_stacked_member_values))
    if spec.properties.get("orthogonalized"):
        from .optimizer_muon import checks as orthogonalized_checks

        out += orthogonalized_checks(spec)
    return out
