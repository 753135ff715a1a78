"""Conformance checks for regularizers.

The fast side is ``spec.create(**hp) -> techbench.techniques.families.Regularizer``; it overrides exactly
the hooks it declares in ``spec.properties["hooks"]`` (a subset of ``transform_batch``,
``make_module``, ``penalty``, ``loss``, ``transform_gradients``, ``after_step``, ``callbacks``). The reference protocol
depends on the hooks; ``hp`` is always the full hyper-parameter dict (defaults updated with
overrides) passed as keyword arguments, so a reference should accept every declared parameter.
Write references from the formula, in float64, without calling the fast side.

==================  =====================================================================
hook                reference protocol
==================  =====================================================================
penalty             ``ref(named_params, **hp) -> (value, grads)``: ``named_params`` is a
                    list of ``(name, tensor)`` of the model; ``value`` the penalty (0-d
                    tensor), ``grads`` its analytic gradient, one tensor per parameter
                    (zeros where the penalty does not act).
make_module         ``ref(x, keep_mask, **hp) -> y``: the module's training-mode output
                    given the 0/1 mask of kept units. Needs a hyper-parameter ``p`` (the
                    drop rate). The check reads the mask off the fast output (a unit is kept
                    where its output is nonzero; inputs are nonzero).
transform_batch     the law given the random draws, selected by ``properties["law"]``:
                    ``"additive_noise"``: ``ref(x, noise, **hp) -> x'`` affine in the
                    standard normal draw ``noise``; ``"crop_flip"``: ``ref(x, shifts, flips,
                    **hp) -> x'`` for (N, C, H, W) images, ``shifts`` (N, 2) integer (dy, dx)
                    crop offsets into the image zero-padded by ``hp["padding"]``, ``flips``
                    (N,) bool horizontal mirrors. Without a ``law`` only the generic
                    transform checks run.
loss                ``ref(logits, target, **hp) -> (loss, dloss_dlogits)``: the mean loss over
                    the batch and its analytic gradient.
transform_gradients by ``properties["gradient_law"]``: ``"deterministic"``: ``ref(grads,
                    step, **hp) -> grads``, the transformed gradients of *all* parameters
                    (``grads`` a list of float64 tensors, one per parameter with a gradient,
                    in ``model.parameters()`` order; ``step`` from 0); ``"additive_noise"``:
                    ``ref(grads, noise, step, **hp) -> grads`` affine in the standard normal
                    draws ``noise`` (one tensor per gradient), i.e. the law of the noise.
                    Without a ``gradient_law`` only the generic gradient checks run.
after_step          ``ref(name, weight, lr, **hp) -> new_weight`` for one parameter, ``lr``
                    the current learning rate of its optimizer group and ``weight`` the
                    parameter after the optimizer's step; a reference with a ``before``
                    keyword also gets the parameter before that step (decoupled decay).
callbacks           ``ref(history, **hp) -> int | None``: index of the validation check after
                    which training stops (``trainer.should_stop`` becomes true), or None.
==================  =====================================================================

Checks (each raises :class:`~techbench.testing.CheckFailure` saying what differed):

- ``hooks``: the fast side is a ``Regularizer`` overriding exactly the declared hooks.
- ``penalty``: on a float64 model (Linear, BatchNorm1d, Conv2d), value and autograd gradient of
  every parameter equal the reference, for the defaults and every non-default bool / choice;
  and once more in float32 (defaults) with float32 tolerances.
- ``dropout_eval_identity``: in eval mode the module returns its input unchanged.
- ``dropout_law``: kept outputs and the input gradient equal the reference given the observed
  mask (float64, 16 000 units).
- ``dropout_fraction``: the dropped fraction is ``p``: binomial z-test, two-sided, false-alarm
  rate ``ALPHA`` = 1e-6 (|z| <= 4.89), for ``p`` = default and 0.2.
- ``dropout_expectation``: E[y] = x: z = sum(y - x) / sqrt(sum x^2 p/(1-p)), |z| <= 4.89.
- ``sampled_module`` (with ``properties["stacked_module"]``): the module is a
  :class:`~techbench.techniques.families.SampledModule`; its training output equals
  ``forward_with(x, sample(...))`` drawn from a generator seeded alike, exactly; two runs with
  generators seeded alike agree even when the global RNG differs (the generator is the only
  randomness: a trial's masks are its own, and stacked members draw what they draw alone);
  ``forward_with`` under ``vmap`` over three members equals each member's own output.
- ``transform_inputs_untouched``: the hook does not write into its inputs (validation data is
  never touched, the dataset never corrupted), keeps ``y`` and the shape of ``x``.
- ``transform_reproducible``: two generators seeded alike give identical batches even when the
  global RNG state differs (the provided ``torch.Generator`` is the only randomness).
- ``noise_law`` (additive_noise): the draw recovered through the reference's affine law has mean 0,
  variance 1 and P(|e| < 1) = 0.6827 (three z-tests at ``ALPHA``, 20 000 draws); with every
  std-like parameter 0 the transform is the identity.
- ``crop_flip_law`` (crop_flip): the draws (dy, dx, flip) of each of 128 samples are read off a
  probe batch whose pixels hold their own positions (matched against the reference for every
  candidate draw); the real batch, transformed with the same seeded generator, must equal the
  reference at those draws exactly. The flip count passes a binomial test against ``flip_p``
  and the mean offset a z-test against ``padding`` (uniform offsets), both at ``ALPHA``.
- ``loss``: value and autograd gradient equal the reference (float64), defaults and variants.
- ``gradient_transform_generic``: the hook returns None, leaves every parameter's value
  bitwise unchanged, a ``grad`` that is None stays None, shapes and dtypes are kept; two
  generators seeded alike give identical gradients although the global RNG differs.
- ``gradient_law`` (deterministic): on a float64 probe (Linear, BatchNorm1d without a bias
  gradient, Conv2d) whose tensors' gradients have norms spread over four decades, at overall
  gradient scales 1e-3, 1 and 1e3 (so that thresholds are crossed both ways) and steps 0, 7 and
  1000 (schedules), the transformed gradients equal the reference (rtol 1e-10), for the
  defaults, every bool/choice variant and every float hyper-parameter halved; once more in
  float32 with float32 tolerances. A wrong scale, a per-tensor instead of a global reduction
  or an ignored step fails here.
- ``gradient_noise_law`` (additive_noise): at steps 0, 10 and 1000 (annealing), for the
  defaults and each float hyper-parameter set to 1.0 where valid, the draw recovered through
  the reference's affine law from 20 000 transformed entries has mean 0, variance 1 and
  P(|e| < 1) = 0.6827 (z-tests at ``ALPHA``): a noise scale off by any factor beyond
  ~1 +- 0.05 at any of those steps (variance used as standard deviation, a missing or wrong
  annealing) fails.
- ``stacked_gradients``: member k of K stacked members' gradients, transformed as the stacked
  engine does (:mod:`techbench.testing.regularizer_stacked`), equals member k transformed alone.
- ``after_step``: with two optimizer groups whose lr was changed after construction (as a
  scheduler does), one full step (``transform_gradients`` when declared, an SGD step on fixed
  gradients, then the hook) leaves every parameter equal to the reference given the stepped
  weight, its group's current lr (and the pre-step weight for a ``before`` keyword);
  parameters the reference leaves unchanged are bitwise unchanged. With a ``c``
  parameter (a norm constraint), every unit's incoming weight norm is <= c afterwards.
- ``callbacks``: each callback is driven through a Trainer-like stub (``setup(trainer, module,
  "fit")``; per epoch ``trainer.callback_metrics = {"val_loss": tensor(v)}``, then
  ``on_validation_end`` and ``on_train_epoch_end``) on fake val_loss histories (plateau, steady
  decrease, improvements smaller than ``min_delta``, a NaN); the epoch where
  ``trainer.should_stop`` first becomes true equals the reference, for the defaults and for
  ``patience=2, min_delta=0.05`` where those parameters exist. Lightning callbacks import
  ``pytorch_lightning`` (about 4 s of CPU once per process); the stub itself takes milliseconds.

Every check is deterministic (fixed seeds), so a statistical check that fails once fails always;
the stated false-alarm rate is the chance that a correct plugin's seeded draw fails.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

from ..techniques.spec import TechniqueSpec
from .core import Check, CheckFailure
from .regularizer_probes import gradient_probe, hp_label, make_regularizer
from .tolerances import assert_close

HOOKS: tuple[str, ...] = (
    "transform_batch",
    "make_module",
    "penalty",
    "loss",
    "transform_gradients",
    "after_step",
    "callbacks",
)
ALPHA = 1e-6
"""False-alarm rate of every statistical test (two-sided)."""

Z_CRIT = 4.891638475698  # NormalDist().inv_cdf(1 - ALPHA / 2)


def _hooks(spec: TechniqueSpec) -> tuple[str, ...]:
    return tuple(spec.properties.get("hooks", ()))


def _variants(spec: TechniqueSpec) -> list[dict[str, Any]]:
    """The defaults, then each bool negated and each other choice, one at a time."""
    out: list[dict[str, Any]] = [{}]
    for p in spec.params:
        if p.type is bool:
            out.append({p.name: not p.default})
        elif p.choices is not None:
            out.extend({p.name: c} for c in p.choices if c != p.default)
    return out


def _z_check(what: str, observed: float, expected: float, sd: float, n: int) -> None:
    z = (observed - expected) / sd if sd > 0 else (0.0 if observed == expected else math.inf)
    if abs(z) > Z_CRIT:
        raise CheckFailure(
            f"{what}: observed {observed:.6g}, expected {expected:.6g} (n={n}, z={z:.2f}, "
            f"|z| > {Z_CRIT:.2f} happens with probability {ALPHA:g} when the law holds)"
        )


def _same(actual: Any, expected: Any, what: str) -> None:
    assert_close(actual, expected, what=what, dtype="float64", rtol=0, atol=0)


# ----------------------------------------------------------------------------------- hooks


def _check_hooks(spec: TechniqueSpec) -> None:
    from ..techniques.families import Regularizer

    declared = _hooks(spec)
    unknown = sorted(set(declared) - set(HOOKS))
    if unknown:
        raise CheckFailure(
            f"{spec.qualified_name}: declares unknown hooks {unknown}; hooks are {', '.join(HOOKS)}"
        )
    reg = make_regularizer(spec, {})
    overridden = {h for h in HOOKS if getattr(type(reg), h) is not getattr(Regularizer, h)}
    if overridden != set(declared):
        raise CheckFailure(
            f"{spec.qualified_name}: overrides hooks {sorted(overridden)} but declares "
            f"properties['hooks'] = {sorted(declared)}; they must be the same"
        )


# --------------------------------------------------------------------------------- penalty


def _probe_model() -> Any:
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(7)
    model = nn.ModuleList([nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Conv2d(2, 4, 3)]).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return model


def _check_penalty(spec: TechniqueSpec) -> None:
    import torch

    ref = spec.load_reference()
    runs = [(hp, torch.float64) for hp in _variants(spec)] + [({}, torch.float32)]
    for hp, dtype in runs:
        full = spec.hyperparams(hp)
        model = _probe_model().to(dtype)
        named = list(model.named_parameters())
        value = make_regularizer(spec, hp).penalty(model)
        ref_value, ref_grads = ref(named, **full)
        label = f"{spec.qualified_name} ({hp_label(hp)}, {str(dtype).replace('torch.', '')})"
        if value is None:
            if float(ref_value) != 0.0:
                raise CheckFailure(
                    f"{label}: penalty returned None, reference {float(ref_value):g}"
                )
            continue
        if value.dim() != 0:
            raise CheckFailure(f"{label}: penalty must be a scalar, got shape {tuple(value.shape)}")
        assert_close(value, ref_value, what=f"{label} penalty value", dtype=dtype)
        params = [p for _, p in named]
        grads = torch.autograd.grad(value, params, allow_unused=True)
        for (name, p), g, rg in zip(named, grads, ref_grads, strict=True):
            got = torch.zeros_like(p) if g is None else g
            assert_close(
                got, rg, what=f"{label} penalty gradient wrt {name}", inputs=p, dtype=dtype
            )


# --------------------------------------------------------------------------------- dropout


def _dropout_rates(spec: TechniqueSpec) -> list[float]:
    if "p" not in {p.name for p in spec.params}:
        raise CheckFailure(
            f"{spec.qualified_name}: a make_module regularizer needs a drop-rate parameter 'p' "
            "for the dropout checks"
        )
    rates = [spec.param("p").default]
    try:
        spec.param("p").validate(spec.qualified_name, 0.2)
        rates.append(0.2)
    except ValueError:
        pass
    return list(dict.fromkeys(rates))


def _dropout_input(n: int = 32, d: int = 500) -> Any:
    import torch

    gen = torch.Generator().manual_seed(11)
    return 0.5 + torch.rand((n, d), generator=gen, dtype=torch.float64)


def _module(spec: TechniqueSpec, p: float) -> Any:
    module = make_regularizer(spec, {"p": p}).make_module()
    if module is None:
        raise CheckFailure(f"{spec.qualified_name}: make_module returned None with p={p}")
    return module.double()


def _check_dropout_eval(spec: TechniqueSpec) -> None:
    for p in _dropout_rates(spec):
        module = _module(spec, p)
        module.eval()
        x = _dropout_input(8, 100)
        assert_close(
            module(x), x, what=f"{spec.qualified_name} (p={p}) eval-mode output", rtol=0, atol=0
        )


def _dropout_forward(spec: TechniqueSpec, p: float, seed: int) -> tuple[Any, Any, Any, Any]:
    import torch

    module = _module(spec, p)
    module.train()
    x = _dropout_input().requires_grad_(True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        y = module(x)
    if y.shape != x.shape:
        raise CheckFailure(
            f"{spec.qualified_name}: output shape {tuple(y.shape)} != {tuple(x.shape)}"
        )
    g = torch.linspace(-1.0, 1.0, x.numel(), dtype=torch.float64).reshape(x.shape)
    (dx,) = torch.autograd.grad(y, x, g)
    return x.detach(), y.detach(), dx, g


def _check_dropout_law(spec: TechniqueSpec) -> None:
    import torch

    ref = spec.load_reference()
    for p in _dropout_rates(spec):
        x, y, dx, g = _dropout_forward(spec, p, seed=101)
        full = spec.hyperparams(p=p)
        keep = (y != 0).to(torch.float64)
        xr = x.clone().requires_grad_(True)
        yr = ref(xr, keep, **full)
        (dxr,) = torch.autograd.grad(yr, xr, g)
        label = f"{spec.qualified_name} (p={p})"
        assert_close(y, yr, what=f"{label} training output given its keep mask", inputs=x)
        assert_close(dx, dxr, what=f"{label} input gradient given its keep mask", inputs=x)


def _check_dropout_fraction(spec: TechniqueSpec) -> None:
    for p in _dropout_rates(spec):
        _, y, _, _ = _dropout_forward(spec, p, seed=202)
        n = y.numel()
        dropped = int((y == 0).sum())
        _z_check(
            f"{spec.qualified_name} (p={p}) dropped fraction",
            dropped / n,
            p,
            math.sqrt(p * (1 - p) / n),
            n,
        )


def _check_dropout_expectation(spec: TechniqueSpec) -> None:
    for p in _dropout_rates(spec):
        x, y, _, _ = _dropout_forward(spec, p, seed=303)
        n = y.numel()
        sd = math.sqrt(float((x * x).sum()) * p / (1 - p)) / n
        _z_check(
            f"{spec.qualified_name} (p={p}) mean of y - x (E[y] = x)",
            float((y - x).mean()),
            0.0,
            sd,
            n,
        )


def _check_sampled_module(spec: TechniqueSpec) -> None:
    import torch

    from ..techniques.families import SampledModule

    for p in _dropout_rates(spec):
        label = f"{spec.qualified_name} (p={p})"
        module = _module(spec, p).train()
        sampled = isinstance(module, SampledModule)
        if not sampled:
            raise CheckFailure(
                f"{label}: declares stacked_module but its module {type(module).__name__} has no "
                "generator / sample / forward_with (techbench.techniques.families.SampledModule)"
            )
        x = _dropout_input(8, 300)
        outputs = []
        for global_seed in (1, 2):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(global_seed)
                module.generator = torch.Generator().manual_seed(1234)
                outputs.append(module(x))
        assert_close(
            outputs[1],
            outputs[0],
            what=f"{label} output with its generator seeded alike under another global seed",
            rtol=0,
            atol=0,
        )
        sample = module.sample(x.shape, x.dtype, x.device, torch.Generator().manual_seed(1234))
        assert_close(
            module.forward_with(x, sample),
            outputs[0],
            what=f"{label} forward_with(x, sample(...)) against its forward",
            rtol=0,
            atol=0,
        )
        xs = torch.stack([x, 2.0 * x, -x])
        gen = torch.Generator().manual_seed(99)
        samples = torch.stack([module.sample(x.shape, x.dtype, x.device, gen) for _ in range(3)])
        own = torch.stack([module.forward_with(a, b) for a, b in zip(xs, samples, strict=True)])
        assert_close(
            torch.func.vmap(module.forward_with)(xs, samples),
            own,
            what=f"{label} forward_with under vmap against each member's own",
            rtol=0,
            atol=0,
        )
    module.generator = None


# ------------------------------------------------------------------------------- transforms


def _image_batch(n: int = 32, seed: int = 5) -> tuple[Any, Any]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((n, 2, 6, 5), generator=gen, dtype=torch.float64) + 0.1
    y = torch.randint(0, 10, (n,), generator=gen)
    return x, y


def _transform_inputs(spec: TechniqueSpec) -> list[tuple[Any, Any]]:
    import torch

    gen = torch.Generator().manual_seed(9)
    flat = (torch.randn((16, 12), generator=gen, dtype=torch.float64), torch.arange(16) % 3)
    if spec.properties.get("law") == "crop_flip":
        return [_image_batch()]
    return [flat, _image_batch()]


def _check_transform_untouched(spec: TechniqueSpec) -> None:
    import torch

    reg = make_regularizer(spec, {})
    for x, y in _transform_inputs(spec):
        x0, y0 = x.clone(), y.clone()
        xt, yt = reg.transform_batch(x, y, torch.Generator().manual_seed(1))
        label = f"{spec.qualified_name} transform_batch"
        _same(x, x0, f"{label} wrote into its input x")
        _same(y, y0, f"{label} wrote into its input y")
        _same(yt, y0, f"{label} changed the targets")
        if tuple(xt.shape) != tuple(x.shape):
            raise CheckFailure(f"{label}: shape {tuple(x.shape)} became {tuple(xt.shape)}")


def _check_transform_reproducible(spec: TechniqueSpec) -> None:
    import torch

    reg = make_regularizer(spec, {})
    for x, y in _transform_inputs(spec):
        torch.manual_seed(1)
        a, _ = reg.transform_batch(x, y, torch.Generator().manual_seed(1234))
        torch.manual_seed(2)
        b, _ = reg.transform_batch(x, y, torch.Generator().manual_seed(1234))
        assert_close(
            b,
            a,
            what=f"{spec.qualified_name} transform_batch with two generators seeded 1234 "
            "(global RNG differs)",
            rtol=0,
            atol=0,
        )


def _check_standard_normal(label: str, e: Any, note: str = "") -> None:
    """``e`` (the noise recovered through the reference law) is a N(0, 1) sample: its mean,
    variance and P(|e| < 1) each within the z threshold ``Z_CRIT``; ``note`` is appended to
    the variance check's description."""
    n = e.numel()
    _z_check(f"{label} mean of the recovered N(0,1) draw", float(e.mean()), 0.0, n**-0.5, n)
    _z_check(
        f"{label} variance of the recovered N(0,1) draw{note}",
        float((e * e).mean()),
        1.0,
        math.sqrt(2.0 / n),
        n,
    )
    inside = math.erf(1 / math.sqrt(2))
    _z_check(
        f"{label} P(|e| < 1) of the recovered draw",
        float((e.abs() < 1).double().mean()),
        inside,
        math.sqrt(inside * (1 - inside) / n),
        n,
    )


