"""Scale ladders (``[scale]``, :mod:`techbench.plan.scale`): rung configs against the models'
closed-form parameter counts, per-parameter budgets against hand computations, validation,
stacking by rung, the dry-run table, the meta the engine records, narrowing, and the transfer
protocol with ``[tune]`` (a test-only trial function whose best learning rate moves with the
rung: "base" must select from rung 0's validation only, "retune" each rung's own best)."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
from pathlib import Path

import pytest

from techbench.plan.matrix import MatrixError, loads_matrix
from techbench.plan.narrow import default_store, narrow
from techbench.plan.stacking import plan_stacks
from techbench.plan.tune import read_plan, run_tuned, select_stored
from techbench.schema import DEFAULT_CONFIG, complete_config, trial_id
from techbench.store import ResultStore
from techbench_builtins.models import mlp_parameter_count

from .report_fixtures import rewrite_metrics

DIGITS = ((64,), 10)  # digits: 64 features, 10 classes
PYSOURCE_VOCAB = 98

LADDER = """
name = "ladder"
seeds = 2
[budget]
epochs = 1
[axes]
optimizer = [{ name = "adam", lr = [0.001, 0.01] }]
[scale]
width = [1, 2, 4]
depth = [1, 1, 2]
"""


def _transformer_count(vocab: int, context: int, width: int, depth: int, ratio: int = 4) -> int:
    """Embeddings (tokens and learned positions), per block qkv, projection and the MLP's two
    layers with biases, an untied head with bias; no normalizer (Vaswani et al. 2017)."""
    block = (width * 3 * width + 3 * width) + (width * width + width)
    block += (width * ratio * width + ratio * width) + (ratio * width * width + width)
    return vocab * width + context * width + depth * block + width * vocab + vocab


# -- ids and configs --------------------------------------------------------------------------


def test_the_scale_key_stays_out_of_the_id_at_its_default() -> None:
    config = complete_config({"optimizer": {"name": "sgd", "params": {"lr": 0.1}}})
    assert config["scale"] is None
    # a config of 0.3.0: without the keys added since (scale, parametrization, health.curvature)
    legacy = {k: v for k, v in config.items() if k not in ("scale", "parametrization")}
    legacy["health"] = {k: v for k, v in legacy["health"].items() if k != "curvature"}
    text = json.dumps(legacy, sort_keys=True, separators=(",", ":"))
    assert trial_id(config) == hashlib.sha256(text.encode()).hexdigest()[:16]
    config["scale"] = {"rung": 0, "width_mult": 1.0, "depth_mult": 1.0}
    assert trial_id(config) != hashlib.sha256(text.encode()).hexdigest()[:16]


def test_a_matrix_without_scale_expands_as_before_and_rungs_cross_it() -> None:
    plain = loads_matrix(LADDER.split("[scale]")[0], "p.toml")
    ladder = loads_matrix(LADDER, "l.toml")
    plain_ids = [t.id for t in plain.planned()]
    assert all(t.config["scale"] is None for t in plain.planned())
    trials = ladder.planned()
    assert len(trials) == 3 * len(plain_ids) and not set(plain_ids) & {t.id for t in trials}
    # rung-major: every rung holds the plain matrix's trials in their order
    for r, (wm, dm) in enumerate([(1, 1), (2, 1), (4, 2)]):
        part = trials[r * 4 : (r + 1) * 4]
        assert [t.config["scale"] for t in part] == [
            {"rung": r, "width_mult": float(wm), "depth_mult": float(dm)}
        ] * 4
        for t, p in zip(part, plain.planned(), strict=True):
            assert t.config["model"] == {
                "name": "mlp",
                "params": {"depth": 2 * dm, "width": 128 * wm},
            }
            rest = {k: v for k, v in t.config.items() if k not in ("scale", "model")}
            assert rest == {k: v for k, v in p.config.items() if k not in ("scale", "model")}


@pytest.mark.parametrize(("width", "depth"), [(1, 1), (2, 1), (4, 2)])
def test_parameter_counts_match_the_mlp_closed_form(width: int, depth: int) -> None:
    m = loads_matrix(LADDER, "l.toml")
    config = next(t.config for t in m.planned() if t.config["scale"]["width_mult"] == width)
    assert m.scale.count(config) == mlp_parameter_count(*DIGITS, depth=2 * depth, width=128 * width)


def test_rounding_and_base_values_come_from_the_axis_as_written() -> None:
    m = loads_matrix(
        '[axes]\nmodel = { name = "resmlp", width = 10, blocks = 2 }\n'
        "[scale]\nwidth = [0.25, 0.5, 1.5]\ndepth = [1, 1.5, 2]\n",
        "r.toml",
    )
    got = [t.config["model"]["params"] for t in m.planned()]
    # 10 x 0.25 = 2.5 rounds half up to 3; 2 x 1.5 = 3
    assert got == [
        {"width": 3, "blocks": 2},
        {"width": 5, "blocks": 3},
        {"width": 15, "blocks": 4},
    ]


# -- budgets ----------------------------------------------------------------------------------


def test_examples_per_parameter_sets_steps_by_hand() -> None:
    m = loads_matrix(
        '[budget]\nbatch_size = 128\n[axes]\noptimizer = "adam"\n'
        "[scale]\nwidth = [1, 2]\nbudget = { examples_per_parameter = 0.5 }\n",
        "e.toml",
    )
    first, second = (t.config["budget"] for t in m.planned())
    # N = 26122 (64*128 + 128 + 128*128 + 128 + 128*10 + 10): 0.5 N / 128 = 102.04 -> 103
    # N = 85002 at width 256: 0.5 N / 128 = 332.04 -> 333
    assert (first["max_steps"], second["max_steps"]) == (103, 333)
    assert first["epochs"] is None and second["epochs"] is None  # the rule alone sets steps


def test_tokens_per_parameter_counts_tokens_of_the_context() -> None:
    m = loads_matrix(
        '[budget]\nbatch_size = 16\nepochs = 3\n[axes]\npreprocessor = "none"\n'
        'dataset = { name = "pysource", max_chars = 20000, context = 16 }\n'
        'model = { name = "transformer", width = 16, depth = 1, heads = 2 }\n'
        "[scale]\nwidth = [1, 2]\ndepth = [1, 2]\nbudget = { tokens_per_parameter = 20 }\n",
        "t.toml",
    )
    got = [(m.scale.count(t.config), t.config["budget"]) for t in m.planned()]
    for (n, budget), (w, d) in zip(got, [(16, 1), (32, 2)], strict=True):
        assert n == _transformer_count(PYSOURCE_VOCAB, 16, w, d)
        assert budget["max_steps"] == math.ceil(20 * n / (16 * 16))
        assert budget["epochs"] == 3  # given beside the rule: a cap
    # by hand: N = 98*16 + 16*16 + (12*256 + 9*16) + 16*98 + 98 = 6706 -> 20 N / 256 = 523.9
    assert got[0][0] == 6706 and got[0][1]["max_steps"] == 524


def test_fixed_budget_keeps_the_matrix_budget_at_every_rung() -> None:
    m = loads_matrix(LADDER, "l.toml")
    assert {json.dumps(t.config["budget"]) for t in m.planned()} == {
        json.dumps({**DEFAULT_CONFIG["budget"], "epochs": 1})
    }


# -- validation -------------------------------------------------------------------------------

BASE = '[axes]\noptimizer = "adam"\n'


@pytest.mark.parametrize(
    ("text", "path", "says"),
    [
        ("[scale]\nwidth = 2\n", "scale.width", "list of positive multipliers"),
        ("[scale]\nwidth = [1, 0, 2]\n", "scale.width", "positive multipliers"),
        ("[scale]\nwidth = [4, 2]\n", "scale.width", "must not shrink"),
        ("[scale]\nwidth = [1, true]\n", "scale.width", "positive multipliers"),
        ("[scale]\nwidth = [1, 2]\ndepth = [1, 2, 4]\n", "scale.depth", "has 3 rungs"),
        ("[scale]\nwidth = [1, 1]\n", "scale", "rungs 0 and 1 are the same size"),
        ("[scale]\n", "scale", "names no rungs"),
        ("[scale]\nwidth = [1, 2]\nwidht = [1, 2]\n", "scale.widht", "unknown key"),
        ('[scale]\nwidth = [1, 2]\nbudget = "chinchilla"\n', "scale.budget", "one rule"),
        (
            "[scale]\nwidth = [1, 2]\nbudget = { tokens_per_param = 20 }\n",
            "scale.budget.tokens_per_param",
            "unknown rule",
        ),
        (
            "[scale]\nwidth = [1, 2]\nbudget = { examples_per_parameter = -1 }\n",
            "scale.budget.examples_per_parameter",
            "number > 0",
        ),
        (
            "[scale]\nwidth = [1, 2]\nbudget = { tokens_per_parameter = 20 }\n",
            "scale.budget.tokens_per_parameter",
            "not a language model",
        ),
        ('[scale]\nwidth = [1, 2]\ntransfer = "base"\n', "scale.transfer", "needs a [tune]"),
        (
            '[scale]\nwidth = [1, 2]\ntransfer = "bsae"\n[tune]\nbudget = 2\n',
            "scale.transfer",
            "'retune' or 'base'",
        ),
        (
            '[defaults]\nmodel = "cnn"\n[scale]\nwidth = [1, 2]\ndepth = [1, 2]\n',
            "scale.depth",
            "declares no depth parameter",
        ),
        (
            '[defaults]\nmodel = { name = "transformer", width = 40000 }\n[scale]\nwidth = [1, 2]\n',
            "scale.width[1]",
            "x2 makes transformer width=80000",
        ),
        (
            "[budget]\nsteps = 10\n[scale]\nwidth = [1, 2]\n"
            "budget = { examples_per_parameter = 1 }\n",
            "budget.steps",
            "sets each rung's steps",
        ),
    ],
)
def test_scale_problems_name_the_key_on_one_line(text: str, path: str, says: str) -> None:
    with pytest.raises(MatrixError) as info:
        loads_matrix(BASE + text, "bad.toml")
    (problem,) = info.value.problems
    assert problem.path == path and says in str(problem) and "\n" not in str(problem)


def test_a_model_without_scale_params_is_one_line() -> None:
    from techbench.techniques.registry import default_registry

    real = default_registry()
    bare = dataclasses.replace(real.get_spec("mlp", "model"), properties={"inputs": ("vector",)})

    class Registry:
        def get_spec(self, name: str, family: str):
            return bare if family == "model" else real.get_spec(name, family)

    with pytest.raises(MatrixError) as info:
        loads_matrix(BASE + "[scale]\nwidth = [1, 2]\n", "bare.toml", registry=Registry())
    (problem,) = info.value.problems
    assert problem.path == "scale" and "declares no scale_params" in problem.message


def test_a_bad_scale_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from techbench.cli import main

    path = tmp_path / "bad.toml"
    path.write_text(BASE + '[scale]\nwidth = [1, 2]\ntransfer = "base"\n')
    assert main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[1].strip().startswith(f"{path}: scale.transfer: needs a [tune] section")
    assert "Traceback" not in "\n".join(err)


# -- stacks and the dry run ------------------------------------------------------------------


def test_trials_of_one_rung_stack_and_rungs_never_share_a_stack() -> None:
    m = loads_matrix(LADDER, "l.toml")
    stacks = plan_stacks(m.planned(), None)
    assert len(stacks) == 3
    for s in stacks:
        rungs = {c["scale"]["rung"] for c in s.configs}
        assert len(rungs) == 1 and len(s.trials) == 4  # 2 seeds x 2 learning rates
        assert {c["seed"] for c in s.configs} == {0, 1}
        assert {c["optimizer"]["params"]["lr"] for c in s.configs} == {0.001, 0.01}


def test_dry_run_prints_rungs_with_parameters_budgets_and_trials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from techbench.cli import main

    path = tmp_path / "l.toml"
    path.write_text(LADDER.replace("epochs = 1", "batch_size = 128") +
                    "budget = { examples_per_parameter = 0.5 }\n")  # fmt: skip
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--dry-run", "--sample", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.strip().startswith("scale: 3 rungs"))
    assert "budget 0.5 examples per parameter" in lines[at]
    rows = [ln.split() for ln in lines[at + 2 : at + 5]]
    for r, (w, d) in enumerate([(128, 2), (256, 2), (512, 4)]):
        n = mlp_parameter_count(*DIGITS, depth=d, width=w)
        steps = math.ceil(0.5 * n / 128)
        assert rows[r][:5] == [str(r), f"x{w // 128}", f"x{d // 2}", f"{n:,}", f"steps={steps:,}"]
        assert float(rows[r][5]) == pytest.approx(6 * n * steps * 128, rel=0.05)
        assert rows[r][6] == "4"  # trials at this rung


def test_dry_run_compute_of_an_epoch_budget_is_what_the_engine_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Epoch budgets: the table's compute is 6 N x epochs x training examples, the number the
    engine records from the batches it actually trains (rung 0, one epoch of digits)."""
    from techbench.cli import main
    from techbench.engine.trial import run_trial

    path = tmp_path / "l.toml"
    path.write_text(LADDER)
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--dry-run", "--sample", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.strip().startswith("scale: 3 rungs"))
    row = lines[at + 2].split()
    assert row[4] == "epochs=1"
    ran = run_trial(loads_matrix(LADDER, "l.toml").planned()[0])
    assert ran.status == "completed", ran.meta.error
    assert float(row[5]) == pytest.approx(ran.meta.compute, rel=0.05)  # the table's 2 digits


