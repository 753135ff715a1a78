"""Conformance checks for initializers, and the reference protocol they expect.

Fast side (``spec.create(**hp)``): an *initializer* ``init``; ``init(tensor)`` fills ``tensor``
in place from torch's **global** RNG (so ``torch.manual_seed`` makes it reproducible), without
recording autograd history (it must work on an ``nn.Parameter``), keeps its dtype, and returns
the same tensor object. Fans come from the shape as in ``torch.nn.init``: a weight
``(out, in, *k)`` has ``fan_in = in * prod(k)``, ``fan_out = out * prod(k)``; a 1-D tensor (a bias)
uses its length for both. A data-dependent initializer (``properties["data_dependent"]``) also
has ``init.fit(model, x)``: ``model`` is an ``nn.Module`` called as ``model(x)``; ``fit`` changes
the weights of its Linear/Conv layers in forward order (``init(tensor)`` alone gives its start).

Declared properties: ``data_dependent`` (bool) and ``applies_to`` ("weight", "bias" or "any"),
which picks the shapes checked: weights ``(out, in)`` and a conv ``(out, in, kh, kw)`` with
``fan_in != fan_out``; biases 1-D.

Reference side: ``reference(shape, **hp)`` returns the *target*, one of:

- a frozen ``scipy.stats`` distribution (anything with ``mean()``, ``var()``, ``cdf()``,
  ``stats(moments="k")``): every entry is i.i.d. from it. Zero variance means a constant
  (e.g. ``scipy.stats.rv_discrete(values=([c], [1.0]))``) and every entry must equal its mean;
- :class:`OrthogonalTarget` ``(gain)``: the weight flattened to ``(rows, cols)`` satisfies
  ``W W^T = gain^2 I`` if ``rows <= cols``, else ``W^T W = gain^2 I``;
- :class:`ExactTarget` ``(values)``: a deterministic tensor (identity / Dirac);
- :class:`UnitVarianceTarget` ``(start, variance, tol)``: data-dependent; ``init(tensor)`` follows
  ``start`` and after ``fit`` every layer's output has variance within ``tol`` of ``variance``.

Statistical protocol (check ``target`` for distributions): for each hyper-parameter setting (the
defaults, and one setting moving every parameter at once, see :func:`variants`) and shape (a
512 x 1024 weight and a 96 x 32 x 3 x 3 conv weight; a 16384 bias), three two-sided tests on the
float32 sample: Kolmogorov-Smirnov against the cdf (exact ``kstwo`` law, on every k-th entry,
about :data:`KS_SAMPLES` of them; continuous targets only), a z-test of the sample mean and a
z-test of the sample variance using the target's excess kurtosis (``Var(s^2) ~ (kurtosis + 2)
sigma^4 / n``). Each check's tests share :data:`ALPHA` = 1e-3 by Bonferroni, so a correct
plugin fails a check with probability at most 1e-3 over seeds. The seeds are fixed, so every
run of a check gives the same verdict.

LSUV (check ``unit_output_variance``): a 10-layer MLP (32 -> 64 x 9 -> 10, torch's default
Linear init for the biases) with tanh and with ReLU, on a seeded N(0, 1) batch of 256: after
``fit`` every Linear output has ``|Var - variance| < tol`` (population variance over all
elements, eval mode), each weight is a scaled ``start`` (a scaled orthogonal matrix), the biases
are unchanged and the model's training flag is restored.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..techniques.spec import Param, ParamError, TechniqueSpec
from .core import Check, CheckFailure
from .tolerances import assert_close

ALPHA = 1e-3
"""Family-wise false-alarm rate of each statistical check (Bonferroni over its tests)."""

APPLIES_TO = ("weight", "bias", "any")
WEIGHT_STAT_SHAPES: tuple[tuple[int, ...], ...] = ((512, 1024), (96, 32, 3, 3))
BIAS_STAT_SHAPES: tuple[tuple[int, ...], ...] = ((16384,),)
WEIGHT_EXACT_SHAPES: tuple[tuple[int, ...], ...] = (
    (6, 6),
    (4, 7),
    (7, 4),
    (5, 3, 3, 3),
    (3, 5, 3),
    (4, 4, 3, 1, 3),
)
ORTHOGONAL_SHAPES: tuple[tuple[int, ...], ...] = (
    (256, 64),
    (64, 256),
    (96, 96),
    (32, 8, 3, 3),
    (64, 4, 3, 3),
)
SEED = 20240601
KS_SAMPLES = 65536
"""The KS test uses every k-th entry (about this many); the mean and variance tests use all."""


@dataclass(frozen=True)
class OrthogonalTarget:
    """The weight flattened to (rows, cols) is gain times a (semi-)orthogonal matrix."""

    gain: float = 1.0


@dataclass(frozen=True)
class ExactTarget:
    """A deterministic result; ``values`` is array-like with the tensor's shape."""

    values: Any


