"""Conformance checks for model plugins.

Protocol: ``spec.create(input_shape, num_outputs, parts, **hp)`` returns an ``nn.Module`` mapping
a batch ``(N, *input_shape)`` to ``(N, num_outputs)`` and exposing

- ``weight_layers``: list of its weight-bearing layers (``.weight``, optional ``.bias``) in
  forward order, every one filled by ``parts.weight_init`` / ``parts.bias_init``;
- ``activation_layers``: list of its activation modules in forward order, each made by
  ``parts.activation()``, one per hidden nonlinearity.

The normalizer module (``parts.normalizer(features)``) must run right before each activation
when ``parts.norm_placement == "before"`` and right after it when "after"; the dropout module
(``parts.dropout()``) must follow each activation. No reference is required. Declared
properties read here: ``inputs`` (("vector",) and/or ("image",): the checks use inputs of shape
(20,) and (3, 16, 16); ("tokens",): int64 token windows of shape (12,) with ids below
``num_outputs``, mapped to logits (N, 12, num_outputs)) and optionally ``parameter_count``, a
``"module:function"`` string of a closed form ``f(input_shape, num_outputs, **hp) -> int`` that
must equal the number of parameters without normalizer (the checks build the model with the
spec's default hyper-parameters).

``norm_layout = "transformer"`` declares residual-stream normalizers instead of one per
activation: per block, pre-norm ("before") runs N, attention, N, then the MLP's A and D, and a
final N before the head; post-norm ("after") runs attention, N, the MLP's A and D, then N.

The checks build models from marker parts (subclasses of ``nn.Tanh``, ``nn.GroupNorm`` and
``nn.Dropout`` that can be counted), so they test the model plugin alone.
"""

from __future__ import annotations

from typing import Any

from ..techniques.spec import TechniqueSpec, resolve
from .core import Check, CheckFailure

WEIGHT_FILL = 0.125
BIAS_FILL = -0.25
VECTOR_SHAPE = (20,)
IMAGE_SHAPE = (3, 16, 16)
TOKENS_SHAPE = (12,)
NUM_OUTPUTS = 7


def _markers() -> tuple[type, type, type]:
    from torch import nn

    class MarkAct(nn.Tanh):
        pass

    class MarkNorm(nn.GroupNorm):
        def __init__(self, features: int) -> None:
            super().__init__(1, features)

    class MarkDrop(nn.Dropout):
        pass

    return MarkAct, MarkNorm, MarkDrop


def _fill(value: float) -> Any:
    def init(t: Any) -> Any:
        return t.data.fill_(value)

    return init


def _parts(normalizer: bool = False, placement: str = "before", dropout: bool = False) -> Any:
    from ..techniques.families import ModelParts

    act, norm, drop = _markers()
    parts = ModelParts(
        activation=act,
        weight_init=_fill(WEIGHT_FILL),
        bias_init=_fill(BIAS_FILL),
        normalizer=norm if normalizer else None,
        norm_placement=placement,  # type: ignore[arg-type]
        dropout=(lambda: drop(0.5)) if dropout else None,
    )
    return parts, (act, norm, drop)


def _shapes(spec: TechniqueSpec) -> list[tuple[int, ...]]:
    inputs = spec.properties.get("inputs", ("vector",))
    shapes = {"vector": VECTOR_SHAPE, "image": IMAGE_SHAPE, "tokens": TOKENS_SHAPE}
    return [shapes.get(kind, IMAGE_SHAPE) for kind in inputs]


def _tokens(spec: TechniqueSpec) -> bool:
    return "tokens" in spec.properties.get("inputs", ())


def _batch(spec: TechniqueSpec, n: int, shape: tuple[int, ...]) -> Any:
    import torch

    if _tokens(spec):
        return torch.randint(0, NUM_OUTPUTS, (n, *shape))
    return torch.randn(n, *shape)


def _build(spec: TechniqueSpec, shape: tuple[int, ...], parts: Any) -> Any:
    model = spec.create(shape, NUM_OUTPUTS, parts)
    for attr in ("weight_layers", "activation_layers"):
        if not isinstance(getattr(model, attr, None), list | tuple):
            raise CheckFailure(f"{spec.qualified_name}: model has no list attribute {attr!r}")
    return model


