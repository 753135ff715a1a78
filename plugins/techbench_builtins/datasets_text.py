"""Built-in character-level language-model datasets (specs; loaders in ``datasets_text_impl``).

Task "language_model": ``x`` int64 windows (N, T) of token ids, ``y`` the next token at every
position (N, T), ``num_classes`` the vocabulary size. Windows are cut from one token stream and
split in contiguous blocks (declared ``split = "blocks"``: val and test are
``round(n * val_fraction)`` and ``round(n * test_fraction)`` of the n windows, train first);
inputs are token ids, so use ``preprocessor = "none"``. Every split carries a fingerprint (the
SHA-256 of its text or token stream) that the trial stores in its meta.
"""

from __future__ import annotations

from techbench.techniques.spec import Param, TechniqueSpec

_IMPL = "techbench_builtins.datasets_text_impl"


def _context(default: int) -> Param:
    return Param(
        name="context", type=int, default=default, low=1, high=1_000_000, doc="tokens per window"
    )


def _fractions(val: float, test: float) -> tuple[Param, ...]:
    return tuple(
        Param(
            name=f"{which}_fraction",
            type=float,
            default=default,
            low=0.0,
            high=0.5,
            low_open=True,
            doc=f"share of the windows held out for {label} (a contiguous block)",
        )
        for which, default, label in (("val", val, "validation"), ("test", test, "test"))
    )


def _props(source: str, num_classes: int | None) -> dict[str, object]:
    props: dict[str, object] = {"task": "language_model", "source": source, "split": "blocks"}
    if num_classes is not None:
        props["num_classes"] = num_classes
    return props


pysource = TechniqueSpec(
    name="pysource",
    family="dataset",
    summary="Characters of the Python standard library's own source: offline, deterministic text.",
    citation=(
        "The Python standard library source (PSF licence), selected by a fixed rule: "
        "public top-level *.py files in sorted order; SHA-256 stored per trial"
    ),
    fast=f"{_IMPL}:pysource",
    params=(
        Param(
            name="max_chars",
            type=int,
            default=1_000_000,
            low=1000,
            high=100_000_000,
            doc="corpus length in characters (the concatenated files are cut here)",
        ),
        _context(128),
        *_fractions(0.05, 0.05),
    ),
    properties=_props("bundled", 98),
    tags=("text", "sequence", "offline"),
)

markov = TechniqueSpec(
    name="markov",
    family="dataset",
    summary="Tokens of a random order-k Markov source with exactly known entropy rate (optimal loss).",
    citation=(
        "Shannon 1948, A mathematical theory of communication; entropy rate of a Markov chain: "
        "Cover and Thomas 2006, Elements of Information Theory, Theorem 4.2.4"
    ),
    fast=f"{_IMPL}:markov",
    params=(
        Param(name="vocab", type=int, default=8, low=2, high=4096, doc="alphabet size"),
        Param(name="order", type=int, default=2, low=0, high=12, doc="symbols of context"),
        Param(
            name="concentration",
            type=float,
            default=0.5,
            low=0.01,
            high=1000.0,
            doc="Dirichlet concentration of each next-symbol distribution (small: predictable)",
        ),
        Param(name="n_tokens", type=int, default=200_000, low=100, high=100_000_000, doc="tokens"),
        _context(32),
        *_fractions(0.1, 0.1),
    ),
    properties=_props("synthetic", None),
    tags=("synthetic", "sequence"),
)

tiny_shakespeare = TechniqueSpec(
    name="tiny_shakespeare",
    family="dataset",
    summary="Tiny Shakespeare (1.1M characters, 65 symbols) from the data cache, character level.",
    citation="Karpathy 2015, The unreasonable effectiveness of recurrent neural networks (char-rnn)",
    fast=f"{_IMPL}:tiny_shakespeare",
    params=(
        Param(
            name="root",
            type=str,
            default="",
            doc="input.txt or its folder; empty: $TECHBENCH_TINY_SHAKESPEARE, else the cache",
        ),
        _context(128),
        *_fractions(0.05, 0.05),
    ),
    properties={
        **_props("files", None),
        "file_format": "text",
        "env_var": "TECHBENCH_TINY_SHAKESPEARE",
    },
    tags=("text", "sequence", "files"),
)
