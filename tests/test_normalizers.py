"""Built-in normalizers against independent sources (torch's own modules, autograd, the formulas),
and the conformance checks against deliberately broken plugins."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from techbench.techniques.registry import get_spec
from techbench.techniques.spec import ParamError, TechniqueSpec
from techbench.testing import CheckFailure, failed_checks
from techbench.testing.normalizer import checks
from techbench_builtins import normalizers_impl as impl

NAMES = ["none", "batchnorm", "layernorm", "groupnorm", "rmsnorm", "scalenorm"]
SHAPES = [(32, 12), (2, 12), (6, 12, 5, 4), (3, 12, 7)]


def _x(shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.7).to(dtype)


def _randomize(*modules, seed=0):
    """Give every module the same random affine parameters (matched by role)."""
    g = torch.Generator().manual_seed(seed)
    c = modules[0].weight.shape[0]
    w, b = 1 + 0.3 * torch.randn(c, generator=g), 0.5 * torch.randn(c, generator=g)
    with torch.no_grad():
        for m in modules:
            shape = m.weight.shape
            view = (c, *([1] * (len(shape) - 1)))
            m.weight.copy_(w.to(m.weight.dtype).reshape(view).expand(shape))
            if getattr(m, "bias", None) is not None:
                m.bias.copy_(b.to(m.bias.dtype).reshape(view).expand(shape))


def _fwd_bwd(module, x, dy):
    x = x.clone().requires_grad_(True)
    y = module(x)
    (y * dy).sum().backward()
    return y.detach(), x.grad


def _assert_grads_match(ours, theirs, x, seed=1):
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
    y1, dx1 = _fwd_bwd(ours, x, dy)
    y2, dx2 = _fwd_bwd(theirs, x, dy)
    torch.testing.assert_close(y1, y2)
    torch.testing.assert_close(dx1, dx2)
    for (n1, p1), (_, p2) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
        g2 = p2.grad
        if g2.shape != p1.shape:  # torch's (C, H, W) affine against our per-channel (C,)
            g2 = g2.reshape(p1.shape[0], -1).sum(dim=1)
        torch.testing.assert_close(p1.grad, g2, msg=f"gradient of {n1}")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batchnorm_matches_torch_module(shape, dtype):
    ours = get_spec("batchnorm").create(12, momentum=0.2, eps=1e-3).to(dtype)
    cls = nn.BatchNorm1d if len(shape) <= 3 else nn.BatchNorm2d
    theirs = cls(12, momentum=0.2, eps=1e-3).to(dtype)
    _randomize(ours, theirs)
    for step in range(3):
        x = _x(shape, seed=step, dtype=dtype) * (step + 1)
        _assert_grads_match(ours, theirs, x)
        torch.testing.assert_close(ours.running_mean, theirs.running_mean)
        torch.testing.assert_close(ours.running_var, theirs.running_var)
    ours.eval(), theirs.eval()
    _assert_grads_match(ours, theirs, _x(shape, seed=9, dtype=dtype))


@pytest.mark.parametrize("shape", SHAPES)
def test_layernorm_matches_torch_module(shape):
    ours = get_spec("layernorm").create(12, eps=1e-4).double()
    theirs = nn.LayerNorm(shape[1:], eps=1e-4).double()
    _randomize(ours, theirs)
    _assert_grads_match(ours, theirs, _x(shape))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("groups", [1, 3, 4, 12])
def test_groupnorm_matches_torch_module(shape, groups):
    ours = get_spec("groupnorm").create(12, num_groups=groups).double()
    theirs = nn.GroupNorm(groups, 12).double()
    _randomize(ours, theirs)
    _assert_grads_match(ours, theirs, _x(shape))


@pytest.mark.parametrize("shape", SHAPES)
def test_rmsnorm_matches_torch_module(shape):
    ours = get_spec("rmsnorm").create(12, eps=1e-5).double()
    theirs = nn.RMSNorm(shape[1:], eps=1e-5).double()
    _randomize(ours, theirs)
    _assert_grads_match(ours, theirs, _x(shape))


@pytest.mark.parametrize("shape", SHAPES)
def test_scalenorm_formula(shape):
    m = get_spec("scalenorm").create(12).double()
    assert m.g.item() == pytest.approx(12**0.5)  # the paper's initial g = sqrt(d)
    x = _x(shape)
    y = m(x).detach()
    flat = x.reshape(shape[0], -1)
    expected = 12**0.5 * flat / flat.norm(dim=1, keepdim=True)
    torch.testing.assert_close(y.reshape(shape[0], -1), expected)
    assert get_spec("scalenorm").create(12, init_scale=2.5).g.item() == 2.5


def _bn_reference_run(x, training, weight, bias, state):
    ref = impl.batchnorm_reference
    hp = {"eps": 1e-3, "momentum": 0.1}
    return ref.forward(x, {"weight": weight, "bias": bias}, state, training, **hp)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_hand_derived_backward_equals_autograd(shape, training):
    """Seed 003's backward pass against autograd through the same forward (independent)."""
    g = torch.Generator().manual_seed(3)
    x = _x(shape, seed=4).requires_grad_(True)
    w = (1 + 0.3 * torch.randn(12, generator=g, dtype=torch.float64)).requires_grad_(True)
    b = torch.randn(12, generator=g, dtype=torch.float64).requires_grad_(True)
    state = {
        "running_mean": torch.randn(12, generator=g, dtype=torch.float64),
        "running_var": torch.rand(12, generator=g, dtype=torch.float64) + 0.5,
    }
    dy = torch.randn(shape, generator=g, dtype=torch.float64)
    y, cache = _bn_reference_run(x, training, w, b, dict(state))
    hand = impl.batchnorm_reference.backward(dy, cache)
    auto = torch.autograd.grad(y, [x, w, b], dy)
    for name, a in zip(["x", "weight", "bias"], auto, strict=True):
        torch.testing.assert_close(hand[name], a, rtol=1e-10, atol=1e-12, msg=name)


