"""Model builders: ``fast(input_shape, num_outputs, parts, **hp) -> nn.Module``.

Each model is an ``nn.Sequential`` body (so the forward pass adds no Python overhead beyond the
layers) plus the two ordered lists of the model contract (see ``techbench_builtins.models``):
``weight_layers`` and ``activation_layers``.
"""

from __future__ import annotations

import math
from typing import TypeVar, cast

import torch
from torch import nn

from techbench.techniques.families import ModelParts

_M = TypeVar("_M", bound=nn.Module)


class TechniqueNet(nn.Module):
    """Base of the built-in models: a body plus ``weight_layers`` / ``activation_layers``."""

    weight_layers: list[nn.Module]
    activation_layers: list[nn.Module]

    def __init__(self) -> None:
        super().__init__()
        self.weight_layers = []
        self.activation_layers = []

    def _hidden(self, features: int, parts: ModelParts) -> list[nn.Module]:
        """[norm, act, dropout] ("before") or [act, norm, dropout] ("after"); Nones dropped."""
        act = parts.activation()
        self.activation_layers.append(act)
        norm = parts.normalizer(features) if parts.normalizer is not None else None
        if isinstance(norm, nn.Identity):
            norm = None
        drop = parts.dropout() if parts.dropout is not None else None
        if parts.norm_placement == "before":
            seq = [norm, act, drop]
        elif parts.norm_placement == "after":
            seq = [act, norm, drop]
        else:
            raise ValueError(
                f"norm_placement must be 'before' or 'after', got {parts.norm_placement!r}"
            )
        return [m for m in seq if m is not None]

    def _weighted(self, layer: _M) -> _M:
        self.weight_layers.append(layer)
        return layer

    def initialize(self, parts: ModelParts) -> None:
        """Fill every weight with ``parts.weight_init`` and every bias with ``parts.bias_init``."""
        with torch.no_grad():
            for layer in self.weight_layers:
                parts.weight_init(cast(torch.Tensor, layer.weight))
                bias = getattr(layer, "bias", None)
                if bias is not None:
                    parts.bias_init(bias)


