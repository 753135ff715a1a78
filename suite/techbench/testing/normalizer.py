"""Conformance checks for normalizers (family ``normalizer``).

Reference protocol
==================

Fast side (``spec.fast``): ``fast(num_features, **hp) -> torch.nn.Module`` that accepts (N, C) and
(N, C, *spatial) input (channels on dim 1) and returns a tensor of the same shape and dtype.
The checks read the module's state through ``named_parameters()`` (the learnable tensors) and its
floating-point ``named_buffers()`` (the running state, e.g. ``running_mean``/``running_var``).

Reference side (``spec.reference``): an object (or ``"module:attr"`` string naming one) with

``forward(x, params, state, training, **hp) -> (y, cache)``
    ``x`` is a float64 tensor (N, C, *spatial); ``params`` maps every name of
    ``module.named_parameters()`` to a float64 copy (tensors that may require grad); ``state``
    maps every name of the module's floating-point buffers to a float64 copy; ``training`` says
    train or eval mode; ``hp`` holds every hyper-parameter (``spec.hyperparams()``). Written in
    plain differentiable tensor arithmetic. In training mode the reference updates the running
    state by assigning new tensors to the keys of ``state`` (the checks compare them with the
    module's buffers). ``cache`` is anything ``backward`` needs (``None`` if there is none).
``backward(dy, cache) -> dict`` (optional)
    the hand-derived backward pass: ``{"x": dJ/dx, <param name>: dJ/dparam, ...}`` given
    ``dy = dJ/dy``. Without it the checks differentiate ``forward`` with autograd.

Parameter roles, used to switch the affine map off for the invariant check: a parameter whose
name ends in ``bias`` is a shift (set to 0), every other parameter is a scale (set to 1).

Declared properties: ``batch_dependent`` (bool) and, optionally, ``invariant``, the statistic of
the output with the affine map switched off, in training mode:

=============  ==============================================================================
identity       ``y == x``
channel        per channel, over N and the spatial dims: mean 0, (biased) variance 1
sample         per sample, over C and the spatial dims: mean 0, variance 1
group          per sample and group of C / ``hp["num_groups"]`` channels: mean 0, variance 1
sample_rms     per sample: mean of squares 1
sample_norm    per sample: L2 norm 1
=============  ==============================================================================

The checks use C = 8 channels, inputs of shape (16, 8) and (4, 8, 3, 5) whose channels have
different scales (0.5 to 3) and offsets, random (non-identity) affine parameters, the default
hyper-parameters and, when the technique has an ``eps`` parameter, also ``eps=0.1`` (so that an
epsilon in the wrong place shows). Tolerances: float64 ``rtol=1e-7, atol=1e-9``; float32 against the
float64 reference ``rtol=1e-4, atol=1e-5``; invariants ``1e-4 + 4 eps (1/s + 1/sqrt(s))`` per row,
where ``s`` is the row's input variance (mean square for ``sample_rms``/``sample_norm``).

Checks: ``forward_float32``/``forward_float64`` (train mode, shape and dtype kept);
``gradients`` (dJ/dx and dJ/dparam of the module, by autograd, against the reference's backward
or autograd through it, train and eval mode); ``running_statistics`` (buffers after each of 3
training steps; an eval-mode forward leaves them alone); ``eval_mode`` (output after 2 training
steps); ``batch_dependence`` (``batch_dependent=False``: a sample's output is the same alone and
within a batch; ``True``: it differs in train mode and not in eval mode); ``invariants``;
``gradcheck`` (``torch.autograd.gradcheck`` in fast mode, float64, train mode, on (3, 8) and
(2, 8, 2, 2), inputs and parameters). Checks run single-threaded (torch and BLAS).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..techniques.spec import TechniqueSpec
from .core import Check, CheckFailure
from .tolerances import assert_close

NUM_FEATURES = 8
SHAPES: tuple[tuple[int, ...], ...] = ((16, NUM_FEATURES), (4, NUM_FEATURES, 3, 5))
F32 = {"rtol": 1e-4, "atol": 1e-5}
INVARIANTS = ("identity", "channel", "sample", "group", "sample_rms", "sample_norm")


def _hp_variants(spec: TechniqueSpec) -> list[dict[str, Any]]:
    variants: list[dict[str, Any]] = [{}]
    if any(p.name == "eps" for p in spec.params):
        try:
            spec.hyperparams(eps=0.1)
        except ValueError:
            pass
        else:
            variants.append({"eps": 0.1})
    return variants


def _label(shape: tuple[int, ...], overrides: dict[str, Any]) -> str:
    hp = ", ".join(f"{k}={v}" for k, v in overrides.items())
    return f"input {shape}" + (f", {hp}" if hp else "")


def _input(shape: tuple[int, ...], seed: int) -> Any:
    import torch

    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    view = (1, c, *([1] * (len(shape) - 2)))
    scale = torch.linspace(0.5, 3.0, c, dtype=torch.float64).reshape(view)
    shift = (torch.rand(c, generator=g, dtype=torch.float64) * 4 - 2).reshape(view)
    return torch.randn(shape, generator=g, dtype=torch.float64) * scale + shift


def _build(spec: TechniqueSpec, overrides: dict[str, Any], dtype: Any, seed: int = 0) -> Any:
    import torch

    module = spec.create(NUM_FEATURES, **overrides)
    if not isinstance(module, torch.nn.Module):
        raise CheckFailure(
            f"{spec.qualified_name}: fast factory returned {type(module).__name__}, not an nn.Module"
        )
    module = module.to(dtype)
    g = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64).to(dtype)
            p.copy_(0.5 * noise if name.endswith("bias") else 1.0 + 0.3 * noise)
    return module.train()


def _state(module: Any) -> dict[str, Any]:
    import torch

    return {
        n: b.detach().to(torch.float64).clone()
        for n, b in module.named_buffers()
        if b.is_floating_point()
    }


def _params(module: Any, requires_grad: bool = False) -> dict[str, Any]:
    import torch

    return {
        n: p.detach().to(torch.float64).clone().requires_grad_(requires_grad)
        for n, p in module.named_parameters()
    }


def _reference(spec: TechniqueSpec) -> Any:
    ref = spec.load_reference()
    if not callable(getattr(ref, "forward", None)):
        raise CheckFailure(
            f"{spec.qualified_name}: reference {spec.reference!r} has no forward(x, params, state, "
            "training, **hp) method (see techbench.testing.normalizer)"
        )
    return ref


def _ref_forward(
    spec: TechniqueSpec, x: Any, params: dict, state: dict, training: bool, hp: dict
) -> tuple[Any, Any]:
    out = _reference(spec).forward(x, params, state, training, **hp)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise CheckFailure(f"{spec.qualified_name}: reference forward must return (y, cache)")
    return out


def check_forward(dtype_name: str) -> Callable[[TechniqueSpec], None]:
    def check(spec: TechniqueSpec) -> None:
        import torch

        dtype = getattr(torch, dtype_name)
        tol = F32 if dtype_name == "float32" else {}
        for overrides in _hp_variants(spec):
            hp = spec.hyperparams(overrides)
            for i, shape in enumerate(SHAPES):
                module = _build(spec, overrides, dtype, seed=i)
                x = _input(shape, seed=i)
                params, state = _params(module), _state(module)
                with torch.no_grad():
                    y = module(x.to(dtype))
                if y.shape != x.shape or y.dtype != dtype:
                    raise CheckFailure(
                        f"{spec.qualified_name}: output {tuple(y.shape)} {y.dtype} for "
                        f"{_label(shape, overrides)} {dtype}; expected the input's shape and dtype"
                    )
                expected, _ = _ref_forward(spec, x, params, state, True, hp)
                assert_close(
                    y,
                    expected,
                    what=f"{spec.qualified_name} forward ({dtype_name}, train mode, "
                    f"{_label(shape, overrides)})",
                    inputs=x,
                    dtype=dtype,
                    **tol,
                )

    return check


def _fast_grads(module: Any, x: Any, dy: Any) -> dict[str, Any]:
    import torch

    x = x.clone().requires_grad_(True)
    names = [n for n, _ in module.named_parameters()]
    tensors = [x, *(p for _, p in module.named_parameters())]
    y = module(x)
    grads = torch.autograd.grad((y * dy).sum(), tensors, allow_unused=True)
    out = {"x": grads[0]}
    for name, g, p in zip(names, grads[1:], tensors[1:], strict=True):
        out[name] = torch.zeros_like(p) if g is None else g
    return out


def _ref_grads(spec: TechniqueSpec, module: Any, x: Any, dy: Any, training: bool, hp: dict) -> dict:
    import torch

    ref = _reference(spec)
    state = _state(module)
    if callable(getattr(ref, "backward", None)):
        _, cache = _ref_forward(spec, x, _params(module), state, training, hp)
        grads = dict(ref.backward(dy, cache))
        missing = {"x", *(n for n, _ in module.named_parameters())} - set(grads)
        if missing:
            raise CheckFailure(
                f"{spec.qualified_name}: reference backward returned no gradient for "
                f"{sorted(missing)}"
            )
        return grads
    params = _params(module, requires_grad=True)
    xr = x.clone().requires_grad_(True)
    y, _ = _ref_forward(spec, xr, params, state, training, hp)
    leaves = [xr, *params.values()]
    auto = torch.autograd.grad((y * dy).sum(), leaves, allow_unused=True)
    out = {}
    for name, g, leaf in zip(["x", *params], auto, leaves, strict=True):
        out[name] = torch.zeros_like(leaf) if g is None else g
    return out


def check_gradients(spec: TechniqueSpec) -> None:
    """dJ/dx and dJ/dparam of the fast module (autograd) equal the reference's, float64."""
    import torch

    kind = "hand-derived backward" if hasattr(_reference(spec), "backward") else "autograd"
    for overrides in _hp_variants(spec):
        hp = spec.hyperparams(overrides)
        for i, shape in enumerate(SHAPES):
            for training in (True, False):
                module = _build(spec, overrides, torch.float64, seed=i)
                module.train(training)
                x = _input(shape, seed=10 + i)
                dy = torch.randn(
                    shape, generator=torch.Generator().manual_seed(20 + i), dtype=x.dtype
                )
                expected = _ref_grads(spec, module, x, dy, training, hp)
                got = _fast_grads(module, x, dy)
                mode = "train" if training else "eval"
                for name, g in got.items():
                    assert_close(
                        g,
                        expected[name],
                        what=f"{spec.qualified_name} dJ/d{name} vs reference {kind} "
                        f"({mode} mode, {_label(shape, overrides)})",
                        inputs=x if name == "x" else None,
                    )