# -- the engine's meta ------------------------------------------------------------------------


def test_every_trial_records_rung_parameters_and_compute() -> None:
    from techbench.engine.trial import run_trial

    m = loads_matrix(
        "[budget]\nbatch_size = 32\nsteps = 3\n[health]\nenabled = false\n"
        '[axes]\noptimizer = "sgd"\nmodel = { name = "mlp", width = 8, depth = 1 }\n'
        "[scale]\nwidth = [1, 2]\n",
        "m.toml",
    )
    trial = m.planned()[1]
    out = run_trial(trial)
    assert out.status == "completed", out.meta.error
    n = mlp_parameter_count(*DIGITS, depth=1, width=16)
    assert (out.meta.rung, out.meta.width_mult, out.meta.num_parameters) == (1, 2.0, n)
    assert out.meta.compute == 6.0 * n * 3 * 32  # 3 full batches of 32 examples
    plain = run_trial(dataclasses.replace(trial, config={**trial.config, "scale": None}))
    assert plain.meta.rung is None and plain.meta.compute == 6.0 * n * 3 * 32


def test_a_language_model_counts_tokens_in_compute() -> None:
    from techbench.engine.trial import run_trial

    config = complete_config(
        {
            "dataset": {"name": "pysource", "params": {"max_chars": 20000, "context": 16}},
            "model": {"name": "transformer", "params": {"width": 16, "depth": 1, "heads": 2}},
            "preprocessor": "none",
            "budget": {"epochs": None, "max_steps": 2, "batch_size": 8},
            "health": {"enabled": False},
            "target": {"metric": "val_loss", "value": 1.0, "mode": "min"},
        }
    )
    out = run_trial(config)
    assert out.status == "completed", out.meta.error
    n = _transformer_count(PYSOURCE_VOCAB, 16, 16, 1)
    assert out.meta.num_parameters == n and out.meta.compute == 6.0 * n * 2 * 8 * 16