class MLP(TechniqueNet):
    """x -> flatten -> depth x [Linear(width), hidden block] -> Linear(num_outputs)."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_outputs: int,
        parts: ModelParts,
        depth: int = 2,
        width: int = 128,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()] if len(input_shape) > 1 else []
        fan_in = math.prod(input_shape)
        for _ in range(depth):
            layers.append(self._weighted(nn.Linear(fan_in, width)))
            layers.extend(self._hidden(width, parts))
            fan_in = width
        layers.append(self._weighted(nn.Linear(fan_in, num_outputs)))
        self.body = nn.Sequential(*layers)
        self.initialize(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class CNN(TechniqueNet):
    """blocks x [Conv3x3, hidden block, MaxPool2] -> flatten -> [Linear(hidden), block] -> Linear."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_outputs: int,
        parts: ModelParts,
        blocks: int = 2,
        channels: int = 16,
        growth: int = 2,
        hidden: int = 0,
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"cnn needs (C, H, W) inputs, got input shape {tuple(input_shape)}")
        c_in, h, w = input_shape
        layers: list[nn.Module] = []
        c = channels
        for _ in range(blocks):
            layers.append(self._weighted(nn.Conv2d(c_in, c, 3, padding=1)))
            layers.extend(self._hidden(c, parts))
            if min(h, w) >= 2:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c_in, c = c, c * growth
        layers.append(nn.Flatten())
        fan_in = c_in * h * w
        if hidden:
            layers.append(self._weighted(nn.Linear(fan_in, hidden)))
            layers.extend(self._hidden(hidden, parts))
            fan_in = hidden
        layers.append(self._weighted(nn.Linear(fan_in, num_outputs)))
        self.body = nn.Sequential(*layers)
        self.initialize(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class _Residual(nn.Module):
    def __init__(self, branch: nn.Sequential) -> None:
        super().__init__()
        self.branch = branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class ResMLP(TechniqueNet):
    """Linear stem + hidden block; blocks x [x + W2 drop(act(norm(W1 x)))]; linear head."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_outputs: int,
        parts: ModelParts,
        blocks: int = 4,
        width: int = 128,
        expansion: int = 1,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()] if len(input_shape) > 1 else []
        layers.append(self._weighted(nn.Linear(math.prod(input_shape), width)))
        layers.extend(self._hidden(width, parts))
        inner = width * expansion
        for _ in range(blocks):
            w1 = self._weighted(nn.Linear(width, inner))
            hidden = self._hidden(inner, parts)
            w2 = self._weighted(nn.Linear(inner, width))
            layers.append(_Residual(nn.Sequential(w1, *hidden, w2)))
        layers.append(self._weighted(nn.Linear(width, num_outputs)))
        self.body = nn.Sequential(*layers)
        self.initialize(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _split_at(modules: list[nn.Module], act: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """(modules before ``act``, ``act`` and what follows it)."""
    k = next(i for i, m in enumerate(modules) if m is act)
    return modules[:k], modules[k:]


class _PadShortcut(nn.Module):
    """He et al. 2016 option A: identity shortcut, stride-2 subsampling, zero channels appended.

    Parameter-free, which gives ResNet-20 its published 0.27M parameters.
    """

    def __init__(self, extra_channels: int) -> None:
        super().__init__()
        self.extra = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::2, ::2]
        half = self.extra // 2
        return nn.functional.pad(x, (0, 0, 0, 0, half, self.extra - half))


class _BasicBlock(nn.Module):
    """``post(second(first(x)) + shortcut(x))``: the residual add sits right before the block's
    second activation (He et al. 2016, Fig. 2)."""

    def __init__(
        self, first: nn.Sequential, second: nn.Sequential, shortcut: nn.Module, post: nn.Sequential
    ) -> None:
        super().__init__()
        self.first, self.second, self.shortcut, self.post = first, second, shortcut, post

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post(self.second(self.first(x)) + self.shortcut(x))


class ResNet(TechniqueNet):
    """CIFAR ResNet of He et al. 2016, section 4.2: depth = 6n + 2.

    A 3x3 conv stem with ``width`` channels, three stages of n basic blocks (two 3x3 convs each)
    at ``width``, 2 ``width`` and 4 ``width`` channels (the first block of stages 2 and 3
    halves the resolution with stride 2 and has a parameter-free zero-padding shortcut,
    option A), global average pooling, a linear head. Every activation comes with the trial's
    normalizer and dropout (``_hidden``); with the normalizer "before" the activation, the
    residual add sits between the second normalizer and the activation, as in the paper. A conv
    directly followed by a normalizer has no bias (the normalizer's shift replaces it), so
    ResNet-20 with batch norm has 269,722 parameters and ResNet-32 464,154 (0.27M and 0.46M,
    He et al. 2016, Table 6).
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_outputs: int,
        parts: ModelParts,
        depth: int = 20,
        width: int = 16,
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"resnet needs (C, H, W) inputs, got input shape {tuple(input_shape)}")
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(
                f"resnet depth must be 6n + 2 with n >= 1 (20, 32, 56...), got {depth}"
            )
        n = (depth - 2) // 6
        conv, pre, post = self._conv_unit(input_shape[0], width, 1, parts)
        layers: list[nn.Module] = [conv, *pre, *post]
        c_in = width
        for stage in range(3):
            c = width * 2**stage
            for block in range(n):
                stride = 2 if stage > 0 and block == 0 else 1
                conv1, pre1, post1 = self._conv_unit(c_in, c, stride, parts)
                conv2, pre2, post2 = self._conv_unit(c, c, 1, parts)
                shortcut = _PadShortcut(c - c_in) if stride != 1 or c != c_in else nn.Identity()
                layers.append(
                    _BasicBlock(
                        nn.Sequential(conv1, *pre1, *post1),
                        nn.Sequential(conv2, *pre2),
                        shortcut,
                        nn.Sequential(*post2),
                    )
                )
                c_in = c
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        layers.append(self._weighted(nn.Linear(c_in, num_outputs)))
        self.body = nn.Sequential(*layers)
        self.initialize(parts)

    def _conv_unit(
        self, c_in: int, c_out: int, stride: int, parts: ModelParts
    ) -> tuple[nn.Module, list[nn.Module], list[nn.Module]]:
        """A 3x3 conv and its hidden block split at the activation: (conv, pre, post)."""
        pre, post = _split_at(self._hidden(c_out, parts), self.activation_layers[-1])
        conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=not pre)
        return self._weighted(conv), pre, post

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class _TokenNorm(nn.Module):
    """A normalizer plugin (made for (N, C) inputs) applied to each token of (B, T, C)."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.reshape(-1, x.shape[-1])).reshape(x.shape)


class _CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention (Vaswani et al. 2017) through PyTorch's fused kernel."""

    def __init__(self, qkv: nn.Linear, proj: nn.Linear, heads: int) -> None:
        super().__init__()
        self.qkv, self.proj, self.heads = qkv, proj, heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (
            part.reshape(b, t, self.heads, c // self.heads).transpose(1, 2)
            for part in self.qkv(x).split(c, dim=-1)
        )
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class _TransformerBlock(nn.Module):
    """Pre-norm ``x + attn(n1(x))``, ``x + mlp(n2(x))`` (Xiong et al. 2020) or post-norm
    ``n1(x + attn(x))``, ``n2(x + mlp(x))`` (Vaswani et al. 2017)."""

    def __init__(
        self, attn: nn.Module, mlp: nn.Sequential, n1: nn.Module, n2: nn.Module, pre_norm: bool
    ) -> None:
        super().__init__()
        self.attn, self.mlp, self.n1, self.n2, self.pre_norm = attn, mlp, n1, n2, pre_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.attn(self.n1(x))
            return x + self.mlp(self.n2(x))
        x = self.n1(x + self.attn(x))
        return self.n2(x + self.mlp(x))


class Transformer(TechniqueNet):
    """Decoder-only (GPT-style) language model over token windows (B, T) -> logits (B, T, V).

    Token and learned position embeddings of ``width``; ``depth`` blocks of causal multi-head
    self-attention and an MLP ``W2 drop(act(W1 x))`` of inner width ``mlp_ratio * width``, each
    in a residual branch (``heads`` heads, or width / ``head_dim`` when ``head_dim`` is set);
    a linear head to the vocabulary (``num_outputs``). ``norm_placement``
    "before" is pre-norm (plus a final norm before the head, as GPT-2), "after" post-norm (the
    original Transformer). ``tie_weights`` shares the token embedding with the head (Press and
    Wolf 2017; the head then has no bias). The normalizer plugin is applied per token;
    batch-dependent normalizers (batch norm) mix positions across the batch and so let
    training see future tokens: compare them knowingly.

    ``weight_layers``: token and position embeddings, then per block qkv, attention output,
    W1, W2, then the head unless tied; ``activation_layers``: one MLP activation per block.
    """

    features_last = True

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_outputs: int,
        parts: ModelParts,
        width: int = 128,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: int = 4,
        tie_weights: bool = False,
        head_dim: int = 0,
    ) -> None:
        super().__init__()
        if head_dim:
            if width % head_dim:
                raise ValueError(
                    f"transformer width {width} is not divisible by head_dim {head_dim}"
                )
            heads = width // head_dim
        if len(input_shape) != 1:
            raise ValueError(
                f"transformer needs token windows (T,), got input shape {tuple(input_shape)}"
            )
        if width % heads:
            raise ValueError(f"transformer width {width} is not divisible by heads {heads}")
        if parts.norm_placement not in ("before", "after"):
            raise ValueError(
                f"norm_placement must be 'before' or 'after', got {parts.norm_placement!r}"
            )
        self.context = int(input_shape[0])
        pre_norm = parts.norm_placement == "before"
        self.token = self._weighted(nn.Embedding(num_outputs, width))
        self.position = self._weighted(nn.Embedding(self.context, width))
        blocks = []
        for _ in range(depth):
            n1 = self._norm(width, parts)
            attn = _CausalSelfAttention(
                self._weighted(nn.Linear(width, 3 * width)),
                self._weighted(nn.Linear(width, width)),
                heads,
            )
            n2 = self._norm(width, parts)
            w1 = self._weighted(nn.Linear(width, mlp_ratio * width))
            act = parts.activation()
            self.activation_layers.append(act)
            drop = parts.dropout() if parts.dropout is not None else None
            w2 = self._weighted(nn.Linear(mlp_ratio * width, width))
            mlp = nn.Sequential(*(m for m in (w1, act, drop, w2) if m is not None))
            blocks.append(_TransformerBlock(attn, mlp, n1, n2, pre_norm))
        self.blocks = nn.Sequential(*blocks)
        self.final_norm = self._norm(width, parts) if pre_norm else nn.Identity()
        self.head = nn.Linear(width, num_outputs, bias=not tie_weights)
        if tie_weights:
            self.head.weight = self.token.weight
        else:
            self._weighted(self.head)
        if tie_weights and depth:  # the head is the (input) embedding: the last W2 stays hidden
            self.parameter_roles = {f"blocks.{depth - 1}.mlp.{len(mlp) - 1}.weight": "hidden"}
        self.register_buffer("positions", torch.arange(self.context), persistent=False)
        self.initialize(parts)

    @staticmethod
    def _norm(width: int, parts: ModelParts) -> nn.Module:
        norm = parts.normalizer(width) if parts.normalizer is not None else None
        return nn.Identity() if norm is None or isinstance(norm, nn.Identity) else _TokenNorm(norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        if t > self.context:
            raise ValueError(f"input of {t} tokens exceeds the context length {self.context}")
        h = self.token(x) + self.position(cast(torch.Tensor, self.positions)[:t])
        return self.head(self.final_norm(self.blocks(h)))
