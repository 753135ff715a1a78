"""Conformance checks of the parametrization family, and the coordinate check.

Reference protocol: ``spec.reference(role, shape, base_shape, update_rule, **hp) -> (init,
lr)``, the multipliers written straight from the paper's table (for ``mup``: Yang et al. 2021,
Tensor Programs V, Table 3); the fast side is ``spec.create(**hp)``, a
:class:`~techbench.techniques.families.Parametrization`.

- ``reference``: ``fast.scale`` equals the reference for every role, both update rules and a
  grid of shapes against their base shapes (linear, embedding and convolution weights, vectors;
  the base itself included).
- ``coordinates`` (run for a spec declaring ``properties["width_stable"]``): the muP paper's
  own test (TP5, fig. 5: the size of ``x_t - x_0`` over 4 Adam steps against width). An MLP
  (widths 64..1024, depth 3) and the transformer built-in (widths 32..256 at a fixed head
  dimension, :data:`HEAD_DIM`) train :data:`COORD_STEPS` Adam steps at one learning rate on one
  small batch, through the mechanism the engine uses (:mod:`techbench.techniques.parametrize`);
  the mean |coordinate| of the change of every weight layer's output (the logits last) is
  fitted against width on a log-log scale, and every slope must lie within :data:`COORD_TOL` of
  0. Under SP the hidden layers' and the logits' changes grow with width, so the check fails
  it, as it fails a readout learning rate of 1/sqrt(width) (the tests plant both). The change,
  not the raw size: under muP the readout's initial output shrinks as width^-1/2 by design (a
  transient, says the ``mup`` package's README), which at CPU widths tilts a raw-size slope
  without any bug. For the same reason the transformer runs with ``readout_zero_init`` (the
  README's advice), which a random readout's ``W_0 dx`` term would otherwise tilt.

Optimizers: ``lr_multiplier`` (run for every optimizer declaring ``properties["update_rule"]``,
from :mod:`techbench.testing.optimizer`) checks that the engine's per-tensor lr mechanism, a
step scaled by ``m`` (:func:`~techbench.techniques.parametrize.scale_updates`), equals the same
optimizer built with ``lr * m``, step by step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..techniques.families import ModelParts, Parametrization
from ..techniques.spec import TechniqueSpec
from .core import Check, CheckFailure

ROLE_SHAPES: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = (
    ("input", (256, 10), (64, 10)),
    ("input", (97, 256), (97, 64)),
    ("input", (32, 3, 3, 3), (16, 3, 3, 3)),
    ("hidden", (256, 256), (64, 64)),
    ("hidden", (1024, 256), (256, 64)),
    ("hidden", (256, 1024), (64, 256)),
    ("hidden", (32, 32, 3, 3), (16, 16, 3, 3)),
    ("hidden", (64, 64), (64, 64)),
    ("readout", (10, 256), (10, 64)),
    ("readout", (97, 512), (97, 128)),
    ("readout", (10, 64), (10, 64)),
    ("bias", (256,), (64,)),
    ("bias", (10,), (10,)),
    ("norm", (512,), (128,)),
)
"""(role, shape, base shape) the ``reference`` check compares on."""

COORD_STEPS = 4
COORD_LR = {"mlp": 0.01, "transformer": 0.003}
COORD_TOL = 0.2
"""Bound on |slope| of log mean |coordinate| against log width. Under muP the slopes measured
here stay within about 0.1 of 0 (finite-width corrections); under SP with Adam the hidden
layers' grow towards 1 and the logits' beyond (see the tests for the numbers)."""

COORD_BATCH = 16
COORD_SEQS = 1
"""Samples of the MLP's batch, sequences (of 16 tokens) of the transformer's: small, so that a
step's update is strongly correlated with the inputs it is measured on (with many samples the
uncorrelated part, a width^-1/2 correction, dominates at the widths a CPU affords)."""
MLP_WIDTHS = (64, 128, 256, 512, 1024)
HEAD_DIM = 8
"""The transformer's head dimension in the coordinate check: its attention scale
1/sqrt(head dim) stays the muP one (1/head dim up to a constant) only at a fixed head dimension."""
TRANSFORMER_WIDTHS = (32, 64, 128, 256)


def check_reference(spec: TechniqueSpec) -> None:
    """``fast.scale`` equals the reference over :data:`ROLE_SHAPES` and both update rules."""
    hp = spec.hyperparams()
    fast = spec.create()
    reference = spec.load_reference()
    for rule in ("adaptive", "sgd", "orthogonalized", "orthogonalized_rms"):
        for role, shape, base in ROLE_SHAPES:
            got = fast.scale(role, shape, base, rule)
            want = reference(role, shape, base, rule, **hp)
            for what, g, w in (("init", got.init, want[0]), ("lr", got.lr, want[1])):
                if not math.isclose(g, w, rel_tol=1e-12):
                    raise CheckFailure(
                        f"{spec.qualified_name}: {what} multiplier of a {role} {shape} against "
                        f"base {base} under update_rule {rule!r}: {g!r}, the reference says {w!r}"
                    )


def check_lr_multiplier(spec: TechniqueSpec, multiplier: float = 0.3, steps: int = 6) -> None:
    """An optimizer whose steps are scaled by ``multiplier`` through the engine's hooks moves
    its parameters as the same optimizer with ``lr * multiplier`` (float64, several steps)."""
    from ..techniques.parametrize import LR_MULT_ATTR, scale_updates
    from .optimizer import _fast_step, _fresh_params, make_problem

    hp = spec.hyperparams()
    initial, loss = make_problem()
    hooked, plain = _fresh_params(initial), _fresh_params(initial)
    for p in hooked:
        setattr(p, LR_MULT_ATTR, multiplier)
    opt_hooked = spec.create(hooked, **hp)
    scale_updates(opt_hooked)
    rates = tuple(spec.properties.get("rates", ("lr",)))
    opt_plain = spec.create(plain, **{**hp, **{r: hp[r] * multiplier for r in rates}})
    for t in range(steps):
        _fast_step(opt_hooked, hooked, loss)
        _fast_step(opt_plain, plain, loss)
        gap = max(float((a - b).detach().abs().max()) for a, b in zip(hooked, plain, strict=True))
        scale = max(float(b.detach().abs().max()) for b in plain)
        if not gap <= 1e-12 * max(scale, 1.0):
            raise CheckFailure(
                f"{spec.qualified_name}: step {t + 1} scaled by {multiplier} differs from the "
                f"step at lr * {multiplier} by {gap:.3g}: the update is not proportional to lr, "
                "so properties['update_rule'] (and a parametrization's lr multipliers) cannot "
                "hold for it"
            )


def check_coordinates(spec: TechniqueSpec) -> None:
    """The coordinate check (module docstring) at the spec's defaults, base = smallest width."""
    for model in ("mlp", "transformer"):
        widths = MLP_WIDTHS if model == "mlp" else TRANSFORMER_WIDTHS
        hp = spec.hyperparams()
        if "base_width" in hp:
            hp["base_width"] = widths[0]
        if model == "transformer" and "readout_zero_init" in hp:
            hp["readout_zero_init"] = True
        assert_width_stable(spec.create(**hp), model, widths)


