"""Character-level language-model datasets: ``fast(data_seed, **hp) -> DatasetSplits``.

Every dataset here is one token stream (int64 ids) cut into consecutive non-overlapping windows:
window i is ``x = s[iT : iT + T]`` with targets ``y = s[iT + 1 : iT + T + 1]`` (the next token at
every position). The windows are split into contiguous blocks, train first, then validation,
then test (so no text is shared between splits); ``data_seed`` 0 keeps the stream as it is and
another seed rotates it by a seeded offset first, holding out another region.

- :func:`pysource`: the Python standard library's own source, so it needs no download and is the
  same on every machine with the same Python; the corpus's SHA-256 is the splits' fingerprint
  (stored in every trial's meta) because another Python version gives another corpus.
- :func:`markov`: a random order-k Markov source whose entropy rate is computed exactly
  (:func:`markov_entropy`), so a model's loss can be compared with the optimum.
- :func:`tiny_shakespeare`: Karpathy's tiny-shakespeare ``input.txt`` from the data cache.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import math
import os
import platform
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from techbench.techniques.families import DatasetSplits

from .datasets_impl import DatasetFilesMissing

PYSOURCE_VOCAB = "\t\n" + "".join(chr(c) for c in range(32, 127)) + "\ufffd"
"""The pysource alphabet: tab, newline, printable ASCII, and U+FFFD for every other character."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def windows(
    name: str,
    stream: np.ndarray,
    context: int,
    val_fraction: float,
    test_fraction: float,
    data_seed: int,
    vocab_size: int,
    fingerprint: str | None,
    info: dict[str, Any],
) -> DatasetSplits:
    """Cut a token stream into (x, y) windows of ``context`` tokens and split them in blocks."""
    stream = np.asarray(stream, dtype=np.int64)
    if data_seed:
        offset = int(np.random.default_rng([data_seed, 0x7E47]).integers(len(stream)))
        stream = np.roll(stream, -offset)
    n = (len(stream) - 1) // context
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    n_train = n - n_val - n_test
    if n_train < 1 or n_val < 1 or n_test < 1:
        raise ValueError(
            f"{name}: {len(stream)} tokens make {n} windows of {context}, too few to split "
            f"with val_fraction={val_fraction}, test_fraction={test_fraction}"
        )
    x = stream[: n * context].reshape(n, context)
    y = stream[1 : n * context + 1].reshape(n, context)

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a))

    cuts = (slice(0, n_train), slice(n_train, n_train + n_val), slice(n_train + n_val, n))
    (xtr, ytr), (xv, yv), (xte, yte) = ((t(x[c]), t(y[c])) for c in cuts)
    info = {**info, "tokens": len(stream), "context": context, "windows": n}
    return DatasetSplits(
        name, xtr, ytr, xv, yv, xte, yte, "language_model", vocab_size, fingerprint, info
    )


# ---------------------------------------------------------------- pysource


def stdlib_dir() -> Path:
    """The standard library folder of the running Python (``sysconfig`` 'stdlib')."""
    return Path(sysconfig.get_paths()["stdlib"])


@functools.lru_cache(maxsize=4)
def pysource_corpus(max_chars: int) -> tuple[str, tuple[str, ...]]:
    """The pysource text and the files it came from.

    Rule: the ``*.py`` files directly in the standard library folder whose names do not start
    with "_", in sorted order of their names, decoded as UTF-8 (errors replaced), each followed
    by a newline, concatenated and cut at ``max_chars``; a character outside
    :data:`PYSOURCE_VOCAB` becomes U+FFFD.
    """
    folder = stdlib_dir()
    files = sorted(
        p.name for p in folder.glob("*.py") if not p.name.startswith("_") and p.is_file()
    )
    if not files:
        raise DatasetFilesMissing(f"pysource: no Python source files in {str(folder)!r}")
    parts: list[str] = []
    used: list[str] = []
    size = 0
    for name in files:
        text = (folder / name).read_bytes().decode("utf-8", errors="replace")
        parts.append(text + "\n")
        used.append(name)
        size += len(text) + 1
        if size >= max_chars:
            break
    keep = set(PYSOURCE_VOCAB)
    corpus = "".join(parts)[:max_chars]
    corpus = "".join(c if c in keep else "\ufffd" for c in corpus)
    return corpus, tuple(used)


