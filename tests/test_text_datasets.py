"""Language-model datasets: the stdlib corpus is deterministic and its hash reaches the trial's
meta; the Markov source's entropy rate against brute-force block entropies and a Monte Carlo
estimate; windows and contiguous splits; tiny-shakespeare's file lookup and its errors."""

from __future__ import annotations

import hashlib
import itertools
import math
import platform
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from techbench.engine.trial import run_trial
from techbench_builtins import datasets_text_impl as text
from techbench_builtins.datasets_impl import DatasetFilesMissing


def _decode(tokens: torch.Tensor) -> str:
    return "".join(text.PYSOURCE_VOCAB[i] for i in tokens.reshape(-1).tolist())


def test_pysource_is_deterministic_and_follows_its_rule() -> None:
    text.pysource_corpus.cache_clear()
    a = text.pysource(0, 20_000, 50, 0.1, 0.1)
    text.pysource_corpus.cache_clear()
    b = text.pysource(0, 20_000, 50, 0.1, 0.1)
    assert a.fingerprint == b.fingerprint and torch.equal(a.x_train, b.x_train)
    # the rule, applied here independently: public top-level stdlib *.py files, sorted by name
    folder = Path(sysconfig.get_paths()["stdlib"])
    names = sorted(p.name for p in folder.glob("*.py") if not p.name.startswith("_"))
    raw = "".join((folder / n).read_bytes().decode("utf-8", "replace") + "\n" for n in names)
    allowed = set(text.PYSOURCE_VOCAB)
    corpus = "".join(c if c in allowed else "\ufffd" for c in raw[:20_000])
    assert a.fingerprint == hashlib.sha256(corpus.encode()).hexdigest()
    assert a.info["first_file"] == names[0] and a.info["chars"] == 20_000
    # windows are consecutive: train, then val, then test; y is x shifted by one character
    n = (len(corpus) - 1) // 50
    assert len(a.x_train) + len(a.x_val) + len(a.x_test) == n
    joined = torch.cat([a.x_train, a.x_val, a.x_test]).reshape(-1)
    assert _decode(joined) == corpus[: n * 50]
    assert _decode(torch.cat([a.y_train, a.y_val, a.y_test])) == corpus[1 : n * 50 + 1]


def test_pysource_other_data_seed_holds_out_another_region() -> None:
    a, b = text.pysource(0, 20_000, 50, 0.1, 0.1), text.pysource(1, 20_000, 50, 0.1, 0.1)
    assert a.fingerprint == b.fingerprint  # same corpus
    assert not torch.equal(a.x_val, b.x_val)


def test_fingerprint_and_info_land_in_the_trial_meta() -> None:
    torch.set_num_threads(1)
    out = run_trial(
        {
            "dataset": {"name": "pysource", "params": {"max_chars": 5000, "context": 16}},
            "model": {"name": "transformer", "params": {"width": 8, "depth": 1, "heads": 2}},
            "preprocessor": "none",
            "budget": {"max_steps": 2, "epochs": 1, "batch_size": 16},
            "health": {"enabled": False},
            "trainer": {"accelerator": "cpu"},
        }
    )
    assert out.status == "completed", out.meta.error
    corpus, _ = text.pysource_corpus(5000)
    assert out.meta.data_fingerprint == hashlib.sha256(corpus.encode()).hexdigest()
    assert out.meta.data_info["python"] == platform.python_version()


def test_token_inputs_refuse_a_preprocessor() -> None:
    out = run_trial(
        {
            "dataset": {"name": "markov", "params": {"n_tokens": 2000, "context": 8}},
            "model": {"name": "transformer", "params": {"width": 8, "depth": 1, "heads": 2}},
            "preprocessor": "standardize",
            "budget": {"max_steps": 1, "epochs": 1},
        }
    )
    assert out.status == "failed"
    assert 'set preprocessor = "none"' in out.meta.error


def _block_entropy(src: text.MarkovSource, m: int) -> float:
    """H(X_1..X_m) by enumerating every sequence of max(m, k) symbols of the stationary chain
    and summing the probabilities of those that share their first m symbols."""
    v, k = src.vocab, src.order
    law: dict[tuple[int, ...], float] = {}
    for seq in itertools.product(range(v), repeat=max(m, k)):
        state = 0
        for s in seq[:k]:
            state = state * v + s
        p = src.stationary[state]
        for s in seq[k:]:
            p *= src.probs[state, s]
            state = (state * v) % v**k + s
        law[seq[:m]] = law.get(seq[:m], 0.0) + p
    return -sum(p * math.log(p) for p in law.values() if p > 0)