def _check_noise_law(spec: TechniqueSpec) -> None:
    import torch

    ref = spec.load_reference()
    full = spec.hyperparams()
    gen = torch.Generator().manual_seed(21)
    x = torch.randn((200, 100), generator=gen, dtype=torch.float64)
    xt, _ = make_regularizer(spec, {}).transform_batch(
        x, torch.zeros(200), torch.Generator().manual_seed(3)
    )
    offset = ref(x, torch.zeros_like(x), **full)
    scale = ref(x, torch.ones_like(x), **full) - offset
    label = f"{spec.qualified_name} ({hp_label({})})"
    if bool((scale == 0).any()):
        raise CheckFailure(f"{label}: the reference law has zero noise scale; use std > 0 defaults")
    e = ((xt - offset) / scale).reshape(-1)
    _check_standard_normal(label, e)
    zero = {p.name: 0.0 for p in spec.params if p.type is float and p.name in ("std", "sigma")}
    if zero:
        xz, _ = make_regularizer(spec, zero).transform_batch(x, torch.zeros(200), torch.Generator())
        assert_close(xz, x, what=f"{spec.qualified_name} ({hp_label(zero)}) output", rtol=0, atol=0)


def _check_crop_flip_law(spec: TechniqueSpec) -> None:
    import torch

    ref = spec.load_reference()
    full = spec.hyperparams()
    pad = int(full["padding"])
    reg = make_regularizer(spec, {})
    x, y = _image_batch(n=128, seed=17)
    n, c, h, w = x.shape
    # Each draw is read off a probe batch whose pixels hold their own (nonzero) positions, fed
    # with the same seeded generator; the real batch must then equal the reference at those draws.
    probe = torch.arange(1, c * h * w + 1, dtype=torch.float64).reshape(1, c, h, w)
    cand = [
        (dy, dx, f) for f in (False, True) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
    ]
    cand_shifts = torch.tensor([[dy, dx] for dy, dx, _ in cand])
    cand_flips = torch.tensor([f for _, _, f in cand])
    cand_out = ref(probe.expand(len(cand), c, h, w), cand_shifts, cand_flips, **full)
    probe_out, _ = reg.transform_batch(
        probe.expand(n, c, h, w).contiguous(), y, torch.Generator().manual_seed(4)
    )
    match = (probe_out[:, None] == cand_out[None]).reshape(n, len(cand), -1).all(dim=2)
    if not bool(match.any(dim=1).all()):
        i = int((~match.any(dim=1)).nonzero()[0])
        raise CheckFailure(
            f"{spec.qualified_name}: output sample {i} is no crop (offsets 0..{2 * pad} of the "
            f"input zero-padded by {pad}) of its input, flipped horizontally or not"
        )
    found = match.to(torch.int64).argmax(dim=1)
    xt, _ = reg.transform_batch(x, y, torch.Generator().manual_seed(4))
    expected = ref(x, cand_shifts[found], cand_flips[found], **full)
    assert_close(
        xt,
        expected,
        what=f"{spec.qualified_name} augmented batch vs the reference at the draws read off a probe",
        rtol=0,
        atol=0,
    )
    flips = int(cand_flips[found].sum())
    shift_sum = int(cand_shifts[found].sum())
    n = x.shape[0]
    fp = float(full["flip_p"])
    _z_check(
        f"{spec.qualified_name} fraction of flipped samples",
        flips / n,
        fp,
        math.sqrt(fp * (1 - fp) / n),
        n,
    )
    var_shift = ((2 * pad + 1) ** 2 - 1) / 12.0
    _z_check(
        f"{spec.qualified_name} mean crop offset (uniform on 0..{2 * pad})",
        shift_sum / (2 * n),
        float(pad),
        math.sqrt(var_shift / (2 * n)),
        2 * n,
    )


