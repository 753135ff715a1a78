"""Conformance checks for activations.

Reference protocol (what a plugin's ``reference`` must provide)::

    reference.value(x, **hp) -> Tensor        # f(x), elementwise
    reference.derivative(x, **hp) -> Tensor   # f'(x), elementwise, the analytic derivative

``x`` is a float64 tensor of any shape; ``hp`` is the full hyper-parameter dict (the defaults
updated with overrides), so a reference should accept ``**hp`` and ignore names it does not use.
Write both from the formula in float64 arithmetic; do not call the fast implementation.

The fast side is ``spec.create(**hp) -> torch.nn.Module``, elementwise; the checks move it to
float32 or float64 with ``.to(dtype)``.

Checks (each raises :class:`~techbench.testing.CheckFailure` naming the worst input):

- ``values``: fast output equals ``reference.value`` in float32 and float64 on a grid from -8 to
  8, a wide grid to +-60 and large inputs up to +-1e4, with per-dtype tolerances;
- ``gradient``: autograd of the fast module equals ``reference.derivative`` (float32, float64);
  only gradients are compared (a wrong value is the ``values`` check's failure);
- ``gradcheck``: :func:`torch.autograd.gradcheck` of the fast module in float64;
- ``properties``: the declared :class:`~techbench.techniques.families.ActivationProperties` hold for the
  default hyper-parameters and at one non-default value of each parameter, with the values
  ``spec.properties_for(**hp)`` gives there (a property that depends on the hyper-parameters
  is declared as a callable of them): outputs inside the closed ``output_range``; ``zero_centered`` is true
  exactly when f(0) = 0 and sign(f(x)) = sign(x) on [-5, 5]; ``monotonic`` is true exactly when f
  is nondecreasing on the grid; where outputs lie at or beyond the ``saturation`` ends the
  derivative is < 0.05 (and such inputs exist); where outputs are <= ``dead_below`` the autograd
  gradient is exactly 0 (and such inputs exist);
- ``hyperparams``: for each parameter, one non-default value (another choice, the negated bool, a
  scaled number inside the range) gives the outputs and derivative the reference gives with it;
  a non-bool value must change ``reference.value`` somewhere on the grid.

Every grid keeps at least 1e-3 away from the declared ``kinks``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..techniques.spec import Param, ParamError, TechniqueSpec
from .core import Check, CheckFailure
from .tolerances import assert_close

SATURATED_DERIVATIVE = 0.05
KINK_MARGIN = 1e-3


def _grid(
    spec: TechniqueSpec,
    dtype: Any,
    *,
    wide: bool = True,
    kinks: tuple = (),
    hp: dict[str, Any] | None = None,
) -> Any:
    import torch

    parts = [torch.linspace(-8.0, 8.0, 1601, dtype=torch.float64) + 0.00371]
    if wide:
        parts.append(torch.linspace(-60.0, 60.0, 241, dtype=torch.float64) + 0.0137)
        parts.append(
            torch.tensor(
                [-1e4, -1e3, -300.0, -100.0, -30.3, 30.3, 100.0, 300.0, 1e3, 1e4],
                dtype=torch.float64,
            )
        )
    x = torch.cat(parts)
    declared = spec.properties_for(hp or {}).get("kinks", ())
    return _away_from(x, kinks or tuple(declared)).to(dtype)


def _away_from(x: Any, kinks: tuple) -> Any:
    keep = x == x
    for k in kinks:
        keep &= (x - float(k)).abs() > KINK_MARGIN
    return x[keep]


def _fast(spec: TechniqueSpec, dtype: Any, hp: dict[str, Any] | None = None) -> Any:
    module = spec.create(**(hp or {}))
    return module.to(dtype)


def _forward_backward(module: Any, x: Any) -> tuple[Any, Any]:
    import torch

    x = x.detach().clone().requires_grad_(True)
    y = module(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    return y.detach(), g.detach()


def _label(spec: TechniqueSpec, hp: dict[str, Any], default: dict[str, Any]) -> str:
    changed = {k: v for k, v in hp.items() if default.get(k) != v}
    if not changed:
        return spec.qualified_name
    return spec.qualified_name + "(" + ", ".join(f"{k}={v!r}" for k, v in changed.items()) + ")"


def _compare(
    spec: TechniqueSpec, hp: dict[str, Any], *, grad: bool, dtypes: tuple, value: bool = True
) -> None:
    """Values (when ``value``) and autograd gradients (when ``grad``) against the reference;
    the ``gradient`` check compares gradients only, so its failures say gradient."""
    import torch

    ref = spec.load_reference()
    label = _label(spec, hp, spec.defaults())
    for dtype in dtypes:
        x = _grid(spec, dtype, hp=hp)
        y, g = _forward_backward(_fast(spec, dtype, hp), x)
        name = str(dtype).replace("torch.", "")
        x64 = x.to(torch.float64)
        if value:
            assert_close(
                y, ref.value(x64, **hp), what=f"{label} value ({name})", inputs=x, dtype=dtype
            )
        if grad:
            assert_close(
                g,
                ref.derivative(x64, **hp),
                what=f"{label} gradient ({name}): autograd vs reference.derivative",
                inputs=x,
                dtype=dtype,
            )


def check_values(spec: TechniqueSpec) -> None:
    import torch

    _compare(spec, spec.defaults(), grad=False, dtypes=(torch.float32, torch.float64))


def check_gradient(spec: TechniqueSpec) -> None:
    import torch

    _compare(spec, spec.defaults(), grad=True, dtypes=(torch.float32, torch.float64), value=False)


def check_gradcheck(spec: TechniqueSpec) -> None:
    import torch

    x = _grid(spec, torch.float64, wide=False)[::40].clone().requires_grad_(True)
    module = _fast(spec, torch.float64)
    try:
        ok = torch.autograd.gradcheck(module, (x,), eps=1e-6, atol=1e-5, rtol=1e-4)
    except RuntimeError as exc:  # GradcheckError: numerical and analytical Jacobians differ
        text = str(exc).strip().splitlines()[0]
        raise CheckFailure(
            f"{spec.qualified_name}: gradcheck in float64 failed on {x.numel()} inputs in "
            f"[{x.min().item():.4g}, {x.max().item():.4g}]: {text}"
        ) from None
    if not ok:
        raise CheckFailure(f"{spec.qualified_name}: gradcheck in float64 failed")


def check_properties(spec: TechniqueSpec) -> None:
    """At the defaults and at one non-default value of each parameter, with the properties
    instantiated there (a fixed declaration claims to hold for every setting)."""
    settings: list[dict[str, Any]] = [{}]
    if spec.params:
        for param in spec.params:
            value = non_default_value(param, spec.qualified_name)
            if value is not None:
                settings.append({param.name: value})
    for overrides in settings:
        _check_properties_at(spec, spec.hyperparams(overrides))


def _check_properties_at(spec: TechniqueSpec, hp: dict[str, Any]) -> None:
    import torch

    props = spec.properties_for(hp)
    name = _label(spec, hp, spec.defaults())
    x = _grid(spec, torch.float64, hp=hp)
    y, g = _forward_backward(_fast(spec, torch.float64, hp), x)
    ref = spec.load_reference()
    required = ("output_range", "zero_centered", "monotonic", "saturation", "dead_below", "kinks")
    missing = [k for k in required if k not in props]
    if missing:
        raise CheckFailure(f"{name}: missing declared properties {missing}")

    lo, hi = props["output_range"]
    outside = (y < lo) | (y > hi) | torch.isnan(y)
    if outside.any():
        i = int(torch.nonzero(outside)[0])
        raise CheckFailure(
            f"{name}: output {y[i].item():.8g} at input {x[i].item():.6g} is outside the declared "
            f"output_range [{lo}, {hi}] ({int(outside.sum())} of {x.numel()} outputs)"
        )

    xs = torch.arange(-500, 501, dtype=torch.float64) / 100.0
    ys, _ = _forward_backward(_fast(spec, torch.float64, hp), xs)
    f0 = ys[500].item()
    sign_ok = torch.equal(torch.sign(ys), torch.sign(xs))
    centered = f0 == 0.0 and sign_ok
    if bool(props["zero_centered"]) != centered:
        bad = torch.nonzero(torch.sign(ys) != torch.sign(xs))
        at = xs[int(bad[0])].item() if len(bad) else 0.0
        raise CheckFailure(
            f"{name}: declared zero_centered={props['zero_centered']} but f(0) = {f0:.6g} and "
            + (
                "sign(f(x)) = sign(x) on [-5, 5]"
                if sign_ok
                else f"sign(f(x)) != sign(x) at input {at:.6g}"
            )
        )

    order = torch.argsort(x)
    xo, yo = x[order], y[order]
    drops = yo[1:] < yo[:-1]
    if bool(props["monotonic"]) == bool(drops.any()):
        if drops.any():
            i = int(torch.nonzero(drops)[0])
            raise CheckFailure(
                f"{name}: declared monotonic but f({xo[i + 1].item():.6g}) = "
                f"{yo[i + 1].item():.8g} < f({xo[i].item():.6g}) = {yo[i].item():.8g}"
            )
        raise CheckFailure(f"{name}: declared non-monotonic but f is nondecreasing on the grid")

    saturation = props["saturation"]
    if saturation is not None:
        s_lo, s_hi = saturation
        sat = (y <= s_lo) | (y >= s_hi)
        if not sat.any():
            raise CheckFailure(
                f"{name}: the declared saturation interval {saturation} is never left on "
                f"[{x.min().item():g}, {x.max().item():g}]"
            )
        derivative = ref.derivative(x, **hp)
        for what, d in (("reference.derivative", derivative), ("autograd gradient", g)):
            big = sat & (d.abs() >= SATURATED_DERIVATIVE)
            if big.any():
                i = int(torch.nonzero(big)[0])
                raise CheckFailure(
                    f"{name}: output {y[i].item():.6g} at input {x[i].item():.6g} counts as "
                    f"saturated (outside {saturation}) but its {what} is {d[i].item():.4g} "
                    f">= {SATURATED_DERIVATIVE}"
                )

    dead_below = props["dead_below"]
    if dead_below is not None:
        dead = y <= dead_below
        if not (dead & (x.abs() <= 8)).any():
            raise CheckFailure(f"{name}: no output is <= dead_below={dead_below} on [-8, 8]")
        alive = dead & (g != 0)
        if alive.any():
            i = int(torch.nonzero(alive)[0])
            raise CheckFailure(
                f"{name}: output {y[i].item():.6g} <= dead_below={dead_below} at input "
                f"{x[i].item():.6g} but the gradient is {g[i].item():.6g}, not 0"
            )


def non_default_value(param: Param, technique: str = "") -> Any:
    """A valid value different from the default (None for a free-form string)."""
    if param.choices is not None:
        others = [c for c in param.choices if c != param.default]
        return others[0] if others else None
    if param.type is bool:
        return not param.default
    if param.type is str:
        return None
    d = param.default
    candidates = [d * 2, d / 2, d + 0.5, d - 0.5, d + 1, d - 1]
    if param.low is not None and param.high is not None:
        candidates.insert(0, (param.low + param.high) / 2)
    for c in candidates:
        c = int(c) if param.type is int else float(c)
        if c == d:
            continue
        try:
            return param.validate(technique, c)
        except ParamError:
            continue
    return None


def check_hyperparams(spec: TechniqueSpec) -> None:
    import torch

    ref = spec.load_reference()
    x = _grid(spec, torch.float64)
    base = ref.value(x, **spec.defaults())
    for param in spec.params:
        value = non_default_value(param, spec.qualified_name)
        if value is None:
            continue
        hp = spec.hyperparams({param.name: value})
        if param.type is not bool and torch.equal(ref.value(x, **hp), base):
            raise CheckFailure(
                f"{spec.qualified_name}: reference.value ignores {param.name}={value!r} "
                f"(same outputs as the default {param.default!r} on the whole grid)"
            )
        _compare(spec, hp, grad=True, dtypes=(torch.float64,))


def checks(spec: TechniqueSpec) -> list[Check]:
    """The activation checks (see the module docstring for the protocol)."""
    funcs: list[tuple[str, Callable[[TechniqueSpec], None]]] = [
        ("values", check_values),
        ("gradient", check_gradient),
        ("gradcheck", check_gradcheck),
        ("properties", check_properties),
    ]
    if spec.params:
        funcs.append(("hyperparams", check_hyperparams))
    return [Check(n, f) for n, f in funcs]
