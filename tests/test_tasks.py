"""The language-model task: its metrics against a float64 computation written out here, chunked
evaluation, the shipped charlm matrix, and a transformer trained through ``run_trial`` on a
Markov source approaching the source's optimal loss."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from techbench import tasks
from techbench.engine.population_tasks import member_metrics
from techbench.engine.trial import run_trial
from techbench.plan.matrix import load_matrix


def _float64_lm_metrics(logits: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Mean over tokens of -log softmax(logits)[y], written out in float64 (log-sum-exp)."""
    z = logits.double().reshape(-1, logits.shape[-1])
    t = y.reshape(-1)
    top = z.max(dim=1, keepdim=True).values
    log_norm = top.squeeze(1) + torch.log(torch.exp(z - top).sum(dim=1))
    nll = (log_norm - z[torch.arange(len(t)), t]).mean().item()
    acc = (z.argmax(dim=1) == t).double().mean().item()
    return [nll, acc, nll / math.log(2.0), math.exp(nll)]


def test_lm_metrics_match_a_float64_computation() -> None:
    torch.manual_seed(0)
    logits, y = torch.randn(6, 9, 11) * 3, torch.randint(0, 11, (6, 9))
    got = tasks.eval_metrics("language_model", tasks.eval_sums("language_model", logits, y))
    assert tasks.metric_names("language_model") == ("loss", "acc", "bpc", "ppl")
    want = _float64_lm_metrics(logits, y)
    assert got.tolist() == pytest.approx(want, rel=1e-6)
    # bits per character = nats / ln 2, perplexity = exp(nats): exact relations of the outputs
    loss, _, bpc, ppl = got.tolist()
    assert bpc == loss / math.log(2.0) and ppl == math.exp(loss)
    # the training loss is torch's cross-entropy over all positions
    train = tasks.loss_fn("language_model")(logits, y)
    ce = nn.functional.cross_entropy(logits.permute(0, 2, 1), y)
    torch.testing.assert_close(train, ce)


def test_classification_metrics_unchanged() -> None:
    torch.manual_seed(1)
    logits, y = torch.randn(20, 5), torch.randint(0, 5, (20,))
    got = tasks.eval_metrics("classification", tasks.eval_sums("classification", logits, y))
    ce = nn.functional.cross_entropy(logits, y).double()
    assert got.tolist() == [ce.item(), (logits.argmax(1) == y).double().mean().item()]


def test_chunked_evaluation_equals_one_pass(monkeypatch) -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Embedding(7, 7))
    x, y = torch.randint(0, 7, (50, 12)), torch.randint(0, 7, (50, 12))

    def evaluate() -> torch.Tensor:  # the engine's evaluation of a stack of one
        with torch.no_grad():
            return member_metrics("language_model", lambda xb: model(xb)[None], x, y, 4096)[0]

    whole = evaluate()
    monkeypatch.setattr(tasks, "LM_EVAL_TOKENS", 12 * 7)  # chunks of 7 windows
    chunked = evaluate()
    # per-chunk means are float32: equal up to float32 rounding
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=0)
    want = torch.tensor(_float64_lm_metrics(model(x), y), dtype=torch.float64)
    torch.testing.assert_close(whole, want, rtol=1e-6, atol=0)


def test_charlm_matrix_loads_with_a_minimised_bpc_target() -> None:
    matrix = load_matrix("charlm")
    trials = matrix.trials()
    assert len(trials) == 16
    first = trials[0]
    assert first["target"] == {"metric": "val_bpc", "value": 3.0, "mode": "min"}
    assert first["dataset"]["name"] == "pysource" and first["preprocessor"]["name"] == "none"
    combos = {
        (t["normalizer"]["name"], t["activation"]["name"], t["optimizer"]["name"]) for t in trials
    }
    assert len(combos) == 8


def test_cifar_resnet_matrix_loads() -> None:
    trials = load_matrix("cifar-resnet").trials()
    assert {t["model"]["name"] for t in trials} == {"resnet"}
    assert {t["dataset"]["name"] for t in trials} == {"cifar10"}


MARGIN_NATS = 0.04
"""How close (nats per token) a briefly trained transformer must come to the Markov source's
optimal window loss: about 5% of the optimum here, a tenth of the gap between the optimum and a
model that ignores the context (the unigram entropy, 0.47 nats higher; checked in the test)."""