# ------------------------------------------------------------------------------------ loss


def _check_loss(spec: TechniqueSpec) -> None:
    import torch

    ref = spec.load_reference()
    gen = torch.Generator().manual_seed(31)
    logits = 3.0 * torch.randn((16, 7), generator=gen, dtype=torch.float64)
    target = torch.randint(0, 7, (16,), generator=gen)
    for hp in _variants(spec):
        full = spec.hyperparams(hp)
        z = logits.clone().requires_grad_(True)
        value = make_regularizer(spec, hp).loss(z, target)
        label = f"{spec.qualified_name} ({hp_label(hp)})"
        if value is None:
            raise CheckFailure(f"{label}: loss returned None although 'loss' is a declared hook")
        ref_value, ref_grad = ref(logits, target, **full)
        assert_close(value, ref_value, what=f"{label} loss value", dtype=torch.float64)
        (g,) = torch.autograd.grad(value, z)
        assert_close(g, ref_grad, what=f"{label} loss gradient wrt logits", inputs=logits)


# ------------------------------------------------------------------------------ after_step


def _check_after_step(spec: TechniqueSpec) -> None:
    import torch

    ref = spec.load_reference()
    takes_before = "before" in inspect.signature(ref).parameters
    for hp in _variants(spec):
        full = spec.hyperparams(hp)
        model = _probe_model()
        gen = torch.Generator().manual_seed(41)
        with torch.no_grad():
            for p in model.parameters():
                # rows of very different norms, so a norm bound sees both sides
                rows = p.view(p.shape[0], -1) if p.dim() >= 2 else p.view(1, -1)
                rows.mul_(torch.exp(3.0 * torch.randn((rows.shape[0], 1), generator=gen)).double())
                p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        params = list(model.parameters())
        half = len(params) // 2
        optimizer = torch.optim.SGD(
            [{"params": params[:half], "lr": 0.1}, {"params": params[half:], "lr": 0.5}]
        )
        optimizer.param_groups[0]["lr"] = 0.037
        optimizer.param_groups[1]["lr"] = 0.2
        lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        reg = make_regularizer(spec, hp)
        if "transform_gradients" in _hooks(spec):
            reg.transform_gradients(model, 0, torch.Generator().manual_seed(5))
        optimizer.step()
        stepped = {n: p.detach().clone() for n, p in model.named_parameters()}
        reg.after_step(model, optimizer)
        label = f"{spec.qualified_name} ({hp_label(hp)})"
        for name, p in model.named_parameters():
            extra = {"before": before[name]} if takes_before else {}
            expected = ref(name, stepped[name], lr_of[id(p)], **extra, **full)
            what = f"{label} {name} after the optimizer step and after_step (lr={lr_of[id(p)]})"
            assert_close(p, expected, what=what, inputs=stepped[name], dtype=torch.float64)
            if torch.equal(expected, stepped[name].to(torch.float64)):
                assert_close(p, stepped[name], what=what + " must stay unchanged", rtol=0, atol=0)
            if "c" in full and p.dim() >= 2:
                rows = p.detach().reshape(p.shape[0], -1)
                worst = float(torch.linalg.vector_norm(rows, dim=1).max())
                if worst > full["c"] * (1 + 1e-9):
                    raise CheckFailure(
                        f"{label} {name}: a unit's weight norm is {worst:.8g} > c = {full['c']}"
                    )