def assert_width_stable(
    parametrization: Parametrization, model: str, widths: Sequence[int], tol: float = COORD_TOL
) -> dict[str, float]:
    """:func:`coordinate_slopes`, raising :class:`CheckFailure` naming the worst layer when a
    slope leaves ``[-tol, tol]``; returns the slopes."""
    slopes = coordinate_slopes(parametrization, model, widths)
    worst = max(slopes, key=lambda k: abs(slopes[k]))
    if abs(slopes[worst]) > tol:
        listed = ", ".join(f"{k} {v:+.2f}" for k, v in slopes.items())
        raise CheckFailure(
            f"coordinate check ({model}, widths {list(widths)}, {COORD_STEPS} Adam steps): the "
            f"mean |coordinate| of layer {worst} scales as width^{slopes[worst]:+.2f} (allowed "
            f"|slope| <= {tol}); slopes: {listed}"
        )
    return slopes


def coordinate_slopes(
    parametrization: Parametrization,
    model: str,
    widths: Sequence[int],
    *,
    steps: int = COORD_STEPS,
    lr: float | None = None,
    seeds: Sequence[int] = (0, 1),
) -> dict[str, float]:
    """Per weight layer (``weight_layers`` index; ``"logits"`` for the last), the least-squares
    slope of log mean |output coordinate| after ``steps`` Adam steps at ``lr`` (one batch,
    fixed) against log width, averaged over ``seeds``; the base model is ``widths[0]``."""
    import torch

    lr = lr if lr is not None else COORD_LR[model]
    sizes: dict[str, list[float]] = {}
    for width in widths:
        per_seed = [_coordinate_sizes(parametrization, model, width, steps, lr, s) for s in seeds]
        for layer in per_seed[0]:
            sizes.setdefault(layer, []).append(sum(d[layer] for d in per_seed) / len(seeds))
    x = torch.tensor([math.log(w) for w in widths], dtype=torch.float64)
    x = x - x.mean()
    out = {}
    for layer, values in sizes.items():
        y = torch.tensor([math.log(v) for v in values], dtype=torch.float64)
        out[layer] = float((x * (y - y.mean())).sum() / (x * x).sum())
    return out


