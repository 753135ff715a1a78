"""The initialisation probe: the lecture notes' 10-layer experiment (seeds 003, 004, 000).

A plain MLP of ``depth`` layers, each ``width`` units, is fed one batch of unit-Gaussian input
``x ~ N(0, I_width)``; for every activation x initializer x normalizer combination it records,
per layer, the statistics of the activations after one forward pass and the norm of the weight
gradient after one backward pass. No training, no optimizer.

Network (the notes' layout; biases omitted as in the notes' experiment)::

    h_0 = x,   s_l = W_l h_{l-1},   h_l = act(norm(s_l))     l = 1..depth

``norm`` is the normalizer (``none``: identity) placed between the affine map and the
nonlinearity, as the notes do after Ioffe and Szegedy (2015); modules are in training mode, so
batch norm uses the batch statistics. Each ``W_l`` (``width x width``) is filled by the
initializer; data-dependent ones (LSUV) are then fitted on ``x``.

Loss (stated so the gradient norms can be reproduced): a random linear readout per sample,
``L = (1/N) sum_n <h_depth[n], r_n>`` with ``r_n ~ N(0, I_width)`` drawn independently for each
of the ``N`` samples. The upstream gradient ``r_n / N`` is thus noise independent of the data
(as from random targets), so the gradient norms reflect the backward pass alone: with He + ReLU
they stay of the same order over depth, with N(0, 0.01^2) they vanish toward the input.
``grad_norm`` of layer ``l`` is the Frobenius norm of ``dL/dW_l``. Per-layer activation statistics come from
:func:`techbench.engine.layerstats.activation_stats` with the thresholds the activation declares.

The same ``seed`` gives every combination the same input, readout and weight random stream, so
combinations differ only by their techniques.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..techniques.spec import ParamError, TechniqueSpec, parse_technique_arg

DEFAULT_ACTIVATIONS = ("tanh", "relu")
DEFAULT_INITIALIZERS = ("small_normal", "large_normal", "xavier_normal", "he_normal")
DEFAULT_NORMALIZERS = ("none",)
LOSS = "L = (1/N) sum_n <h_last[n], r_n>, r_n ~ N(0, I) independent per sample"
RECORD_KEYS = (
    "activation",
    "initializer",
    "normalizer",
    "layer",
    "act_mean",
    "act_std",
    "saturated_fraction",
    "dead_fraction",
    "grad_norm",
)


def split_technique_list(text: str) -> list[str]:
    """Split ``"tanh,normal(std=0.01, mean=0.0),relu"`` on the commas outside parentheses."""
    items: list[str] = []
    depth, quote, start = 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ParamError(f"unbalanced ')' in {text!r}")
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth or quote:
        raise ParamError(f"unbalanced parentheses or quotes in {text!r}")
    items.append(text[start:])
    out = [item.strip() for item in items]
    if any(not item for item in out):
        raise ParamError(f"empty technique in the list {text!r}")
    return out


@dataclass(frozen=True)
class Technique:
    """A technique argument: the text as given, its spec and validated hyper-parameters."""

    text: str
    spec: TechniqueSpec
    params: dict[str, Any]

    def create(self, *args: Any) -> Any:
        return self.spec.create(*args, **self.params)


def resolve_technique(text: str, family: str) -> Technique:
    """Parse ``name(key=value, ...)`` and look the name up in ``family`` (any registered plugin)."""
    from ..techniques.registry import get_spec

    name, params = parse_technique_arg(text)
    spec = get_spec(name, family)
    return Technique(text.strip(), spec, spec.hyperparams(params))


@dataclass
class Combination:
    """One activation x initializer x normalizer run of the probe."""

    activation: str
    initializer: str
    normalizer: str
    records: list[dict[str, Any]]
    act_hist: list[tuple[Any, Any]] = field(default_factory=list)
    grad_hist: list[tuple[Any, Any]] = field(default_factory=list)
    tensors: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.activation} | {self.initializer} | {self.normalizer}"


@dataclass
class ProbeResult:
    """Every combination's per-layer records, with the configuration and the wall time."""

    combinations: list[Combination]
    depth: int
    width: int
    batch: int
    seed: int
    seconds: float

    @property
    def records(self) -> list[dict[str, Any]]:
        return [r for c in self.combinations for r in c.records]


def _histogram(values: Any, bins: int) -> tuple[Any, Any]:
    import numpy as np

    v = values.detach().float().reshape(-1)
    v = v[v.isfinite()]
    if v.numel() == 0:
        return np.zeros(bins), np.linspace(-1.0, 1.0, bins + 1)
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        pad = max(abs(lo) * 1e-3, 1e-12)
        lo, hi = lo - pad, hi + pad
    import torch

    counts = torch.histc(v, bins=bins, min=lo, max=hi)
    return counts.numpy(), np.linspace(lo, hi, bins + 1)


