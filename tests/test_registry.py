"""Entry-point discovery, lazy loading, isolation of broken plugins, name lookup."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest

from techbench.techniques.registry import (
    BrokenPluginError,
    DuplicateTechniqueError,
    PluginWarning,
    UnknownTechniqueError,
)

pytestmark = pytest.mark.filterwarnings("ignore::techbench.techniques.registry.PluginWarning")

GOOD = """
from techbench.techniques.spec import Param, TechniqueSpec
shifted = TechniqueSpec(
    name="shifted", family="activation", summary="x + c.", fast="goodpkg.impl:make",
    reference="goodpkg.impl:make", citation="none",
    params=(Param(name="c", type=float, default=1.0),),
)
plain_sgd = TechniqueSpec(
    name="plain_sgd", family="optimizer", summary="SGD.", fast="goodpkg.impl:make",
    reference="goodpkg.impl:make", citation="Robbins and Monro 1951",
)
none = TechniqueSpec(name="none", family="normalizer", summary="Identity.", fast="goodpkg.impl:make",
    reference="goodpkg.impl:make", citation="-")
none_reg = TechniqueSpec(name="none", family="regularizer", summary="Nothing.",
    fast="goodpkg.impl:make", reference="goodpkg.impl:make", citation="-")
"""


@pytest.fixture
def plugins(fake_dists):
    """A good distribution and four broken ones, importable from ``tmp_path``."""
    fake_dists.add(
        "goodpkg",
        {
            "techbench.activations": {"shifted": "goodpkg.specs:shifted"},
            "techbench.optimizers": {"plain_sgd": "goodpkg.specs:plain_sgd"},
            "techbench.normalizers": {"none": "goodpkg.specs:none"},
            "techbench.regularizers": {"none": "goodpkg.specs:none_reg"},
        },
        {
            "goodpkg/__init__.py": "",
            "goodpkg/specs.py": GOOD,
            "goodpkg/impl.py": "def make(**kw):\n    return ('made', kw)\n",
        },
    )
    fake_dists.add(
        "importfails",
        {"techbench.activations": {"boom": "importfails:spec"}},
        {"importfails/__init__.py": "raise RuntimeError('plugin exploded on import')\n"},
    )
    fake_dists.add(
        "wrongtype",
        {"techbench.activations": {"notaspec": "wrongtype:spec"}},
        {"wrongtype/__init__.py": "def spec(x):\n    return x\n"},
    )
    fake_dists.add(
        "mismatch",
        {"techbench.initializers": {"alias": "goodpkg.specs:shifted"}},
    )
    fake_dists.add(
        "copycat",
        {"techbench.optimizers": {"plain_sgd": "goodpkg.specs:plain_sgd"}},
    )
    return fake_dists


def test_good_plugin_loads_and_creates_with_overrides(plugins):
    reg = plugins.registry()
    spec = reg.get_spec("shifted")
    assert spec.family == "activation"
    assert reg.create("shifted", c=2) == ("made", {"c": 2.0})
    (entry,) = reg.entries("activation", "shift*")
    assert entry.distribution == "goodpkg" and entry.status == "ok"


def test_discovery_is_lazy(plugins):
    reg = plugins.registry()
    names = {e.name for e in reg.entries(load=False)}
    assert {"shifted", "boom", "notaspec", "plain_sgd"} <= names
    assert "importfails" not in sys.modules
    assert "goodpkg.specs" not in sys.modules


def test_import_error_is_isolated_with_a_warning(plugins):
    reg = plugins.registry()
    with pytest.warns(PluginWarning, match="boom.*importfails.*plugin exploded"):
        entries = {e.qualified_name: e for e in reg.entries()}
    boom = entries["activation/boom"]
    assert boom.status == "error" and "RuntimeError: plugin exploded on import" in boom.error
    assert entries["activation/shifted"].status == "ok"
    with pytest.raises(BrokenPluginError, match="plugin exploded"):
        reg.get_spec("boom")


def test_wrong_object_type_and_name_mismatch_are_errors(plugins):
    reg = plugins.registry()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        entries = {e.qualified_name: e for e in reg.entries()}
    assert "is a function, not a TechniqueSpec" in entries["activation/notaspec"].error
    assert "holds the spec 'activation/shifted'" in entries["initializer/alias"].error


def test_duplicate_name_names_both_qualified_names(plugins):
    reg = plugins.registry()
    assert "registered by 2 distributions" in reg.clashes()[("optimizer", "plain_sgd")]
    with pytest.raises(DuplicateTechniqueError) as info:
        reg.get_spec("plain_sgd")
    assert "say which: 'copycat:plain_sgd' or 'goodpkg:plain_sgd'" in str(info.value)
    assert reg.source("copycat:plain_sgd")["distribution"] == "copycat"
    assert reg.source("optimizer/goodpkg:plain_sgd")["distribution"] == "goodpkg"


def test_unknown_name_suggests_close_ones(plugins):
    reg = plugins.registry()
    with pytest.raises(UnknownTechniqueError, match="did you mean 'shifted'"):
        reg.get_spec("shiftd")
    with pytest.raises(UnknownTechniqueError, match="unknown family 'activations'"):
        reg.get_spec("shifted", family="activations")


def test_same_name_in_two_families_needs_the_family(plugins):
    reg = plugins.registry()
    with pytest.raises(
        UnknownTechniqueError, match=r"ambiguous.*normalizer/none.*regularizer/none"
    ):
        reg.get_spec("none")
    assert reg.get_spec("normalizer/none").family == "normalizer"
    assert reg.get_spec("none", family="regularizer").family == "regularizer"


def _run_cli(args, plugins, code="from techbench.cli import main; raise SystemExit(main({args}))"):
    return subprocess.run(
        [sys.executable, "-c", code.format(args=repr(args))],
        capture_output=True,
        text=True,
        env=plugins.env,
        timeout=120,
    )


def test_cli_list_json_shows_broken_plugins_and_stays_light(plugins):
    code = (
        "import sys\nfrom techbench.cli import main\nmain({args})\n"
        "heavy = [m for m in ('torch', 'pytorch_lightning', 'lightning', 'pandas', 'seaborn')"
        " if m in sys.modules]\nprint('HEAVY', heavy, file=sys.stderr)"
    )
    proc = _run_cli(["list", "--json"], plugins, code)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    by_name = {(r["family"], r["name"]): r for r in rows}
    for row in rows:
        assert {"name", "family", "summary", "distribution", "status", "error"} <= row.keys()
    assert by_name[("activation", "boom")]["status"] == "error"
    assert "plugin exploded" in by_name[("activation", "boom")]["error"]
    assert (
        by_name[("activation", "shifted")] | {"error": None} == by_name[("activation", "shifted")]
    )
    assert by_name[("activation", "shifted")]["distribution"] == "goodpkg"
    assert "HEAVY []" in proc.stderr


def test_cli_unknown_technique_exits_2_with_suggestion(plugins):
    proc = _run_cli(["check", "shiftd"], plugins)
    assert proc.returncode == 2
    assert "did you mean 'shifted'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_list_json_has_hyperparameters_and_version(plugins):
    proc = _run_cli(["list", "--json", "l2"], plugins)
    assert proc.returncode == 0, proc.stderr
    (row,) = [r for r in json.loads(proc.stdout) if r["family"] == "regularizer"]
    assert row["version"] and row["distribution"] == "techbench"
    params = {p["name"]: p for p in row["params"]}
    assert (
        params["lam"] | {"type": "float", "default": 1e-4, "low": 0.0, "high": None}
        == (params["lam"])
    )
    assert params["convention"]["choices"] == ["lambda", "half_lambda"]
    assert params["include_bias"]["type"] == "bool" and params["include_bias"]["default"] is False
    assert row["properties"] == {"hooks": ["penalty"]}


# -- qualified names: an installed package never breaks a built-in -----------------------------

CLASH = """
from techbench.techniques.spec import Param, TechniqueSpec