def _problem(model: str, seed: int) -> tuple[Any, Any, tuple[int, ...], int, dict[str, Any]]:
    """A fixed batch ``(x, y)``, the input shape, the number of outputs and the model's
    hyper-parameters besides the width."""
    import torch

    gen = torch.Generator().manual_seed(1000 + seed)
    if model == "mlp":
        x = torch.randn(COORD_BATCH, 16, generator=gen)
        y = torch.randint(0, 10, (COORD_BATCH,), generator=gen)
        return x, y, (16,), 10, {"depth": 3}
    x = torch.randint(0, 32, (COORD_SEQS, 16), generator=gen)
    y = torch.randint(0, 32, (COORD_SEQS, 16), generator=gen)
    return x, y, (16,), 32, {"depth": 2}


def _parts(model: str) -> ModelParts:
    from ..techniques.registry import get_spec

    act = get_spec("relu" if model == "mlp" else "gelu", "activation")
    norm = get_spec("none" if model == "mlp" else "layernorm", "normalizer")

    def normalizer(n: int) -> Any:
        return norm.create(n)

    return ModelParts(
        activation=act.create,
        weight_init=get_spec("he_normal", "initializer").create(),
        bias_init=get_spec("zeros", "initializer").create(),
        normalizer=normalizer,
        norm_placement="before",
    )


def _coordinate_sizes(
    parametrization: Parametrization, model: str, width: int, steps: int, lr: float, seed: int
) -> dict[str, float]:
    """Mean |coordinate| of the change ``x_t - x_0`` of each weight layer's output on the
    training batch over ``steps`` Adam steps."""
    import torch

    from ..tasks import loss_fn
    from ..techniques.parametrize import base_shapes, meta_parts, parametrize, scale_updates
    from ..techniques.registry import get_spec

    x, y, input_shape, outputs, extra = _problem(model, seed)
    model_spec = get_spec(model, "model")
    parts = _parts(model)

    def build(hp: Mapping[str, Any], parts: ModelParts = parts) -> Any:
        if model == "transformer":  # head dimension HEAD_DIM: the heads grow with the width
            hp = {**hp, "heads": max(1, hp["width"] // HEAD_DIM)}
        return model_spec.create(input_shape, outputs, parts, **hp)

    torch.manual_seed(seed)
    net = build({**extra, "width": width})
    shapes = base_shapes(
        parametrization, lambda hp: build(hp, meta_parts(parts)), {**extra, "width": width}
    )
    parametrize(net, parametrization, shapes, "adaptive")
    opt = get_spec("adam", "optimizer").create(list(net.parameters()), lr=lr)
    scale_updates(opt)
    loss = loss_fn("language_model" if model == "transformer" else "classification")
    start = _layer_outputs(net, x)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss(net(x), y).backward()
        opt.step()
    end = _layer_outputs(net, x)
    return {name: float((end[name] - start[name]).abs().mean()) for name in start}


def _layer_outputs(net: Any, x: Any) -> dict[str, Any]:
    """Each weight layer's output on ``x`` (the last one's named ``logits``)."""
    import torch

    layers = list(net.weight_layers)
    captured: dict[str, Any] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(module: Any, inputs: Any, output: Any) -> None:
            captured[name] = output.detach().clone()

        return record

    names = [str(i) for i in range(len(layers) - 1)] + ["logits"]
    handles = [layer.register_forward_hook(hook(n)) for layer, n in zip(layers, names, strict=True)]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
    return captured


def checks(spec: TechniqueSpec) -> list[Check]:
    """The parametrization conformance checks (see the module docstring)."""
    out = [Check("reference", check_reference)]
    if spec.properties.get("width_stable"):
        out.append(Check("coordinates", check_coordinates))
    return out
