"""Model builders: ``fast(input_shape, num_outputs, parts, **hp) -> nn.Module``.

Each model is an ``nn.Sequential`` body (so the forward pass adds no Python overhead beyond the
layers) plus the two ordered lists of the model contract (see ``techbench_builtins.models``):
``weight_layers`` and ``activation_layers``.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn

from techbench.families import ModelParts


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

    def _weighted(self, layer: nn.Module) -> nn.Module:
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