# ---------------------------------------------------------------------- transform_gradients

GRADIENT_STEPS = (0, 7, 1000)
GRADIENT_SCALES = (1e-3, 1.0, 1e3)
NOISE_STEPS = (0, 10, 1000)


def _grads_of(model: Any) -> list[Any]:
    return [p.grad for p in model.parameters() if p.grad is not None]


def _gradient_variants(spec: TechniqueSpec) -> list[dict[str, Any]]:
    """``_variants`` plus each float hyper-parameter halved (an ignored or mis-scaled one shows)."""
    out = _variants(spec)
    for p in spec.params:
        if p.type is float and p.default not in (None, 0.0):
            try:
                out.append({p.name: p.validate(spec.qualified_name, p.default * 0.5)})
            except ValueError:
                continue
    return out


def _check_gradient_generic(spec: TechniqueSpec) -> None:
    import torch

    label = f"{spec.qualified_name} transform_gradients"
    model = gradient_probe(1.0)
    values = [p.detach().clone() for p in model.parameters()]
    had = [p.grad is not None for p in model.parameters()]
    shapes = [(tuple(g.shape), g.dtype) for g in _grads_of(model)]
    result = make_regularizer(spec, {}).transform_gradients(
        model, 3, torch.Generator().manual_seed(8)
    )
    if result is not None:
        raise CheckFailure(f"{label}: returned {type(result).__name__}; it must rewrite p.grad")
    for (name, p), v, h in zip(model.named_parameters(), values, had, strict=True):
        _same(p.detach(), v, f"{label} changed the value of parameter {name}")
        if (p.grad is not None) != h:
            raise CheckFailure(f"{label}: the gradient of {name} was {'set' if h else 'None'}")
    got = [(tuple(g.shape), g.dtype) for g in _grads_of(model)]
    if got != shapes:
        raise CheckFailure(f"{label}: gradient shapes/dtypes {shapes} became {got}")
    runs = []
    for global_seed in (1, 2):
        model = gradient_probe(1.0)
        torch.manual_seed(global_seed)
        make_regularizer(spec, {}).transform_gradients(
            model, 3, torch.Generator().manual_seed(1234)
        )
        runs.append(_grads_of(model))
    for k, (a, b) in enumerate(zip(*runs, strict=True)):
        assert_close(
            b,
            a,
            what=f"{label} gradient {k} with two generators seeded 1234 (global RNG differs)",
            rtol=0,
            atol=0,
        )