def check_output_shape(spec: TechniqueSpec) -> None:
    import torch

    torch.manual_seed(0)
    for shape in _shapes(spec):
        parts, _ = _parts()
        model = _build(spec, shape, parts)
        out = model(_batch(spec, 5, shape))
        want = (5, *shape, NUM_OUTPUTS) if _tokens(spec) else (5, NUM_OUTPUTS)
        if tuple(out.shape) != want:
            raise CheckFailure(
                f"{spec.qualified_name}: input (5, {', '.join(map(str, shape))}) gave output "
                f"{tuple(out.shape)}, expected {want}"
            )
        out.sum().backward()
        for name, p in model.named_parameters():
            if p.grad is None or not bool(torch.isfinite(p.grad).all()):
                raise CheckFailure(
                    f"{spec.qualified_name}: parameter {name} got no finite gradient"
                )


def check_initialization(spec: TechniqueSpec) -> None:
    for shape in _shapes(spec):
        parts, _ = _parts()
        model = _build(spec, shape, parts)
        if not model.weight_layers:
            raise CheckFailure(f"{spec.qualified_name}: weight_layers is empty")
        for i, layer in enumerate(model.weight_layers):
            w = layer.weight.detach()
            if not bool((w == WEIGHT_FILL).all()):
                raise CheckFailure(
                    f"{spec.qualified_name}: weight_layers[{i}].weight was not filled by "
                    f"parts.weight_init (expected all {WEIGHT_FILL}, got values in "
                    f"[{float(w.min()):.4g}, {float(w.max()):.4g}])"
                )
            bias = getattr(layer, "bias", None)
            if bias is not None and not bool((bias.detach() == BIAS_FILL).all()):
                raise CheckFailure(
                    f"{spec.qualified_name}: weight_layers[{i}].bias was not filled by parts.bias_init"
                )
        own = {id(layer.weight) for layer in model.weight_layers}
        modules = list(model.modules())
        for m in modules:
            weight = getattr(m, "weight", None)
            if weight is not None and weight.dim() >= 2 and id(weight) not in own:
                raise CheckFailure(
                    f"{spec.qualified_name}: {type(m).__name__} has a weight matrix but is "
                    "missing from weight_layers"
                )


def check_parts_used(spec: TechniqueSpec) -> None:
    import torch

    for shape in _shapes(spec):
        for placement in ("before", "after"):
            parts, (act, norm, drop) = _parts(True, placement, True)
            model = _build(spec, shape, parts)
            modules = list(model.modules())
            n_act = sum(isinstance(m, act) for m in modules)
            n_norm = sum(isinstance(m, norm) for m in modules)
            n_drop = sum(isinstance(m, drop) for m in modules)
            declared = model.activation_layers
            if (
                n_act == 0
                or n_act != len(declared)
                or not all(isinstance(a, act) for a in declared)
            ):
                raise CheckFailure(
                    f"{spec.qualified_name}: {n_act} modules from parts.activation but "
                    f"activation_layers lists {len(declared)}"
                )
            transformer = spec.properties.get("norm_layout") == "transformer"
            if n_drop != n_act or (n_norm != n_act and not transformer):
                raise CheckFailure(
                    f"{spec.qualified_name}: expected one normalizer and one dropout per activation "
                    f"({n_act}), found {n_norm} normalizers and {n_drop} dropouts"
                )
            order: list[str] = []
            handles = [
                m.register_forward_hook(lambda mod, i, o, k=k, seen=order: seen.append(k))
                for m in modules
                for k, cls in (("A", act), ("N", norm), ("D", drop))
                if isinstance(m, cls)
            ]
            model.eval()
            with torch.no_grad():
                model(_batch(spec, 3, shape))
            for h in handles:
                h.remove()
            text = "".join(order)
            if transformer:
                want = "NNAD" * n_act + "N" if placement == "before" else "NADN" * n_act
            else:
                want = ("NAD" if placement == "before" else "AND") * n_act
            if text != want:
                raise CheckFailure(
                    f"{spec.qualified_name}: with norm_placement={placement!r} the forward pass "
                    f"ran {text!r} (N normalizer, A activation, D dropout), expected {want!r}"
                )