@dataclass(frozen=True)
class UnitVarianceTarget:
    """Data-dependent: ``init(tensor)`` follows ``start``; after ``fit`` each layer's output
    variance is within ``tol`` of ``variance``."""

    start: Any
    variance: float = 1.0
    tol: float = 0.1


# ----------------------------------------------------------------------------------------------
# helpers


def _label(spec: TechniqueSpec, hp: dict[str, Any]) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in hp.items())
    return f"{spec.name}({args})"


def _alternative(p: Param) -> Any:
    """A valid value other than the default, to exercise a parameter."""
    if p.choices is not None:
        others = [c for c in p.choices if c != p.default]
        return others[0] if others else None
    if p.type is bool:
        return not p.default
    if p.type is str:
        return None
    d = p.default
    if p.low is not None and p.high is not None:
        value = (p.low + p.high) / 2
        if value == d:
            value = p.low + (p.high - p.low) / 4
    elif d is None or d == 0:
        value = 1
    else:
        value = d * 2
    return round(value) if p.type is int else float(value)


def variants(spec: TechniqueSpec) -> list[dict[str, Any]]:
    """The defaults, then (when valid) every parameter moved to an alternative value at once."""
    out = [spec.defaults()]
    alt = {p.name: _alternative(p) for p in spec.params}
    alt = {k: v for k, v in alt.items() if v is not None}
    if alt:
        try:
            hp = spec.hyperparams(alt)
            spec.create(**hp)
        except (ParamError, ValueError):
            return out
        out.append(hp)
    return out


def _stat_shapes(spec: TechniqueSpec) -> tuple[tuple[int, ...], ...]:
    applies = spec.properties.get("applies_to", "weight")
    if applies == "bias":
        return BIAS_STAT_SHAPES
    if applies == "any":
        return WEIGHT_STAT_SHAPES + BIAS_STAT_SHAPES
    return WEIGHT_STAT_SHAPES


def _exact_shapes(spec: TechniqueSpec) -> tuple[tuple[int, ...], ...]:
    applies = spec.properties.get("applies_to", "weight")
    bias = ((7,),)
    if applies == "bias":
        return bias
    return WEIGHT_EXACT_SHAPES + (bias if applies == "any" else ())


def _sample(spec: TechniqueSpec, hp: dict[str, Any], shape: Sequence[int], seed: int) -> Any:
    import torch

    init = spec.create(**hp)
    torch.manual_seed(seed)
    tensor = torch.empty(tuple(shape))
    out = init(tensor)
    return tensor if out is None else out


def _is_distribution(target: Any) -> bool:
    return all(callable(getattr(target, a, None)) for a in ("mean", "var", "cdf"))


def _target(spec: TechniqueSpec, shape: Sequence[int], hp: dict[str, Any]) -> Any:
    target = spec.load_reference()(tuple(shape), **hp)
    if isinstance(target, UnitVarianceTarget):
        target = target.start
    return target


# ----------------------------------------------------------------------------------------------
# checks