# -- narrowing --------------------------------------------------------------------------------


def _flags(**kw: object) -> argparse.Namespace:
    return argparse.Namespace(**{"seeds": None, "epochs": None, "accelerator": None,
                                 "filter": [], **kw})  # fmt: skip


def test_filters_pick_rungs_and_narrowed_budgets_get_their_own_store() -> None:
    full = loads_matrix(LADDER, "l.toml")
    _, trials, _ = narrow(full, _flags(filter=["rung=2"]))
    assert {t.config["scale"]["rung"] for t in trials} == {2} and len(trials) == 4
    _, trials, _ = narrow(full, _flags(filter=["width_mult=2", "width_mult=4.0"]))
    assert {t.config["scale"]["rung"] for t in trials} == {1, 2}
    narrowed, trials, _ = narrow(full, _flags(filter=["rung=0"]))
    assert default_store(full, narrowed) == "results/ladder"  # same trials, same store
    narrowed, trials, _ = narrow(full, _flags(epochs=2))
    assert default_store(full, narrowed) == "results/ladder-epochs2"
    assert {t.config["budget"]["epochs"] for t in trials} == {2} and len(trials) == 12
    from techbench.errors import UsageError

    with pytest.raises(UsageError, match="rung=7: no trial of the matrix has it"):
        narrow(full, _flags(filter=["rung=7"]))