def _check_gradient_law(spec: TechniqueSpec) -> None:
    import torch

    ref = spec.load_reference()
    runs = [(hp, torch.float64) for hp in _gradient_variants(spec)] + [({}, torch.float32)]
    for hp, dtype in runs:
        full = spec.hyperparams(hp)
        for scale in GRADIENT_SCALES:
            for step in GRADIENT_STEPS:
                model = gradient_probe(scale, dtype)
                names = [n for n, p in model.named_parameters() if p.grad is not None]
                grads = [g.detach().clone() for g in _grads_of(model)]
                make_regularizer(spec, hp).transform_gradients(
                    model, step, torch.Generator().manual_seed(2)
                )
                expected = ref([g.to(torch.float64) for g in grads], step, **full)
                tag = str(dtype).replace("torch.", "")
                label = (
                    f"{spec.qualified_name} ({hp_label(hp)}, {tag}, step {step}, scale {scale:g})"
                )
                rtol = 1e-10 if dtype == torch.float64 else None
                for name, g, g0, e in zip(names, _grads_of(model), grads, expected, strict=True):
                    extra = {"rtol": rtol, "atol": 1e-12 * scale} if rtol else {"dtype": dtype}
                    assert_close(g, e, what=f"{label} gradient of {name}", inputs=g0, **extra)


