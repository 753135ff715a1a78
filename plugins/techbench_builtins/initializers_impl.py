"""Built-in initializers: fast implementations and the targets written from the math.

Fast side: every factory returns an :class:`Initializer`; ``init(tensor)`` fills ``tensor`` in
place (under ``torch.no_grad``) from torch's global RNG and returns it. Where ``torch.nn.init``
has the function it is used, or its exact sampling call is repeated, so under the same seed the
result equals torch's bit for bit.

Reference side: ``<name>_target(shape, **hp)`` states the law of the result from the formulas,
independently of the fast code (its own fan computation): a frozen ``scipy.stats`` distribution
of each i.i.d. entry, or a structural target from ``techbench.testing.initializer``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import nn

from techbench.testing.initializer import ExactTarget, OrthogonalTarget, UnitVarianceTarget

# ----------------------------------------------------------------------------------------------
# fast side


def fans(shape: Sequence[int]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight ``(out, in, *k)``; a 1-D tensor: its length, twice."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 0:
        raise ValueError("cannot compute fans of a 0-d tensor")
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


class Initializer:
    """Fills a tensor in place from torch's global RNG and returns it (the fast-side protocol)."""

    data_dependent = False

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self._fill(tensor)
        return tensor

    def _fill(self, tensor: torch.Tensor) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class Zeros(Initializer):
    """w = 0."""

    def _fill(self, tensor: torch.Tensor) -> None:
        tensor.zero_()


class Constant(Initializer):
    """w = value."""

    def __init__(self, value: float = 0.0) -> None:
        self.value = float(value)

    def _fill(self, tensor: torch.Tensor) -> None:
        tensor.fill_(self.value)


class Normal(Initializer):
    """w ~ N(mean, std^2), i.i.d."""

    def __init__(self, mean: float = 0.0, std: float = 0.01) -> None:
        if not std > 0:
            raise ValueError(f"normal: std must be > 0, got {std!r}")
        self.mean, self.std = float(mean), float(std)

    def _fill(self, tensor: torch.Tensor) -> None:
        tensor.normal_(self.mean, self.std)


class Uniform(Initializer):
    """w ~ U(a, b), i.i.d.; Var = (b - a)^2 / 12."""

    def __init__(self, a: float = -0.05, b: float = 0.05) -> None:
        if not a < b:
            raise ValueError(f"uniform: need a < b, got a={a!r}, b={b!r}")
        self.a, self.b = float(a), float(b)

    def _fill(self, tensor: torch.Tensor) -> None:
        tensor.uniform_(self.a, self.b)


def small_normal() -> Normal:
    """The notes' N(0, 0.01^2) preset."""
    return Normal(0.0, 0.01)


def large_normal() -> Normal:
    """The notes' N(0, 1) preset."""
    return Normal(0.0, 1.0)


def small_positive() -> Constant:
    """The notes' ReLU bias preset: b = 0.01."""
    return Constant(0.01)


class _FanScaled(Initializer):
    """Zero-mean normal or uniform with Var = scale^2 / fan; ``scale``/``fan`` per subclass."""

    uniform = False

    def std(self, shape: Sequence[int]) -> float:
        raise NotImplementedError

    def _fill(self, tensor: torch.Tensor) -> None:
        std = self.std(tensor.shape)
        if self.uniform:
            bound = math.sqrt(3.0) * std
            tensor.uniform_(-bound, bound)
        else:
            tensor.normal_(0.0, std)


class LecunNormal(_FanScaled):
    """w ~ N(0, 1/fan_in) (LeCun et al. 1998), untruncated."""

    def std(self, shape: Sequence[int]) -> float:
        return 1.0 / math.sqrt(fans(shape)[0])


class LecunUniform(LecunNormal):
    """w ~ U(-sqrt(3/fan_in), sqrt(3/fan_in)): Var = 1/fan_in."""

    uniform = True


class XavierNormal(_FanScaled):
    """w ~ N(0, gain^2 * 2/(fan_in + fan_out)) (Glorot & Bengio 2010)."""

    def __init__(self, gain: float = 1.0) -> None:
        self.gain = float(gain)

    def std(self, shape: Sequence[int]) -> float:
        fan_in, fan_out = fans(shape)
        return self.gain * math.sqrt(2.0 / (fan_in + fan_out))


class XavierUniform(XavierNormal):
    """w ~ U(-b, b), b = gain * sqrt(6/(fan_in + fan_out)) (Glorot & Bengio 2010, eq. 16)."""

    uniform = True


def he_gain(nonlinearity: str, negative_slope: float) -> float:
    """sqrt(2) for ReLU, sqrt(2 / (1 + a^2)) for leaky ReLU of slope a (He et al. 2015)."""
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        return math.sqrt(2.0 / (1.0 + negative_slope**2))
    raise ValueError(f"he: nonlinearity must be 'relu' or 'leaky_relu', got {nonlinearity!r}")