def test_epochs_cap_a_proportional_budget_in_their_own_store() -> None:
    text = LADDER.replace("epochs = 1", "batch_size = 64")
    full = loads_matrix(text + "budget = { examples_per_parameter = 1 }\n", "p.toml")
    assert full.budget["epochs"] is None
    narrowed, trials, _ = narrow(full, _flags(epochs=1))
    assert default_store(full, narrowed) == "results/ladder-epochs1"
    assert {t.config["budget"]["epochs"] for t in trials} == {1}
    assert {t.id for t in trials}.isdisjoint(t.id for t in full.planned())


# -- transfer with [tune] ---------------------------------------------------------------------

TUNED = """
name = "tl"
[axes]
optimizer = ["sgd", "adam"]
[tune]
budget = 8
seeds = 2
final_seeds = 2
[tune.search]
optimizer = ["lr"]
[scale]
width = [1, 2, 4]
transfer = "{transfer}"
"""
PLANTED = 1.5  # a validation accuracy no real point reaches


def best_lr(rung: int) -> float:
    """log10 of the fake's best learning rate: it drops by half a decade per rung."""
    return -1.5 - 0.5 * rung


def ladder_trial(config: dict) -> dict:
    """Validation accuracy peaks at ``best_lr(rung)``; test accuracy is its mirror image."""
    lr = config["optimizer"]["params"]["lr"]
    rung = config["scale"]["rung"]
    val = 0.9 - 0.05 * (math.log10(lr) - best_lr(rung)) ** 2 + 0.001 * (config["seed"] % 2)
    rows = [{"step": 10 * e, "epoch": e, "split": "val", "metric": "acc", "layer": "",
             "value": val} for e in range(2)]  # fmt: skip
    rows.append({"step": 20, "epoch": 1, "split": "test", "metric": "acc", "layer": "",
                 "value": 1.0 - val})  # fmt: skip
    return {"status": "completed", "metrics": rows, "meta": {}}