def _check_properties(spec: TechniqueSpec) -> None:
    props = spec.properties
    problems = []
    if not isinstance(props.get("data_dependent"), bool):
        problems.append(
            f"data_dependent must be declared as a bool, got {props.get('data_dependent')!r}"
        )
    if props.get("applies_to") not in APPLIES_TO:
        problems.append(f"applies_to must be one of {APPLIES_TO}, got {props.get('applies_to')!r}")
    if problems:
        raise CheckFailure(f"{spec.qualified_name}: " + "; ".join(problems))
    init = spec.create()
    if not callable(init):
        raise CheckFailure(f"{spec.qualified_name}: create() returned a non-callable {init!r}")
    shape = _stat_shapes(spec)[0]
    target = spec.load_reference()(shape, **spec.defaults())
    if props["data_dependent"]:
        if not callable(getattr(init, "fit", None)):
            raise CheckFailure(
                f"{spec.qualified_name}: data_dependent but the initializer has no fit()"
            )
        if not isinstance(target, UnitVarianceTarget):
            raise CheckFailure(
                f"{spec.qualified_name}: data_dependent but the reference returned "
                f"{type(target).__name__}, not a UnitVarianceTarget"
            )
        target = target.start
    elif isinstance(target, UnitVarianceTarget):
        raise CheckFailure(
            f"{spec.qualified_name}: reference is a UnitVarianceTarget but data_dependent is False"
        )
    if not (_is_distribution(target) or isinstance(target, OrthogonalTarget | ExactTarget)):
        raise CheckFailure(
            f"{spec.qualified_name}: reference returned {type(target).__name__}; expected a "
            "scipy.stats distribution, OrthogonalTarget, ExactTarget or UnitVarianceTarget"
        )


def _check_in_place(spec: TechniqueSpec) -> None:
    import torch
    from torch import nn

    shape = (64, 48) if spec.properties.get("applies_to") != "bias" else (48,)
    init = spec.create()
    plain = torch.full(shape, float("nan"))
    torch.manual_seed(SEED)
    out = init(plain)
    if out is not plain:
        raise CheckFailure(f"{spec.qualified_name}: init(tensor) must return the tensor it filled")
    if not bool(torch.isfinite(plain).all()):
        raise CheckFailure(
            f"{spec.qualified_name}: init left non-finite values (not filled in place?)"
        )
    param = nn.Parameter(torch.full(shape, float("nan")))
    torch.manual_seed(SEED)
    try:
        init(param)
    except RuntimeError as exc:
        raise CheckFailure(
            f"{spec.qualified_name}: init fails on an nn.Parameter "
            f"(fill under torch.no_grad): {exc}"
        ) from None
    if param.grad_fn is not None or not param.requires_grad:
        raise CheckFailure(f"{spec.qualified_name}: init changed the parameter's autograd state")
    assert_close(param.detach(), plain, what=f"{spec.qualified_name}: nn.Parameter vs plain tensor")
    double = torch.empty(shape, dtype=torch.float64)
    torch.manual_seed(SEED)
    init(double)
    if double.dtype != torch.float64 or not bool(torch.isfinite(double).all()):
        raise CheckFailure(
            f"{spec.qualified_name}: init on a float64 tensor gave non-finite values"
        )


def _deterministic(target: Any) -> bool:
    if isinstance(target, ExactTarget):
        return True
    return _is_distribution(target) and float(target.var()) == 0.0


def _check_reproducible(spec: TechniqueSpec) -> None:
    import torch

    shape = (64, 48) if spec.properties.get("applies_to") != "bias" else (48,)
    hp = spec.defaults()
    first = _sample(spec, hp, shape, SEED)
    again = _sample(spec, hp, shape, SEED)
    other = _sample(spec, hp, shape, SEED + 1)
    name = _label(spec, hp)
    if not torch.equal(first, again):
        diff = float((first - again).abs().max())
        raise CheckFailure(
            f"{name}: not reproducible: the same torch.manual_seed gave tensors differing by up to "
            f"{diff:.3g} on shape {shape} (use torch's global RNG)"
        )
    if _deterministic(_target(spec, shape, hp)):
        if not torch.equal(first, other):
            raise CheckFailure(f"{name}: a deterministic target but the result depends on the seed")
    elif torch.equal(first, other):
        raise CheckFailure(
            f"{name}: seeds {SEED} and {SEED + 1} gave identical tensors on shape {shape}: the "
            "initializer ignores torch's global RNG (or reseeds it)"
        )