def run_combination(
    activation: Technique,
    initializer: Technique,
    normalizer: Technique,
    *,
    depth: int = 10,
    width: int = 500,
    batch: int = 1000,
    seed: int = 0,
    histograms: bool = False,
    bins: int = 50,
    keep_tensors: bool = False,
) -> Combination:
    """Forward and backward one batch through the probe network (see the module docstring)."""
    import torch
    from torch import nn

    from ..engine.layerstats import activation_stat_matrix

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, width, generator=gen)
    readout = torch.randn(batch, width, generator=gen)
    torch.manual_seed(seed)
    linears = [nn.Linear(width, width, bias=False) for _ in range(depth)]
    init = initializer.create()
    with torch.no_grad():
        for lin in linears:
            init(lin.weight)
    norms = [normalizer.create(width) for _ in range(depth)]
    acts = [activation.create() for _ in range(depth)]
    model = nn.Sequential(*[m for trio in zip(linears, norms, acts, strict=True) for m in trio])
    model.train()
    if initializer.spec.properties_for(initializer.params).get("data_dependent"):
        init.fit(model, x, layers=linears)
        model.train()
    if keep_tensors:
        weights = [lin.weight.detach().clone() for lin in linears]

    properties = activation.spec.properties_for(activation.params)
    h = x
    outputs, act_hist = [], []
    for lin, norm, act in zip(linears, norms, acts, strict=True):
        h = act(norm(lin(h)))
        outputs.append(h)
        if histograms:
            act_hist.append(_histogram(h, bins))
    loss = (h * readout).sum() / batch
    loss.backward()
    grads = [
        lin.weight.grad if lin.weight.grad is not None else torch.zeros_like(lin.weight)
        for lin in linears
    ]
    grad_norms = torch.stack([g.detach().float().norm() for g in grads])
    matrix, order = activation_stat_matrix(outputs, properties)
    stats = matrix[torch.argsort(torch.tensor(order))].to(grad_norms.dtype)
    table = torch.cat([stats, grad_norms[:, None]], dim=1).tolist()

    records = []
    for layer, (mean, std, dead, saturated, gnorm) in enumerate(table, start=1):
        records.append(
            {
                "activation": activation.text,
                "initializer": initializer.text,
                "normalizer": normalizer.text,
                "layer": layer,
                "act_mean": mean,
                "act_std": std,
                "saturated_fraction": None if math.isnan(saturated) else saturated,
                "dead_fraction": None if math.isnan(dead) else dead,
                "grad_norm": gnorm,
                "depth": depth,
                "width": width,
                "batch": batch,
                "seed": seed,
            }
        )
    combo = Combination(activation.text, initializer.text, normalizer.text, records, act_hist)
    if histograms:
        combo.grad_hist = [_histogram(g, bins) for g in grads]
    if keep_tensors:
        combo.tensors = {"x": x, "readout": readout, "weights": weights, "loss": loss.item()}
    return combo