def pysource(
    data_seed: int, max_chars: int, context: int, val_fraction: float, test_fraction: float
) -> DatasetSplits:
    """Characters of the standard library's source (see :func:`pysource_corpus`)."""
    corpus, files = pysource_corpus(max_chars)
    index = {c: i for i, c in enumerate(PYSOURCE_VOCAB)}
    stream = np.fromiter((index[c] for c in corpus), dtype=np.int64, count=len(corpus))
    info = {
        "source": str(stdlib_dir()),
        "python": platform.python_version(),
        "files": len(files),
        "first_file": files[0],
        "last_file": files[-1],
        "chars": len(corpus),
        "vocab_size": len(PYSOURCE_VOCAB),
    }
    return windows(
        "pysource",
        stream,
        context,
        val_fraction,
        test_fraction,
        data_seed,
        len(PYSOURCE_VOCAB),
        _sha256(corpus.encode("utf-8")),
        info,
    )


# ---------------------------------------------------------------- markov


@dataclass(frozen=True)
class MarkovSource:
    """An order-k Markov source over V symbols.

    ``probs[s]`` is the next-symbol distribution after context s (the k previous symbols as a
    base-V number, the oldest most significant); ``stationary[s]`` the stationary probability
    of context s.
    """

    vocab: int
    order: int
    probs: np.ndarray
    stationary: np.ndarray


def markov_source(vocab: int, order: int, concentration: float, seed: int) -> MarkovSource:
    """Rows ~ Dirichlet(concentration * 1_V), one per context; the exact stationary law.

    The chain on contexts moves s = (a_1..a_k) -> (a_2..a_k, b) with probability P(b | s); its
    stationary distribution solves pi = pi M, sum(pi) = 1 (a linear system; the chain is
    irreducible because every Dirichlet draw is positive).
    """
    rng = np.random.default_rng([seed, 0x3A4C])
    states = vocab**order
    probs = rng.dirichlet(np.full(vocab, concentration), size=states)
    probs = np.maximum(probs, 1e-12)
    probs /= probs.sum(axis=1, keepdims=True)
    nxt = (np.arange(states)[:, None] * vocab) % states + np.arange(vocab)[None, :]
    m = np.zeros((states, states))
    np.add.at(m, (np.repeat(np.arange(states), vocab), nxt.reshape(-1)), probs.reshape(-1))
    a = m.T - np.eye(states)
    a[-1] = 1.0
    b = np.zeros(states)
    b[-1] = 1.0
    pi = np.linalg.solve(a, b)
    pi = np.clip(pi, 0.0, None)
    return MarkovSource(vocab, order, probs, pi / pi.sum())


def _entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    return terms.sum(axis=axis)


def markov_entropy(source: MarkovSource, context: int) -> dict[str, float]:
    """Entropy rate and the best achievable loss on windows of ``context`` tokens, in nats.

    Entropy rate (Cover and Thomas 2006, Theorem 4.2.4): H = sum_s pi(s) H(P(. | s)). A model
    that sees only its window predicts target j from j + 1 tokens; with fewer than k tokens of
    context its best loss is the conditional entropy h(m) = H(X_1..X_{m+1}) - H(X_1..X_m) of the
    stationary process (block entropies from the marginals of pi), so the window optimum is
    (1 / T) sum_{j < T} h(min(j + 1, k)) with h(k) = H.
    """
    v, k = source.vocab, source.order
    rate = float(np.dot(source.stationary, _entropy(source.probs)))
    joint = source.stationary.reshape((v,) * k) if k else np.ones(())
    block = [0.0]  # block[m] = H(X_1..X_m) for m <= k
    for m in range(1, k + 1):
        marginal = joint.sum(axis=tuple(range(m, k))) if m < k else joint
        block.append(float(_entropy(marginal.reshape(-1))))
    h = [block[m + 1] - block[m] for m in range(k)] + [rate]
    window = sum(h[min(j + 1, k)] for j in range(context)) / context
    ln2 = math.log(2.0)
    return {
        "entropy_rate_nats": rate,
        "entropy_rate_bits": rate / ln2,
        "optimal_window_loss_nats": window,
        "optimal_window_loss_bits": window / ln2,
    }


