"""Built-in optimizers over K stacked trials with per-member hyper-parameters (``spec.stacked``).

Why: a tuning search trains members that differ in ``lr``, betas or momentum. With one
``torch.optim`` optimizer per distinct setting, K settings cost K optimizers (and the stacked
engine K leaves per parameter, concatenated every step), so stacking gave no speed-up. Here
every ``float`` hyper-parameter is a float64 tensor ``[K]`` viewed as ``[K, 1, ...]`` against a
stacked parameter ``[K, ...]``, so one optimizer does the K updates in one optimizer's kernels.

The contract (:mod:`techbench.techniques.families`): parameters are ``[K, ...]``; ``param_groups[0]["lr"]``
is the schedule's multiplier (1.0 at the start) and member k's rate is that times
``lr[k]``; :meth:`StackedOptimizer.member_hyperparams` shows the engine every member's values
(:class:`techbench.techniques.families.StackedOptimizer`). Member k's update is the fast factory's (:mod:`techbench_builtins.optimizers_impl`,
``torch.optim`` where it implements the rule) with member k's values: each step below is
torch's single-tensor step (torch 2.x ``_single_tensor_*``) with every scalar replaced by its
per-member view, the per-step scalars (``1 - beta^t``, NAdam's ``mu_t``, RAdam's ``rho_t``)
computed in float64 as torch computes them in Python floats, then cast to the parameter's
dtype. Nothing reduces over a tensor, so members never see each other; the conformance check
``stacked_hyperparams`` (:mod:`techbench.testing.optimizer`) proves it member by member.

Each rule is written once: the one-trial optimizers torch lacks (:class:`AdamVariant`,
:class:`RMSpropVariant`, :class:`Lion`, used by the fast factories) are these classes at K = 1
(:class:`OneTrial`), and the stacked factories at the end take the spec's completed
hyper-parameters, binding only what the technique fixes (AdamW's decoupled decay, plain SGD's
zero momentum); the defaults are the specs' (:mod:`techbench_builtins.optimizers`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

import torch
from torch import Tensor

from techbench.techniques.families import per_member, trial_ndim

_F64 = torch.float64
Coefficients = dict[str, Any]
"""A step's scalars by name: per-member float64 ``[K]`` tensors (or their casts to the parameter
dtype), or Python floats for one trial (:class:`OneTrial`)."""


def _at(value: Tensor | float, like: Tensor) -> Tensor | float:
    """A coefficient against ``like``: a ``[K]`` tensor viewed ``[K, 1, ...]``
    (:func:`~techbench.techniques.families.per_member`), a float (one trial) as it is."""
    return value if isinstance(value, float) else per_member(value, like)


def _addcmul3_(x: Tensor, a: Tensor, b: Tensor, coef: Tensor | float) -> Tensor:
    """``x += coef * a * b`` in place (torch's ``addcmul_(a, b, value=coef)`` for a float)."""
    if isinstance(coef, float):
        return x.addcmul_(a, b, value=coef)
    return x.addcmul_(a.mul(coef), b)


def _addcdiv_(x: Tensor, a: Tensor, b: Tensor, coef: Tensor | float) -> Tensor:
    """``x += coef * a / b`` in place (torch's ``addcdiv_(a, b, value=coef)`` for a float)."""
    if isinstance(coef, float):
        return x.addcdiv_(a, b, value=coef)
    return x.add_(a.mul(coef).div_(b))


def _addcmul(x: Tensor, a: Tensor, coef: Tensor | float, inplace: bool = False) -> Tensor:
    """``x + a * coef``: ``addcmul`` by a per-member view, ``add(alpha=coef)`` by a float."""
    if isinstance(coef, float):
        return x.add_(a, alpha=coef) if inplace else x.add(a, alpha=coef)
    return x.addcmul_(a, coef) if inplace else x.addcmul(a, coef)


def _scalar_dtype() -> torch.dtype:
    """The dtype torch.optim keeps its state scalars in (``step``, NAdam's ``mu_product``)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class StackedOptimizer(torch.optim.Optimizer):
    """Base: one param group over stacked parameters; ``MEMBER`` names the hyper-parameters
    given per member (float64 ``[K]``, kept on the host in ``param_groups[0]["member"]`` and
    shown to the engine by :meth:`member_hyperparams`), the other keyword arguments are shared
    choices. ``decay`` ("weights" or "all") picks which parameters the weight decay acts on,
    by :func:`~techbench.techniques.families.trial_ndim`.

    Subclasses implement :meth:`update` for one parameter with coefficients from
    :meth:`coefficients` (a dict of float64 ``[K]`` tensors on the parameter's device); during
    a step ``self.group`` is the param group being stepped (its shared choices) and
    ``self.nonzero[name]`` whether any member's ``name`` is not 0."""

    MEMBER: tuple[str, ...] = ()
    group: dict[str, Any]
    nonzero: dict[str, bool]

    def __init__(self, params: Iterable[Tensor], *, decay: str, **hp: Any) -> None:
        params = list(params)
        if not params:
            raise ValueError("a stacked optimizer needs at least one parameter")
        k = int(params[0].shape[0])
        member = {}
        for name in self.MEMBER:
            if name not in hp:
                raise TypeError(f"{type(self).__name__}: missing hyper-parameter {name!r}")
            value = torch.as_tensor(hp.pop(name), dtype=_F64).detach().cpu().reshape(-1)
            if value.numel() == 1 and k != 1:
                value = value.expand(k).clone()
            if value.shape != (k,):
                raise ValueError(f"{name}: expected {k} per-member values, got {value.numel()}")
            member[name] = value
        for p in params:
            if p.dim() < 1 or p.shape[0] != k:
                raise ValueError(f"stacked parameters must all be [{k}, ...], got {tuple(p.shape)}")
        _check_decay(decay)
        super().__init__(params, dict(lr=1.0, decay=decay, member=member, **hp))
        self._device_hp: dict[Any, dict[str, Tensor]] = {}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        super().load_state_dict(dict(state_dict))
        self._device_hp.clear()

    def member_hyperparams(self) -> dict[str, Tensor]:
        """Member k's value of each ``MEMBER`` hyper-parameter at k, float64 ``[K]`` on the
        host (:class:`techbench.techniques.families.StackedOptimizer`)."""
        return dict(self.param_groups[0]["member"])

    def group_hp(self, group: dict[str, Any], device: torch.device) -> dict[str, Tensor]:
        """``group``'s per-member hyper-parameters on ``device`` (float64; copied once)."""
        if device not in self._device_hp:
            member = group["member"]
            self._device_hp[device] = {k: v.to(device, _F64) for k, v in member.items()}
        return self._device_hp[device]

    def group_nonzero(self, group: dict[str, Any]) -> dict[str, bool]:
        """Whether any member's value of each ``MEMBER`` hyper-parameter is not 0."""
        return {k: bool((v != 0).any()) for k, v in group["member"].items()}

    def decays(self, p: Tensor) -> bool:
        """Whether weight decay acts on ``p`` (and any member's ``weight_decay`` is not 0)."""
        if not self.nonzero.get("weight_decay", False):
            return False
        return self.group["decay"] == "all" or trial_ndim(p) >= 2

    def coefficients(self, hp: Mapping[str, Any], lr: Any, t: int) -> Coefficients:
        """Per-member float64 ``[K]`` coefficients of step ``t`` (``lr``: the effective rates)."""
        raise NotImplementedError

    def update(
        self,
        p: Tensor,
        g: Tensor,
        state: dict[str, Any],
        c: Coefficients,
        c64: Coefficients,
    ) -> None:
        """One step of the stacked ``p``; ``c`` are :meth:`coefficients` in ``p``'s dtype,
        ``c64`` the float64 originals."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._step_group(group)
        return loss

    def _step_group(self, group: dict[str, Any]) -> None:
        self.group, self.nonzero = group, self.group_nonzero(group)
        made: dict[tuple[Any, Any, int], tuple[Coefficients, Coefficients]] = {}
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            t = state["step"] = state.get("step", 0) + 1
            if (p.device, p.dtype, t) not in made:
                made[p.device, p.dtype, t] = self.step_coefficients(group, p, t)
            c, c64 = made[p.device, p.dtype, t]
            q, g = (p, p.grad) if p.dim() else (p.view(1), p.grad.view(1))
            self.update(q, g, state, c, c64)

    def step_coefficients(
        self, group: dict[str, Any], p: Tensor, t: int
    ) -> tuple[Coefficients, Coefficients]:
        """:meth:`coefficients` of step ``t`` in ``p``'s dtype and in float64, on its device."""
        hp = self.group_hp(group, p.device)
        c64 = self.coefficients(hp, hp["lr"] * float(group["lr"]), t)
        return {k: v.to(p.dtype) for k, v in c64.items()}, c64

    def preconditioner(self, p: Tensor) -> Tensor | None:
        """The diagonal P the update divides ``p``'s gradient by (shape of ``p``), as the last
        step used it, or None: this default, for rules without one (SGD, Lion) and before
        the first step (:func:`techbench.engine.curvature.diagonal_preconditioner`)."""
        return None

    def last_coefficients(self, p: Tensor) -> Coefficients | None:
        """The coefficients (``p``'s dtype) of ``p``'s last step, or None before its first."""
        state = self.state.get(p)
        if not state or "step" not in state:
            return None
        group = next(g for g in self.param_groups if any(q is p for q in g["params"]))
        self.group, self.nonzero = group, self.group_nonzero(group)
        return self.step_coefficients(group, p, int(state["step"]))[0]

    def coupled_decay(self, p: Tensor, g: Tensor, c: Coefficients) -> Tensor:
        """``g + weight_decay * p`` (torch's ``grad.add(param, alpha=weight_decay)``)."""
        return _addcmul(g, p, _at(c["weight_decay"], p)) if self.decays(p) else g


def _check_decay(decay: str) -> None:
    if decay not in ("weights", "all"):
        raise ValueError(f"decay must be 'weights' or 'all', got {decay!r}")


class OneTrial(StackedOptimizer):
    """A stacked class's update for one trial's own parameters, as a ``torch.optim`` optimizer:
    its math at K = 1, so that the one-member rule is written once.

    Put first among the bases (``class AdamVariant(OneTrial, StackedAdam)``). Every
    hyper-parameter is a plain value of the param group (groups may override them, as in
    ``torch.optim``); the group's ``lr`` is the rate itself (a schedule sets it directly, so
    any schedule works) and the member's rate is 1.0. Parameters are unstacked
    (:func:`~techbench.techniques.families.trial_ndim` tells weights from biases)."""

    def __init__(self, params: Iterable[Any], **hp: Any) -> None:
        missing = [n for n in (*self.MEMBER, "decay") if n not in hp]
        if missing:
            raise TypeError(f"{type(self).__name__}: missing hyper-parameters {missing}")
        _check_decay(hp["decay"])
        torch.optim.Optimizer.__init__(self, params, hp)
        self._device_hp = {}

    def _values(self, group: dict[str, Any]) -> dict[str, float]:
        return {n: float(group[n]) for n in self.MEMBER} | {"lr": 1.0}

    def member_hyperparams(self) -> dict[str, Tensor]:
        """Param group 0's values as one member's, ``lr`` 1.0 (the group's ``lr`` is the rate)."""
        values = self._values(self.param_groups[0])
        return {n: torch.tensor([v], dtype=_F64) for n, v in values.items()}

    def step_coefficients(
        self, group: dict[str, Any], p: Tensor, t: int
    ) -> tuple[Coefficients, Coefficients]:
        """The coefficients as Python floats (float64, as torch.optim's scalars): one trial's
        update then runs torch's scalar kernels."""
        c = self.coefficients(self._values(group), float(group["lr"]), t)
        return c, c

    def group_nonzero(self, group: dict[str, Any]) -> dict[str, bool]:
        return {n: float(group[n]) != 0 for n in self.MEMBER}


class StackedSGD(StackedOptimizer):
    """``torch.optim.SGD`` (plain, heavy ball with dampening, or Nesterov) per member.

    A member with ``momentum`` 0 steps as plain SGD (torch keeps no buffer then, and ignores
    ``dampening``): its buffer is ``0 * b + g``."""

    MEMBER = ("lr", "momentum", "dampening", "weight_decay")

    def coefficients(self, hp: Mapping[str, Any], lr: Any, t: int) -> Coefficients:
        mu = hp["momentum"]
        keep = torch.where(mu == 0, torch.ones_like(mu), 1 - hp["dampening"])
        return {"neg_lr": -lr, "momentum": mu, "keep": keep, "weight_decay": hp["weight_decay"]}

    def update(
        self,
        p: Tensor,
        g: Tensor,
        state: dict[str, Any],
        c: Coefficients,
        c64: Coefficients,
    ) -> None:
        g = self.coupled_decay(p, g, c)
        if self.nonzero["momentum"]:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = g.detach().clone()
            else:
                buf.mul_(per_member(c["momentum"], p)).addcmul_(g, per_member(c["keep"], p))
            nesterov = self.group["nesterov"]
            g = g.addcmul(buf, per_member(c["momentum"], p)) if nesterov else buf
        p.addcmul_(g, per_member(c["neg_lr"], p))


class StackedAdagrad(StackedOptimizer):
    """``torch.optim.Adagrad`` per member: ``clr = lr / (1 + (t - 1) lr_decay)``."""

    MEMBER = ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps")

    def coefficients(self, hp: Mapping[str, Any], lr: Any, t: int) -> Coefficients:
        clr = lr / (1 + (t - 1) * hp["lr_decay"])
        return {
            "neg_clr": -clr,
            "eps": hp["eps"],
            "weight_decay": hp["weight_decay"],
            "init": hp["initial_accumulator_value"],
        }

    def update(
        self,
        p: Tensor,
        g: Tensor,
        state: dict[str, Any],
        c: Coefficients,
        c64: Coefficients,
    ) -> None:
        if "sum" not in state:
            state["sum"] = (
                per_member(c["init"], p).expand_as(p).clone(memory_format=torch.preserve_format)
            )
        g = self.coupled_decay(p, g, c)
        s = state["sum"]
        s.addcmul_(g, g)
        std = s.sqrt().add_(per_member(c["eps"], p))
        p.add_(g.mul(per_member(c["neg_clr"], p)).div_(std))

    def preconditioner(self, p: Tensor) -> Tensor | None:
        """``sqrt(sum) + eps``."""
        c, state = self.last_coefficients(p), self.state.get(p, {})
        if c is None or "sum" not in state:
            return None
        return state["sum"].sqrt().add_(per_member(c["eps"], p)).view_as(p)


class StackedRMSprop(StackedOptimizer):
    """``torch.optim.RMSprop`` (eps outside) or :class:`RMSpropVariant` (inside) per member."""

    MEMBER = ("lr", "alpha", "eps", "weight_decay", "momentum")

    def coefficients(self, hp: Mapping[str, Any], lr: Any, t: int) -> Coefficients:
        return {
            "neg_lr": -lr,
            "alpha": hp["alpha"],
            "one_minus_alpha": 1 - hp["alpha"],
            "eps": hp["eps"],
            "momentum": hp["momentum"],
            "weight_decay": hp["weight_decay"],
        }

    def update(
        self,
        p: Tensor,
        g: Tensor,
        state: dict[str, Any],
        c: Coefficients,
        c64: Coefficients,
    ) -> None:
        g = self.coupled_decay(p, g, c)
        if "square_avg" not in state:
            state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if self.nonzero["momentum"]:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        v = state["square_avg"]
        _addcmul3_(v.mul_(_at(c["alpha"], p)), g, g, _at(c["one_minus_alpha"], p))
        avg = self._root(v, c, p)
        if self.nonzero["momentum"]:
            buf = state["momentum_buffer"]
            buf.mul_(_at(c["momentum"], p)).addcdiv_(g, avg)
            _addcmul(p, buf, _at(c["neg_lr"], p), inplace=True)
        else:
            _addcdiv_(p, g, avg, _at(c["neg_lr"], p))

    def _root(self, v: Tensor, c: Coefficients, p: Tensor) -> Tensor:
        eps = _at(c["eps"], p)
        return v.add(eps).sqrt_() if self.group["eps_placement"] == "inside" else v.sqrt().add_(eps)

    def preconditioner(self, p: Tensor) -> Tensor | None:
        """``sqrt(square_avg) + eps`` (or ``sqrt(square_avg + eps)``, eps inside)."""
        c, state = self.last_coefficients(p), self.state.get(p, {})
        if c is None or "square_avg" not in state:
            return None
        return self._root(state["square_avg"], c, p.view_as(state["square_avg"])).view_as(p)


class StackedAdam(StackedOptimizer):
    """``torch.optim.Adam``/``AdamW`` and :class:`AdamVariant` per member: coupled (Adam) or
    decoupled (AdamW: ``p <- p (1 - lr wd)`` first) decay; bias correction and eps placement
    shared."""

    MEMBER = ("lr", "beta1", "beta2", "eps", "weight_decay")

    def coefficients(self, hp: Mapping[str, Any], lr: Any, t: int) -> Coefficients:
        b1, b2 = hp["beta1"], hp["beta2"]
        if self.group["bias_correction"]:
            bc1, bc2 = 1 - b1**t, 1 - b2**t
        else:
            bc1, bc2 = 0 * b1 + 1, 0 * b2 + 1
        return {
            "one_minus_b1": 1 - b1,
            "b2": b2,
            "one_minus_b2": 1 - b2,
            "eps": hp["eps"],
            "weight_decay": hp["weight_decay"],
            "shrink": 1 - lr * hp["weight_decay"],
            "neg_step": -(lr / bc1),
            "bc2": bc2,
            "bc2_sqrt": bc2**0.5,
        }

    def update(
        self,
        p: Tensor,
        g: Tensor,
        state: dict[str, Any],
        c: Coefficients,
        c64: Coefficients,
    ) -> None:
        group = self.group
        if group["decoupled"]:
            if self.decays(p):
                p.mul_(_at(c["shrink"], p))
        else:
            g = self.coupled_decay(p, g, c)
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.lerp_(g, _at(c["one_minus_b1"], p))
        _addcmul3_(v.mul_(_at(c["b2"], p)), g, g, _at(c["one_minus_b2"], p))
        _addcdiv_(p, m, self._denominator(v, c, p), _at(c["neg_step"], p))

    def _denominator(self, v: Tensor, c: Coefficients, p: Tensor) -> Tensor:
        """sqrt(v / bc2) + eps, or sqrt(v / bc2 + eps) with eps inside."""
        eps = _at(c["eps"], p)
        if self.group["eps_placement"] == "inside":
            return v.div(_at(c["bc2"], p)).add_(eps).sqrt_()
        return v.sqrt().div_(_at(c["bc2_sqrt"], p)).add_(eps)

    def preconditioner(self, p: Tensor) -> Tensor | None:
        """The bias-corrected ``sqrt(exp_avg_sq / (1 - beta2^t)) + eps`` of the last step."""
        c, state = self.last_coefficients(p), self.state.get(p, {})
        if c is None or "exp_avg_sq" not in state:
            return None
        v = state["exp_avg_sq"]
        return self._denominator(v, c, p.view_as(v)).view_as(p)


class StackedNAdam(StackedOptimizer):
    """``torch.optim.NAdam`` per member (Dozat 2016): ``mu_t`` per member, the running product
    of the ``mu`` kept in torch's state-scalar dtype as torch keeps it."""

    MEMBER = ("lr", "beta1", "beta2", "eps", "weight_decay", "momentum_decay")

    def coefficients(self, hp: Mapping[str, Any], lr: Any, t: int) -> Coefficients:
        b1, b2, psi = hp["beta1"], hp["beta2"], hp["momentum_decay"]
        mu = b1 * (1.0 - 0.5 * torch.pow(0.96, t * psi))
        mu_next = b1 * (1.0 - 0.5 * torch.pow(0.96, (t + 1) * psi))
        return {
            "lr": lr,
            "mu": mu,
            "mu_next": mu_next,
            "one_minus_b1": 1 - b1,
            "b2": b2,
            "one_minus_b2": 1 - b2,
            "bc2": 1 - b2**t,
            "eps": hp["eps"],
            "weight_decay": hp["weight_decay"],
        }

    def update(
        self,
        p: Tensor,
        g: Tensor,
        state: dict[str, Any],
        c: Coefficients,
        c64: Coefficients,
    ) -> None:
        g = self.coupled_decay(p, g, c)
        if "exp_avg" not in state:
            k = p.shape[0]
            state["mu_product"] = torch.ones(k, dtype=_scalar_dtype(), device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        mu_product = state["mu_product"]
        mu_product.mul_(c64["mu"].to(mu_product.dtype))
        prod = mu_product.to(_F64)
        prod_next = prod * c64["mu_next"]
        lr = c64["lr"]
        on_grad = (-lr * (1.0 - c64["mu"]) / (1.0 - prod)).to(p.dtype)
        on_avg = ((-lr * c64["mu_next"]) / (1.0 - prod_next)).to(p.dtype)
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.lerp_(g, per_member(c["one_minus_b1"], p))
        v.mul_(per_member(c["b2"], p)).addcmul_(g.mul(per_member(c["one_minus_b2"], p)), g)
        denom = v.div(per_member(c["bc2"], p)).sqrt().add_(per_member(c["eps"], p))
        p.add_(g.mul(per_member(on_grad, p)).div_(denom))
        p.add_(m.mul(per_member(on_avg, p)).div_(denom))

    def preconditioner(self, p: Tensor) -> Tensor | None:
        """``sqrt(exp_avg_sq / (1 - beta2^t)) + eps``, as the last step divided by."""
        c, state = self.last_coefficients(p), self.state.get(p, {})
        if c is None or "exp_avg_sq" not in state:
            return None
        v = state["exp_avg_sq"]
        q = p.view_as(v)
        return v.div(per_member(c["bc2"], q)).sqrt().add_(per_member(c["eps"], q)).view_as(p)


class StackedRAdam(StackedOptimizer):
    """``torch.optim.RAdam`` per member (Liu et al. 2020): a member whose ``rho_t > 5`` takes
    the rectified adaptive step, the others the un-adapted ``lr * m_hat``."""

    MEMBER = ("lr", "beta1", "beta2", "eps", "weight_decay")

    def coefficients(self, hp: Mapping[str, Any], lr: Any, t: int) -> Coefficients:
        b1, b2 = hp["beta1"], hp["beta2"]
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        rho_inf = 2 / (1 - b2) - 1
        rho_t = rho_inf - 2 * t * (b2**t) / bc2
        rectified = rho_t > 5.0
        ratio = (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
        rect = torch.where(rectified, ratio, torch.ones_like(ratio)).sqrt()
        return {
            "lr": lr,
            "one_minus_b1": 1 - b1,
            "b2": b2,
            "one_minus_b2": 1 - b2,
            "bc1": bc1,
            "bc2_sqrt": bc2.sqrt(),
            "rect": rect,
            "rectified": rectified.to(_F64),
            "eps": hp["eps"],
            "weight_decay": hp["weight_decay"],
        }

    def update(
        self,
        p: Tensor,
        g: Tensor,
        state: dict[str, Any],
        c: Coefficients,
        c64: Coefficients,
    ) -> None:
        g = self.coupled_decay(p, g, c)
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.lerp_(g, per_member(c["one_minus_b1"], p))
        v.mul_(per_member(c["b2"], p)).addcmul_(g.mul(per_member(c["one_minus_b2"], p)), g)
        plain = m.div(per_member(c["bc1"], p)).mul_(per_member(c["lr"], p))
        adaptive = per_member(c["bc2_sqrt"], p) / v.sqrt().add_(per_member(c["eps"], p))
        rectified = plain * adaptive * per_member(c["rect"], p)
        p.sub_(torch.where(per_member(c["rectified"], p) > 0, rectified, plain))

    def preconditioner(self, p: Tensor) -> Tensor | None:
        """``(sqrt(exp_avg_sq) + eps) / (sqrt(1 - beta2^t) r_t)`` for a member that took the
        rectified step, 1 (no preconditioning: the plain momentum step) for the others."""
        c, state = self.last_coefficients(p), self.state.get(p, {})
        if c is None or "exp_avg_sq" not in state:
            return None
        v = state["exp_avg_sq"]
        q = p.view_as(v)
        scaled = v.sqrt().add_(per_member(c["eps"], q))
        scaled.div_(per_member(c["bc2_sqrt"] * c["rect"], q))
        rectified = per_member(c["rectified"], q) > 0
        return torch.where(rectified, scaled, torch.ones_like(scaled)).view_as(p)


class StackedLion(StackedOptimizer):
    """:class:`Lion` (Chen et al. 2023) per member: ``sign(lerp(m, g, 1 - b1))`` steps."""

    MEMBER = ("lr", "beta1", "beta2", "weight_decay")

    def coefficients(self, hp: Mapping[str, Any], lr: Any, t: int) -> Coefficients:
        return {
            "neg_lr": -lr,
            "shrink": 1 - lr * hp["weight_decay"],
            "one_minus_b1": 1 - hp["beta1"],
            "one_minus_b2": 1 - hp["beta2"],
        }

    def update(
        self,
        p: Tensor,
        g: Tensor,
        state: dict[str, Any],
        c: Coefficients,
        c64: Coefficients,
    ) -> None:
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        m = state["exp_avg"]
        direction = m.lerp(g, _at(c["one_minus_b1"], p))
        if self.decays(p):
            p.mul_(_at(c["shrink"], p))
        _addcmul(p, direction.sign_(), _at(c["neg_lr"], p), inplace=True)
        m.lerp_(g, _at(c["one_minus_b2"], p))


# ---------------------------------------------------------------------------------------------
# One trial: the stacked math at K = 1 (the fast factories use them where torch.optim lacks the
# rule: eps inside the root, Adam without bias correction, Lion)


class RMSpropVariant(OneTrial, StackedRMSprop):
    """RMSprop with a selectable epsilon placement (Tieleman & Hinton 2012; seed 002) for one
    trial: ``v <- alpha*v + (1-alpha)*g^2``; ``d = g / (sqrt(v) + eps)`` (outside) or
    ``g / sqrt(v + eps)`` (inside, the lecture slide); with momentum ``b <- mu*b + d``,
    ``p <- p - lr*b``, else ``p <- p - lr*d``; ``g`` includes the coupled ``weight_decay * p``."""


class AdamVariant(OneTrial, StackedAdam):
    """Adam (Kingma & Ba 2015) with optional bias correction and epsilon placement for one
    trial (``decoupled``: AdamW's decay), as :class:`StackedAdam` states it."""


class Lion(OneTrial, StackedLion):
    """Lion (Chen et al. 2023, Algorithm 2) for one trial: ``c = b1*m + (1-b1)*g``;
    ``p <- p - lr*(sign(c) + weight_decay*p)``; ``m <- b2*m + (1-b2)*g``."""


# ---------------------------------------------------------------------------------------------
# Stacked factories: ``(params, **hp)``, every hyper-parameter of the spec given (float ones as
# float64 [K] tensors); each binds only what the technique fixes


sgd = partial(StackedSGD, momentum=0.0, dampening=0.0, nesterov=False)
momentum = partial(StackedSGD, nesterov=False)
nesterov = partial(StackedSGD, dampening=0.0, nesterov=True)
adagrad = StackedAdagrad
rmsprop = StackedRMSprop
adam = partial(StackedAdam, decoupled=False)
adamw = partial(StackedAdam, decoupled=True, bias_correction=True, eps_placement="outside")
nadam = StackedNAdam
radam = StackedRAdam
lion = StackedLion