def check_running_statistics(spec: TechniqueSpec) -> None:
    """Three training steps update the buffers as the reference updates its state; eval doesn't."""
    import torch

    hp = spec.hyperparams()
    for i, shape in enumerate(SHAPES):
        module = _build(spec, {}, torch.float64, seed=i)
        params, state = _params(module), _state(module)
        for step in range(3):
            x = _input(shape, seed=100 * i + step) * (1 + step)
            with torch.no_grad():
                module(x)
            _ref_forward(spec, x, params, state, True, hp)
            buffers = _state(module)
            if set(buffers) != set(state):
                raise CheckFailure(
                    f"{spec.qualified_name}: module buffers {sorted(buffers)} != reference state "
                    f"keys {sorted(state)} after training step {step + 1}"
                )
            for name, value in buffers.items():
                assert_close(
                    value,
                    state[name],
                    what=f"{spec.qualified_name} buffer {name!r} after {step + 1} training "
                    f"step(s) on input {shape}",
                )
        module.eval()
        before = _state(module)
        with torch.no_grad():
            module(_input(shape, seed=999))
        for name, value in _state(module).items():
            assert_close(
                value,
                before[name],
                what=f"{spec.qualified_name} buffer {name!r} changed by an eval-mode forward",
            )


def check_eval_mode(spec: TechniqueSpec) -> None:
    """After two training steps, the eval-mode output equals the reference's eval formula."""
    import torch

    for overrides in _hp_variants(spec):
        hp = spec.hyperparams(overrides)
        for i, shape in enumerate(SHAPES):
            module = _build(spec, overrides, torch.float64, seed=i)
            params, state = _params(module), _state(module)
            for step in range(2):
                x = _input(shape, seed=200 + 10 * i + step) * (1 + step)
                with torch.no_grad():
                    module(x)
                _ref_forward(spec, x, params, state, True, hp)
            module.eval()
            x = _input(shape, seed=300 + i)
            with torch.no_grad():
                y = module(x)
            expected, _ = _ref_forward(spec, x, params, state, False, hp)
            assert_close(
                y,
                expected,
                what=f"{spec.qualified_name} forward (eval mode after 2 training steps, "
                f"{_label(shape, overrides)})",
                inputs=x,
            )


