"""Conformance check of a regularizer's gradient transform as the stacked engine runs it.

Why: in a stack (:mod:`techbench.engine.population`) a member's gradients are rows of stacked
``[K, ...]`` tensors, and :class:`techbench.engine.stacked_hooks.StackedHooks` either calls each
member's own ``transform_gradients`` on views of its rows or, when the class defines
``stacked_transform_gradients``, one call for all members. Either way member k must get exactly
what its own ``transform_gradients`` gives it alone (a reduction over all members, such as one
gradient norm for the whole stack, would couple them: issue 13, "one optimizer over all members
must not couple them").

Check ``stacked_gradients``: K = 4 members of the gradient probe of
:mod:`techbench.testing.regularizer` (gradients at overall scales 1e-3, 1, 1e3 and 1, so that
thresholds are crossed both ways), each with its own hyper-parameters (the defaults, then each
float hyper-parameter halved and doubled) and its own seeded generator, at steps 0 and 7, in
float64 (rtol 1e-10) and float32 (float32 tolerances): first all four live (one run: the
stacked implementation when there is one), then member 0 alone live (the others frozen: their
gradients must stay bitwise unchanged).
"""

from __future__ import annotations

from typing import Any

from ..techniques.spec import TechniqueSpec
from .core import CheckFailure
from .regularizer_probes import gradient_probe, hp_label, make_regularizer
from .tolerances import assert_close

STACK_MEMBERS = 4
SCALES = (1e-3, 1.0, 1e3, 1.0)


def _member_hps(spec: TechniqueSpec) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{}]
    for p in spec.params:
        if p.type is float and p.default not in (None, 0.0):
            for factor in (0.5, 2.0):
                try:
                    out.append({p.name: p.validate(spec.qualified_name, p.default * factor)})
                except ValueError:
                    continue
    return [out[k % len(out)] for k in range(STACK_MEMBERS)]


def _stacked(
    spec: TechniqueSpec, hps: list[dict[str, Any]], dtype: Any, step: int, live: list[int]
) -> dict[str, Any]:
    """The probes of K members stacked, transformed as the engine does; name -> stacked leaf."""
    import torch

    from ..engine.stacked_hooks import StackedHooks

    models = [gradient_probe(s, dtype) for s in SCALES]
    leaves = {
        n: torch.nn.Parameter(torch.stack([m.get_parameter(n).detach() for m in models]))
        for n, _ in models[0].named_parameters()
    }
    for n, leaf in leaves.items():
        grads = [m.get_parameter(n).grad for m in models]
        leaf.grad = None if grads[0] is None else torch.stack(grads)
    hooks = StackedHooks([make_regularizer(spec, hp) for hp in hps], models)
    optimizer = torch.optim.SGD(list(leaves.values()), lr=0.1)
    group_of = [0] * STACK_MEMBERS
    hooks.bind(lambda n, k: (leaves[n], k), [optimizer], group_of)
    hooks.bind_grads(hooks.needs_grads(live, group_of))

    def rows(lo: int, hi: int) -> list[Any]:
        return [leaf.grad[lo:hi] for leaf in leaves.values() if leaf.grad is not None]

    gens = [torch.Generator().manual_seed(100 + k) for k in range(STACK_MEMBERS)]
    hooks.transform_gradients(live, group_of, step, gens, rows)
    return leaves


def check_stacked_gradients(spec: TechniqueSpec) -> None:
    import torch

    hps = _member_hps(spec)
    for dtype in (torch.float64, torch.float32):
        for step in (0, 7):
            for live in (list(range(STACK_MEMBERS)), [0]):
                leaves = _stacked(spec, hps, dtype, step, live)
                tag = str(dtype).replace("torch.", "")
                for k in range(STACK_MEMBERS):
                    alone = gradient_probe(SCALES[k], dtype)
                    if k in live:
                        gen = torch.Generator().manual_seed(100 + k)
                        make_regularizer(spec, hps[k]).transform_gradients(alone, step, gen)
                    label = (
                        f"{spec.qualified_name}: member {k} ({hp_label(hps[k])}) of "
                        f"{STACK_MEMBERS} stacked, live {live}, {tag}, step {step}"
                    )
                    for n, p in alone.named_parameters():
                        got = leaves[n].grad
                        if (got is None) != (p.grad is None):
                            raise CheckFailure(f"{label}: gradient of {n} set/None differs")
                        if got is None or p.grad is None:
                            continue
                        extra: dict[str, Any] = (
                            {"rtol": 1e-10, "atol": 1e-12 * SCALES[k]}
                            if dtype == torch.float64
                            else {"dtype": dtype}
                        )
                        assert_close(
                            got[k],
                            p.grad,
                            what=f"{label}, gradient of {n}: stacked vs alone",
                            **extra,
                        )