def _check_target(spec: TechniqueSpec) -> None:
    cases = [(hp, shape) for hp in variants(spec) for shape in _stat_shapes(spec)]
    kind = _target(spec, cases[0][1], cases[0][0])
    if isinstance(kind, OrthogonalTarget):
        _check_orthogonal(spec)
    elif isinstance(kind, ExactTarget):
        _check_exact(spec)
    else:
        _check_distribution(spec, cases)


def _check_distribution(
    spec: TechniqueSpec, cases: list[tuple[dict[str, Any], tuple[int, ...]]]
) -> None:
    import numpy as np
    from scipy import stats

    alpha = ALPHA / (3 * len(cases))
    for i, (hp, shape) in enumerate(cases):
        target = _target(spec, shape, hp)
        where = f"{_label(spec, hp)} on shape {shape}"
        tensor = _sample(spec, hp, shape, SEED + 7 * i)
        x = tensor.detach().cpu().float().numpy().reshape(-1).astype(np.float64)
        mu, var = float(target.mean()), float(target.var())
        n = x.size
        if var == 0.0:
            expected = np.full(tuple(shape), mu, dtype=np.float32)
            assert_close(tensor, expected, what=f"{where}: constant {mu:g}", rtol=0, atol=0)
            continue
        if not bool(np.isfinite(x).all()):
            raise CheckFailure(f"{where}: {int((~np.isfinite(x)).sum())} non-finite values")
        continuous = isinstance(getattr(target, "dist", None), stats.rv_continuous)
        if continuous:
            sub = np.sort(x[:: max(1, n // KS_SAMPLES)])
            m = sub.size
            cdf = target.cdf(sub)
            grid = np.arange(1, m + 1) / m
            d = max(float((grid - cdf).max()), float((cdf - (grid - 1.0 / m)).max()))
            p = float(stats.kstwo.sf(d, m))
            if p < alpha:
                raise CheckFailure(
                    f"{where}: Kolmogorov-Smirnov test rejects the target {_describe(target)}: "
                    f"D = {d:.4g}, p = {p:.3g} < alpha = {alpha:.3g} (n = {m}); sample mean "
                    f"{x.mean():.6g}, variance {x.var():.6g} vs target {mu:.6g}, {var:.6g}"
                )
        sigma = math.sqrt(var)
        z_mean = (float(x.mean()) - mu) / (sigma / math.sqrt(n))
        p = 2 * float(stats.norm.sf(abs(z_mean)))
        if p < alpha:
            raise CheckFailure(
                f"{where}: sample mean {x.mean():.6g} vs target {mu:.6g} ({_describe(target)}): "
                f"z = {z_mean:.2f}, p = {p:.3g} < alpha = {alpha:.3g} (n = {n})"
            )
        kurt = float(np.asarray(target.stats(moments="k")))
        s2 = float(x.var())
        z_var = (s2 - var) / (var * math.sqrt((kurt + 2.0) / n))
        p = 2 * float(stats.norm.sf(abs(z_var)))
        if p < alpha:
            raise CheckFailure(
                f"{where}: sample variance {s2:.6g} vs target {var:.6g} (ratio {s2 / var:.4f}, "
                f"{_describe(target)}): z = {z_var:.2f}, p = {p:.3g} < alpha = {alpha:.3g} "
                f"(n = {n})"
            )


def _describe(target: Any) -> str:
    name = getattr(getattr(target, "dist", None), "name", type(target).__name__)
    args = getattr(target, "args", ())
    kwds = getattr(target, "kwds", {})
    inner = ", ".join([*(f"{a:.6g}" for a in args), *(f"{k}={v:.6g}" for k, v in kwds.items())])
    return f"{name}({inner})"


def _check_orthogonal(spec: TechniqueSpec) -> None:
    for hp in variants(spec):
        for shape in ORTHOGONAL_SHAPES:
            target = _target(spec, shape, hp)
            if not isinstance(target, OrthogonalTarget):
                raise CheckFailure(
                    f"{_label(spec, hp)}: target kind changed with the shape {shape}"
                )
            w = _sample(spec, hp, shape, SEED).detach().reshape(shape[0], -1).double()
            _assert_orthogonal(w, target.gain, f"{_label(spec, hp)} on shape {shape}")


def _assert_orthogonal(w: Any, gain: float | None, where: str) -> float:
    """Check W W^T (wide) or W^T W (tall) = gain^2 I; gain None: any common scale. Returns it."""
    import torch

    rows, cols = w.shape
    gram = w @ w.T if rows <= cols else w.T @ w
    scale = float(gram.diagonal().mean()) if gain is None else gain * gain
    side = "W W^T" if rows <= cols else "W^T W"
    expected = scale * torch.eye(gram.shape[0], dtype=gram.dtype)
    assert_close(
        gram,
        expected,
        what=f"{where}: {side} ({rows}x{cols} flattened) vs {scale:.6g} * I",
        rtol=0,
        atol=1e-4 * scale,
    )
    return scale


def _check_exact(spec: TechniqueSpec) -> None:
    for hp in variants(spec):
        for shape in _exact_shapes(spec):
            target = _target(spec, shape, hp)
            if not isinstance(target, ExactTarget):
                raise CheckFailure(
                    f"{_label(spec, hp)}: target kind changed with the shape {shape}"
                )
            got = _sample(spec, hp, shape, SEED)
            assert_close(
                got, target.values, what=f"{_label(spec, hp)} on shape {shape}", rtol=0, atol=1e-7
            )


def mlp(activation: Callable[[], Any], widths: Sequence[int] = (32, *[64] * 9, 10)) -> Any:
    """``Linear(widths[0], widths[1]), act, ..., Linear(widths[-2], widths[-1])``."""
    from torch import nn

    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        if i:
            layers.append(activation())
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


def layer_output_variances(model: Any, x: Any) -> list[float]:
    """Population variance of every Linear/Conv output of ``model(x)``, in call order."""
    import torch
    from torch import nn

    seen: list[float] = []
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    handles = [
        m.register_forward_hook(
            lambda mod, args, out: seen.append(float(out.double().var(correction=0)))
        )
        for m in model.modules()
        if isinstance(m, kinds)
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return seen


def _check_unit_output_variance(spec: TechniqueSpec) -> None:
    import torch
    from torch import nn

    hp = spec.defaults()
    target = spec.load_reference()((64, 64), **hp)
    for name, act in (("tanh", nn.Tanh), ("relu", nn.ReLU)):
        torch.manual_seed(SEED)
        model = mlp(act)
        x = torch.randn(256, 32)
        model.train()
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        biases = [m.bias.detach().clone() for m in linears]
        init = spec.create(**hp)
        init.fit(model, x)
        where = f"{_label(spec, hp)} on a 10-layer {name} MLP"
        if not model.training:
            raise CheckFailure(f"{where}: fit() left the model in eval mode")
        for i, (layer, bias) in enumerate(zip(linears, biases, strict=True)):
            assert_close(layer.bias, bias, what=f"{where}: bias of layer {i} changed by fit()")
            if isinstance(target.start, OrthogonalTarget):
                _assert_orthogonal(
                    layer.weight.detach().double(),
                    None,
                    f"{where}: layer {i} is not a scaled start",
                )
        variances = layer_output_variances(model, x)
        for i, var in enumerate(variances):
            if not abs(var - target.variance) < target.tol:
                shown = ", ".join(f"{v:.3g}" for v in variances)
                raise CheckFailure(
                    f"{where}: output variance of layer {i} is {var:.4g}, not within tol = "
                    f"{target.tol:g} of {target.variance:g} (all layers: {shown})"
                )


def checks(spec: TechniqueSpec) -> list[Check]:
    """The conformance checks of an initializer (see the module docstring for the protocol)."""
    out = [
        Check("properties", _check_properties),
        Check("in_place", _check_in_place),
        Check("reproducible", _check_reproducible),
        Check("target", _check_target),
    ]
    if spec.properties.get("data_dependent"):
        out.append(Check("unit_output_variance", _check_unit_output_variance))
    return out
