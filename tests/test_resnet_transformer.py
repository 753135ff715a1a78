"""The CIFAR ResNet and the character-level transformer against published parameter counts,
hand-counted architectures, a float64 forward pass written out here, causality, weight tying,
and gradient health on their layers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from techbench.engine.trial import run_trial
from techbench.techniques.families import ModelParts
from techbench.techniques.registry import get_spec
from techbench_builtins.models import resnet_parameter_count
from techbench_builtins.models_impl import _PadShortcut


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _parts(**kw) -> ModelParts:
    base = dict(
        activation=nn.ReLU,
        weight_init=lambda t: nn.init.normal_(t, 0.0, 0.2),
        bias_init=lambda t: nn.init.uniform_(t, -0.1, 0.1),
    )
    return ModelParts(**{**base, **kw})


def _hand_count(n: int, classes: int = 10, bn: bool = True) -> int:
    """He et al. 2016 sec. 4.2 counted by hand: 3x3 convs (no bias with BN), 2 BN parameters
    per channel, 64 -> classes linear head; shortcuts are parameter-free (option A)."""
    convs = [(3, 16)]
    convs += [(16, 16)] * (2 * n)
    convs += [(16, 32)] + [(32, 32)] * (2 * n - 1)
    convs += [(32, 64)] + [(64, 64)] * (2 * n - 1)
    total = 0
    for c_in, c_out in convs:
        total += 3 * 3 * c_in * c_out + (2 * c_out if bn else c_out)
    return total + 64 * classes + classes


@pytest.mark.parametrize(("depth", "published"), [(20, 0.27), (32, 0.46), (56, 0.85)])
def test_resnet_has_the_published_parameter_count(depth: int, published: float) -> None:
    # He et al. 2016, Table 6: ResNet-20 0.27M, ResNet-32 0.46M, ResNet-56 0.85M parameters
    model = get_spec("resnet").create(
        (3, 32, 32), 10, _parts(normalizer=nn.BatchNorm2d), depth=depth
    )
    count = sum(p.numel() for p in model.parameters())
    assert count == _hand_count((depth - 2) // 6)
    assert round(count / 1e6, 2) == published
    assert count == resnet_parameter_count((3, 32, 32), 10, depth, 16, norm_params_per_channel=2)
    # depth counts the weighted layers: 6n + 1 convs and the head
    assert len(model.weight_layers) == depth
    assert len(model.activation_layers) == depth - 1


def test_resnet_without_normalizer_has_conv_biases() -> None:
    model = get_spec("resnet").create((3, 32, 32), 10, _parts(), depth=20)
    assert sum(p.numel() for p in model.parameters()) == _hand_count(3, bn=False)


def test_option_a_shortcut_subsamples_and_pads_with_zeros() -> None:
    x = torch.randn(2, 16, 8, 8)
    out = _PadShortcut(16)(x)
    assert out.shape == (2, 32, 4, 4)
    torch.testing.assert_close(out[:, 8:24], x[:, :, ::2, ::2], rtol=0, atol=0)
    assert not out[:, :8].any() and not out[:, 24:].any()


def test_resnet_stages_halve_the_resolution() -> None:
    model = get_spec("resnet").create((3, 32, 32), 10, _parts(normalizer=nn.BatchNorm2d), depth=8)
    shapes = []
    hooks = [
        a.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
        for a in model.activation_layers
    ]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    for h in hooks:
        h.remove()
    # stem, then one block (two activations) per stage
    assert shapes == [(16, 32, 32)] * 3 + [(32, 16, 16)] * 2 + [(64, 8, 8)] * 2


def test_resnet_rejects_a_depth_that_is_not_6n_plus_2() -> None:
    with pytest.raises(Exception, match="depth"):
        get_spec("resnet").create((3, 32, 32), 10, _parts(), depth=21)


def _lm(**hp) -> nn.Module:
    torch.manual_seed(0)
    return get_spec("transformer").create((10,), 7, _parts(), **{"width": 8, "heads": 2, **hp})


def test_transformer_is_causal() -> None:
    model = _lm(depth=2).eval()
    x = torch.randint(0, 7, (3, 10))
    base = model(x)
    for j in range(10):
        changed = x.clone()
        changed[:, j] = (changed[:, j] + 1) % 7
        out = model(changed)
        torch.testing.assert_close(out[:, :j], base[:, :j], rtol=0, atol=1e-6)
        assert (out[:, j:] - base[:, j:]).abs().amax() > 1e-4


def test_weight_tying_shares_the_tensor() -> None:
    tied, untied = _lm(tie_weights=True), _lm(tie_weights=False)
    assert tied.head.weight is tied.token.weight
    assert tied.head.bias is None
    n_tied = sum(p.numel() for p in tied.parameters())
    n_untied = sum(p.numel() for p in untied.parameters())
    assert n_untied - n_tied == 7 * 8 + 7  # the head's own weight and bias
    tied(torch.randint(0, 7, (2, 10))).sum().backward()
    assert tied.token.weight.grad is not None and tied.head.weight.grad is tied.token.weight.grad


def _reference_forward(model: nn.Module, x: torch.Tensor, heads: int) -> torch.Tensor:
    """Post-norm-free, one-block forward written out in float64 (Vaswani et al. 2017):
    h = E[x] + P; h += W_o softmax(QK^T / sqrt(d_h) + causal mask) V; h += W2 relu(W1 h);
    logits = W_head h."""
    emb, pos, qkv, proj, w1, w2, head = model.weight_layers
    h = emb.weight[x] + pos.weight[: x.shape[1]]
    _, t, c = h.shape
    d = c // heads
    q, k, v = (h @ qkv.weight.T + qkv.bias).split(c, dim=-1)
    out = torch.zeros_like(h)
    mask = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
    for i in range(heads):
        sl = slice(i * d, (i + 1) * d)
        scores = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(d)
        scores = scores.masked_fill(mask, -math.inf)
        out[..., sl] = torch.softmax(scores, dim=-1) @ v[..., sl]
    h = h + out @ proj.weight.T + proj.bias
    h = h + torch.relu(h @ w1.weight.T + w1.bias) @ w2.weight.T + w2.bias
    return h @ head.weight.T + head.bias


def test_transformer_forward_matches_float64_formula() -> None:
    model = _lm(depth=1, width=8, heads=2).double().eval()
    x = torch.randint(0, 7, (4, 10))
    torch.testing.assert_close(model(x), _reference_forward(model, x, 2), rtol=1e-10, atol=1e-10)


def test_pre_and_post_norm_place_the_normalizer_on_the_residual_stream() -> None:
    """Post-norm (Vaswani et al. 2017) normalizes the residual stream after every block; pre-norm
    leaves the stream unnormalized and normalizes a copy into each branch, plus the head's input."""
    x = torch.randint(0, 7, (2, 10))

    def normalized(t: torch.Tensor) -> bool:
        mean, var = t.mean(-1), t.var(-1, unbiased=False)
        return bool(mean.abs().max() < 1e-5 and (var - 1).abs().max() < 1e-3)

    for placement in ("before", "after"):
        torch.manual_seed(0)
        parts = _parts(normalizer=nn.LayerNorm, norm_placement=placement)
        model = get_spec("transformer").create((10,), 7, parts, width=8, depth=2)
        ln = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
        assert len(ln) == (5 if placement == "before" else 4)
        stream: list[torch.Tensor] = []
        head_in: list[torch.Tensor] = []
        hooks = [
            b.register_forward_hook(lambda m, i, o, seen=stream: seen.append(o))
            for b in model.blocks
        ]
        hooks.append(
            model.head.register_forward_pre_hook(lambda m, i, seen=head_in: seen.append(i[0]))
        )
        model(x)
        for h in hooks:
            h.remove()
        assert normalized(head_in[0])
        assert all(normalized(s) == (placement == "after") for s in stream)