def test_batchnorm_reference_running_update_is_unbiased_and_matches_torch():
    x = _x((5, 12, 3))
    state = {"running_mean": torch.zeros(12, dtype=torch.float64)}
    state["running_var"] = torch.ones(12, dtype=torch.float64)
    _bn_reference_run(x, True, None, None, state)
    values = x.transpose(0, 1).reshape(12, -1)
    torch.testing.assert_close(state["running_mean"], 0.1 * values.mean(dim=1))
    torch.testing.assert_close(state["running_var"], 0.9 + 0.1 * values.var(dim=1, unbiased=True))
    rm, rv = torch.zeros(12, dtype=torch.float64), torch.ones(12, dtype=torch.float64)
    F.batch_norm(x, rm, rv, training=True, momentum=0.1, eps=1e-3)
    torch.testing.assert_close(state["running_var"], rv)


def test_batchnorm_small_batch_of_two_still_matches():
    """Seed 000's small-batch caveat: with N = 2 each normalised value is +-1, yet it conforms."""
    x = _x((2, 12))
    m = get_spec("batchnorm").create(12, affine=False, eps=1e-3).double()
    y = m(x).detach()
    half_gap = (x[0] - x[1]).abs() / 2  # |x_i - mu| for both samples; the biased var is its square
    torch.testing.assert_close(y[0], -y[1])
    torch.testing.assert_close(y[0].abs(), half_gap / torch.sqrt(half_gap**2 + 1e-3))
    ref, _ = _bn_reference_run(x, True, None, None, {})
    torch.testing.assert_close(y, ref)
    theirs = nn.BatchNorm1d(12, affine=False, eps=1e-3).double()
    torch.testing.assert_close(y, theirs(x))


def test_groupnorm_rejects_num_groups_that_do_not_divide():
    with pytest.raises(ValueError, match=r"num_groups=5 does not divide num_features=12.*1, 2, 3"):
        get_spec("groupnorm").create(12, num_groups=5)


def test_hyperparameters_are_validated():
    with pytest.raises(ParamError, match="momentum"):
        get_spec("batchnorm").create(8, momentum=1.5)
    with pytest.raises(ParamError, match="eps"):
        get_spec("layernorm").create(8, eps=0.0)


@pytest.mark.parametrize("name", NAMES[1:])
def test_wrong_channel_count_is_a_clear_error(name):
    m = get_spec(f"normalizer/{name}").create(8)
    with pytest.raises(ValueError, match=r"expects input \(N, 8\)"):
        m(torch.randn(4, 6))


