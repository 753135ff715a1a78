"""Per-dtype tolerances and a comparison that says what differed, by how much, at which input."""

from __future__ import annotations

from typing import Any

from .core import CheckFailure

TOLERANCES: dict[str, tuple[float, float]] = {
    # dtype name: (rtol, atol)
    "float64": (1e-7, 1e-9),
    "float32": (1e-5, 1e-6),
    "bfloat16": (1.6e-2, 1e-3),
    "float16": (1e-3, 1e-4),
}


def tolerance(dtype: Any) -> tuple[float, float]:
    """(rtol, atol) for a torch or numpy dtype or its name."""
    name = str(dtype).replace("torch.", "")
    return TOLERANCES[name]


def assert_close(
    actual: Any,
    expected: Any,
    *,
    what: str,
    inputs: Any = None,
    dtype: Any = None,
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """Raise :class:`CheckFailure` naming ``what``, the worst element, its input and the gap.

    ``actual``/``expected`` are tensors or arrays of the same shape; ``inputs`` (same shape, or
    None) is reported at the worst element so that a failure can be reproduced.
    """
    import torch

    a = torch.as_tensor(actual).detach().to("cpu", torch.float64)
    e = torch.as_tensor(expected).detach().to("cpu", torch.float64)
    if a.shape != e.shape:
        raise CheckFailure(f"{what}: shape {tuple(a.shape)} != reference {tuple(e.shape)}")
    d_rtol, d_atol = tolerance(dtype if dtype is not None else torch.as_tensor(actual).dtype)
    rtol = d_rtol if rtol is None else rtol
    atol = d_atol if atol is None else atol
    finite_match = torch.isfinite(a) == torch.isfinite(e)
    same_nonfinite = (~torch.isfinite(a)) & (a == e) | (torch.isnan(a) & torch.isnan(e))
    gap = (a - e).abs()
    bad = (gap > atol + rtol * e.abs()) & torch.isfinite(e) & torch.isfinite(a)
    bad |= ~finite_match | ((~torch.isfinite(e)) & ~same_nonfinite)
    if not bool(bad.any()):
        return
    gap = torch.where(torch.isfinite(gap), gap, torch.full_like(gap, float("inf")))
    idx = int(torch.argmax(torch.where(bad, gap, torch.zeros_like(gap))).item())
    flat_a, flat_e = a.reshape(-1), e.reshape(-1)
    where = ""
    if inputs is not None:
        x = torch.as_tensor(inputs).detach().reshape(-1)
        if x.numel() == flat_a.numel():
            where = f" at input {x[idx].item():.6g}"
    if a.dim():
        where += f" (index {tuple(int(i) for i in _unravel(idx, tuple(a.shape)))})"
    raise CheckFailure(
        f"{what}: {int(bad.sum())} of {a.numel()} values differ; worst{where}: "
        f"got {flat_a[idx].item():.8g}, reference {flat_e[idx].item():.8g}, "
        f"|diff| = {abs(flat_a[idx].item() - flat_e[idx].item()):.3g} "
        f"(rtol={rtol:g}, atol={atol:g})"
    )


def _unravel(index: int, shape: tuple[int, ...]) -> list[int]:
    out = []
    for size in reversed(shape):
        out.append(index % size)
        index //= size
    return list(reversed(out))