def markov_sample(source: MarkovSource, n_tokens: int, seed: int) -> np.ndarray:
    """A stationary sample path: the first context from pi, then n_tokens - k transitions."""
    rng = np.random.default_rng([seed, 0x5A3F])
    v, k = source.vocab, source.order
    states = v**k
    state = int(rng.choice(states, p=source.stationary)) if k else 0
    first = [(state // v ** (k - 1 - i)) % v for i in range(k)]
    cumulative = np.cumsum(source.probs, axis=1)
    cumulative[:, -1] = 1.0
    rows = [row.tolist() for row in cumulative]
    out = np.empty(max(n_tokens, k), dtype=np.int64)
    out[:k] = first
    uniforms = rng.random(len(out) - k).tolist()
    for t, u in enumerate(uniforms, start=k):
        b = bisect.bisect_right(rows[state], u)
        out[t] = b
        state = (state * v) % states + b
    return out[:n_tokens]


def markov(
    data_seed: int,
    vocab: int,
    order: int,
    concentration: float,
    n_tokens: int,
    context: int,
    val_fraction: float,
    test_fraction: float,
) -> DatasetSplits:
    """Tokens of a random order-k Markov source (seeded by ``data_seed``); the info records its
    entropy rate and the best loss a model of the window can reach (:func:`markov_entropy`)."""
    if vocab**order > 4096:
        raise ValueError(f"markov: vocab**order = {vocab**order} contexts; at most 4096 supported")
    source = markov_source(vocab, order, concentration, data_seed)
    stream = markov_sample(source, n_tokens, data_seed)
    info: dict[str, Any] = {"vocab_size": vocab, "order": order, "concentration": concentration}
    info |= markov_entropy(source, context)
    return windows(
        "markov",
        stream,
        context,
        val_fraction,
        test_fraction,
        0,  # the source and its sample path already depend on the seed
        vocab,
        _sha256(stream.tobytes()),
        info,
    )


# ---------------------------------------------------------------- tiny shakespeare

TINY_SHAKESPEARE_ENV = "TECHBENCH_TINY_SHAKESPEARE"


def _cache_root() -> Path:
    """``$TECHBENCH_DATA``, else ``$XDG_CACHE_HOME/techbench``, else ``~/.cache/techbench``."""
    explicit = os.environ.get("TECHBENCH_DATA", "")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "techbench"


def tiny_shakespeare_path(root: str = "") -> Path:
    """``root`` (a folder or the file), else ``$TECHBENCH_TINY_SHAKESPEARE``, else the cache's
    ``tiny_shakespeare/input.txt``; raises :class:`DatasetFilesMissing` naming where it looked."""
    text = root or os.environ.get(TINY_SHAKESPEARE_ENV, "")
    path = Path(text).expanduser() if text else _cache_root() / "tiny_shakespeare"
    if path.is_dir():
        path = path / "input.txt"
    if not path.is_file():
        raise DatasetFilesMissing(
            f"tiny_shakespeare: no file {str(path)!r}; run `techbench data fetch "
            f"tiny_shakespeare`, pass the dataset parameter root=... or set {TINY_SHAKESPEARE_ENV}"
        )
    return path


def tiny_shakespeare(
    data_seed: int, root: str, context: int, val_fraction: float, test_fraction: float
) -> DatasetSplits:
    """Characters of tiny-shakespeare (Karpathy 2015); the vocabulary is the file's characters
    in sorted order (65 for the published file)."""
    path = tiny_shakespeare_path(root)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    vocab = sorted(set(text))
    if len(text) < 2 * context + 2:
        raise ValueError(f"{path}: {len(text)} characters, too short for context {context}")
    index = {c: i for i, c in enumerate(vocab)}
    stream = np.fromiter((index[c] for c in text), dtype=np.int64, count=len(text))
    info = {"file": str(path), "chars": len(text), "vocab_size": len(vocab)}
    return windows(
        "tiny_shakespeare",
        stream,
        context,
        val_fraction,
        test_fraction,
        data_seed,
        len(vocab),
        _sha256(raw),
        info,
    )


__all__ = [
    "PYSOURCE_VOCAB",
    "MarkovSource",
    "markov",
    "markov_entropy",
    "markov_sample",
    "markov_source",
    "pysource",
    "pysource_corpus",
    "tiny_shakespeare",
    "windows",
]