def test_spec_module_does_not_import_torch():
    code = (
        "import sys, techbench_builtins.normalizers as n; "
        "assert 'torch' not in sys.modules; "
        "assert all(getattr(n, k).name == k for k in "
        f"{NAMES!r})"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", NAMES)
def test_specs_declare_properties(name):
    spec = get_spec(f"normalizer/{name}")
    assert spec.family == "normalizer" and spec.citation
    assert spec.properties["batch_dependent"] is (name == "batchnorm")


# ---------------------------------------------------------------------------------------------
# Broken plugins: the checks must fail, saying what differed.


def _broken(fast, reference=impl.batchnorm_reference, base="batchnorm", **props):
    spec = get_spec(base)
    return TechniqueSpec(
        name=f"broken_{base}",
        family="normalizer",
        summary="deliberately broken",
        fast=fast,
        reference=reference,
        citation="test",
        params=spec.params,
        properties={**spec.properties, **props},
    )


def per_channel(p, x):
    """A (C,) vector shaped to broadcast against (N, C, *spatial)."""
    return p.reshape(1, -1, *([1] * (x.dim() - 2)))


class EpsOutsideRoot(impl.BatchNorm):
    """(x - mu) / (sqrt(var) + eps): the epsilon in the wrong place."""

    def forward(self, x):
        dims = [0, *range(2, x.dim())]
        mu = x.mean(dim=dims, keepdim=True)
        var = x.var(dim=dims, keepdim=True, unbiased=False)
        if self.training:
            F.batch_norm(
                x.detach(), self.running_mean, self.running_var, None, None, True, self.momentum
            )
        else:
            mu = per_channel(self.running_mean, x)
            var = per_channel(self.running_var, x)
        y = (x - mu) / (var.sqrt() + self.eps)
        return y * per_channel(self.weight, x) + per_channel(self.bias, x)


class StaleRunningStats(impl.BatchNorm):
    """Normalises with batch statistics but never updates the running ones."""

    def forward(self, x):
        if self.training:
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        return super().forward(x)


class BiasedRunningVar(impl.BatchNorm):
    """Updates the running variance with the biased batch variance."""

    def forward(self, x):
        if self.training:
            dims = [0, *range(2, x.dim())]
            with torch.no_grad():
                m = self.momentum
                self.running_mean.mul_(1 - m).add_(m * x.mean(dim=dims))
                self.running_var.mul_(1 - m).add_(m * x.var(dim=dims, unbiased=False))
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        return super().forward(x)


class OffBy1e3(impl.LayerNorm):
    def forward(self, x):
        return super().forward(x) + 1e-3


class _WrongGradFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        ctx.save_for_backward(x, weight)
        ctx.eps = eps
        return F.layer_norm(x, x.shape[1:], weight, bias, eps)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        # drops the terms through mean and variance: d/dx as if they were constants
        var = x.var(dim=1, keepdim=True, unbiased=False)
        xhat = (x - x.mean(dim=1, keepdim=True)) / (var + ctx.eps).sqrt()
        return dy * weight / (var + ctx.eps).sqrt(), (dy * xhat).sum(0), dy.sum(0), None


class WrongDerivative(impl.LayerNorm):
    def forward(self, x):
        if x.dim() != 2:
            return super().forward(x)
        return _WrongGradFn.apply(x, self.weight, self.bias, self.eps)


class WrongBackwardReference(impl.BatchNormReference):
    """The seed's backward without the dJ/dmu_b term."""

    def backward(self, dy, cache):
        grads = super().backward(dy, cache)
        if cache["training"]:
            x, v, eps = cache["x"], cache["v"], cache["eps"]
            dims = [0, *range(2, x.dim())]
            g = dy * per_channel(cache["weight"], dy)
            dmu = -(g / torch.sqrt(v + eps)).sum(dim=dims, keepdim=True)
            grads["x"] = grads["x"] - dmu / (x.numel() // x.shape[1])
        return grads


def test_correct_plugins_built_from_spec_objects_pass():
    assert failed_checks(_broken(impl.BatchNorm)) == {}
    assert failed_checks(_broken(impl.LayerNorm, impl.layernorm_reference, "layernorm")) == {}


def test_eps_in_the_wrong_place_fails_forward():
    failures = failed_checks(_broken(EpsOutsideRoot))
    assert "forward_float64" in failures
    assert "forward (float64, train mode" in failures["forward_float64"]
    assert "values differ" in failures["forward_float64"]


def test_stale_running_stats_fail():
    failures = failed_checks(_broken(StaleRunningStats))
    assert "running_statistics" in failures and "eval_mode" in failures
    assert "buffer 'running_mean' after 1 training step" in failures["running_statistics"]
    assert "forward" not in failures.get("forward_float64", "")


def test_biased_running_variance_fails():
    failures = failed_checks(_broken(BiasedRunningVar))
    assert set(failures) >= {"running_statistics"}
    assert "running_var" in failures["running_statistics"]
    assert "running_mean" not in failures["running_statistics"]


def test_wrong_backward_in_reference_fails_gradients():
    failures = failed_checks(_broken(impl.BatchNorm, WrongBackwardReference()))
    assert set(failures) == {"gradients"}
    assert "dJ/dx vs reference hand-derived backward (train mode" in failures["gradients"]


def test_wrong_derivative_in_fast_fails_gradients_and_gradcheck():
    failures = failed_checks(_broken(WrongDerivative, impl.layernorm_reference, "layernorm"))
    assert "gradients" in failures and "gradcheck" in failures
    assert "dJ/dx vs reference autograd" in failures["gradients"]
    assert "forward_float64" not in failures


def test_output_off_by_1e3_fails_forward_both_dtypes():
    failures = failed_checks(_broken(OffBy1e3, impl.layernorm_reference, "layernorm"))
    assert {"forward_float32", "forward_float64"} <= set(failures)
    assert "|diff| = 0.001" in failures["forward_float32"]


def test_wrong_batch_dependence_declaration_fails():
    spec = _broken(impl.LayerNorm, impl.layernorm_reference, "layernorm", batch_dependent=True)
    failures = failed_checks(spec)
    assert set(failures) == {"batch_dependence"}
    assert "although batch_dependent=True" in failures["batch_dependence"]


def test_wrong_invariant_declaration_fails():
    spec = _broken(impl.RMSNorm, impl.rmsnorm_reference, "rmsnorm", invariant="sample")
    failures = failed_checks(spec)
    assert set(failures) == {"invariants"}
    assert "mean is" in failures["invariants"]


def test_reference_without_forward_is_reported():
    spec = _broken(impl.BatchNorm, reference=object())
    with pytest.raises(CheckFailure, match="no forward"):
        checks(spec)[1](spec)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 6),
    c=st.integers(1, 5),
    spatial=st.lists(st.integers(1, 3), max_size=2),
    eps=st.floats(1e-6, 1.0),
    seed=st.integers(0, 2**16),
)
def test_batchnorm_backward_property(n, c, spatial, eps, seed):
    """Hand-derived backward == autograd and fast == torch's functional, for any small shape."""
    g = torch.Generator().manual_seed(seed)
    shape = (n, c, *spatial)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    w = torch.randn(c, generator=g, dtype=torch.float64).requires_grad_(True)
    b = torch.randn(c, generator=g, dtype=torch.float64).requires_grad_(True)
    dy = torch.randn(shape, generator=g, dtype=torch.float64)
    ref = impl.batchnorm_reference
    y, cache = ref.forward(x, {"weight": w, "bias": b}, {}, True, eps=eps, momentum=0.1)
    hand = ref.backward(dy, cache)
    auto = torch.autograd.grad(y, [x, w, b], dy)
    for name, a in zip(["x", "weight", "bias"], auto, strict=True):
        torch.testing.assert_close(hand[name], a, rtol=1e-9, atol=1e-10, msg=name)
    expected = F.batch_norm(x, None, None, w, b, True, 0.1, eps)
    torch.testing.assert_close(y, expected)


@pytest.mark.parametrize(
    ("base", "defaults"),
    [
        ("batchnorm", {"affine": False}),
        ("batchnorm", {"momentum": 1.0, "eps": 0.5}),
        ("layernorm", {"affine": False}),
        ("groupnorm", {"num_groups": 1}),
        ("groupnorm", {"num_groups": 8, "affine": False}),
        ("rmsnorm", {"affine": False}),
        ("scalenorm", {"init_scale": 0.5}),
    ],
)
def test_builtins_conform_at_other_hyperparameters(base, defaults):
    """The checks run at the declared defaults; move the defaults to cover other settings."""
    spec = get_spec(f"normalizer/{base}")
    params = tuple(
        dataclasses.replace(p, default=defaults[p.name]) if p.name in defaults else p
        for p in spec.params
    )
    variant = dataclasses.replace(spec, name=f"{base}_variant", params=params)
    assert failed_checks(variant) == {}