def _health_rows(outcome, metric: str) -> dict[str, list[float]]:
    rows: dict[str, list[float]] = {}
    for r in outcome.metrics:
        if r["split"] == "health" and r["metric"] == metric:
            rows.setdefault(r["layer"], []).append(r["value"])
    return rows


def test_gradient_health_covers_the_resnet_layers() -> None:
    out = run_trial(
        {
            "dataset": {"name": "digits", "params": {"image": True}},
            "model": {"name": "resnet", "params": {"depth": 8, "width": 4}},
            "normalizer": "batchnorm",
            "budget": {"max_steps": 3, "epochs": 1, "batch_size": 64},
            "health": {"every_n_steps": 1},
            "trainer": {"accelerator": "cpu"},
        }
    )
    assert out.status == "completed", out.meta.error
    grads = _health_rows(out, "grad_norm")
    assert sorted(grads, key=int) == [str(i) for i in range(8)]  # 7 convs + head
    assert all(len(v) == 3 and all(math.isfinite(g) and g > 0 for g in v) for v in grads.values())
    dead = _health_rows(out, "dead_fraction")
    assert len(dead) == 7 and all(0.0 <= v <= 1.0 for vs in dead.values() for v in vs)


def test_gradient_health_treats_transformer_features_as_units() -> None:
    """dead_fraction of a token model's ReLU: share of the MLP's features that are <= 0 at every
    position of every window (units are features, not positions), checked at step 0 against the
    outputs captured here."""
    captured: list[torch.Tensor] = []

    import pytorch_lightning as pl

    class Capture(pl.Callback):
        def on_train_start(self, trainer, module):
            act = module.model.activation_layers[0]
            self.handle = act.register_forward_hook(lambda m, i, o: captured.append(o.detach()))

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.handle.remove()

    out = run_trial(
        {
            "dataset": {"name": "markov", "params": {"n_tokens": 4000, "context": 8}},
            "model": {"name": "transformer", "params": {"width": 16, "depth": 1, "heads": 2}},
            "activation": "relu",
            "preprocessor": "none",
            "budget": {"max_steps": 1, "epochs": 1, "batch_size": 16},
            "health": {"every_n_steps": 1},
            "trainer": {"accelerator": "cpu"},
        },
        callbacks=[Capture()],
    )
    assert out.status == "completed", out.meta.error
    y = captured[0]  # (16, 8, 64): the first step's batch
    expected_dead = (y.reshape(-1, y.shape[-1]).amax(dim=0) <= 0).double().mean().item()
    assert _health_rows(out, "dead_fraction")["0"][0] == pytest.approx(expected_dead)
    assert _health_rows(out, "act_mean")["0"][0] == pytest.approx(y.mean().item(), rel=1e-5)
    layers = _health_rows(out, "grad_norm")
    # token and position embeddings, qkv, attention output, W1, W2, head
    assert sorted(layers, key=int) == [str(i) for i in range(7)]


