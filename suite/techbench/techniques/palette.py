"""One colour per technique, the same in every figure of the report and the probe.

:func:`technique_color` is a pure function of the name: a registered technique takes the colour
at its position among its family's registered names (sorted), so the techniques of one family
(the ones a figure compares) never share a colour while a family has at most
``len(PALETTE)`` members; any other label (a setting, a probe combination, a third-party name
absent here) is hashed into the palette, so settings of one technique differ from each other.
Colours: Tableau 10 then ten darker, distinct hues (all readable
as lines on white).
"""

from __future__ import annotations

import functools
import hashlib

PALETTE: tuple[str, ...] = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    "#000075", "#800000", "#469990", "#9a6324", "#808000",
    "#f032e6", "#3cb44b", "#4363d8", "#e6194b", "#5b2c6f",
)  # fmt: skip


@functools.lru_cache(maxsize=1)
def _positions() -> dict[str, int]:
    from .registry import default_registry

    out: dict[str, int] = {}
    try:
        entries = default_registry().entries(load=False)
    except Exception:
        return out
    by_family: dict[str, list[str]] = {}
    for e in entries:
        by_family.setdefault(e.family, []).append(e.name)
    for names in by_family.values():
        for i, name in enumerate(sorted(set(names))):  # a clash lists a name twice
            out.setdefault(name, i)
    return out


def technique_color(label: str) -> str:
    """The hex colour of a technique (or setting / label); see the module docstring."""
    pos = _positions().get(str(label))
    if pos is None:
        digest = hashlib.sha256(str(label).encode()).digest()
        pos = int.from_bytes(digest[:4], "big")
    return PALETTE[pos % len(PALETTE)]


def colors(labels: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``{label: colour}`` for a figure's labels."""
    return {label: technique_color(label) for label in labels}
