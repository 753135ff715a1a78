"""Matrix specs: expansion (order, sweeps, include/exclude, ids) and validation that reports every
problem with file, key path and a suggestion. Most tests use a small registry of fake specs so
they do not depend on the built-ins' parameter names; the shipped matrices use the real one."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import warnings
from importlib.metadata import EntryPoint

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from techbench.plan.matrix import (
    Matrix,
    MatrixError,
    builtin_matrices,
    load_matrix,
    load_matrix_dict,
    loads_matrix,
)
from techbench.schema import AXES, DEFAULT_CONFIG, trial_id
from techbench.techniques.registry import Registry
from techbench.techniques.spec import Param, TechniqueSpec


def _spec(name: str, family: str, *params: Param) -> TechniqueSpec:
    return TechniqueSpec(name=name, family=family, summary=f"fake {name}", fast=None, params=params)


LR = Param(name="lr", type=float, default=0.01, low=0.0, high=10.0, low_open=True)
FAKES = {
    "activation": [
        _spec("relu", "activation"),
        _spec("tanh", "activation"),
        _spec(
            "leaky_relu", "activation", Param(name="alpha", type=float, default=0.01, low=0, high=1)
        ),
    ],
    "optimizer": [
        _spec(
            "sgd", "optimizer", LR, Param(name="momentum", type=float, default=0.0, low=0, high=1)
        ),
        _spec("adam", "optimizer", Param(name="lr", type=float, default=0.001, low=0, high=10)),
    ],
    "dataset": [
        _spec("digits", "dataset"),
        _spec("moons", "dataset", Param(name="n_samples", type=int, default=2000, low=10)),
    ],
    "model": [
        _spec(
            "mlp",
            "model",
            Param(name="depth", type=int, default=2, low=1),
            Param(name="width", type=int, default=128, low=1),
        )
    ],
    "initializer": [_spec(n, "initializer") for n in ("he_normal", "zeros", "xavier_normal")],
    "normalizer": [_spec("none", "normalizer"), _spec("batchnorm", "normalizer")],
    "regularizer": [
        _spec("none", "regularizer"),
        _spec("dropout", "regularizer", Param(name="p", type=float, default=0.5, low=0, high=1)),
    ],
    "schedule": [_spec("constant", "schedule")],
    "preprocessor": [_spec("standardize", "preprocessor")],
}
for _family, _specs in FAKES.items():
    for _s in _specs:
        globals()[f"FAKE_{_family}_{_s.name}"] = _s


@pytest.fixture(scope="module")
def registry() -> Registry:
    eps = [
        EntryPoint(s.name, f"tests.test_matrix:FAKE_{fam}_{s.name}", f"techbench.{fam}s")
        for fam, specs in FAKES.items()
        for s in specs
    ]
    return Registry(entry_points=eps)


def load(text: str, registry: Registry, source: str = "m.toml") -> Matrix:
    return loads_matrix(text, source, registry)


def problems(text: str, registry: Registry) -> list[str]:
    with pytest.raises(MatrixError) as info:
        load(text, registry)
    return [str(p) for p in info.value.problems]


def test_trial_id_is_sha256_of_sorted_compact_json():
    config = {"b": 1, "a": {"y": [1, 2], "x": None}}
    text = '{"a":{"x":null,"y":[1,2]},"b":1}'
    assert trial_id(config) == hashlib.sha256(text.encode()).hexdigest()[:16]


def test_product_order_seeds_outer_and_every_key_filled(registry):
    m = load(
        """
        name = "t"
        seeds = [3, 7]
        [axes]
        dataset = ["digits", "moons"]
        activation = ["relu", "tanh", "leaky_relu"]
        """,
        registry,
    )
    trials = m.trials()
    expected = [
        (s, d, a)
        for s in (3, 7)
        for d in ("digits", "moons")
        for a in ("relu", "tanh", "leaky_relu")
    ]
    got = [(t["seed"], t["dataset"]["name"], t["activation"]["name"]) for t in trials]
    assert got == expected
    for t in trials:
        assert set(t) == set(DEFAULT_CONFIG)
        assert t["optimizer"] == DEFAULT_CONFIG["optimizer"]
        assert t["data_seed"] == 0
    assert len({trial_id(t) for t in trials}) == 12


def test_sweeps_expand_in_key_order_and_coerce(registry):
    m = load(
        """
        [axes]
        optimizer = [{ name = "sgd", lr = [0.1, 1], momentum = [0.0, 0.9] }, "adam(lr=1)"]
        """,
        registry,
        source="sweep.toml",
    )
    opts = [t["optimizer"] for t in m.trials()]
    assert m.name == "sweep"
    assert opts == [
        {"name": "sgd", "params": {"lr": 0.1, "momentum": 0.0}},
        {"name": "sgd", "params": {"lr": 0.1, "momentum": 0.9}},
        {"name": "sgd", "params": {"lr": 1.0, "momentum": 0.0}},
        {"name": "sgd", "params": {"lr": 1.0, "momentum": 0.9}},
        {"name": "adam", "params": {"lr": 1.0}},
    ]
    assert isinstance(opts[2]["params"]["lr"], float)


def test_equal_specs_give_equal_ids_whatever_the_spelling(registry):
    a = load('[axes]\noptimizer = [{ name = "sgd", lr = 1, momentum = 0.5 }]', registry)
    b = load('[axes]\noptimizer = ["sgd(momentum=0.5, lr=1.0)"]', registry)
    assert [trial_id(t) for t in a.trials()] == [trial_id(t) for t in b.trials()]


def test_exclude_prunes_by_name_params_defaults_lists_and_seed(registry):
    m = load(
        """
        seeds = 2
        [axes]
        dataset = ["digits", { name = "moons", n_samples = 100 }]
        activation = ["relu", "tanh", { name = "leaky_relu", alpha = [0.01, 0.2] }]
        [[exclude]]
        activation = "tanh"
        dataset = "moons"
        [[exclude]]
        activation = { name = "leaky_relu", alpha = 0.01 }   # the default: matches alpha unset too
        [[exclude]]
        seed = 1
        dataset = ["digits"]
        """,
        registry,
    )
    got = {(t["seed"], t["dataset"]["name"], _fmt(t["activation"])) for t in m.trials()}
    full = {
        (s, d, a)
        for s in (0, 1)
        for d in ("digits", "moons")
        for a in ("relu", "tanh", "leaky_relu(alpha=0.01)", "leaky_relu(alpha=0.2)")
    }
    removed = {x for x in full if x[2] == "tanh" and x[1] == "moons"}
    removed |= {x for x in full if x[2] == "leaky_relu(alpha=0.01)"}
    removed |= {x for x in full if x[0] == 1 and x[1] == "digits"}
    assert got == full - removed


def _fmt(value: dict) -> str:
    params = value["params"]
    return value["name"] + (
        "(" + ", ".join(f"{k}={v!r}" for k, v in params.items()) + ")" if params else ""
    )


def test_include_is_a_sub_product_over_defaults_and_duplicates_drop(registry):
    m = load(
        """
        seeds = [0]
        [defaults]
        optimizer = { name = "sgd", lr = 0.5 }
        model = { name = "mlp", depth = 4 }
        [axes]
        activation = ["relu", "tanh"]
        [[include]]
        activation = ["relu", "leaky_relu"]
        normalizer = "batchnorm"
        seeds = [5, 6]
        [[include]]
        activation = "relu"
        """,
        registry,
    )
    trials = m.trials()
    keys = [(t["activation"]["name"], t["normalizer"]["name"], t["seed"]) for t in trials]
    assert keys == [
        ("relu", "none", 0),
        ("tanh", "none", 0),
        ("relu", "batchnorm", 5),
        ("leaky_relu", "batchnorm", 5),
        ("relu", "batchnorm", 6),
        ("leaky_relu", "batchnorm", 6),
    ]
    assert all(t["optimizer"] == {"name": "sgd", "params": {"lr": 0.5}} for t in trials)
    assert all(t["model"] == {"name": "mlp", "params": {"depth": 4}} for t in trials)


def test_budget_target_sections_and_data_seeds(registry):
    m = load(
        """
        seeds = 2
        data_seeds = "seed"
        [budget]
        steps = 50
        max_seconds = 5
        batch_size = 32
        [target]
        metric = "val_loss"
        value = 0.3
        [trainer]
        accelerator = "auto"
        [health]
        enabled = false
        [defaults]
        activation = "relu"
        """,
        registry,
    )
    (a, b) = m.trials()
    assert a["budget"] == {"epochs": None, "max_steps": 50, "max_seconds": 5.0, "batch_size": 32}
    assert a["target"] == {"metric": "val_loss", "value": 0.3, "mode": "min"}
    assert a["trainer"]["accelerator"] == "auto" and a["trainer"]["devices"] == 1
    assert a["health"] == {"enabled": False, "every_n_steps": 25, "curvature": None}
    assert (a["seed"], a["data_seed"], b["seed"], b["data_seed"]) == (0, 0, 1, 1)


MALFORMED = [
    ("nme = 'x'", "nme", "did you mean 'name'"),
    ("name = 'Bad Name'", "name", "lower case"),
    ("seeds = 0", "seeds", "[1, 10000]"),
    ("seeds = [1, 1]", "seeds", "must not repeat"),
    ("seeds = [-1]", "seeds[0]", "[0, 2**32)"),
    ("seeds = 'many'", "seeds", "a count like 5"),
    ("[budget]\nepoch = 3", "budget.epoch", "did you mean 'epochs'"),
    ("[budget]\nbatch_size = 0", "budget.batch_size", "must be >= 1"),
    ("[budget]\nmax_seconds = -1", "budget.max_seconds", "> 0"),
    ("[target]\nmode = 'maximum'", "target.mode", "'max' or 'min'"),
    ("[axes]\nactivaton = ['relu']", "axes.activaton", "did you mean 'activation'"),
    ("[axes]\nactivation = ['rleu']", "axes.activation[0]", "did you mean 'relu'"),
    ("[axes]\nactivation = []", "axes.activation", "empty"),
    ("[axes]\nactivation = [3]", "axes.activation[0]", "technique name or a table"),
    ("[axes]\nactivation = [{ alpha = 0.1 }]", "axes.activation[0]", 'name = "..."'),
    (
        "[axes]\nactivation = [{ name = 'leaky_relu', alhpa = 0.1 }]",
        "axes.activation[0].alhpa",
        "did you mean 'alpha'",
    ),
    (
        "[axes]\nactivation = [{ name = 'leaky_relu', alpha = 2 }]",
        "axes.activation[0].alpha",
        "above the allowed range",
    ),
    ("[axes]\noptimizer = ['sgd(lr=fast)']", "axes.optimizer[0]", "literal"),
    ("[axes]\noptimizer = [{ name = 'sgd', lr = [] }]", "axes.optimizer[0].lr", "empty sweep"),
    ("[axes]\ndataset = 'relu'", "axes.dataset", "unknown dataset 'relu'"),
    ("[axes]\nnorm_placement = ['bfore']", "axes.norm_placement[0]", "did you mean 'before'"),
    ("[defaults]\nactivation = ['relu', 'tanh']", "defaults.activation", "sweep values in [axes]"),
    (
        "[defaults]\noptimizer = { name = 'sgd', lr = [0.1, 0.2] }",
        "defaults.optimizer.lr",
        "only in [axes]",
    ),
    ("axes = 3", "axes", "must be a table"),
    ("[[exclude]]\nactivaton = 'relu'", "exclude[0].activaton", "did you mean 'activation'"),
    ("[[exclude]]\nseed = 'one'", "exclude[0].seed", "integer"),
    ("exclude = { activation = 'relu' }", "exclude", "array of tables"),
    ("[[include]]\nactivation = 'selu'", "include[0].activation", "unknown activation 'selu'"),
    ("[trainer]\ndevices = 0", "trainer.devices", ">= 1 or 'auto'"),
    ("[health]\nevery_n_steps = 1.5", "health.every_n_steps", "integer"),
    ("[axes]\nactivation = ['relu']\nseeds = 5", "axes.seeds", "move it above the first [table]"),
]


@pytest.mark.parametrize(("text", "path", "fragment"), MALFORMED)
def test_malformed_spec_names_file_key_path_and_problem(registry, text, path, fragment):
    (problem,) = problems(text, registry)
    assert problem.startswith(f"m.toml: {path}: "), problem
    assert fragment in problem, problem


def test_every_problem_is_reported_at_once(registry):
    found = problems(
        """
        nme = "x"
        seeds = [0, 0]
        [budget]
        epoch = 3
        [axes]
        activation = ["rleu", { name = "leaky_relu", alpha = -1 }]
        optimizer = [{ name = "sgd", lr = "fast" }]
        [[exclude]]
        dataset = "mnst"
        """,
        registry,
    )
    assert len(found) == 7
    paths = [p.split(": ")[1] for p in found]
    assert paths == [
        "nme",
        "seeds",
        "budget.epoch",
        "axes.activation[0]",
        "axes.activation[1].alpha",
        "axes.optimizer[0].lr",
        "exclude[0].dataset",
    ]


def test_invalid_toml_reports_the_position(registry):
    (p,) = problems("name = \n[axes", registry)
    assert p.startswith("m.toml: invalid TOML") and "line 1" in p


def test_too_many_trials_is_refused_before_expanding(registry):
    lrs = ", ".join(str(0.001 * (i + 1)) for i in range(20))
    text = f"seeds = 10000\n[axes]\noptimizer = [{{ name = 'sgd', lr = [{lrs}] }}]"
    (p,) = problems(text, registry)
    assert "200000 trials" in p and "split the matrix" in p


def test_unknown_ready_made_matrix_suggests_close_names():
    with pytest.raises(MatrixError) as info:
        load_matrix("smok")
    assert "did you mean 'smoke'" in str(info.value)


# Hypothesis: whatever the document, loading either succeeds or raises MatrixError whose
# problems all name the source and a key path; never another exception.

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["relu", "tanh", "sgd", "digits", "moons", "mlp", "none", "before", "seed"]),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.one_of(
                st.sampled_from(["name", "lr", "alpha", "momentum", "depth", "n_samples", "p"]),
                st.text(max_size=8),
            ),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=6,
)
_keys = st.sampled_from(
    [
        *("name", "seeds", "data_seeds", "budget", "target", "trainer", "health", "defaults"),
        *("axes", "include", "exclude", "description", "sedes"),
    ]
)
_axis_tables = st.dictionaries(st.sampled_from([*AXES, "seed", "bogus"]), _values, max_size=4)
_documents = st.dictionaries(
    _keys,
    st.one_of(_values, _axis_tables, st.lists(_axis_tables, max_size=3)),
    max_size=7,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=_documents)
def test_random_documents_load_or_fail_cleanly(registry, doc):
    try:
        m = load_matrix_dict(doc, "gen.toml", registry)
    except MatrixError as exc:
        assert exc.problems
        for p in exc.problems:
            assert str(p).startswith("gen.toml: ")
            assert p.message
        return
    n = math.prod(len(v) for v in m.axes.values())
    assert n >= 1
    if n * len(m.seeds) > 200:
        return
    trials = m.trials()
    assert trials == m.trials()
    for t in trials:
        assert set(t) == set(DEFAULT_CONFIG)
        json.dumps(t, allow_nan=False)


@settings(max_examples=150, deadline=None)
@given(
    acts=st.lists(st.sampled_from(["relu", "tanh", "leaky_relu", "rleu"]), min_size=1, max_size=4),
    lrs=st.lists(st.floats(-1, 20, allow_nan=False), min_size=1, max_size=3),
    seeds=st.integers(-2, 4),
)
def test_generated_axes_give_exact_problems_or_the_full_product(registry, acts, lrs, seeds):
    doc = {"seeds": seeds, "axes": {"activation": acts, "optimizer": [{"name": "sgd", "lr": lrs}]}}
    bad_lrs = [x for x in lrs if not 0 < x <= 10]
    expect_problems = acts.count("rleu") + len(bad_lrs) + (seeds < 1)
    try:
        m = load_matrix_dict(doc, "g.toml", registry)
    except MatrixError as exc:
        assert len(exc.problems) == expect_problems
        return
    assert expect_problems == 0
    unique_lrs = list(dict.fromkeys(float(x) for x in lrs))
    assert len(m.trials()) == seeds * len(set(itertools.product(acts, unique_lrs)))


# The ready-made matrices, against the real registry.


@pytest.fixture(scope="module")
def shipped() -> dict[str, Matrix]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {name: load_matrix(name) for name in builtin_matrices()}


def test_every_ready_made_matrix_validates(shipped):
    assert {
        "smoke",
        "demo",
        "activations",
        "initializers",
        "normalizers",
        "regularizers",
        "optimizers",
        "lecture",
    } <= set(shipped)
    for name, m in shipped.items():
        assert m.name == name and m.description
        assert m.trials()


def test_smoke_and_demo_sizes(shipped):
    assert 2 <= len(shipped["smoke"].trials()) <= 4
    demo = shipped["demo"].trials()
    assert len({t["activation"]["name"] for t in demo}) >= 5
    assert len({t["dataset"]["name"] for t in demo}) >= 2
    assert len({t["seed"] for t in demo}) >= 5
    assert len(demo) >= 50


def test_lecture_makes_the_notes_comparisons(shipped):
    trials = shipped["lecture"].trials()

    def names(axis):
        return {t[axis]["name"] for t in trials}

    assert {t["dataset"]["name"] for t in trials} == {"digits"}
    assert {"sigmoid", "tanh", "relu", "leaky_relu", "elu"} <= names("activation")
    assert {"small_normal", "large_normal", "xavier_normal", "he_normal"} <= names("initializer")
    assert {"none", "batchnorm"} <= names("normalizer")
    assert {"sgd", "momentum", "rmsprop", "adam"} <= names("optimizer")
    assert {"none", "l2", "dropout"} <= names("regularizer")


def test_ids_agree_with_the_trial_module(shipped):
    trial = pytest.importorskip("techbench.engine.trial")
    for t in shipped["demo"].trials()[:5]:
        assert trial.trial_id(t) == trial_id(t)
        assert trial.complete_config(t) == t


def test_expansion_is_pure_so_shards_partition_it(shipped):
    from techbench.plan.shard import shard

    trials = shipped["optimizers"].trials()
    again = load_matrix("optimizers").trials()
    assert [trial_id(t) for t in trials] == [trial_id(t) for t in again]
    parts = [shard(trials, k, 3, key=trial_id) for k in (1, 2, 3)]
    assert sorted(trial_id(t) for p in parts for t in p) == sorted(trial_id(t) for t in trials)