def _run(out: Path, transfer: str):
    from techbench.execute.local import execute

    plan = loads_matrix(TUNED.replace("{transfer}", transfer), "t.toml").tune_plan()

    def phase(trials: list, name: str):
        return execute(trials, out, workers=1, run_fn=ladder_trial, progress=False)

    result = run_tuned(plan, out, phase, note=lambda s: None)
    assert not result.interrupted and not result.pending
    return plan, result


def _nearest(points: list[dict], target: float) -> float:
    return min((p["optimizer.lr"] for p in points), key=lambda x: abs(math.log10(x) - target))


def _plant(out: Path, plan, rung: int) -> dict[str, float]:
    """Give the worst point of each rung-``rung`` search the best validation score of all;
    technique -> the planted learning rate."""
    store = ResultStore(out)
    import pyarrow.parquet as pq

    planted = {}
    for g in (g for g in plan.groups if g.rung == rung):
        worst = max(g.points[0], key=lambda p: abs(math.log10(p["optimizer.lr"]) - best_lr(rung)))
        planted[g.technique] = worst["optimizer.lr"]
        for seed in plan.spec.study_seeds(0):
            path = store.trials_dir / g.trial(worst, seed, False).id / "metrics.parquet"
            frame = pq.read_table(path).to_pandas()
            frame.loc[frame["split"] == "val", "value"] = PLANTED
            rewrite_metrics(path, frame)
    return planted