def run_probe(
    activations: Sequence[str] = DEFAULT_ACTIVATIONS,
    initializers: Sequence[str] = DEFAULT_INITIALIZERS,
    normalizers: Sequence[str] = DEFAULT_NORMALIZERS,
    *,
    depth: int = 10,
    width: int = 500,
    batch: int = 1000,
    seed: int = 0,
    histograms: bool = False,
    bins: int = 50,
    keep_tensors: bool = False,
    threads: int | None = None,
) -> ProbeResult:
    """Every activation x initializer x normalizer combination, in that nesting order.

    Technique arguments are ``name`` or ``name(key=value, ...)`` of any registered plugin.
    ``threads`` sets torch's intra-op threads for the run (default: torch's own choice; on busy
    cores one thread can be 2-3x faster). The thread count never depends on the machine's load,
    so the same arguments give the same numbers.
    """
    import torch

    for name, value, low in (("depth", depth, 1), ("width", width, 1), ("batch", batch, 2)):
        if int(value) < low:
            raise ParamError(f"probe: {name} must be >= {low}, got {value}")
    acts = [resolve_technique(t, "activation") for t in activations]
    inits = [resolve_technique(t, "initializer") for t in initializers]
    norms = [resolve_technique(t, "normalizer") for t in normalizers]
    if not (acts and inits and norms):
        raise ParamError("probe: give at least one activation, initializer and normalizer")
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(max(1, int(threads)))
    start = time.perf_counter()
    try:
        combos = [
            run_combination(
                a,
                i,
                n,
                depth=depth,
                width=width,
                batch=batch,
                seed=seed,
                histograms=histograms,
                bins=bins,
                keep_tensors=keep_tensors,
            )
            for a in acts
            for i in inits
            for n in norms
        ]
    finally:
        torch.set_num_threads(before)
    return ProbeResult(combos, depth, width, batch, seed, time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------
# Output


def _fmt(value: Any, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.3f}"


def format_table(result: ProbeResult) -> str:
    """A compact table per combination (layer, activation mean/std, fractions, gradient norm)."""
    lines = []
    head = (
        f"{'layer':>5}  {'act_mean':>10}  {'act_std':>10}  {'saturated':>9}  {'dead':>6}  "
        f"{'grad_norm':>10}"
    )
    for combo in result.combinations:
        lines.append(
            f"{combo.activation} x {combo.initializer} x {combo.normalizer}  "
            f"({result.depth} layers x {result.width} units, batch {result.batch})"
        )
        lines.append(head)
        for r in combo.records:
            lines.append(
                f"{r['layer']:>5}  {r['act_mean']:>10.3g}  {r['act_std']:>10.3g}  "
                f"{_fmt(r['saturated_fraction'], 9)}  {_fmt(r['dead_fraction'], 6)}  "
                f"{r['grad_norm']:>10.3g}"
            )
        lines.append("")
    lines.append(f"loss for the gradients: {LOSS}")
    return "\n".join(lines)


def _histogram_figure(combo: Combination, per_row: int = 5) -> Any:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from ..techniques.palette import technique_color

    depth = len(combo.act_hist)
    cols = min(depth, per_row)
    blocks = math.ceil(depth / cols)
    fig, axes = plt.subplots(
        2 * blocks, cols, figsize=(2.3 * cols, 1.9 * 2 * blocks), squeeze=False
    )
    for ax in axes.flat:
        ax.set_visible(False)
    for kind, hists in ((0, combo.act_hist), (1, combo.grad_hist)):
        for layer, (counts, edges) in enumerate(hists):
            ax = axes[2 * (layer // cols) + kind, layer % cols]
            ax.set_visible(True)
            ax.stairs(counts, edges, fill=True, color=technique_color(combo.label))
            ax.set_title(f"{'act' if kind == 0 else 'dL/dW'} L{layer + 1}", fontsize=9, pad=2)
            if kind == 1:
                ax.set_yscale("log")
            ax.set_yticks([])
            ax.set_yticks([], minor=True)
            ax.xaxis.set_major_locator(MaxNLocator(3))
            ax.tick_params(labelsize=9)
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
            ax.xaxis.get_offset_text().set_fontsize(9)
    fig.suptitle(combo.label, fontsize=10)
    fig.subplots_adjust(left=0.02, right=0.99, bottom=0.1, top=0.85, wspace=0.25, hspace=0.9)
    return fig


def _curves_figure(frame: Any) -> Any:
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.ticker import MaxNLocator

    from ..techniques.palette import technique_color

    data = frame.copy()
    data["combination"] = (
        data["activation"] + " | " + data["initializer"] + " | " + data["normalizer"]
    )
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.2))
    colors = {c: technique_color(c) for c in data["combination"].unique()}
    for ax, column, title in (
        (axes[0], "act_std", "activation std vs depth"),
        (axes[1], "grad_norm", "||dL/dW|| vs depth"),
    ):
        sub = data[data[column] > 0]
        sns.lineplot(
            data=sub, x="layer", y=column, hue="combination", marker="o", ax=ax, palette=colors
        )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_yscale("log")
        ax.set_title(title)
    axes[0].get_legend().remove()
    sns.move_legend(axes[1], "upper left", bbox_to_anchor=(1.02, 1), fontsize=9, title=None)
    fig.subplots_adjust(left=0.06, right=0.75, bottom=0.12, top=0.9, wspace=0.25)
    return fig


def write_report(result: ProbeResult, out: str | os.PathLike[str]) -> Path:
    """Write ``probe.html`` (via :func:`techbench.report.htmlpage.write_page`) and ``probe.csv``."""
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from . import htmlpage as html

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(result.records)
    frame.to_csv(out / "probe.csv", index=False)
    network = f"{result.depth} layers x {result.width} units, no biases"
    setup = [
        ("network", f"{network}, normalizer before the activation"),
        ("input", f"unit-Gaussian, batch {result.batch}, seed {result.seed}"),
        ("gradients", LOSS),
        ("combinations", f"{len(result.combinations)} in {result.seconds:.2f} s"),
    ]
    data = f'<p class="note">Data: {html.link("probe.csv", "probe.csv")}</p>'
    header = html.meta_list(setup) + data
    curves = html.figure_png(_curves_figure(frame), 110)
    per_combo = [
        html.para("Top row of each block: activations; bottom row: entries of dL/dW (log count).")
    ]
    for combo in result.combinations:
        per_combo.append(html.heading(combo.label))
        if combo.act_hist:
            per_combo.append(
                html.image(html.figure_png(_histogram_figure(combo), 110), combo.label)
            )
        per_combo.append(html.table(_layer_table(combo.records)))
    sections = [
        ("depth", "Across depth", [html.image(curves, "activation std and ||dL/dW|| vs depth")]),
        ("histograms", "Histograms per layer", per_combo),
    ]
    return html.write_page(out / "probe.html", "techbench probe", header, sections)


def _layer_table(records: Iterable[dict[str, Any]]) -> Any:
    """One row per layer; a missing fraction (the activation declares no threshold) is NaN."""
    import pandas as pd

    cols = ["layer", "act_mean", "act_std", "saturated_fraction", "dead_fraction", "grad_norm"]
    frame = pd.DataFrame([{c: r[c] for c in cols} for r in records], columns=cols)
    frame[cols[1:]] = frame[cols[1:]].astype(float)
    return frame