def _check_gradient_noise_law(spec: TechniqueSpec) -> None:
    import torch

    ref = spec.load_reference()
    variants: list[dict[str, Any]] = [{}]
    for p in spec.params:
        if p.type is float and p.default != 1.0:
            try:
                variants.append({p.name: p.validate(spec.qualified_name, 1.0)})
            except ValueError:
                continue
    for hp in variants:
        full = spec.hyperparams(hp)
        for step in NOISE_STEPS:
            model = gradient_probe(1.0, wide=True)
            grads = [g.detach().clone() for g in _grads_of(model)]
            make_regularizer(spec, hp).transform_gradients(
                model, step, torch.Generator().manual_seed(13)
            )
            zeros = [torch.zeros_like(g) for g in grads]
            offset = ref(grads, zeros, step, **full)
            unit = ref(grads, [torch.ones_like(g) for g in grads], step, **full)
            label = f"{spec.qualified_name} ({hp_label(hp)}, step {step})"
            draws = []
            for g, o, u in zip(_grads_of(model), offset, unit, strict=True):
                scale = u - o
                if bool((scale == 0).any()):
                    raise CheckFailure(f"{label}: the reference law has zero noise scale")
                draws.append(((g.to(torch.float64) - o) / scale).reshape(-1))
            e = torch.cat(draws)
            variance = float((unit[0] - offset[0]).flatten()[0]) ** 2
            _check_standard_normal(label, e, f" (noise variance {variance:.4g} by the reference)")


