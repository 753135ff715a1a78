"""Member i of a stack is trial i: the engine against the plain-PyTorch reference loop.

The independent source is :func:`techbench.testing.reference_loop.reference_run`, the trial
contract written as a bare ``for`` loop over one network (no Lightning, no vmap). Every stored
row of a member (per-step losses, epoch metrics, test metrics, gradient health) must match the
trial trained by the reference: same keys, values within float32 tolerance (vmapped matrix
products round differently).
"""

from __future__ import annotations

import math

import pytest
import torch

from techbench.engine.trial import run_stack
from techbench.plan.stacking import plan_stacks, stack_key, unstackable_reason
from techbench.schema import complete_config, trial_id
from techbench.techniques.registry import default_registry
from techbench.testing.reference_loop import reference_run

RTOL, ATOL = 1e-4, 1e-6

BASE = {
    "dataset": {"name": "moons", "params": {"n_samples": 300}},
    "model": {"name": "mlp", "params": {"depth": 2, "width": 16}},
    "budget": {"epochs": 2, "batch_size": 32, "max_steps": 14},
    "trainer": {"accelerator": "cpu"},
    "health": {"enabled": True, "every_n_steps": 5},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _config(**over):
    return complete_config({**BASE, **over})


def _rows(outcome):
    rows = outcome.rows if hasattr(outcome, "rows") else outcome.metrics
    return {
        (r["split"], r["metric"], r["layer"], r["step"], r["epoch"]): r["value"]
        for r in rows
        if r["split"] != "time"
    }


def assert_members_equal(configs):
    stacked = run_stack(configs)
    for config, member in zip(configs, stacked, strict=True):
        alone = reference_run(config)
        assert member.status == alone.status, member.meta.error
        assert member.trial_id == alone.trial_id
        assert member.meta.diverged_step == alone.diverged_step
        assert member.meta.steps == alone.steps
        a, b = _rows(alone), _rows(member)
        assert a.keys() == b.keys(), sorted(set(a) ^ set(b))[:5]
        for key, va in a.items():
            vb = b[key]
            if math.isnan(va) or math.isnan(vb):
                assert math.isnan(va) and math.isnan(vb), key
            elif math.isinf(va) or math.isinf(vb):
                assert va == vb, key
            else:
                assert vb == pytest.approx(va, rel=RTOL, abs=ATOL), key
        assert member.meta.stack_size == len(configs)


def _opt(name, **params):
    return {"name": name, "params": params}


OPTIMIZERS = sorted(s.name for s in default_registry() if s.family == "optimizer")


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_member_equals_its_trial(name):
    spec = default_registry().get_spec(name, "optimizer")
    lr = next(p.default for p in spec.params if p.name == "lr")
    configs = [
        _config(seed=0, optimizer=_opt(name, lr=lr)),
        _config(seed=1, optimizer=_opt(name, lr=lr * 3)),
        _config(seed=2, optimizer=_opt(name, lr=lr)),
    ]
    assert len({stack_key(c) for c in configs}) == 1
    assert_members_equal(configs)


@pytest.mark.parametrize(
    "regularizer",
    [
        {"name": "none", "params": {}},
        {"name": "l2", "params": {"lam": 0.01}},
        {"name": "l1", "params": {"lam": 0.001}},
        {"name": "gaussian_noise", "params": {}},
        {"name": "label_smoothing", "params": {}},
        {"name": "weight_decay", "params": {"lam": 0.05}},
        {"name": "max_norm", "params": {"c": 0.8}},
        {"name": "clip_norm", "params": {"max_norm": 0.05}},
        {"name": "clip_value", "params": {"clip": 0.01}},
        {"name": "grad_noise", "params": {"eta": 0.1}},
    ],
    ids=lambda r: r["name"],
)
def test_stackable_regularizers_member_equals_its_trial(regularizer):
    """Three members with their own learning rates (one stacked optimizer: an after-step hook
    must see the member's own lr) and gradient health every 5 steps (the pre-transform norm and
    the transformed gradients are compared too)."""
    configs = [
        _config(seed=s, regularizer=regularizer, optimizer=_opt("adam", lr=lr))
        for s, lr in ((0, 0.01), (1, 0.01), (2, 0.03))
    ]
    assert unstackable_reason(configs[0]) == ""
    assert_members_equal(configs)


GRADIENT_REGULARIZERS = [
    ("weight_decay", "lam", (0.0, 0.02, 0.3)),
    ("max_norm", "c", (0.5, 1.0, 5.0)),
    ("clip_norm", "max_norm", (0.02, 0.2, 50.0)),
    ("clip_value", "clip", (0.001, 0.01, 1.0)),
    ("grad_noise", "eta", (0.0, 0.01, 0.3)),
    ("l2", "lam", (0.0, 0.01, 0.1)),
    ("l1", "lam", (0.0, 0.001, 0.01)),
    ("gaussian_noise", "std", (0.0, 0.1, 0.5)),
    ("label_smoothing", "epsilon", (0.0, 0.1, 0.3)),
]


@pytest.mark.parametrize(
    ("name", "param", "values"), GRADIENT_REGULARIZERS, ids=[g[0] for g in GRADIENT_REGULARIZERS]
)
def test_members_differ_in_the_regularizers_hyper_parameters(name, param, values):
    """One stack whose members differ in the regularizer's numeric hyper-parameter (and seed):
    each member uses its own value, in the hooks run inside vmap (penalty, loss) too."""
    configs = [
        _config(seed=s, regularizer={"name": name, "params": {param: v}})
        for s, v in enumerate(values)
    ]
    (stack,) = plan_stacks(configs, None)
    assert len(stack.configs) == len(values)
    assert_members_equal(configs)


def test_non_numeric_regularizer_options_stay_in_the_stack_key():
    a = _config(regularizer={"name": "l2", "params": {"lam": 0.1, "convention": "lambda"}})
    b = _config(regularizer={"name": "l2", "params": {"lam": 0.2, "convention": "lambda"}})
    c = _config(regularizer={"name": "l2", "params": {"lam": 0.1, "convention": "half_lambda"}})
    d = _config(regularizer={"name": "l2", "params": {"lam": 0.1, "include_bias": True}})
    assert stack_key(a) == stack_key(b)
    assert len({stack_key(a), stack_key(c), stack_key(d)}) == 3


def test_augment_on_images_member_equals_its_trial():
    image = {
        "dataset": {"name": "digits", "params": {"image": True}},
        "model": {"name": "cnn", "params": {}},
        "regularizer": {"name": "augment", "params": {}},
        "budget": {"epochs": 1, "batch_size": 64, "max_steps": 6},
    }
    assert_members_equal([_config(seed=s, **image) for s in (0, 1)])


@pytest.mark.parametrize(
    "normalizer", sorted(s.name for s in default_registry() if s.family == "normalizer")
)
def test_every_normalizer_member_equals_its_trial(normalizer):
    """Batch norm keeps per-member running statistics, used by the eval-mode metrics.

    SGD, not the default Adam: the bias of a layer followed by batch norm has a zero gradient up
    to rounding noise, which Adam's normalisation turns into lr-sized random steps; the running
    mean tracks that bias, so the eval metrics would differ by the noise, not by the engine.
    """
    configs = [
        _config(
            seed=s, normalizer={"name": normalizer, "params": {}}, optimizer=_opt("sgd", lr=0.1)
        )
        for s in (0, 1)
    ]
    assert_members_equal(configs)


def test_every_initializer_in_one_stack_equals_its_trial():
    """Members differ in initializer (LSUV fitted per member on its own sample) and seed."""
    names = sorted(s.name for s in default_registry() if s.family == "initializer")
    configs = [
        _config(seed=i % 3, initializer={"name": n, "params": {}}) for i, n in enumerate(names)
    ]
    (stack,) = plan_stacks(configs, None)
    assert len(stack.configs) == len(names)
    assert_members_equal(configs)


@pytest.mark.parametrize(
    "schedule", sorted(s.name for s in default_registry() if s.family == "schedule")
)
def test_every_schedule_member_equals_its_trial(schedule):
    configs = [
        _config(seed=0, schedule={"name": schedule, "params": {}}, optimizer=_opt("sgd", lr=0.1)),
        _config(seed=1, schedule={"name": schedule, "params": {}}, optimizer=_opt("sgd", lr=0.3)),
    ]
    assert_members_equal(configs)


def test_a_diverging_member_is_frozen_and_the_others_go_on():
    configs = [
        _config(seed=0, optimizer=_opt("sgd", lr=0.1)),
        _config(
            seed=0,
            optimizer=_opt("sgd", lr=9.0),
            initializer={"name": "large_normal", "params": {}},
        ),
    ]
    out = run_stack(configs)
    assert out[0].status == "completed"
    assert out[1].status == "diverged"
    assert_members_equal(configs)


@pytest.mark.parametrize(
    "regularizer",
    [
        {"name": "weight_decay", "params": {"lam": 0.01}},
        {"name": "max_norm", "params": {"c": 50.0}},
        {"name": "clip_value", "params": {"clip": 100.0}},
        {"name": "clip_norm", "params": {"max_norm": 1e4}},
        {"name": "grad_noise", "params": {"eta": 0.01}},
    ],
    ids=lambda r: r["name"],
)
def test_a_diverging_member_with_gradient_hooks_is_frozen(regularizer):
    """A member that diverges under a gradient or after-step hook stops at its exact step,
    as alone; the others go on with their hooks."""
    configs = [
        _config(seed=0, optimizer=_opt("sgd", lr=0.1), regularizer=regularizer),
        _config(
            seed=0,
            optimizer=_opt("sgd", lr=9.0),
            initializer={"name": "large_normal", "params": {}},
            regularizer=regularizer,
        ),
        _config(seed=1, optimizer=_opt("sgd", lr=0.1), regularizer=regularizer),
    ]
    out = run_stack(configs)
    assert [o.status for o in out] == ["completed", "diverged", "completed"]
    assert_members_equal(configs)


def test_stacks_group_by_shape_and_respect_the_size_cap():
    configs = [
        _config(seed=s, activation={"name": a, "params": {}})
        for a in ("relu", "tanh")
        for s in range(5)
    ]
    sizes = [len(s.configs) for s in plan_stacks(configs, 3)]
    assert sizes == [3, 2, 3, 2]
    assert [len(s.configs) for s in plan_stacks(configs, 1)] == [1] * 10


def _reduced(
    matrix: str, keep: int, regularizers: tuple[str, ...] = (), **dataset_params
) -> list[dict]:
    """Trials of a shipped matrix cut to a CPU-sized test: its first ``keep`` stack keys (of
    the given regularizers, if any), two seeds each, one short epoch (and ``dataset_params``
    over the dataset's)."""
    from techbench.plan.matrix import load_matrix

    out, keys = [], []
    for config in load_matrix(matrix).trials():
        if config["seed"] > 1:
            continue
        if regularizers and config["regularizer"]["name"] not in regularizers:
            continue
        key = stack_key(config)
        if key not in keys:
            if len(keys) == keep:
                continue
            keys.append(key)
        dataset = {**config["dataset"], "params": {**config["dataset"]["params"], **dataset_params}}
        config = complete_config(
            {
                **config,
                "dataset": dataset,
                "budget": {**config["budget"], "epochs": 1, "max_steps": 12},
            }
        )
        config["trainer"]["accelerator"] = "cpu"
        out.append(config)
    return out


GRADIENT_HOOKED = ("l2", "weight_decay", "max_norm", "clip_norm", "clip_value", "grad_noise")


@pytest.mark.parametrize(
    ("matrix", "keep", "dataset", "regularizers"),
    [
        ("demo", 2, {}, ()),
        ("optimizers", 3, {}, ()),
        ("regularizers", 4, {}, ()),
        ("regularizers", 6, {}, GRADIENT_HOOKED),
        ("charlm", 2, {"max_chars": 30_000}, ()),
    ],
)
def test_stacked_and_one_by_one_stores_agree(tmp_path, matrix, keep, dataset, regularizers):
    """The executor's stacked store has the one-by-one store's trial ids, statuses and rows
    (the regularizers with gradient and after-step hooks, and l2's two lambdas, stack)."""
    from techbench.execute.local import execute
    from techbench.plan.stacking import describe_stacks, plan_stacks
    from techbench.store.reader import load_results

    configs = _reduced(matrix, keep, regularizers, **dataset)
    if regularizers:
        stacks = plan_stacks(configs, None)
        assert [len(s.configs) for s in stacks] == [4, 2, 2, 2, 2, 2], describe_stacks(stacks)
        assert (
            describe_stacks(stacks)[0]
            == "stacks: 14 trials in 6 stacks (sizes 2-4); 0 alone (stacks of one)"
        )
    alone = execute(configs, tmp_path / "alone", workers=1, stack="off", progress=False)
    stacked = execute(configs, tmp_path / "stacked", workers=1, stack=16, progress=False)
    assert alone.counts == stacked.counts
    ta, ma = load_results(tmp_path / "alone")
    ts, ms = load_results(tmp_path / "stacked")
    planned = {i: len(st.ids) for st in plan_stacks(configs, 16) for i in st.ids}
    assert ts.set_index("trial_id")["stack_size"].to_dict() == planned
    assert max(planned.values()) > 1 and (ta["stack_size"] == 1).all()
    assert sorted(ta["trial_id"]) == sorted(ts["trial_id"])
    assert (
        ta.set_index("trial_id")["status"].to_dict() == ts.set_index("trial_id")["status"].to_dict()
    )
    assert (ts["step_seconds"] > 0).all() and (ta["step_seconds"] > 0).all()
    cols = ["trial_id", "split", "metric", "layer", "step", "epoch"]
    a = ma[ma["split"].astype(str) != "time"].astype({c: str for c in cols[:4]}).set_index(cols)
    s = ms[ms["split"].astype(str) != "time"].astype({c: str for c in cols[:4]}).set_index(cols)
    assert a.index.sort_values().equals(s.index.sort_values())
    joined = a.join(s.rename(columns={"value": "value_s"}))
    both = joined.dropna()
    assert len(both) > 0
    assert ((both["value"] - both["value_s"]).abs() <= ATOL + RTOL * both["value"].abs()).all()
    assert (joined["value"].isna() == joined["value_s"].isna()).all()


def test_stacked_check_catches_a_per_tensor_reduction():
    """A LARS-like update (normalised by the tensor's gradient norm) couples stacked members."""
    from techbench.techniques.spec import TechniqueSpec
    from techbench.testing.core import CheckFailure
    from techbench.testing.optimizer import check_stacked

    class PerTensorNorm(torch.optim.SGD):
        @torch.no_grad()
        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    p.add_(p.grad / (p.grad.norm() + 1e-12), alpha=-group["lr"])

    spec = TechniqueSpec(
        name="per_tensor_norm",
        family="optimizer",
        summary="normalised SGD (planted coupling)",
        fast=lambda params, lr=0.1: PerTensorNorm(params, lr=lr),
        properties={"elementwise": True},
    )
    with pytest.raises((CheckFailure, AssertionError), match="stacked vs alone"):
        check_stacked(spec)


def test_stacked_check_catches_decay_by_tensor_dimension():
    """An optimizer that tells weights from biases by ``p.dim()`` decays stacked biases (their
    shape is [K, n]); the check fails it, and the built-in (``trial_ndim``) passes."""
    from techbench.techniques.spec import TechniqueSpec
    from techbench.testing.core import CheckFailure
    from techbench.testing.optimizer import check_stacked

    def by_dim(params, lr=0.1, weight_decay=0.05):
        params = list(params)
        return torch.optim.SGD(
            [
                {"params": [p for p in params if p.dim() >= 2]},
                {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
            ],
            lr=lr,
            weight_decay=weight_decay,
        )

    spec = TechniqueSpec(
        name="decay_by_dim",
        family="optimizer",
        summary="weights-only decay chosen by p.dim() (planted)",
        fast=by_dim,
        properties={"elementwise": True},
    )
    with pytest.raises((CheckFailure, AssertionError), match="stacked vs alone"):
        check_stacked(spec)
    check_stacked(default_registry().get_spec("sgd", "optimizer"))  # decay="weights", trial_ndim


def test_stacked_gradient_check_catches_a_norm_over_all_members():
    """A stacked clip_norm that takes one norm over the whole stack couples members: the
    conformance check fails it (and the built-in passes)."""
    from techbench.techniques.spec import TechniqueSpec
    from techbench.testing.core import CheckFailure
    from techbench.testing.regularizer_stacked import check_stacked_gradients
    from techbench_builtins.regularizers_impl import ClipNorm

    class CoupledClip(ClipNorm):
        @staticmethod
        @torch.no_grad()
        def stacked_transform_gradients(regularizers, grads, step, generators=()):
            total = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
            scale = torch.clamp(regularizers[0].max_norm / total, max=1.0)
            for g in grads:
                g.mul_(scale)

    builtin = default_registry().get_spec("clip_norm", "regularizer")
    spec = TechniqueSpec(
        name="coupled_clip",
        family="regularizer",
        summary="clip_norm with one norm over all members (planted coupling)",
        fast=CoupledClip,
        params=builtin.params,
        properties=dict(builtin.properties),
    )
    with pytest.raises((CheckFailure, AssertionError), match="stacked vs alone"):
        check_stacked_gradients(spec)
    check_stacked_gradients(builtin)


@pytest.mark.parametrize(
    ("name", "param", "values"),
    [("clip_norm", "max_norm", (0.05, 0.3, 0.05)), ("clip_value", "clip", (0.01, 0.01, 0.1))],
)
def test_stacked_clipping_equals_the_per_member_loop_bitwise(monkeypatch, name, param, values):
    """The stacked clip implementations reduce each member's own rows with the kernels its
    own hook uses: a stack's rows are bitwise those of the per-member loop."""
    from techbench.engine import stacked_hooks

    configs = [
        _config(seed=s, regularizer={"name": name, "params": {param: v}})
        for s, v in enumerate(values)
    ]
    fast = run_stack(configs)
    monkeypatch.setattr(stacked_hooks, "STACKED_IMPLEMENTATIONS", False)
    loop = run_stack(configs)
    for a, b in zip(loop, fast, strict=True):
        assert a.status == b.status == "completed"
        assert _rows(a) == _rows(b)


def test_hooks_leave_frozen_members_alone():
    """A frozen member's rows of the stack are not touched by any member's gradient or
    after-step hook (the stacked path and the per-member path)."""
    from techbench.engine.stacked_hooks import StackedHooks
    from techbench_builtins.regularizers_impl import ClipNorm, DecoupledWeightDecay, MaxNorm

    for make in (lambda: ClipNorm(0.01), lambda: MaxNorm(0.1), lambda: DecoupledWeightDecay(0.5)):
        torch.manual_seed(0)
        models = [torch.nn.Linear(4, 3) for _ in range(3)]
        leaves = {
            n: torch.nn.Parameter(torch.stack([m.get_parameter(n).detach() for m in models]))
            for n, _ in models[0].named_parameters()
        }
        for leaf in leaves.values():
            leaf.grad = torch.randn_like(leaf)
        before = {n: (v.detach().clone(), v.grad.clone()) for n, v in leaves.items()}
        hooks = StackedHooks([make() for _ in models], models)
        opt = torch.optim.SGD(list(leaves.values()), lr=0.5)
        hooks.bind(lambda n, k, leaves=leaves: (leaves[n], k), [opt], [0, 0, 0])
        live, group_of = [0, 2], [0, 0, 0]
        hooks.bind_grads(hooks.needs_grads(live, group_of))
        gens = [torch.Generator() for _ in models]
        stacked = list(leaves.values())
        hooks.transform_gradients(
            live, group_of, 0, gens, lambda lo, hi, ls=stacked: [v.grad[lo:hi] for v in ls]
        )
        opt.step()
        hooks.after_step(live)
        for n, leaf in leaves.items():
            assert torch.equal(leaf.detach()[1], before[n][0][1] - 0.5 * before[n][1][1]), n
            assert torch.equal(leaf.grad[1], before[n][1][1]), n
            assert not torch.equal(leaf.detach()[0], before[n][0][0] - 0.5 * before[n][1][0]) or (
                n == "bias"
            ), n


def test_early_stopping_stops_each_member_at_its_own_epoch():
    """Early stopping acts per member: members stop when their own val_loss stalls."""
    stop = {"name": "early_stopping", "params": {"patience": 1}}
    budget = {"epochs": 8, "batch_size": 32, "max_steps": None}
    configs = [
        _config(seed=s, regularizer=stop, budget=budget, optimizer=_opt("sgd", lr=lr))
        for s, lr in ((0, 0.5), (1, 0.05), (2, 2.0))
    ]
    assert unstackable_reason(configs[0]) == ""
    out = run_stack(configs)
    assert len({o.meta.epochs for o in out}) > 1, [o.meta.epochs for o in out]
    assert_members_equal(configs)


@pytest.mark.parametrize(
    ("name", "regularizer", "values"),
    [
        ("sgd", "none", {}),
        ("adam", "none", {}),
        ("adam", "weight_decay", {"lam": (0.05, 0.3, 0.05)}),
        ("sgd", "clip_norm", {"max_norm": (0.05, 0.05, 0.5)}),
        ("adam", "grad_noise", {"eta": (0.01, 0.01, 0.1)}),
        ("sgd", "max_norm", {"c": (0.7, 0.7, 0.7)}),
    ],
)
def test_float64_members_equal_their_trials_to_1e_9(name, regularizer, values):
    """In float64 ("64-true") a member's rows equal its trial's to 1e-9 relative (with the
    gradient and after-step hooks, members set alike or not)."""
    float64 = {"trainer": {"accelerator": "cpu", "precision": "64-true"}}
    configs = [
        _config(
            seed=s,
            optimizer=_opt(name, lr=lr),
            regularizer={"name": regularizer, "params": {k: v[s] for k, v in values.items()}},
            **float64,
        )
        for s, lr in ((0, 0.01), (1, 0.01), (2, 0.03))
    ]
    for config, member in zip(configs, run_stack(configs), strict=True):
        alone = reference_run(config)
        assert member.status == alone.status == "completed", member.meta.error
        a, b = _rows(alone), _rows(member)
        assert a.keys() == b.keys()
        for key, va in a.items():
            assert b[key] == pytest.approx(va, rel=1e-9, abs=1e-12, nan_ok=True), key


def test_a_stack_that_fails_as_a_whole_runs_its_members_alone(tmp_path, monkeypatch):
    """Stacking never costs a result: when the stacked run fails, each member runs alone (a
    stack of one, which calls its network without vmap)."""
    import json

    import techbench.engine.trial
    from techbench.execute.local import execute

    real = techbench.engine.trial.run_stack

    def broken(configs, **kw):
        if len(configs) > 1:
            raise RuntimeError("vmap: cannot batch this network")
        return real(configs, **kw)

    monkeypatch.setattr(techbench.engine.trial, "run_stack", broken)
    configs = [_config(seed=s) for s in (0, 1)]
    result = execute(configs, tmp_path, workers=1, stack="auto", progress=False)
    assert result.counts["completed"] == 2
    for config in configs:
        meta = json.loads((tmp_path / "trials" / trial_id(config) / "meta.json").read_text())
        assert meta["status"] == "completed" and meta["stack_size"] == 1
        assert meta["stack_error"] == "RuntimeError: vmap: cannot batch this network"


def test_a_stack_out_of_device_memory_is_halved_until_it_fits(tmp_path, monkeypatch):
    """An out-of-memory stack is split in halves (not run one by one): a device that holds
    two members runs 5 trials as stacks of 2, 1 and 2, each member with its own result."""
    import json

    import techbench.engine.trial
    from techbench.execute.local import execute

    real = techbench.engine.trial.run_stack
    sizes: list[int] = []

    def small_device(configs, **kw):
        sizes.append(len(configs))
        if len(configs) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(configs, **kw)

    monkeypatch.setattr(techbench.engine.trial, "run_stack", small_device)
    configs = [_config(seed=s) for s in range(5)]
    result = execute(configs, tmp_path, workers=1, stack="auto", progress=False)
    assert result.counts["completed"] == 5
    # then the step-time calibration's trial alone (a stack of one)
    assert sizes[:5] == [5, 3, 2, 1, 2] and set(sizes[5:]) <= {1}
    stored = [
        json.loads((tmp_path / "trials" / trial_id(c) / "meta.json").read_text()) for c in configs
    ]
    assert sorted(m["stack_size"] for m in stored) == [1, 2, 2, 2, 2]
    assert not any(m.get("stack_error") for m in stored)


# -- members with their own optimizer hyper-parameters: one stacked optimizer -------------------

DISTINCT = {
    "adam": [
        {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
        {"lr": 3e-3, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6},
        {"lr": 1e-2, "beta1": 0.95, "beta2": 0.9995, "eps": 1e-8, "weight_decay": 1e-3},
        {"lr": 3e-4, "beta1": 0.5, "beta2": 0.98, "eps": 1e-4},
    ],
    "momentum": [
        {"lr": 0.01, "momentum": 0.9},
        {"lr": 0.05, "momentum": 0.5, "dampening": 0.1},
        {"lr": 0.1, "momentum": 0.99, "weight_decay": 1e-2},
        {"lr": 0.02, "momentum": 0.8, "dampening": 0.5},
    ],
    "rmsprop": [
        {"lr": 1e-3, "alpha": 0.99},
        {"lr": 3e-3, "alpha": 0.9, "momentum": 0.5},
        {"lr": 1e-2, "alpha": 0.999, "momentum": 0.9, "eps": 1e-6},
        {"lr": 3e-4, "alpha": 0.95, "weight_decay": 1e-3},
    ],
    "radam": [  # beta2 0.9 rectifies from step 6, 0.999 not within the run
        {"lr": 1e-3, "beta2": 0.9},
        {"lr": 1e-2, "beta1": 0.8, "beta2": 0.999},
        {"lr": 3e-3, "beta1": 0.95, "beta2": 0.95, "weight_decay": 1e-2},
    ],
}


def _distinct(name, **over):
    return [
        _config(seed=k, optimizer=_opt(name, **hp), **over) for k, hp in enumerate(DISTINCT[name])
    ]


def _trained_module(configs, registry=None):
    from techbench.engine.trial import _train_stack

    module, *_ = _train_stack([complete_config(c) for c in configs], registry)
    return module


@pytest.mark.parametrize("name", sorted(DISTINCT))
def test_members_with_their_own_hyperparameters_train_with_one_stacked_optimizer(name):
    """Members differing in lr, betas, momentum, eps and decay: one optimizer, one leaf per
    parameter (no per-setting slices), and each member's rows equal its trial's."""
    from techbench_builtins.optimizers_stacked import StackedOptimizer

    configs = _distinct(name)
    assert len({stack_key(c) for c in configs}) == 1
    module = _trained_module(configs)
    (optimizer,) = module.trainer.optimizers
    assert isinstance(optimizer, StackedOptimizer)
    assert len(module.leaves) == len(module.names)
    assert_members_equal(configs)


@pytest.mark.parametrize("name", sorted(DISTINCT))
def test_float64_members_with_their_own_hyperparameters_equal_their_trials_to_1e_9(name):
    float64 = {"trainer": {"accelerator": "cpu", "precision": "64-true"}}
    configs = _distinct(name, schedule={"name": "cosine", "params": {"warmup_steps": 3}}, **float64)
    for config, member in zip(configs, run_stack(configs), strict=True):
        alone = reference_run(config)
        assert member.status == alone.status == "completed", member.meta.error
        a, b = _rows(alone), _rows(member)
        assert a.keys() == b.keys()
        for key, va in a.items():
            assert b[key] == pytest.approx(va, rel=1e-9, abs=1e-12, nan_ok=True), key


def test_members_differing_in_a_shared_choice_get_one_stacked_optimizer_per_choice():
    """eps placement is structural: inside and outside members train under two stacked
    optimizers (members ordered so each is one slice), each member still its trial."""
    configs = [
        _config(seed=k, optimizer=_opt("adam", lr=lr, eps=1e-4, eps_placement=where))
        for k, (lr, where) in enumerate(
            [(1e-3, "inside"), (3e-3, "outside"), (1e-2, "inside"), (2e-3, "outside")]
        )
    ]
    module = _trained_module(configs)
    assert len(module.trainer.optimizers) == 2
    assert [(s.start, s.stop) for s in module.group_slices] == [(0, 2), (2, 4)]
    assert_members_equal(configs)


class _Registry:
    """The default registry with the ``constant`` schedule's ``multiplicative`` claim removed
    (what a third-party schedule that declares nothing looks like)."""

    def __init__(self):
        self.inner = default_registry()

    def get_spec(self, name, family=None):
        import dataclasses

        spec = self.inner.get_spec(name, family)
        if spec.family == "schedule":
            props = {k: v for k, v in spec.properties.items() if k != "multiplicative"}
            spec = dataclasses.replace(spec, properties=props)
        return spec

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_schedule_not_declared_multiplicative_keeps_one_optimizer_per_setting():
    """Without the claim the schedule can't run on a multiplier: one fast optimizer per
    distinct setting over its slice, as before."""
    from techbench_builtins.optimizers_stacked import StackedOptimizer

    configs = _distinct("momentum")[:3]
    module = _trained_module(configs, _Registry())
    assert len(module.trainer.optimizers) == 3
    assert not any(isinstance(o, StackedOptimizer) for o in module.trainer.optimizers)
    assert len(module.leaves) == 3 * len(module.names)
    stacked = run_stack(configs, registry=_Registry())
    for config, member in zip(configs, stacked, strict=True):
        alone = _rows(reference_run(config, _Registry()))
        for key, va in alone.items():
            assert _rows(member)[key] == pytest.approx(va, rel=RTOL, abs=ATOL, nan_ok=True), key


LM = {
    "dataset": {"name": "markov", "params": {"n_tokens": 3000, "context": 16}},
    "model": {"name": "transformer", "params": {"width": 16, "depth": 2, "heads": 2}},
    "preprocessor": {"name": "none", "params": {}},
    "normalizer": {"name": "layernorm", "params": {}},
    "norm_placement": "before",
    "budget": {"epochs": 2, "batch_size": 16, "max_steps": 14},
}


def test_language_model_members_equal_their_trials():
    """A stack of tiny transformers (seeds and learning rates differ) records every row of its
    trials: per-step next-token losses, epoch loss/acc/bpc/ppl, test and best-weights metrics,
    gradient health."""
    configs = [
        _config(seed=s, optimizer=_opt("adamw", lr=lr), **LM)
        for s, lr in ((0, 0.003), (1, 0.01), (2, 0.003))
    ]
    assert unstackable_reason(configs[0]) == ""
    assert_members_equal(configs)
    metrics = {(r["split"], r["metric"]) for r in run_stack(configs[:2])[0].metrics}
    assert {("val", "bpc"), ("val", "ppl"), ("test", "best_ppl"), ("train", "epoch_acc")} <= metrics


def test_language_model_float64_members_equal_their_trials_to_1e_9():
    float64 = {"trainer": {"accelerator": "cpu", "precision": "64-true"}}
    configs = [
        _config(seed=s, optimizer=_opt("lion", lr=lr), **{**LM, **float64})
        for s, lr in ((0, 0.001), (1, 0.003))
    ]
    for config, member in zip(configs, run_stack(configs), strict=True):
        alone = reference_run(config)
        assert member.status == alone.status == "completed", member.meta.error
        a, b = _rows(alone), _rows(member)
        assert a.keys() == b.keys()
        for key, va in a.items():
            assert b[key] == pytest.approx(va, rel=1e-9, abs=1e-12, nan_ok=True), key


def test_language_model_chunked_evaluation_is_the_trials(monkeypatch):
    """With evaluation chunks of a few windows (the one-by-one chunks, summed), members still
    equal their trials."""
    import techbench.tasks

    monkeypatch.setattr(techbench.tasks, "LM_EVAL_TOKENS", 16 * 7)
    configs = [_config(seed=s, optimizer=_opt("adamw", lr=0.003), **LM) for s in (0, 1)]
    assert_members_equal(configs)


FAMILIES = {
    "cnn_batchnorm": {
        "dataset": {"name": "digits", "params": {"image": True}},
        "model": {"name": "cnn", "params": {"hidden": 8}},
        "normalizer": {"name": "batchnorm", "params": {}},
    },
    "resnet_batchnorm": {
        "dataset": {"name": "digits", "params": {"image": True}},
        "model": {"name": "resnet", "params": {"depth": 8, "width": 4}},
        "normalizer": {"name": "batchnorm", "params": {}},
    },
    "resmlp_layernorm": {
        "model": {"name": "resmlp", "params": {"blocks": 2, "width": 8}},
        "normalizer": {"name": "layernorm", "params": {}},
    },
    "transformer_tied_postnorm_rmsnorm": {
        **LM,
        "model": {
            "name": "transformer",
            "params": {"width": 16, "depth": 1, "heads": 2, "tie_weights": True},
        },
        "normalizer": {"name": "rmsnorm", "params": {}},
        "norm_placement": "after",
    },
    "transformer_batchnorm": {**LM, "normalizer": {"name": "batchnorm", "params": {}}},
    "transformer_dropout": {**LM, "regularizer": {"name": "dropout", "params": {"p": 0.2}}},
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_model_family_member_equals_its_trial(family):
    """Every built-in model vmaps: convolutions, batch norm with per-member running statistics
    (ResNet's shortcuts), residual blocks, attention, a tied embedding/head (one shared leaf)."""
    budget = {"epochs": 1, "batch_size": 64, "max_steps": 6}
    configs = [
        _config(seed=s, optimizer=_opt("sgd", lr=lr), **{"budget": budget, **FAMILIES[family]})
        for s, lr in ((0, 0.05), (1, 0.1))
    ]
    assert_members_equal(configs)
