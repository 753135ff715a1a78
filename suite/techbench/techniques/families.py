"""What a plugin of each family provides: the fast side's call signature and declared properties.

The runner and the probe consume only the *fast* side through the signatures below, so they are
the contract every plugin must keep. The *reference* side is consumed only by the family's
conformance checks (``techbench.testing.<family>``), whose docstring states its exact protocol.

Fast-side signatures (``spec.create(*structural, **hyperparams)`` calls ``fast``):

=============  ==========================================================================
activation     ``fast(**hp) -> torch.nn.Module``, elementwise
initializer    ``fast(**hp) -> Initializer``: ``init(tensor)`` fills a weight in place and
               returns it (fans from the shape, as ``torch.nn.init``); data-dependent ones
               (``properties["data_dependent"]``) also have ``init.fit(model, x)``
normalizer     ``fast(num_features, **hp) -> torch.nn.Module`` for (N, C) and (N, C, *spatial)
regularizer    ``fast(**hp) -> Regularizer`` (hooks below; unused hooks keep the defaults)
optimizer      ``fast(params, **hp) -> torch.optim.Optimizer`` (``lr`` is a hyper-parameter;
               a parameter's own dimension is :func:`trial_ndim`, stacked ones carry more)
parametrization ``fast(**hp) -> Parametrization`` (hooks below; :mod:`techbench.techniques.parametrize`
               applies them to every trial's network and optimizer)
schedule       ``fast(optimizer, total_steps, **hp) -> torch.optim.lr_scheduler.LRScheduler``,
               stepped once per optimizer step
preprocessor   ``fast(**hp) -> Preprocessor``: ``fit(x_train)`` then ``transform(x)``
dataset        ``fast(data_seed, **hp) -> DatasetSplits``
model          ``fast(input_shape, num_outputs, parts: ModelParts, **hp) -> torch.nn.Module``
=============  ==========================================================================

A technique may also provide ``spec.stacked``, a fast implementation over K stacked trials
(:mod:`techbench.engine.population`), which the engine uses for members that differ in numeric
hyper-parameters:

=============  ==========================================================================
optimizer      ``stacked(params, **hp) -> StackedOptimizer`` (a ``torch.optim.Optimizer``
               that also has :meth:`StackedOptimizer.member_hyperparams`) over stacked
               parameters ``[K, ...]`` (marked with :data:`STACKED_DIMS`); every ``float``
               hyper-parameter arrives as a float64 tensor ``[K]`` (member k's value at k),
               the others (``bool``, ``int``, ``str``: structural choices such as ``decay``
               or ``eps_placement``) as one plain value shared by all members. Member k's
               update must equal ``fast([member k's slices], **member k's values)`` within
               rounding, with no reduction across members. It has one param group whose
               ``lr`` is a *multiplier* starting at 1.0, which the schedule drives: member
               k's effective rate is ``param_groups[0]["lr"] * hp["lr"][k]``, so it is only
               used under a schedule declaring ``properties["multiplicative"]``
               (:class:`ScheduleProperties`); otherwise members with different settings each
               get their own ``fast`` optimizer. The engine reads member k's values (for the
               regularizers' ``after_step``, e.g. decoupled weight decay's ``lr``) only
               through ``member_hyperparams()``. Checked by ``stacked_hyperparams`` and
               ``stacked_member_values`` (:mod:`techbench.testing.optimizer`).
regularizer    ``Regularizer.stacked_transform_gradients`` (optional): one call for a run
               of members of one class instead of each member's ``transform_gradients``;
               checked by ``stacked_gradients`` (:mod:`techbench.testing.regularizer_stacked`)
=============  ==========================================================================

This module imports no torch at import time; annotations name torch types as strings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol, TypedDict, runtime_checkable

__all__ = [
    "MODULE_SEED_OFFSET",
    "NOISE_SEED_OFFSET",
    "STACKED_DIMS",
    "ActivationProperties",
    "DatasetSplits",
    "Initializer",
    "InitializerProperties",
    "ModelParts",
    "NormalizerProperties",
    "OptimizerProperties",
    "ParamScale",
    "Parametrization",
    "ParametrizationProperties",
    "Preprocessor",
    "Regularizer",
    "RegularizerProperties",
    "SampledModule",
    "ScheduleProperties",
    "Stability",
    "StackedOptimizer",
    "bind_module_generator",
    "ema_stability",
    "heavy_ball_stability",
    "nesterov_stability",
    "per_member",
    "trial_ndim",
    "trial_parts",
]

if TYPE_CHECKING:
    import torch
    from torch import nn


class ActivationProperties(TypedDict, total=False):
    """Declared by every activation; the gradient-health metrics read them.

    ``saturation``: the open interval of *outputs* where the unit is not saturated; an output at
    or beyond either end counts as saturated (sigmoid: (0.01, 0.99)). ``None``: never saturates.
    ``dead_below``: a unit is dead on a batch when its output is <= this for every sample
    (ReLU: 0.0). ``None``: cannot die. ``kinks``: inputs where the derivative is undefined;
    the conformance checks keep away from them.
    """

    output_range: tuple[float, float]
    zero_centered: bool
    monotonic: bool
    saturation: tuple[float, float] | None
    dead_below: float | None
    kinks: tuple[float, ...]


class InitializerProperties(TypedDict, total=False):
    """``data_dependent``: needs a batch (LSUV). ``applies_to``: "weight", "bias" or "any"."""

    data_dependent: bool
    applies_to: Literal["weight", "bias", "any"]


class NormalizerProperties(TypedDict, total=False):
    """``batch_dependent``: output depends on other samples (batch norm); eval mode differs.
    ``invariant``: the output statistic before the affine map (see techbench.testing.normalizer).
    """

    batch_dependent: bool
    invariant: str


class RegularizerProperties(TypedDict, total=False):
    """``hooks``: which :class:`Regularizer` hooks it overrides, e.g. ("penalty",) or
    ("make_module",). ``law``: for ``transform_batch`` ones, "additive_noise" or "crop_flip",
    which law ``techbench.testing.regularizer`` checks the transform against. ``gradient_law``:
    for ``transform_gradients`` ones, "deterministic" (a function of the gradients and the step)
    or "additive_noise" (affine in a standard normal draw); without it only the generic
    gradient-transform checks run. ``stacked_module``: for ``make_module`` ones, the modules it
    makes are :class:`SampledModule` and draw only from the generator they are given, so the
    stacked engine can draw each member's samples with that member's generator and feed them into
    the vmapped forward (:mod:`techbench.engine.stacked_modules`); without it the trials run one by one
    (a module using the global RNG still works there). The conformance check
    ``sampled_module`` verifies the claim."""

    hooks: tuple[str, ...]
    law: Literal["additive_noise", "crop_flip"]
    gradient_law: Literal["deterministic", "additive_noise"]
    stacked_module: bool


class OptimizerProperties(TypedDict, total=False):
    """``adaptive``: per-coordinate step sizes (Adagrad, RMSprop, Adam...). ``update_rule``:
    which learning-rate rule of a width-aware parametrization applies (Yang et al. 2021, Tensor
    Programs V, Table 3): ``"adaptive"`` for updates whose entries are O(lr) whatever the
    gradient's scale (Adam and its kin, Adagrad, RMSprop, sign methods such as Lion),
    ``"sgd"`` for updates proportional to the gradient (SGD, momentum, Nesterov),
    ``"orthogonalized"`` for Muon-like rules (hidden matrices step along an orthogonalised
    update whose spectral norm the rule fixes, the rest adaptively; ``"orthogonalized_rms"``
    when that norm grows as sqrt(width), Muon's ``match_rms_adamw``). Declaring it
    also declares that the update is proportional to ``lr`` (a per-tensor lr multiplier then
    equals a multiplier on the step, :func:`techbench.techniques.parametrize.scale_updates`;
    the conformance check ``lr_multiplier`` verifies it), for every hyper-parameter named in
    ``rates`` (default ``("lr",)``; Muon: ``("lr", "adam_lr")``). ``stability``: its
    stability threshold (:class:`Stability`). ``elementwise``: the
    update of each coordinate depends only on that coordinate's gradient history and the
    hyper-parameters (no norm or other reduction over a tensor), so one optimizer over the stacked
    parameters of K trials is K independent optimizers: trials with it may train stacked
    (:mod:`techbench.plan.stacking`); the conformance check ``stacked`` verifies the claim.
    ``stacks``: not elementwise, but every reduction is over one trial's own dimensions
    (:func:`trial_ndim`; Muon's Newton-Schulz per matrix), so one optimizer over stacked
    parameters is still K independent ones: trials with it stack too (check ``stacked``).
    ``reads_roles``: routes each parameter by its role (:data:`techbench.techniques.roles.ROLE_ATTR`;
    Muon: hidden matrices vs the rest), so a trial whose model's roles can't be told fails
    instead of falling back to shapes. ``orthogonalized``: hidden matrices step along the
    Newton-Schulz orthogonalised momentum (Muon, Jordan et al. 2024), with Muon's
    hyper-parameter names; checks ``torch_muon`` and ``polar_factor``
    (:mod:`techbench.testing.optimizer_muon`)."""

    adaptive: bool
    update_rule: Literal["adaptive", "sgd", "orthogonalized", "orthogonalized_rms"]
    rates: tuple[str, ...]
    elementwise: bool
    stacks: bool
    reads_roles: bool
    orthogonalized: bool
    stability: Stability | None


class Stability(NamedTuple):
    """An optimizer's stability threshold: on a quadratic whose curvature along some direction
    exceeds ``constant / lr`` (``lr`` the current rate: the member's ``lr`` times the schedule's
    multiplier), the update diverges along it; training sharpens up to there and hovers (the
    edge of stability). ``preconditioned``: the curvature is the preconditioned Hessian's
    P^{-1/2} H P^{-1/2} (adaptive methods, P the optimizer's declared diagonal preconditioner),
    else the Hessian's. Declared as ``properties["stability"]`` (a callable of the
    hyper-parameters when it depends on them; None or absent: no known threshold, e.g. sign or
    matrix methods); the curvature probe (:mod:`techbench.engine.curvature_probe`) records
    ``constant / lr`` beside the sharpness."""

    preconditioned: bool
    constant: float


def heavy_ball_stability(momentum: float = 0.0, dampening: float = 0.0) -> float:
    """(2 + 2 mu) / (1 - dampening): heavy-ball momentum ``b <- mu b + (1 - d) g``,
    ``p <- p - lr b`` on curvature a has an eigenvalue -1 at lr a (1 - d) = 2 + 2 mu (Cohen et
    al. 2021, arXiv 2103.00065, appendix on momentum; mu = 0: gradient descent's 2)."""
    return (2.0 + 2.0 * momentum) / (1.0 - dampening)


def nesterov_stability(momentum: float) -> float:
    """(2 + 2 mu) / (1 + 2 mu): Nesterov momentum ``b <- mu b + g``, ``p <- p - lr (g + mu b)``
    (Cohen et al. 2021, arXiv 2103.00065, appendix on momentum)."""
    return (2.0 + 2.0 * momentum) / (1.0 + 2.0 * momentum)


def ema_stability(beta1: float) -> float:
    """(2 + 2 beta1) / (1 - beta1): an EMA momentum ``m <- beta1 m + (1 - beta1) g`` is heavy
    ball with rate lr (1 - beta1), so on the preconditioned curvature (Adam) the threshold is
    38 / lr at beta1 = 0.9 (Cohen et al. 2022, arXiv 2207.14484, section 3)."""
    if not 0.0 <= beta1 < 1.0:
        raise ValueError(f"beta1 must be in [0, 1), got {beta1}")
    return (2.0 + 2.0 * beta1) / (1.0 - beta1)


class ScheduleProperties(TypedDict, total=False):
    """``monotonic``: "nonincreasing" or "warmup_then_nonincreasing" (checked).
    ``multiplicative``: every group's rate at step t is its initial rate times a factor f(t)
    that does not depend on the initial rate (LambdaLR, StepLR, ExponentialLR, ...); then a
    schedule run on a multiplier of 1.0 times member k's ``lr`` is member k's schedule, which
    lets a stacked optimizer (``spec.stacked``) carry per-member learning rates under it. The
    conformance check ``multiplicative`` verifies the claim; a schedule without it (clipping
    at an absolute floor, say) makes members with different ``lr`` train with one optimizer per
    setting."""

    monotonic: Literal["nonincreasing", "warmup_then_nonincreasing"]
    multiplicative: bool


STACKED_DIMS = "techbench_stacked_dims"
"""Attribute the stacked engine (and the ``stacked`` optimizer check) sets on a stacked
parameter: the number of leading dimensions that index members (1)."""


def trial_ndim(tensor: torch.Tensor) -> int:
    """Dimensions of one trial's parameter: ``tensor.dim()`` less the member dimensions of a
    stacked parameter (:data:`STACKED_DIMS`). An optimizer that treats parameters by their
    dimension (``decay="weights"``: tensors of two or more dimensions decay, biases do not)
    reads this, so that a stacked bias ``[K, n]`` is still a bias."""
    return int(tensor.dim()) - int(getattr(tensor, STACKED_DIMS, 0))


def per_member(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-member ``[K]`` value viewed as ``[K, 1, ...]``, to broadcast over the stacked
    ``[K, ...]`` rows of ``like`` (a stacked implementation's hyper-parameters and bounds)."""
    return value.view(-1, *([1] * (like.dim() - 1)))


@runtime_checkable
class StackedOptimizer(Protocol):
    """What a technique's stacked optimizer (``spec.stacked``) declares beyond
    ``torch.optim.Optimizer``: where each member's hyper-parameter values are.

    Why: the engine must show a regularizer's ``after_step`` member k's own values (decoupled
    weight decay steps by the member's current ``lr``), and the stacked optimizer is the one
    place that holds them; an implementation that kept them privately would leave the engine
    reading the group's ``lr``, the schedule's multiplier (1.0), silently.

    - ``member_hyperparams() -> Mapping[str, Tensor]``: every ``float`` hyper-parameter of the
      spec by name, a float64 tensor ``[K]`` whose k-th entry is the value member k's update
      uses now (those the factory received, unless the optimizer changes them), preferably on
      the host (reading them then costs no device synchronisation). ``lr`` is member k's own
      rate; its effective rate is that times ``param_groups[0]["lr"]`` (the multiplier).

    No default: without it, :func:`techbench.engine.member_hp.create_stacked` refuses the optimizer,
    and the check ``stacked_member_values`` fails it.

    Optional: ``preconditioner(param) -> Tensor | None``, the diagonal P (shape of ``param``)
    the last step divided ``param``'s gradient by, None for a rule without one (the default
    when not declared) or before the first step; the curvature probe's preconditioned
    sharpness reads it (:func:`techbench.engine.curvature.diagonal_preconditioner`).

    Optional: ``rate_key(param) -> str``, the member hyper-parameter that is ``param``'s rate
    when not every parameter steps at ``lr`` (Muon's auxiliary AdamW at ``adam_lr``); a
    regularizer's ``after_step`` then sees each rate as its own param group, as alone
    (:class:`techbench.engine.stacked_hooks.MemberOptimizer`). Default: ``lr`` for every one.
    """

    param_groups: list[dict[str, Any]]

    def member_hyperparams(self) -> Mapping[str, torch.Tensor]: ...


NOISE_SEED_OFFSET = 0x7E57
"""A trial's regularizer-noise generator (``transform_batch``, ``transform_gradients``) is seeded
with ``seed + NOISE_SEED_OFFSET`` on the training device, per member of a stack (a trial alone
is a stack of one)."""

MODULE_SEED_OFFSET = 0x0D70
"""The generator a trial's :class:`SampledModule` layers draw from (dropout masks) is seeded
with ``seed + MODULE_SEED_OFFSET`` on the training device, in both the one-by-one and the stacked
path: a stream of its own, apart from batch order (``seed``) and regularizer noise."""


@runtime_checkable
class SampledModule(Protocol):
    """A module (from ``Regularizer.make_module``) whose training-mode randomness is one tensor
    per call, drawn from a generator it is given.

    Why: a module that draws from torch's global RNG makes a trial's numbers depend on whatever
    else drew from it, and cannot be stacked (inside ``vmap`` there is one RNG for all members).
    A sampled module splits its training forward into ``forward_with(x, sample(...))``: the
    runner sets ``generator`` (seeded from the trial, :data:`MODULE_SEED_OFFSET`) before
    training, and the stacked engine calls ``sample`` per member outside ``vmap`` with that
    member's generator, in the order the forward calls the layers, then feeds each member its
    samples. ``generator`` None (a module used outside the runner) means torch's global RNG.
    Eval mode must not sample (``forward`` returns the eval output without calling it).

    - ``sample(shape, dtype, device, generator) -> Tensor``: the random tensor a training
      forward on an input of ``shape`` uses; it may draw only from ``generator`` and draws
      nothing it does not need (inverted dropout: the keep mask already scaled by 1/(1-p)).
    - ``forward_with(x, sample) -> Tensor``: the training output given the sample (a pure
      function of both, traceable by ``vmap``).
    """

    generator: torch.Generator | None

    def sample(
        self,
        shape: Sequence[int],
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | None,
    ) -> torch.Tensor: ...

    def forward_with(self, x: torch.Tensor, sample: torch.Tensor) -> torch.Tensor: ...


def bind_module_generator(
    model: nn.Module, seed: int, device: torch.device
) -> torch.Generator | None:
    """Give every :class:`SampledModule` of ``model`` one generator, seeded with ``seed +``
    :data:`MODULE_SEED_OFFSET` on ``device``, and return it (None when ``model`` has none)."""
    import torch

    modules = [m for m in model.modules() if isinstance(m, SampledModule)]
    if not modules:
        return None
    generator = torch.Generator(device=device).manual_seed(int(seed) + MODULE_SEED_OFFSET)
    for m in modules:
        m.generator = generator
    return generator


class Initializer(Protocol):
    def __call__(self, tensor: torch.Tensor) -> torch.Tensor: ...


class Regularizer:
    """Base class of what a regularizer's fast factory returns; override the hooks you need.

    Why hooks: regularizers act at different places of a training step (the data, the network,
    the loss, the gradients, after the update, the loop itself). The runner calls every hook of
    every active regularizer; the defaults do nothing, so a regularizer is exactly the hooks it
    overrides. In a stack each member has its own instance, called on its own network
    (:mod:`techbench.engine.population`); the one optional stacked hook is
    :meth:`stacked_transform_gradients`.
    """

    def transform_batch(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training batches only (augmentation, input noise). Validation data is never touched."""
        return x, y

    def make_module(self) -> nn.Module | None:
        """A module the model inserts after each hidden activation (dropout), or None.

        A fresh module per call. Its training randomness should come from a generator: make it a
        :class:`SampledModule` (and declare ``properties["stacked_module"]``) and the trial owns
        its stream and may stack; a module drawing from the global RNG still runs, one by one.
        """
        return None

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        """A term added to the training loss (L1, L2), or None."""
        return None

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
        """Replace the task's training loss (label smoothing), or None to keep it."""
        return None

    def transform_gradients(
        self, model: nn.Module, step: int, generator: torch.Generator | None = None
    ) -> None:
        """Between backward and the optimizer step: rewrite the ``p.grad`` of ``model``'s
        parameters in place (gradient clipping, gradient noise). Default: nothing.

        ``step`` counts the trial's optimizer steps from 0 (annealed schedules read it);
        ``generator`` is the trial's random stream on the training device, the only randomness a
        transform may use (so a trial reproduces). Parameters whose ``grad`` is None have none
        to change. The optimizer, and the gradient-health metrics, see the transformed
        gradients; health also records the global norm before the transform. A hook that must
        see the pre-step weights (decoupled weight decay) may read them here; it must not
        change them.
        """

    @staticmethod
    def stacked_transform_gradients(
        regularizers: Sequence[Any],
        grads: Sequence[torch.Tensor],
        step: int,
        generators: Sequence[torch.Generator] = (),
    ) -> None:
        """Optional: ``transform_gradients`` for a run of members of a stack at once.

        Why: a per-member loop costs K calls of K small kernels; clipping, say, can act on all
        members' rows in one call. The stacked engine (:mod:`techbench.engine.stacked_hooks`) calls it
        once for consecutive live members of one class sharing an optimizer: ``regularizers``
        are their own instances (their own hyper-parameters), ``grads`` the stacked gradient
        rows ``[K, ...]`` of every parameter that has one (views: rewrite them in place), and
        ``generators`` their noise streams; member k must get exactly what
        ``regularizers[k].transform_gradients`` gives it alone (no reduction across members).

        Default: no stacked implementation. The engine then calls each member's own
        ``transform_gradients`` on its own network, whose parameters and gradients are views of
        its rows; this default is never called and raises. A subclass that overrides
        ``transform_gradients`` inherits its parent's stacked implementation: override this
        too, or restore the default with ``stacked_transform_gradients =
        Regularizer.stacked_transform_gradients`` (the check ``stacked_gradients`` fails a
        stacked implementation that disagrees with ``transform_gradients``).
        """
        raise NotImplementedError(
            "Regularizer.stacked_transform_gradients is the 'no stacked implementation' default; "
            "the engine calls each member's transform_gradients instead"
        )

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Called after each optimizer step (max-norm projection, decoupled weight decay).

        In a stack, ``model`` is the member's own network (views of its rows) and ``optimizer``
        a view whose ``param_groups`` hold the member's parameters and its current values
        (``lr`` included), as its one-by-one run's optimizer would
        (:class:`techbench.engine.stacked_hooks.MemberOptimizer`)."""

    def callbacks(self) -> Sequence[Any]:
        """Lightning callbacks the trainer adds (early stopping on the validation metric)."""
        return ()


@dataclass(frozen=True)
class ParamScale:
    """What a parametrization does to one parameter: ``init`` multiplies its initial values
    (after the trial's initializer has filled them), ``lr`` its learning rate (every optimizer
    step of that tensor is ``lr`` times the plain step)."""

    init: float = 1.0
    lr: float = 1.0


class ParametrizationProperties(TypedDict, total=False):
    """``width_stable``: every layer's activation coordinates keep their size across widths
    after a few steps at one learning rate (the defining property of muP, Yang et al. 2021,
    Tensor Programs V, fig. 1 and 5); the conformance check ``coordinates`` verifies it."""

    width_stable: bool


class Parametrization:
    """Base of what a parametrization's fast factory returns; the defaults are the standard
    parametrization (every multiplier 1, no base model).

    Why a family: width-aware rules (muP) change a network's initial scales and each tensor's
    learning rate by the tensor's role and its shape relative to a *base* model, so that
    hyper-parameters tuned at the base width stay good at every width. The engine asks the
    hooks below once per trial (:func:`techbench.techniques.parametrize.parametrize`): it builds
    the base model on the meta device from :meth:`base_model_params`, then multiplies each
    parameter by :meth:`scale`'s ``init`` and tags it with its ``lr`` multiplier, which every
    optimizer step honours (:func:`techbench.techniques.parametrize.scale_updates`).
    """

    def base_model_params(self, model_params: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """The model hyper-parameters of the base model (``model_params`` are the trial's, all
        of them, defaults included), or None: no base, every parameter keeps scale 1 and the
        network and optimizer are left exactly as built."""
        return None

    def scale(
        self,
        role: str,
        shape: tuple[int, ...],
        base_shape: tuple[int, ...],
        update_rule: str | None,
    ) -> ParamScale:
        """The multipliers of one parameter of ``role`` (:data:`techbench.techniques.roles.ROLES`)
        with ``shape``, whose counterpart in the base model has ``base_shape``; ``update_rule``
        is the optimizer's declared one (:class:`OptimizerProperties`; None when it declares
        none). Raise ``ValueError`` for what the rule cannot handle."""
        return ParamScale()

    def check_roles(self, roles: Mapping[str, str]) -> None:
        """Raise ``ValueError`` when a model with these roles (name -> role) cannot be
        parametrized (muP needs a readout). Default: any model."""


class Preprocessor(Protocol):
    def fit(self, x: torch.Tensor) -> Preprocessor: ...

    def transform(self, x: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class DatasetSplits:
    """Train / validation / test tensors, fixed by the data seed.

    ``task`` is "classification" (``y`` int64 class indices, ``num_classes`` > 1), "regression"
    (``y`` float, ``num_classes`` == 0, ``num_outputs`` targets) or "language_model" (``x`` int64
    token windows (N, T), ``y`` int64 next tokens (N, T), ``num_classes`` = vocabulary size).

    ``fingerprint``: a content hash of the data the splits were made from (None: fixed by the
    parameters and seed alone); the trial stores it in its meta so results computed from
    different data under the same name (another Python's standard library) are never mixed
    silently. ``info``: JSON-able facts about the data (vocabulary, corpus size, a synthetic
    source's optimal loss) stored beside it.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    task: Literal["classification", "regression", "language_model"]
    num_classes: int
    fingerprint: str | None = None
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_outputs(self) -> int:
        if self.task in ("classification", "language_model"):
            return self.num_classes
        return 1 if self.y_train.dim() == 1 else int(self.y_train.shape[1])


@dataclass(frozen=True)
class ModelParts:
    """What a model is built from: the trial's techniques as ready factories.

    ``norm_placement`` "before" puts the normalizer between the affine map and the nonlinearity
    (as the lecture notes do, after Ioffe and Szegedy 2015); "after" puts it after the nonlinearity.
    """

    activation: Callable[[], nn.Module]
    weight_init: Callable[[torch.Tensor], Any]
    bias_init: Callable[[torch.Tensor], Any]
    normalizer: Callable[[int], nn.Module] | None = None
    norm_placement: Literal["before", "after"] = "before"
    dropout: Callable[[], nn.Module | None] | None = None


def trial_parts(
    config: Mapping[str, Any],
    specs: Mapping[str, Any],
    regularizer: Regularizer,
    weight_init: Callable[[torch.Tensor], Any],
    bias_init: Callable[[torch.Tensor], Any],
) -> ModelParts:
    """The parts a trial's network is built from: ``config``'s activation and normalizer
    (``specs[key]`` with the config's hyper-parameters), its norm placement, and the
    ``regularizer``'s own module where it declares one (dropout). One definition, because the
    engine (:func:`techbench.engine.trial.build_model`) and the ladder's parameter count
    (:mod:`techbench.plan.scale`) must build the same network."""
    act_spec, act_hp = specs["activation"], config["activation"]["params"]
    norm_spec, norm_hp = specs["normalizer"], config["normalizer"]["params"]
    own_module = type(regularizer).make_module is not Regularizer.make_module
    return ModelParts(
        activation=lambda: act_spec.create(**act_hp),
        weight_init=weight_init,
        bias_init=bias_init,
        normalizer=lambda n: norm_spec.create(n, **norm_hp),
        norm_placement=config["norm_placement"],
        dropout=regularizer.make_module if own_module else None,
    )