@pytest.mark.parametrize(("vocab", "order", "alpha"), [(3, 2, 0.5), (4, 1, 1.0), (2, 3, 0.3)])
def test_markov_entropy_rate_matches_block_entropies(vocab: int, order: int, alpha: float) -> None:
    src = text.markov_source(vocab, order, alpha, seed=7)
    # stationarity, checked directly: pi M = pi
    m = np.zeros((vocab**order, vocab**order))
    for s in range(vocab**order):
        for b in range(vocab):
            m[s, (s * vocab) % vocab**order + b] += src.probs[s, b]
    np.testing.assert_allclose(src.stationary @ m, src.stationary, atol=1e-12)
    # for n >= k, H(X_1..X_{n+1}) - H(X_1..X_n) is the entropy rate (Cover and Thomas 4.2)
    h = [_block_entropy(src, n) for n in range(max(order + 3, 6))]
    got = text.markov_entropy(src, context=4)
    assert got["entropy_rate_nats"] == pytest.approx(h[order + 2] - h[order + 1], abs=1e-10)
    assert got["entropy_rate_bits"] == pytest.approx(got["entropy_rate_nats"] / math.log(2))
    # window optimum for T = 4: sum over positions j of H(X_{j+2} | X_1..X_{j+1}), brute force
    window = sum(h[j + 2] - h[j + 1] for j in range(4)) / 4
    assert got["optimal_window_loss_nats"] == pytest.approx(window, abs=1e-10)


def test_markov_sample_has_the_entropy_rate_monte_carlo() -> None:
    src = text.markov_source(5, 2, 0.5, seed=3)
    stream = text.markov_sample(src, 200_000, seed=3)
    state = stream[0] * 5 + stream[1]
    logs = np.empty(len(stream) - 2)
    for t in range(2, len(stream)):
        logs[t - 2] = -math.log(src.probs[state, stream[t]])
        state = (state * 5) % 25 + stream[t]
    rate = text.markov_entropy(src, 8)["entropy_rate_nats"]
    # batch means over 100 blocks give a standard error that allows for serial correlation
    blocks = logs[: len(logs) // 100 * 100].reshape(100, -1).mean(axis=1)
    stderr = blocks.std(ddof=1) / math.sqrt(len(blocks))
    assert abs(logs.mean() - rate) < 4 * stderr + 1e-3
    # empirical context frequencies follow the stationary law
    counts = np.bincount(stream[:-1] * 5 + stream[1:], minlength=25) / (len(stream) - 1)
    np.testing.assert_allclose(counts, src.stationary, atol=0.01)


def test_markov_dataset_records_its_optimum() -> None:
    s = text.markov(0, 4, 2, 0.3, 10_000, 16, 0.1, 0.1)
    assert s.task == "language_model" and s.num_outputs == 4
    assert s.x_train.dtype == torch.int64 and s.x_train.shape[1] == 16
    torch.testing.assert_close(s.x_train[:, 1:], s.y_train[:, :-1])
    info = s.info
    assert info["optimal_window_loss_nats"] >= info["entropy_rate_nats"]
    assert info["entropy_rate_nats"] < math.log(4)


def test_tiny_shakespeare_lookup_order_and_errors(tmp_path, monkeypatch) -> None:
    for var in ("TECHBENCH_DATA", "XDG_CACHE_HOME", "TECHBENCH_TINY_SHAKESPEARE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(DatasetFilesMissing) as err:
        text.tiny_shakespeare(0, "", 16, 0.1, 0.1)
    message = str(err.value)
    assert str(tmp_path / "home" / ".cache" / "techbench" / "tiny_shakespeare") in message
    assert "techbench data fetch tiny_shakespeare" in message and "\n" not in message

    body = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 40
    cache = tmp_path / "xdg" / "techbench" / "tiny_shakespeare"
    cache.mkdir(parents=True)
    (cache / "input.txt").write_text(body)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    s = text.tiny_shakespeare(0, "", 16, 0.1, 0.1)
    assert s.num_classes == len(set(body))
    assert s.fingerprint == hashlib.sha256(body.encode()).hexdigest()
    vocab = sorted(set(body))
    assert "".join(vocab[i] for i in s.x_train[0].tolist()) == body[:16]

    data = tmp_path / "data" / "tiny_shakespeare"
    data.mkdir(parents=True)
    (data / "input.txt").write_text("abc" * 100)
    monkeypatch.setenv("TECHBENCH_DATA", str(tmp_path / "data"))
    assert text.tiny_shakespeare(0, "", 16, 0.1, 0.1).num_classes == 3

    other = tmp_path / "mine.txt"
    other.write_text("xy" * 100)
    monkeypatch.setenv("TECHBENCH_TINY_SHAKESPEARE", str(other))
    assert text.tiny_shakespeare(0, "", 16, 0.1, 0.1).num_classes == 2


def test_report_flags_runs_on_different_data_under_one_name() -> None:
    import pandas as pd

    from techbench.report.build import _fingerprints

    trials = pd.DataFrame(
        {
            "dataset": ["pysource", "pysource", "pysource", "markov", "digits"],
            "data_fingerprint": ["a" * 64, "a" * 64, "b" * 64, "c" * 64, None],
        }
    )
    items = dict(_fingerprints(trials))
    assert "MIXED DATA, 2 fingerprints" in items["data pysource"]
    assert "(2 runs)" in items["data pysource"] and "(1 runs)" in items["data pysource"]
    assert items["data markov"] == "sha256 " + "c" * 16
    assert "data digits" not in items