def check_batch_dependence(spec: TechniqueSpec) -> None:
    """The declared ``batch_dependent`` matches: does a sample's output depend on the others?"""
    import torch

    declared = spec.properties.get("batch_dependent")
    if not isinstance(declared, bool):
        raise CheckFailure(
            f"{spec.qualified_name}: property 'batch_dependent' must be declared True or False, "
            f"got {declared!r}"
        )
    for i, shape in enumerate(SHAPES):
        module = _build(spec, {}, torch.float64, seed=i)
        x = _input(shape, seed=400 + i)
        with torch.no_grad():
            full, part = module(x)[:2], module(x[:2])
        what = (
            f"{spec.qualified_name} train-mode output of 2 samples alone vs within a batch of "
            + str(shape[0])
        )
        if declared:
            gap = float((full - part).abs().max())
            if gap < 1e-6:
                raise CheckFailure(
                    f"{what}: identical (max |diff| {gap:.3g}) although batch_dependent=True"
                )
            module.eval()
            with torch.no_grad():
                full, part = module(x)[:2], module(x[:2])
            what = what.replace("train-mode", "eval-mode")
        assert_close(part, full, what=what + f" (batch_dependent={declared})", inputs=x[:2])


def check_invariants(spec: TechniqueSpec) -> None:
    """With the affine map switched off, the training-mode output has the declared statistics."""
    import torch

    invariant = spec.properties.get("invariant")
    if invariant is None:
        return
    if invariant not in INVARIANTS:
        raise CheckFailure(
            f"{spec.qualified_name}: unknown invariant {invariant!r}; one of {', '.join(INVARIANTS)}"
        )
    hp = spec.hyperparams()
    eps = float(hp.get("eps", 0.0))
    for i, shape in enumerate(SHAPES):
        module = _build(spec, {}, torch.float64, seed=i)
        with torch.no_grad():
            for name, p in module.named_parameters():
                p.fill_(0.0 if name.endswith("bias") else 1.0)
            x = _input(shape, seed=500 + i)
            z = module(x)
        what = f"{spec.qualified_name} invariant {invariant!r} on input {shape}"
        sample_dims = tuple(range(1, len(shape)))
        if invariant == "identity":
            assert_close(z, x, what=what, inputs=x)
            continue
        if invariant == "channel":
            rows = z.transpose(0, 1).reshape(shape[1], -1)
        elif invariant == "group":
            rows = z.reshape(shape[0] * hp["num_groups"], -1)
        else:
            rows = z.reshape(shape[0], -1)
        scale = x.transpose(0, 1).reshape(shape[1], -1) if invariant == "channel" else None
        if scale is None:
            scale = x.reshape(rows.shape)
        if invariant in ("sample_rms", "sample_norm"):
            spread = (scale * scale).mean(dim=1)
        else:
            spread = scale.var(dim=1, unbiased=False)
        if invariant == "sample_norm":
            spread = spread * scale.shape[1]
        # eps shifts a statistic by about eps / spread (in or out of the square root)
        tol = 1e-4 + 4 * eps * (1 / spread + 1 / spread.sqrt())
        if invariant == "sample_rms":
            stats = {"mean square": (rows * rows).mean(dim=1)}
        elif invariant == "sample_norm":
            stats = {"L2 norm": torch.linalg.vector_norm(z, dim=sample_dims)}
        else:
            mean = rows.mean(dim=1)
            stats = {"mean": mean, "variance": ((rows - mean[:, None]) ** 2).mean(dim=1)}
        for stat, value in stats.items():
            target = torch.zeros_like(value) if stat == "mean" else torch.ones_like(value)
            gap = (value - target).abs()
            bad = ~(gap <= tol)
            if bool(bad.any()):
                j = int(torch.argmax(torch.where(bad, gap, torch.zeros_like(gap))))
                raise CheckFailure(
                    f"{what}: {stat} is {float(value[j]):.8g} instead of {float(target[j]):g} for "
                    f"{int(bad.sum())} of {value.numel()} rows; worst row {j} (|diff| = "
                    f"{float(gap[j]):.3g}, tolerance {float(tol[j]):.3g})"
                )