def test_cifar_resnet_matrix_trial_runs_on_generated_cifar_files(tmp_path) -> None:
    """One trial of the shipped cifar-resnet matrix, end to end on CIFAR-10-format files written
    here (budget cut to two steps): augmentation, channel-mean preprocessing, ResNet-20."""
    from techbench.plan.matrix import load_matrix
    from techbench.testing.dataset import write_cifar10_batches

    write_cifar10_batches(tmp_path, per_batch=8, n_test=8)
    config = load_matrix("cifar-resnet").trials()[0]
    config["dataset"]["params"]["root"] = str(tmp_path)
    config["budget"] = {"epochs": 1, "max_steps": 2, "batch_size": 16}
    config["trainer"]["accelerator"] = "cpu"
    out = run_trial(config)
    assert out.status == "completed", out.meta.error
    assert out.meta.num_parameters == 269_722 and out.meta.steps == 2
    assert len(out.metric("test", "acc")) == 1


def test_head_dim_sets_the_heads_from_the_width() -> None:
    """``head_dim`` = d gives width / d heads: the same network, seed for seed, as ``heads`` set
    by hand, at every width of a ladder (so the attention scale 1/sqrt(d) stays fixed)."""
    spec = get_spec("transformer", "model")
    parts = ModelParts(
        activation=nn.GELU,
        weight_init=nn.init.xavier_uniform_,
        bias_init=nn.init.zeros_,
        normalizer=None,
        norm_placement="before",
        dropout=None,
    )
    x = torch.randint(0, 11, (3, 12))
    for width in (16, 32, 64):
        torch.manual_seed(0)
        by_dim = spec.create((12,), 11, parts, width=width, depth=1, head_dim=8)
        torch.manual_seed(0)
        by_heads = spec.create((12,), 11, parts, width=width, depth=1, heads=width // 8)
        assert torch.equal(by_dim(x), by_heads(x))
        assert by_dim.blocks[0].attn.heads == width // 8
    with pytest.raises(ValueError, match="not divisible by head_dim 8"):
        spec.create((12,), 11, parts, width=20, head_dim=8)