class HeNormal(_FanScaled):
    """w ~ N(0, gain^2/fan), fan = fan_in or fan_out (He et al. 2015, eqs. 10 and 14)."""

    def __init__(
        self, mode: str = "fan_in", nonlinearity: str = "relu", negative_slope: float = 0.01
    ) -> None:
        if mode not in ("fan_in", "fan_out"):
            raise ValueError(f"he: mode must be 'fan_in' or 'fan_out', got {mode!r}")
        self.mode, self.nonlinearity = mode, nonlinearity
        self.negative_slope = float(negative_slope)
        self._gain = he_gain(nonlinearity, self.negative_slope)

    def std(self, shape: Sequence[int]) -> float:
        fan_in, fan_out = fans(shape)
        return self._gain / math.sqrt(fan_in if self.mode == "fan_in" else fan_out)


class HeUniform(HeNormal):
    """w ~ U(-b, b), b = gain * sqrt(3/fan): Var = gain^2/fan."""

    uniform = True


def _weight_only(name: str, tensor: torch.Tensor, min_dim: int = 2) -> None:
    if tensor.dim() < min_dim:
        raise ValueError(
            f"{name}: needs a weight with at least {min_dim} dimensions, got shape "
            f"{tuple(tensor.shape)}"
        )


class Orthogonal(Initializer):
    """gain * Q, Q Haar-orthogonal, on the weight flattened to (out, in * prod(k)) (Saxe 2013)."""

    def __init__(self, gain: float = 1.0) -> None:
        self.gain = float(gain)

    def _fill(self, tensor: torch.Tensor) -> None:
        _weight_only("orthogonal", tensor)
        nn.init.orthogonal_(tensor, gain=self.gain)


class Identity(Initializer):
    """Eye for (out, in) weights; a Dirac delta at the kernel centre for 3-5-D conv weights."""

    def _fill(self, tensor: torch.Tensor) -> None:
        _weight_only("identity", tensor)
        if tensor.dim() == 2:
            nn.init.eye_(tensor)
        elif tensor.dim() <= 5:
            nn.init.dirac_(tensor)
        else:
            raise ValueError(f"identity: supports 2-5-D weights, got shape {tuple(tensor.shape)}")


WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class LayerScale:
    """What LSUV did to one layer: rescalings applied, final output variance, converged or not."""

    name: str
    iterations: int
    variance: float
    converged: bool


class _Stop(Exception):
    pass


def _weight(layer: nn.Module) -> torch.Tensor:
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"lsuv: {type(layer).__name__} has no weight tensor")
    return weight


class LSUV(Orthogonal):
    """Layer-sequential unit-variance init (Mishkin & Matas 2015, Algorithm 1).

    ``init(tensor)`` gives the orthogonal start; ``init.fit(model, x)`` rescales each layer in
    forward order, ``W <- W / sqrt(Var(B))`` with ``B`` the layer's output on the batch ``x``
    (population variance over all its elements), until ``|Var(B) - 1| < tol`` or ``max_iter``
    rescalings.
    """

    data_dependent = True

    def __init__(self, tol: float = 0.1, max_iter: int = 10) -> None:
        super().__init__(gain=1.0)
        self.tol, self.max_iter = float(tol), int(max_iter)

    def fit(
        self,
        model: nn.Module,
        x: torch.Tensor,
        layers: Sequence[nn.Module] | None = None,
        reinit: bool = True,
    ) -> list[LayerScale]:
        """Initialise ``model`` on batch ``x``; ``layers``: by default its Linear/Conv modules.

        The model runs in eval mode without gradients (its training flags are restored after);
        only the layers' weights change. Each forward pass stops at the layer being scaled.
        """
        if not isinstance(model, nn.Module):
            raise TypeError(
                "lsuv: fit(model, x, layers=None) needs the nn.Module that is called as model(x), "
                f"got {type(model).__name__}; pass a subset of its layers as layers=[...]"
            )
        names = {id(m): n for n, m in model.named_modules()}
        if layers is None:
            layers = [m for m in model.modules() if isinstance(m, WEIGHT_LAYERS)]
        if not layers:
            raise ValueError("lsuv: the model has no Linear/Conv layer to initialise")
        modes = {m: m.training for m in model.modules()}
        model.eval()
        records = []
        try:
            with torch.no_grad():
                if reinit:
                    for layer in layers:
                        self(_weight(layer))
                for layer in layers:
                    records.append(self._fit_layer(model, x, layer, names.get(id(layer), "?")))
        finally:
            for m, training in modes.items():
                m.train(training)
        return records

    def _fit_layer(
        self, model: nn.Module, x: torch.Tensor, layer: nn.Module, name: str
    ) -> LayerScale:
        seen: list[float] = []

        def hook(module: nn.Module, args: Any, out: torch.Tensor) -> None:
            seen.append(float(out.detach().double().var(correction=0)))
            raise _Stop

        handle = layer.register_forward_hook(hook)
        try:
            iterations = 0
            while True:
                seen.clear()
                with contextlib.suppress(_Stop):
                    model(x)
                if not seen:
                    raise RuntimeError(f"lsuv: layer {name!r} was not called by model(x)")
                var = seen[0]
                done = abs(var - 1.0) < self.tol
                if done or iterations >= self.max_iter or not (math.isfinite(var) and var > 0):
                    return LayerScale(name, iterations, var, done)
                _weight(layer).div_(math.sqrt(var))
                iterations += 1
        finally:
            handle.remove()