def _spec(name, family, summary, params=()):
    return TechniqueSpec(name=name, family=family, summary=summary, fast="{pkg}.impl:make",
        reference="{pkg}.impl:make", citation="-", params=params)

grad_noise = _spec("grad_noise", "regularizer", "{pkg}'s own gradient noise.",
    (Param(name="sigma", type=float, default=0.5),))
wiggle = _spec("wiggle", "activation", "{pkg}'s wiggle.")
"""

SHIPPED_IDS = [  # of IDS_MATRIX, as 1b0a42d expanded it
    "5b7caefdf8756e7c",
    "7de3b48da5abca8d",
    "87db32f864621afd",
    "d8b51602c7f00e2a",
    "dd7d9a04dd8076af",
    "dee4a8d23d55fb70",
]
IDS_MATRIX = {
    "name": "ids",
    "seeds": 2,
    "budget": {"epochs": 1},
    "axes": {"regularizer": ["grad_noise", "l2", "none"], "activation": "relu"},
}


@pytest.fixture
def clash(fake_dists):
    """``my-pkg`` registers the built-in name ``grad_noise``; it and ``otherpkg`` both register
    ``wiggle``. Discovered from ``sys.path`` together with the real built-ins."""
    for pkg, dist in (("mypkg", "my-pkg"), ("otherpkg", "otherpkg")):
        fake_dists.add(
            dist,
            {
                "techbench.regularizers": {"grad_noise": f"{pkg}.specs:grad_noise"},
                "techbench.activations": {"wiggle": f"{pkg}.specs:wiggle"},
            }
            if pkg == "mypkg"
            else {"techbench.activations": {"wiggle": f"{pkg}.specs:wiggle"}},
            {
                f"{pkg}/__init__.py": "",
                f"{pkg}/specs.py": CLASH.replace("{pkg}", pkg),
                f"{pkg}/impl.py": "def make(**kw):\n    return kw\n",
            },
        )
    return fake_dists


def _builtins_only():
    from importlib import metadata

    from techbench.techniques.registry import Registry

    return Registry(metadata.distribution("techbench").entry_points)


def _ids(data, registry):
    """Sorted trial ids of a matrix (a dict, or the name of a shipped one)."""
    from techbench.plan.matrix import load_matrix, load_matrix_dict
    from techbench.schema import trial_id

    if isinstance(data, str):
        matrix = load_matrix(data, registry=registry)
    else:
        matrix = load_matrix_dict(data, registry=registry)
    return sorted(trial_id(c) for c in matrix.trials())


def _with_regularizers(*names):
    return {**IDS_MATRIX, "axes": {**IDS_MATRIX["axes"], "regularizer": list(names)}}


def test_builtin_keeps_its_plain_name_and_each_is_reachable_qualified(clash):
    from techbench.techniques.registry import Registry

    reg = Registry()
    assert reg.get_spec("grad_noise", "regularizer").summary.startswith("Add N(0")
    assert reg.get_spec("techbench:grad_noise").summary.startswith("Add N(0")
    assert reg.get_spec("my-pkg:grad_noise").summary == "mypkg's own gradient noise."
    assert reg.get_spec("regularizer/My_Pkg:grad_noise").summary == "mypkg's own gradient noise."
    assert reg.source("grad_noise")["distribution"] == "techbench"
    assert reg.source("my-pkg:grad_noise") == {"distribution": "my-pkg", "version": "0.1"}
    assert reg.config_name("techbench:grad_noise", "regularizer") == "grad_noise"
    assert reg.config_name("my_pkg:grad_noise", "regularizer") == "my-pkg:grad_noise"
    with pytest.raises(UnknownTechniqueError, match="did you mean 'my-pkg:grad_noise'"):
        reg.get_spec("my-pkg:grad_nois")


def test_two_packages_clashing_make_the_plain_name_an_error_naming_both(clash):
    from techbench.techniques.registry import Registry

    reg = Registry()
    assert set(reg.clashes()) == {("activation", "wiggle"), ("regularizer", "grad_noise")}
    with pytest.raises(DuplicateTechniqueError, match="'my-pkg:wiggle' or 'otherpkg:wiggle'"):
        reg.get_spec("wiggle")
    assert reg.get_spec("my-pkg:wiggle").summary == "mypkg's wiggle."
    assert reg.get_spec("otherpkg:wiggle").summary == "otherpkg's wiggle."


def test_matrices_keep_builtin_trial_ids_with_a_clashing_package(clash):
    from techbench.plan.matrix import load_matrix_dict
    from techbench.techniques.registry import Registry

    reg = Registry()
    assert _ids(IDS_MATRIX, reg) == SHIPPED_IDS
    assert _ids(_with_regularizers("techbench:grad_noise", "l2", "regularizer/none"), reg) == (
        SHIPPED_IDS
    )
    assert _ids("regularizers", reg) == _ids("regularizers", _builtins_only())
    both = _with_regularizers("grad_noise", "my-pkg:grad_noise(sigma=0.1)")
    names = {(c["regularizer"]["name"], str(c["regularizer"]["params"]))
             for c in load_matrix_dict(both, registry=reg).trials()}  # fmt: skip
    assert names == {("grad_noise", "{}"), ("my-pkg:grad_noise", "{'sigma': 0.1}")}
    assert len(set(_ids(both, reg))) == 4


def test_provenance_records_the_distribution_that_supplied_each_technique(clash):
    from techbench.techniques.provenance import technique_sources
    from techbench.techniques.registry import Registry

    reg = Registry()
    ours = technique_sources({"regularizer": {"name": "grad_noise", "params": {}}}, reg)
    theirs = technique_sources({"regularizer": {"name": "my-pkg:grad_noise", "params": {}}}, reg)
    assert ours["regularizer"]["distribution"] == "techbench"
    assert theirs["regularizer"] == {
        "technique": "regularizer/my-pkg:grad_noise",
        "distribution": "my-pkg",
        "version": "0.1",
    }


def test_cli_with_a_clashing_package_keeps_builtins_and_reaches_every_name(clash, tmp_path):
    from techbench.plan.matrix import load_matrix

    shipped = load_matrix("regularizers", registry=_builtins_only()).trials()
    want = sum(c["regularizer"]["name"] == "grad_noise" for c in shipped)
    dry = ["run", "regularizers", "--dry-run", "--out", str(tmp_path / "r")]
    run = _run_cli([*dry, "--filter", "regularizer=techbench:grad_noise"], clash)
    assert run.returncode == 0, run.stderr
    assert f"{len(shipped)} -> {want} trials" in run.stdout
    show = _run_cli(["show", "--json", "my_pkg:grad_noise"], clash)
    assert show.returncode == 0, show.stderr
    assert json.loads(show.stdout)["distribution"] == "my-pkg"
    assert json.loads(show.stdout)["qualified_name"] == "my-pkg:grad_noise"
    plain = _run_cli(["show", "--json", "grad_noise"], clash)
    assert json.loads(plain.stdout)["distribution"] == "techbench"
    wiggle = _run_cli(["check", "wiggle"], clash)
    assert wiggle.returncode == 2 and "Traceback" not in wiggle.stderr
    assert "say which: 'my-pkg:wiggle' or 'otherpkg:wiggle'" in wiggle.stderr


def test_cli_list_warns_of_clashes_and_filters_by_qualified_name(clash):
    listed = _run_cli(["list", "--family", "regularizer"], clash)
    assert listed.returncode == 0, listed.stderr
    assert "warning: regularizer 'grad_noise' is registered by 2" in listed.stderr
    assert "'my-pkg:grad_noise'" in listed.stderr
    names = [line.split()[0] for line in listed.stdout.splitlines() if line.startswith("  ")]
    assert "grad_noise" in names and "my-pkg:grad_noise" in names
    rows = json.loads(_run_cli(["list", "--json", "my-pkg:*"], clash).stdout)
    got = sorted((r["family"], r["qualified_name"], r["plain_name"]) for r in rows)
    assert got == [
        ("activation", "my-pkg:wiggle", False),
        ("regularizer", "my-pkg:grad_noise", False),
    ]