# ------------------------------------------------------------------------------- callbacks

_HISTORIES: dict[str, list[float]] = {
    "plateau": [1.0, 0.9, 0.8, 0.81, 0.83, 0.8, 0.85, 0.9, 0.95, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5]
    + [1.6] * 5,
    "steady": [1.0 - 0.04 * i for i in range(20)],
    "small_steps": [1.0, 0.8, 0.78, 0.76, 0.74, 0.72, 0.7, 0.68, 0.66, 0.6]
    + [0.58 - 0.02 * i for i in range(10)],
    "nan": [1.0, 0.9, 0.8, float("nan"), 0.7, 0.6, 0.5, 0.4, 0.3, 0.2],
}


def drive_callbacks(callbacks: Any, history: list[float]) -> int | None:
    """Feed ``history`` as val_loss, one value per epoch; the epoch where training stops."""
    import torch

    from ..engine.callbacks import stub_trainer

    trainer = stub_trainer()
    for cb in callbacks:
        cb.setup(trainer, None, "fit")
    for epoch, value in enumerate(history):
        trainer.current_epoch = epoch
        trainer.callback_metrics = {"val_loss": torch.tensor(value)}
        for cb in callbacks:
            cb.on_validation_end(trainer, None)
        for cb in callbacks:
            cb.on_train_epoch_end(trainer, None)
        if trainer.should_stop:
            return epoch
    return None