# ----------------------------------------------------------------------------------------------
# reference side: the targets, written from the formulas


def _fans_from_definition(shape: Sequence[int]) -> tuple[int, int]:
    """fan_in = in * receptive field, fan_out = out * receptive field; a bias: its length."""
    if len(shape) == 1:
        return int(shape[0]), int(shape[0])
    receptive = int(np.prod(shape[2:], dtype=np.int64)) if len(shape) > 2 else 1
    return int(shape[1]) * receptive, int(shape[0]) * receptive


def _degenerate(value: float) -> Any:
    return stats.rv_discrete(name="constant", values=([float(value)], [1.0]))


def _zero_mean(var: float, uniform: bool) -> Any:
    if uniform:
        bound = math.sqrt(3.0 * var)
        return stats.uniform(loc=-bound, scale=2.0 * bound)
    return stats.norm(loc=0.0, scale=math.sqrt(var))


def zeros_target(shape: Sequence[int]) -> Any:
    return _degenerate(0.0)


def constant_target(shape: Sequence[int], *, value: float) -> Any:
    return _degenerate(value)


def small_positive_target(shape: Sequence[int]) -> Any:
    return _degenerate(0.01)


def normal_target(shape: Sequence[int], *, mean: float, std: float) -> Any:
    return stats.norm(loc=mean, scale=std)


def small_normal_target(shape: Sequence[int]) -> Any:
    return stats.norm(loc=0.0, scale=0.01)


def large_normal_target(shape: Sequence[int]) -> Any:
    return stats.norm(loc=0.0, scale=1.0)


def uniform_target(shape: Sequence[int], *, a: float, b: float) -> Any:
    return stats.uniform(loc=a, scale=b - a)


def lecun_normal_target(shape: Sequence[int]) -> Any:
    """Var = 1 / fan_in."""
    return _zero_mean(1.0 / _fans_from_definition(shape)[0], uniform=False)


def lecun_uniform_target(shape: Sequence[int]) -> Any:
    return _zero_mean(1.0 / _fans_from_definition(shape)[0], uniform=True)


def _xavier_var(shape: Sequence[int], gain: float) -> float:
    fan_in, fan_out = _fans_from_definition(shape)
    return gain**2 * 2.0 / (fan_in + fan_out)


def xavier_normal_target(shape: Sequence[int], *, gain: float) -> Any:
    """Var = gain^2 * 2 / (fan_in + fan_out)."""
    return _zero_mean(_xavier_var(shape, gain), uniform=False)


def xavier_uniform_target(shape: Sequence[int], *, gain: float) -> Any:
    return _zero_mean(_xavier_var(shape, gain), uniform=True)


def _he_var(shape: Sequence[int], mode: str, nonlinearity: str, negative_slope: float) -> float:
    fan_in, fan_out = _fans_from_definition(shape)
    a = negative_slope if nonlinearity == "leaky_relu" else 0.0
    return 2.0 / ((1.0 + a * a) * (fan_in if mode == "fan_in" else fan_out))


def he_normal_target(
    shape: Sequence[int], *, mode: str, nonlinearity: str, negative_slope: float
) -> Any:
    """Var = 2 / ((1 + a^2) fan), a = 0 for ReLU."""
    return _zero_mean(_he_var(shape, mode, nonlinearity, negative_slope), uniform=False)


def he_uniform_target(
    shape: Sequence[int], *, mode: str, nonlinearity: str, negative_slope: float
) -> Any:
    return _zero_mean(_he_var(shape, mode, nonlinearity, negative_slope), uniform=True)


def orthogonal_target(shape: Sequence[int], *, gain: float) -> OrthogonalTarget:
    return OrthogonalTarget(gain=gain)


def identity_target(shape: Sequence[int]) -> ExactTarget:
    """W[i, i] = 1 (2-D), or W[i, i, centre of k] = 1 (conv); zero elsewhere."""
    values = np.zeros(tuple(shape))
    centre = tuple(k // 2 for k in shape[2:])
    for i in range(min(shape[0], shape[1])):
        values[(i, i, *centre)] = 1.0
    return ExactTarget(values)


def lsuv_target(shape: Sequence[int], *, tol: float, max_iter: int) -> UnitVarianceTarget:
    return UnitVarianceTarget(start=OrthogonalTarget(gain=1.0), variance=1.0, tol=tol)