def test_retune_selects_each_rungs_own_best(tmp_path: Path) -> None:
    plan, result = _run(tmp_path / "out", "retune")
    assert len(plan.groups) == 6 and all(g.source is None for g in plan.groups)
    by_id = {g.id: g for g in plan.groups}
    picks = {}
    for s in result.selection:
        g = by_id[s.group]
        assert s.point["optimizer.lr"] == _nearest(g.points[0], best_lr(g.rung)) and not s.source
        picks[(g.technique, g.rung)] = s.point["optimizer.lr"]
    for tech in ("sgd", "adam"):  # the rungs' optima differ among the points
        assert picks[(tech, 0)] != picks[(tech, 2)]
    # every group searched at its own rung; contexts say the rung
    assert (
        sorted(g.context for g in plan.groups) == ["rung=0"] * 2 + ["rung=1"] * 2 + ["rung=2"] * 2
    )
    # a planted best point at rung 1 is what retune picks there (the plant works)
    planted = _plant(tmp_path / "out", plan, 1)
    again, _ = select_stored(plan, tmp_path / "out")
    got = {
        by_id[s.group].technique: s.point["optimizer.lr"] for s in again if by_id[s.group].rung == 1
    }
    assert got == planted


def test_base_transfers_rung_zeros_selection_from_its_validation_only(tmp_path: Path) -> None:
    out = tmp_path / "out"
    retune, _ = _run(out, "retune")  # stores every rung's search (as a retune run would)
    planted = _plant(out, retune, 1)
    plan, result = _run(out, "base")
    assert plan.transfer == "base" and read_plan(out).transfer == "base"
    by_id = {g.id: g for g in plan.groups}
    zero = {g.technique: g for g in plan.groups if g.rung == 0}
    assert all(g.points == [[]] and g.source == zero[g.technique].id
               for g in plan.groups if g.rung)  # fmt: skip
    # only rung 0 was searched: the planned search trials are rung 0's
    assert {t.config["scale"]["rung"] for t in plan.search_trials()} == {0}
    chosen = {(by_id[s.group].technique, by_id[s.group].rung): s for s in result.selection}
    for tech, g0 in zero.items():
        want = _nearest(g0.points[0], best_lr(0))
        for rung in range(3):
            s = chosen[(tech, rung)]
            assert s.point == {"optimizer.lr": want} and want != planted[tech]
            assert s.source == (g0.id if rung else None)
    # the finals ran at each rung's width with rung 0's learning rate
    store = ResultStore(out)
    for g in plan.groups:
        want = _nearest(zero[g.technique].points[0], best_lr(0))
        for seed in plan.spec.final_seeds:
            tid = g.trial({"optimizer.lr": want}, seed, False).id
            assert store.status(tid) == "completed"
    # selection is a pure function of the stored search: the stored plan selects the same
    again, pending = select_stored(read_plan(out), out)
    assert not pending and [(s.group, s.point) for s in again] == [
        (s.group, s.point) for s in result.selection
    ]


def test_filtering_a_higher_rung_under_base_still_searches_rung_zero(tmp_path: Path) -> None:
    m = loads_matrix(TUNED.replace("{transfer}", "base"), "t.toml")
    narrowed, trials, _ = narrow(m, _flags(filter=["rung=2"]))
    plan = narrowed.tune_plan()
    assert {(g.rung, g.finals, bool(g.source)) for g in plan.groups} == {(0, False, False),
                                                                          (2, True, True)}  # fmt: skip
    assert {t.config["scale"]["rung"] for t in trials} == {0} and len(trials) == 2 * 8 * 2
    assert plan.n_finals() == 2 * 2  # rung 2's two techniques x two final seeds
    out = tmp_path / "out"
    plan.write(out)
    m.tune_plan().write(out)  # the full run later: rung 0's finals are planned again
    stored = read_plan(out)
    assert stored is not None and all(g.finals for g in stored.groups)
    assert {g.rung for g in stored.groups} == {0, 1, 2}