def _check_callbacks(spec: TechniqueSpec) -> None:
    ref = spec.load_reference()
    names = {p.name for p in spec.params}
    variants: list[dict[str, Any]] = [{}]
    alt = {k: v for k, v in (("patience", 2), ("min_delta", 0.05)) if k in names}
    if alt:
        variants.append(alt)
    for hp in variants:
        full = spec.hyperparams(hp)
        for kind, history in _HISTORIES.items():
            callbacks = list(make_regularizer(spec, hp).callbacks())
            if not callbacks:
                raise CheckFailure(f"{spec.qualified_name}: callbacks() returned no callback")
            try:
                got = drive_callbacks(callbacks, history)
            except Exception as exc:
                raise CheckFailure(
                    f"{spec.qualified_name} ({hp_label(hp)}): driving the callbacks on the "
                    f"{kind!r} val_loss history raised {type(exc).__name__}: {exc}"
                ) from exc
            expected = ref(history, **full)
            if got != expected:
                raise CheckFailure(
                    f"{spec.qualified_name} ({hp_label(hp)}): on the {kind!r} val_loss history "
                    f"{[round(v, 3) for v in history]} training stopped at epoch {got}, "
                    f"reference says {expected}"
                )


def _check_stacked_gradients(spec: TechniqueSpec) -> None:
    from .regularizer_stacked import check_stacked_gradients

    check_stacked_gradients(spec)


# ---------------------------------------------------------------------------------- collect


def checks(spec: TechniqueSpec) -> list[Check]:
    """The hooks check plus the checks of every declared hook."""
    hooks = _hooks(spec)
    out = [Check("hooks", _check_hooks)]
    table: list[tuple[str, str, Callable[[TechniqueSpec], None]]] = [
        ("penalty", "penalty", _check_penalty),
        ("make_module", "dropout_eval_identity", _check_dropout_eval),
        ("make_module", "dropout_law", _check_dropout_law),
        ("make_module", "dropout_fraction", _check_dropout_fraction),
        ("make_module", "dropout_expectation", _check_dropout_expectation),
        ("transform_batch", "transform_inputs_untouched", _check_transform_untouched),
        ("transform_batch", "transform_reproducible", _check_transform_reproducible),
        ("loss", "loss", _check_loss),
        ("transform_gradients", "gradient_transform_generic", _check_gradient_generic),
        ("transform_gradients", "stacked_gradients", _check_stacked_gradients),
        ("after_step", "after_step", _check_after_step),
        ("callbacks", "callbacks", _check_callbacks),
    ]
    out.extend(Check(name, func) for hook, name, func in table if hook in hooks)
    law = spec.properties.get("law")
    if "transform_batch" in hooks and law == "additive_noise":
        out.append(Check("noise_law", _check_noise_law))
    elif "transform_batch" in hooks and law == "crop_flip":
        out.append(Check("crop_flip_law", _check_crop_flip_law))
    if "make_module" in hooks and spec.properties.get("stacked_module"):
        out.append(Check("sampled_module", _check_sampled_module))
    gradient_law = spec.properties.get("gradient_law")
    if "transform_gradients" in hooks and gradient_law == "deterministic":
        out.append(Check("gradient_law", _check_gradient_law))
    elif "transform_gradients" in hooks and gradient_law == "additive_noise":
        out.append(Check("gradient_noise_law", _check_gradient_noise_law))
    return out
