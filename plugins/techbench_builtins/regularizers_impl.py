"""Built-in regularizers: the fast :class:`~techbench.techniques.families.Regularizer` subclasses and the
references written from the math.

The reference signature per hook kind is the protocol stated in ``techbench.testing.regularizer``:

- ``penalty``: ``ref(named_params, **hp) -> (value, grads)``, the penalty and its analytic
  gradient for each parameter (zeros for the ones it does not act on);
- ``make_module``: ``ref(x, keep_mask, **hp) -> y``, the output given which units were kept;
- ``transform_batch``: the transform's law given its random draws (``gaussian_noise_reference(x,
  noise, std)``, ``augment_reference(x, shifts, flips, padding)``);
- ``loss``: ``ref(logits, target, **hp) -> (loss, dloss/dlogits)``;
- ``transform_gradients``: ``ref(grads, step, **hp) -> grads`` (deterministic) or
  ``ref(grads, noise, step, **hp) -> grads`` (additive noise, given the standard normal draws);
- ``after_step``: ``ref(name, weight, lr, **hp) -> new weight`` for one parameter (with a
  ``before`` keyword it also gets the weight before the optimizer step);
- ``callbacks``: ``ref(history, **hp) -> index of the check that stops training, or None``.

A parameter is a *weight* when it has two or more dimensions (matrices, conv kernels); biases and
normalizer scales are 1-D and are left alone unless ``include_bias`` is set.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from techbench.engine.stacked_hooks import member_values
from techbench.techniques.families import Regularizer, per_member
from techbench.techniques.parametrize import lr_multiplier


def _acts_on(param: torch.Tensor, include_bias: bool) -> bool:
    return include_bias or param.dim() >= 2


def _selected(model: nn.Module, include_bias: bool) -> Iterator[torch.Tensor]:
    for p in model.parameters():
        if _acts_on(p, include_bias):
            yield p


# --------------------------------------------------------------------------------------- none


class NoRegularizer(Regularizer):
    """The unregularized baseline: every hook keeps the :class:`Regularizer` default."""


def none_reference(x: torch.Tensor) -> torch.Tensor:
    """The identity law: no hook changes anything."""
    return x


# ------------------------------------------------------------------------------------ l2 / l1


class L2Penalty(Regularizer):
    """L2 penalty in the loss (lecture notes, seed 003).

    ``convention="lambda"``: R = lambda * sum_W ||W||_F^2, dR/dW = 2*lambda*W.
    ``convention="half_lambda"``: R = lambda/2 * sum_W ||W||_F^2, dR/dW = lambda*W (the form of
    ``torch.optim.SGD(weight_decay=lambda)``).
    """

    def __init__(
        self, lam: float = 1e-4, convention: str = "lambda", include_bias: bool = False
    ) -> None:
        self.lam = lam
        self.coef = lam if convention == "lambda" else lam / 2.0
        self.include_bias = include_bias

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        params = list(_selected(model, self.include_bias))
        if not params:
            return None
        return self.coef * torch.stack([p.pow(2).sum() for p in params]).sum()


def l2_reference(
    named_params: Sequence[tuple[str, torch.Tensor]],
    lam: float = 1e-4,
    convention: str = "lambda",
    include_bias: bool = False,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """R = c*sum ||W||^2 with c = lambda (or lambda/2); dR/dW = 2*c*W; float64."""
    c = lam if convention == "lambda" else lam / 2.0
    value = torch.zeros((), dtype=torch.float64)
    grads = []
    for _, p in named_params:
        w = p.detach().to(torch.float64)
        if _acts_on(p, include_bias):
            value = value + c * (w * w).sum()
            grads.append(2.0 * c * w)
        else:
            grads.append(torch.zeros_like(w))
    return value, grads


class L1Penalty(Regularizer):
    """L1 penalty in the loss: R = lambda * sum_W sum_ij |W_ij|, dR/dW = lambda*sign(W).

    Tibshirani 1996 (the lasso); sign(0) = 0 is the subgradient used at zero.
    """

    def __init__(self, lam: float = 1e-5, include_bias: bool = False) -> None:
        self.lam = lam
        self.include_bias = include_bias

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        params = list(_selected(model, self.include_bias))
        if not params:
            return None
        return self.lam * torch.stack([p.abs().sum() for p in params]).sum()


def l1_reference(
    named_params: Sequence[tuple[str, torch.Tensor]],
    lam: float = 1e-5,
    include_bias: bool = False,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """R = lambda*sum|W|; dR/dW = lambda*sign(W); float64."""
    value = torch.zeros((), dtype=torch.float64)
    grads = []
    for _, p in named_params:
        w = p.detach().to(torch.float64)
        if _acts_on(p, include_bias):
            value = value + lam * w.abs().sum()
            grads.append(lam * torch.sign(w))
        else:
            grads.append(torch.zeros_like(w))
    return value, grads


# ------------------------------------------------------------------------------ weight decay


class DecoupledWeightDecay(Regularizer):
    """Decoupled weight decay (Loshchilov & Hutter 2019, Algorithms 1 and 2):
    W_{t+1} = W_t - lr*u_t - lr*lambda*W_t, where lr*u_t is the optimizer's own step and W_t the
    weight *before* it, with each parameter group's current ``lr`` (times the tensor's own
    learning-rate multiplier under a parametrization such as muP,
    :func:`techbench.techniques.parametrize.lr_multiplier`, as mup's ``MuAdamW`` decays).

    How: ``transform_gradients`` (between backward and the step) copies W_t into a reused
    buffer without changing anything; ``after_step`` subtracts lr*lambda*W_t from the stepped
    weight. Decaying the stepped weight instead, (1 - lr*lambda)(W_t - lr*u_t), would add an
    lr^2*lambda*u_t term per step. The decay does not pass through the optimizer's gradient
    statistics, so with plain SGD it equals the L2 penalty ``l2`` of gradient lambda*W
    (lambda_wd = 2*lambda_l2 with ``convention="lambda"``, = lambda_l2 with ``half_lambda``)
    step for step, and with Adam it differs from it (and equals ``torch.optim.AdamW`` applied to
    the same parameters). Cost: one copy of the decayed weights per step.
    """

    def __init__(self, lam: float = 1e-2, include_bias: bool = False) -> None:
        self.lam = lam
        self.include_bias = include_bias
        self._params: list[torch.Tensor] = []
        self._before: list[torch.Tensor] = []
        self._armed = False

    @torch.no_grad()
    def transform_gradients(
        self, model: nn.Module, step: int, generator: torch.Generator | None = None
    ) -> None:
        if self.lam == 0.0:
            return
        params = list(_selected(model, self.include_bias))
        same = len(params) == len(self._before) and all(
            p.shape == b.shape and p.dtype == b.dtype and p.device == b.device
            for p, b in zip(params, self._before, strict=True)
        )
        if same:
            torch._foreach_copy_(self._before, [p.detach() for p in params])
        else:
            self._before = [p.detach().clone() for p in params]
        self._params, self._armed = params, True

    @torch.no_grad()
    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if self.lam == 0.0:
            return
        if not self._armed:
            raise RuntimeError(
                "weight_decay: after_step was called without transform_gradients before the "
                "optimizer step (the decay needs the pre-step weights)"
            )
        self._armed = False
        before = {id(p): b for p, b in zip(self._params, self._before, strict=True)}
        for group in optimizer.param_groups:
            alpha = -float(group["lr"]) * self.lam
            for p in group["params"]:
                b = before.get(id(p))
                if b is not None:  # at the tensor's own rate under a parametrization (muP)
                    p.add_(b, alpha=alpha * lr_multiplier(p))


def weight_decay_reference(
    name: str,
    weight: torch.Tensor,
    lr: float,
    before: torch.Tensor | None = None,
    lam: float = 1e-2,
    include_bias: bool = False,
) -> torch.Tensor:
    """``weight - lr*lambda*before`` for weights (and biases if ``include_bias``), ``weight``
    being the parameter after the optimizer's step and ``before`` the one before it; others
    unchanged. Float64."""
    w = weight.detach().to(torch.float64)
    if not _acts_on(weight, include_bias):
        return w.clone()
    w0 = w if before is None else before.detach().to(torch.float64)
    return w - lr * lam * w0


# ------------------------------------------------------------------------- gradient transforms


def _grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad for p in model.parameters() if p.grad is not None]


class ClipNorm(Regularizer):
    """Gradient norm clipping (Pascanu, Mikolov & Bengio 2013, Algorithm 1): with
    ||g|| = sqrt(sum over *all* parameters of ||g_p||^2), g <- g * min(1, max_norm/||g||).

    One global norm, so the direction of the whole gradient is kept; computed on the device
    (no host synchronisation); a non-finite norm makes the gradients non-finite (the step then
    diverges visibly instead of being silently skipped).
    """

    def __init__(self, max_norm: float = 1.0) -> None:
        self.max_norm = max_norm

    @torch.no_grad()
    def transform_gradients(
        self, model: nn.Module, step: int, generator: torch.Generator | None = None
    ) -> None:
        grads = _grads(model)
        if not grads:
            return
        norms = torch._foreach_norm(grads)
        total = torch.linalg.vector_norm(torch.stack([n.to(grads[0].dtype) for n in norms]))
        scale = torch.clamp(self.max_norm / total, max=1.0)
        torch._foreach_mul_(grads, scale)

    @staticmethod
    @torch.no_grad()
    def stacked_transform_gradients(
        regularizers: Sequence[ClipNorm],
        grads: Sequence[torch.Tensor],
        step: int,
        generators: Sequence[torch.Generator] = (),
    ) -> None:
        """The same rule for K members at once (``grads``: stacked ``[K, ...]`` rows, member k
        with ``regularizers[k]``'s bound): member k's global norm is over its own rows only, so
        no member's clipping depends on another's (:mod:`techbench.engine.stacked_hooks`)."""
        if not grads:
            return
        k = grads[0].shape[0]
        # each member's rows are the tensors it has alone: the same norm kernels, the same bits
        norms = torch._foreach_norm([g[i] for i in range(k) for g in grads])
        per_member_norms = torch.stack([n.to(grads[0].dtype) for n in norms]).view(k, len(grads))
        total = torch.linalg.vector_norm(per_member_norms, dim=1)
        bound = member_values(regularizers, "max_norm", total)
        scale = torch.clamp(torch.reciprocal(total) * bound, max=1.0)  # how float / tensor rounds
        for g in grads:
            g.mul_(per_member(scale, g))


def clip_norm_reference(
    grads: Sequence[torch.Tensor], step: int, max_norm: float = 1.0
) -> list[torch.Tensor]:
    """Float64: c = sqrt(sum_p sum_i g_pi^2); every g_p times min(1, max_norm / c)."""
    g64 = [g.detach().to(torch.float64) for g in grads]
    total = math.sqrt(sum(float((g * g).sum()) for g in g64))
    scale = min(1.0, max_norm / total) if total > 0 else 1.0
    return [g * scale for g in g64]


class ClipValue(Regularizer):
    """Element-wise gradient clipping g_i <- clamp(g_i, -clip, clip) (Mikolov 2012, section
    3.3.2; the alternative Pascanu et al. 2013 compare norm clipping with)."""

    def __init__(self, clip: float = 1.0) -> None:
        self.clip = clip

    @torch.no_grad()
    def transform_gradients(
        self, model: nn.Module, step: int, generator: torch.Generator | None = None
    ) -> None:
        grads = _grads(model)
        if grads:
            torch._foreach_clamp_min_(grads, -self.clip)
            torch._foreach_clamp_max_(grads, self.clip)

    @staticmethod
    @torch.no_grad()
    def stacked_transform_gradients(
        regularizers: Sequence[ClipValue],
        grads: Sequence[torch.Tensor],
        step: int,
        generators: Sequence[torch.Generator] = (),
    ) -> None:
        """The same clamp on K members' stacked ``[K, ...]`` rows, member k to its own bound
        (element-wise, so exactly each member's own result)."""
        if not grads:
            return
        clips = {r.clip for r in regularizers}
        if len(clips) == 1:
            (clip,) = clips
            torch._foreach_clamp_min_(list(grads), -clip)
            torch._foreach_clamp_max_(list(grads), clip)
            return
        bound = member_values(regularizers, "clip", grads[0])
        for g in grads:
            c = per_member(bound, g)
            torch.clamp(g, min=-c, max=c, out=g)


def clip_value_reference(
    grads: Sequence[torch.Tensor], step: int, clip: float = 1.0
) -> list[torch.Tensor]:
    """Float64, element by element: -clip if g < -clip, clip if g > clip, else g."""
    out = []
    for g in grads:
        g64 = g.detach().to(torch.float64)
        out.append(torch.where(g64 > clip, clip, torch.where(g64 < -clip, -clip, g64)))
    return out


class GradNoise(Regularizer):
    """Annealed Gaussian gradient noise (Neelakantan et al. 2015, eq. 1): g <- g + N(0, s_t^2)
    with variance s_t^2 = eta / (1 + t)^gamma at step t (from 0), independently per entry.

    The paper's eta is one of 0.01, 0.3, 1.0 with gamma = 0.55. One standard normal vector for
    all parameters is drawn from the trial's generator per step, so a trial reproduces.
    """

    def __init__(self, eta: float = 0.01, gamma: float = 0.55) -> None:
        self.eta = eta
        self.gamma = gamma

    @torch.no_grad()
    def transform_gradients(
        self, model: nn.Module, step: int, generator: torch.Generator | None = None
    ) -> None:
        grads = _grads(model)
        if not grads or self.eta == 0.0:
            return
        std = math.sqrt(self.eta / (1.0 + step) ** self.gamma)
        device = generator.device if generator is not None else grads[0].device
        total = sum(g.numel() for g in grads)
        noise = torch.randn(total, generator=generator, device=device, dtype=grads[0].dtype)
        noise = noise.to(grads[0].device)
        chunks = [
            c.view_as(g)
            for c, g in zip(noise.split([g.numel() for g in grads]), grads, strict=True)
        ]
        torch._foreach_add_(grads, chunks, alpha=std)


def grad_noise_reference(
    grads: Sequence[torch.Tensor],
    noise: Sequence[torch.Tensor],
    step: int,
    eta: float = 0.01,
    gamma: float = 0.55,
) -> list[torch.Tensor]:
    """The law g + sqrt(eta / (1 + t)^gamma) * e given standard normal draws e; float64."""
    std = math.sqrt(eta / (1.0 + step) ** gamma)
    return [
        g.detach().to(torch.float64) + std * e.to(torch.float64)
        for g, e in zip(grads, noise, strict=True)
    ]


# ---------------------------------------------------------------------------------- max-norm


class MaxNorm(Regularizer):
    """Max-norm constraint (Srivastava et al. 2014, section 5.1): after each step every unit's
    incoming weight vector w_j (row j of a Linear weight, output channel j of a conv kernel) is
    projected onto the ball ||w_j||_2 <= c: w_j <- w_j * min(1, c / ||w_j||).
    """

    def __init__(self, c: float = 3.0) -> None:
        self.c = c

    @torch.no_grad()
    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        for p in _selected(model, False):
            rows = p.view(p.shape[0], -1)
            norms = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
            scale = torch.where(norms > self.c, self.c / norms, torch.ones_like(norms))
            rows.mul_(scale)


def max_norm_reference(name: str, weight: torch.Tensor, lr: float, c: float = 3.0) -> torch.Tensor:
    """Row by row in float64: w_j * c/||w_j|| where ||w_j|| > c, else w_j; 1-D parameters
    (biases, normalizer scales) are no unit's incoming weights and stay unchanged."""
    w = weight.detach().to(torch.float64).clone()
    if w.dim() < 2:
        return w
    rows = w.reshape(w.shape[0], -1)
    for j in range(rows.shape[0]):
        norm = math.sqrt(sum(float(v) ** 2 for v in rows[j].tolist()))
        if norm > c:
            rows[j] = rows[j] * (c / norm)
    return rows.reshape(w.shape)


# ----------------------------------------------------------------------------------- dropout


class InvertedDropout(nn.Module):
    """y = x * m / (1 - p) with m_i ~ Bernoulli(1 - p) in training; y = x in eval.

    Srivastava et al. 2014 with the scaling moved to training time ("inverted"), so that
    E[y] = x and inference needs no weight scaling. A :class:`techbench.techniques.families.SampledModule`:
    the mask comes from ``generator`` (the trial's, set by the runner; None: the global RNG),
    so a trial's masks are its own and its stacked members draw exactly the same ones.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {p}")
        self.p = p
        self.generator: torch.Generator | None = None

    def sample(
        self,
        shape: Sequence[int],
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """The keep mask scaled by 1/(1 - p): m_i / (1 - p), m_i ~ Bernoulli(1 - p) (p = 0:
        ones, nothing drawn)."""
        if self.p == 0.0:
            return torch.ones(tuple(shape), dtype=dtype, device=device)
        keep = torch.empty(tuple(shape), dtype=dtype, device=device)
        keep.bernoulli_(1.0 - self.p, generator=generator)
        return keep.mul_(1.0 / (1.0 - self.p))

    def forward_with(self, x: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        return x * sample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return self.forward_with(x, self.sample(x.shape, x.dtype, x.device, self.generator))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Dropout(Regularizer):
    """Inverted dropout after each hidden activation (Srivastava et al. 2014)."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def make_module(self) -> nn.Module | None:
        return InvertedDropout(self.p)


def dropout_reference(x: torch.Tensor, keep_mask: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """Inverted dropout's law: y = x * m / (1 - p), m the 0/1 keep mask; E[y] = x."""
    return x * keep_mask.to(x.dtype) / (1.0 - p)


# ----------------------------------------------------------------------------- input noise


class GaussianNoise(Regularizer):
    """x <- x + std * e, e ~ N(0, I), training batches only (Bishop 1995); y unchanged."""

    def __init__(self, std: float = 0.1) -> None:
        self.std = std

    def transform_batch(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.std == 0.0:
            return x, y
        device = generator.device if generator is not None else x.device
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=device)
        return x + self.std * noise.to(x.device), y


def gaussian_noise_reference(
    x: torch.Tensor, noise: torch.Tensor, std: float = 0.1
) -> torch.Tensor:
    """The law x + std * e given the standard normal draw e."""
    return x + std * noise


# ------------------------------------------------------------------------------ augmentation


class Augment(Regularizer):
    """Random crop with zero padding plus random horizontal flip, per sample of (N, C, H, W).

    Pad by ``padding`` on each side, crop the H x W window at offsets (dy, dx) drawn uniformly
    from {0..2*padding}^2, then mirror the columns with probability ``flip_p`` (Krizhevsky et
    al. 2012). Batches that are not 4-D pass unchanged. Draws come from ``generator``.
    """

    def __init__(self, padding: int = 4, flip_p: float = 0.5) -> None:
        self.padding = padding
        self.flip_p = flip_p

    def draw(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The random draws for ``n`` samples: shifts (n, 2) in [0, 2*padding] and flips (n,)."""
        device = generator.device if generator is not None else None
        shifts = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=generator, device=device)
        flips = torch.rand(n, generator=generator, device=device) < self.flip_p
        return shifts, flips

    def transform_batch(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 4:
            return x, y
        n, c, h, w = x.shape
        shifts, flips = self.draw(n, generator)
        shifts, flips = shifts.to(x.device), flips.to(x.device)
        pad = self.padding
        padded = F.pad(x, (pad, pad, pad, pad)) if pad else x
        ar_h = torch.arange(h, device=x.device)
        ar_w = torch.arange(w, device=x.device)
        rows = shifts[:, 0:1] + ar_h
        cols = shifts[:, 1:2] + torch.where(flips[:, None], w - 1 - ar_w, ar_w)
        flat = rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]  # (N, H, W) into padded
        index = flat.reshape(n, 1, h * w).expand(n, c, h * w)
        out = padded.reshape(n, c, -1).gather(2, index)
        return out.reshape(n, c, h, w), y


def augment_reference(
    x: torch.Tensor,
    shifts: torch.Tensor,
    flips: torch.Tensor,
    padding: int = 4,
    flip_p: float = 0.5,
) -> torch.Tensor:
    """Sample by sample: zero-pad, crop at (dy, dx) = shifts[i], mirror columns if flips[i].

    ``flip_p`` only governs how often ``flips`` is drawn true; the law given the draws ignores it.
    """
    n, c, h, w = x.shape
    out = torch.empty_like(x)
    for i in range(n):
        padded = torch.zeros((c, h + 2 * padding, w + 2 * padding), dtype=x.dtype)
        padded[:, padding : padding + h, padding : padding + w] = x[i]
        dy, dx = int(shifts[i, 0]), int(shifts[i, 1])
        crop = padded[:, dy : dy + h, dx : dx + w]
        out[i] = torch.flip(crop, dims=(2,)) if bool(flips[i]) else crop
    return out


# --------------------------------------------------------------------------- label smoothing


class LabelSmoothing(Regularizer):
    """Cross-entropy with smoothed targets q = (1 - eps)*onehot(y) + eps/K (Szegedy et al.
    2016, section 7): loss = mean_n [ -sum_k q_nk log softmax(z_n)_k ].
    """

    def __init__(self, epsilon: float = 0.1) -> None:
        self.epsilon = epsilon

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
        # (N, K) logits, or (N, T, V) per-position logits of a language model (the mean over tokens)
        logits, target = logits.reshape(-1, logits.shape[-1]), target.reshape(-1)
        logp = torch.log_softmax(logits, dim=1)
        nll = -logp.gather(1, target.long().unsqueeze(1)).squeeze(1)
        uniform = -logp.mean(dim=1)
        return ((1.0 - self.epsilon) * nll + self.epsilon * uniform).mean()


def label_smoothing_reference(
    logits: torch.Tensor, target: torch.Tensor, epsilon: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and its analytic gradient in float64: L = (1/N) sum_n -sum_k q_nk log p_nk,
    dL/dz_nk = (p_nk - q_nk) / N, with p = softmax(z) and q = (1-eps)*onehot + eps/K."""
    z = logits.detach().to(torch.float64)
    n, k = z.shape
    shifted = z - z.max(dim=1, keepdim=True).values
    log_norm = torch.log(torch.exp(shifted).sum(dim=1, keepdim=True))
    logp = shifted - log_norm
    q = torch.full_like(z, epsilon / k)
    q[torch.arange(n), target.long()] += 1.0 - epsilon
    loss = -(q * logp).sum() / n
    grad = (torch.exp(logp) - q) / n
    return loss, grad


# ---------------------------------------------------------------------------- early stopping


class EarlyStop(Regularizer):
    """Early stopping on ``val_loss`` (Prechelt 1998): stop once ``patience`` consecutive
    validation checks fail to lower the best value by more than ``min_delta``.
    """

    monitor = "val_loss"

    def __init__(self, patience: int = 5, min_delta: float = 0.0) -> None:
        self.patience = patience
        self.min_delta = min_delta

    def callbacks(self) -> Sequence[Any]:
        from pytorch_lightning.callbacks import EarlyStopping

        return (
            EarlyStopping(
                monitor=self.monitor, patience=self.patience, min_delta=self.min_delta, mode="min"
            ),
        )


def early_stopping_reference(
    history: Sequence[float], patience: int = 5, min_delta: float = 0.0
) -> int | None:
    """Index of the validation check at which training stops, or None.

    best = +inf, wait = 0; for each value v: a non-finite v stops at once; v < best - min_delta
    is an improvement (best = v, wait = 0); otherwise wait += 1 and training stops when
    wait == patience.
    """
    best, wait = math.inf, 0
    for i, v in enumerate(history):
        if not math.isfinite(v):
            return i
        if v < best - min_delta:
            best, wait = v, 0
        else:
            wait += 1
            if wait >= patience:
                return i
    return None