def check_gradcheck(spec: TechniqueSpec) -> None:
    """``torch.autograd.gradcheck`` (fast mode: random directional derivatives) in float64."""
    import torch
    from torch.func import functional_call

    for i, shape in enumerate(((3, NUM_FEATURES), (2, NUM_FEATURES, 2, 2))):
        module = _build(spec, {}, torch.float64, seed=i)
        names = [n for n, _ in module.named_parameters()]
        params = [p.detach().clone().requires_grad_(True) for _, p in module.named_parameters()]
        x = _input(shape, seed=600 + i).requires_grad_(True)

        def f(x: Any, *ps: Any, module: Any = module, names: list = names) -> Any:
            return functional_call(module, dict(zip(names, ps, strict=True)), (x,))

        try:
            torch.autograd.gradcheck(
                f, (x, *params), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True
            )
        except Exception as exc:
            text = " ".join(str(exc).split())
            raise CheckFailure(
                f"{spec.qualified_name} gradcheck (float64, train mode, input {shape}, inputs "
                f"x then {names}) failed: " + (text[:600] + " ..." if len(text) > 600 else text)
            ) from None


def checks(spec: TechniqueSpec) -> list[Check]:
    """The conformance checks every normalizer must pass."""
    return [
        Check(name, func)
        for name, func in (
            ("forward_float32", check_forward("float32")),
            ("forward_float64", check_forward("float64")),
            ("gradients", check_gradients),
            ("running_statistics", check_running_statistics),
            ("eval_mode", check_eval_mode),
            ("batch_dependence", check_batch_dependence),
            ("invariants", check_invariants),
            ("gradcheck", check_gradcheck),
        )
    ]