def check_parameter_count(spec: TechniqueSpec) -> None:
    formula = spec.properties.get("parameter_count")
    for shape in _shapes(spec):
        parts, _ = _parts()
        model = _build(spec, shape, parts)
        count = sum(p.numel() for p in model.parameters())
        in_layers = sum(p.numel() for layer in model.weight_layers for p in layer.parameters())
        if count != in_layers:
            raise CheckFailure(
                f"{spec.qualified_name}: {count} parameters, but weight_layers hold {in_layers}; "
                "parameters outside the declared layers"
            )
        if formula is not None:
            expected = resolve(formula)(shape, NUM_OUTPUTS, **spec.defaults())
            if count != expected:
                raise CheckFailure(
                    f"{spec.qualified_name}: {count} parameters for input {shape}, "
                    f"the closed form {formula} gives {expected}"
                )


def check_parameter_roles(spec: TechniqueSpec) -> None:
    """Every parameter has a role (:mod:`techbench.techniques.roles`), with a normalizer too, and
    the roles a width-aware rule needs exist: one readout, and an input unless the net is one
    layer."""
    from ..techniques.roles import RoleError, parameter_roles

    for shape in _shapes(spec):
        parts, _ = _parts(normalizer=True)
        model = _build(spec, shape, parts)
        try:
            roles = parameter_roles(model)
        except RoleError as exc:
            raise CheckFailure(f"{spec.qualified_name}: {exc}") from None
        found = sorted(set(roles.values()))
        if list(roles.values()).count("readout") != 1:
            raise CheckFailure(
                f"{spec.qualified_name}: {list(roles.values()).count('readout')} readout "
                f"parameters for input {shape}, expected exactly one (roles found: {found})"
            )
        if len(getattr(model, "weight_layers", [])) > 1 and "input" not in found:
            raise CheckFailure(f"{spec.qualified_name}: no input parameter (roles: {found})")


def check_scale_params(spec: TechniqueSpec) -> None:
    """``properties["scale_params"]`` (what a scale ladder multiplies, :mod:`techbench.plan.scale`):
    each kind ("width", "depth") names an int hyper-parameter, and doubling it from its default
    makes the network larger. A model that declares none passes (it can't be put on a ladder)."""
    declared = spec.properties.get("scale_params")
    if declared is None:
        return
    if not isinstance(declared, dict) or set(declared) - {"width", "depth"}:
        raise CheckFailure(
            f"{spec.qualified_name}: scale_params must map 'width' and/or 'depth' to parameter "
            f"names, got {declared!r}"
        )
    ints = [p.name for p in spec.params if p.type is int]
    shape = _shapes(spec)[0]
    before = sum(q.numel() for q in _build(spec, shape, _parts()[0]).parameters())
    for kind, name in declared.items():
        if name not in ints:
            raise CheckFailure(
                f"{spec.qualified_name}: scale_params {kind}={name!r} is not an int parameter "
                f"(int parameters: {', '.join(ints) or 'none'})"
            )
        doubled = 2 * spec.param(name).default
        model = spec.create(shape, NUM_OUTPUTS, _parts()[0], **{name: doubled})
        after = sum(q.numel() for q in model.parameters())
        if after <= before:
            raise CheckFailure(
                f"{spec.qualified_name}: scale_params {kind}={name!r}: {name}={doubled} gives "
                f"{after} parameters, no more than {before} at the default"
            )


def checks(spec: TechniqueSpec) -> list[Check]:
    return [
        Check("output_shape", check_output_shape),
        Check("initialization_applied", check_initialization),
        Check("parts_used_in_order", check_parts_used),
        Check("parameter_count", check_parameter_count),
        Check("parameter_roles", check_parameter_roles),
        Check("scale_params", check_scale_params),
    ]