def test_transformer_approaches_the_markov_entropy_rate() -> None:
    torch.set_num_threads(1)
    out = run_trial(
        {
            "dataset": {
                "name": "markov",
                "params": {
                    "vocab": 4,
                    "order": 2,
                    "concentration": 0.3,
                    "n_tokens": 40_000,
                    "context": 16,
                },
            },
            "model": {"name": "transformer", "params": {"width": 32, "depth": 1, "heads": 2}},
            "normalizer": "layernorm",
            "activation": "gelu",
            "preprocessor": "none",
            "optimizer": {"name": "adamw", "params": {"lr": 0.01}},
            "budget": {"epochs": 6, "batch_size": 32},
            "target": {"metric": "val_loss", "value": 1.0, "mode": "min"},
            "health": {"enabled": False},
            "trainer": {"accelerator": "cpu"},
        }
    )
    assert out.status == "completed", out.meta.error
    info = out.meta.data_info
    optimum = info["optimal_window_loss_nats"]
    best_val = min(out.metric("val", "loss"))
    test = out.metric("test", "best_loss")[0]
    assert best_val < optimum + MARGIN_NATS
    assert test < optimum + MARGIN_NATS
    # no model beats the source beyond the sampling noise of ~8000 test tokens
    assert test > optimum - 0.03
    # the margin is small against what ignoring the context costs
    from techbench_builtins.datasets_text_impl import markov_source

    unigram = markov_source(4, 2, 0.3, 0).stationary.reshape(4, 4).sum(axis=1)
    unigram_entropy = -sum(p * math.log(p) for p in unigram)
    assert (unigram_entropy - optimum) / 10 >= MARGIN_NATS
    # bits per character is the same number in bits
    assert out.metric("test", "best_bpc")[0] == pytest.approx(test / math.log(2.0))


def test_language_model_trials_stack_by_seed() -> None:
    """charlm's 16 trials are 8 shapes (normalizer x activation x optimizer) of 2 seeds."""
    from techbench.plan.stacking import plan_stacks

    stacks = plan_stacks(load_matrix("charlm").trials(), None)
    assert [len(s.configs) for s in stacks] == [2] * 8
    assert all(s.reason == "" for s in stacks)
    assert all({c["seed"] for c in s.configs} == {0, 1} for s in stacks)


def test_auto_runs_language_models_one_by_one_on_a_cpu_only(monkeypatch) -> None:
    """``--stack auto`` on a CPU runs charlm alone (measured slower stacked there) and says why;
    a forced size and a GPU stack them; an MLP on a CPU still stacks."""
    import techbench.plan.stacking
    from techbench.plan.stacking import plan_units

    trials = load_matrix("charlm").trials()
    monkeypatch.setattr(techbench.plan.stacking, "visible_gpus", lambda: ["0"])
    on_gpu = [{**t, "trainer": {**t["trainer"], "accelerator": "gpu"}} for t in trials]
    assert [len(s.configs) for s in plan_units(on_gpu, "auto")] == [2] * 8
    monkeypatch.setattr(techbench.plan.stacking, "visible_gpus", lambda: [])
    cpu = plan_units(trials, "auto")
    assert [len(s.configs) for s in cpu] == [1] * 16
    assert all("slower than alone on a CPU" in s.reason for s in cpu)
    assert [len(s.configs) for s in plan_units(trials, 8)] == [2] * 8
    demo = load_matrix("demo").trials()
    assert max(len(s.configs) for s in plan_units(demo, "auto")) > 1


def test_label_smoothing_on_per_position_logits_is_torchs() -> None:
    from techbench.techniques.registry import get_spec

    torch.manual_seed(3)
    logits, y = torch.randn(4, 6, 9), torch.randint(0, 9, (4, 6))
    reg = get_spec("label_smoothing", "regularizer").create(epsilon=0.2)
    want = nn.functional.cross_entropy(logits.reshape(-1, 9), y.reshape(-1), label_smoothing=0.2)
    torch.testing.assert_close(reg.loss(logits, y), want)


def test_preflight_checks_a_target_against_the_task() -> None:
    from techbench.plan.preflight import _targets
    from techbench.techniques.registry import default_registry

    def trial(dataset: str, metric: str) -> dict:
        return {"dataset": {"name": dataset}, "target": {"metric": metric}}

    registry = default_registry()
    assert _targets([trial("pysource", "val_bpc"), trial("markov", "val_acc")], registry) == []
    (problem,) = _targets([trial("digits", "val_bpc")], registry)
    assert "classification task" in problem and "val_acc" in problem
