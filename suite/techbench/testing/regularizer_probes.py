"""What the regularizer checks share: a technique made from a spec, its label, a gradient probe.

Its own module so that :mod:`.regularizer` (the checks) and :mod:`.regularizer_stacked` (the
stacked checks, which :mod:`.regularizer` collects) both import it without a circle.
"""

from __future__ import annotations

from typing import Any

from ..techniques.spec import TechniqueSpec
from .core import CheckFailure

__all__ = ["gradient_probe", "hp_label", "make_regularizer"]


def hp_label(hp: dict[str, Any]) -> str:
    return "defaults" if not hp else ", ".join(f"{k}={v!r}" for k, v in hp.items())


def make_regularizer(spec: TechniqueSpec, hp: dict[str, Any]) -> Any:
    from ..techniques.families import Regularizer

    reg = spec.create(**hp)
    if not isinstance(reg, Regularizer):
        raise CheckFailure(
            f"{spec.qualified_name}: fast side returned {type(reg).__name__}, "
            "not a techbench.techniques.families.Regularizer"
        )
    return reg


def gradient_probe(scale: float, dtype: Any = None, wide: bool = False) -> Any:
    """A model whose gradients are set: per-tensor norms spread over four decades (so a global
    and a per-tensor reduction differ), times ``scale``; the BatchNorm bias has no gradient."""
    import torch
    from torch import nn

    dtype = dtype or torch.float64
    gen = torch.Generator().manual_seed(61)
    width = 100 if wide else 12
    model = nn.ModuleList(
        [nn.Linear(width, 2 * width), nn.BatchNorm1d(2 * width), nn.Conv2d(3, 4, 3)]
    ).to(dtype)
    with torch.no_grad():
        for k, (name, p) in enumerate(model.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
            if name == "1.bias":
                continue
            g = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            p.grad = (g * scale * 10.0 ** (k % 5 - 2)).to(dtype)
    return model
