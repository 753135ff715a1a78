"""Entry-point discovery, lazy loading, isolation of broken plugins, name lookup."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest

from techbench.registry import (
    BrokenPluginError,
    DuplicateTechniqueError,
    PluginWarning,
    UnknownTechniqueError,
)

pytestmark = pytest.mark.filterwarnings("ignore::techbench.registry.PluginWarning")

GOOD = """
from techbench.spec import Param, TechniqueSpec
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


def test_duplicate_name_names_both_distributions(plugins):
    with pytest.warns(PluginWarning, match="two distributions"):
        reg = plugins.registry()
        reg.entries(load=False)
    with pytest.raises(DuplicateTechniqueError) as info:
        reg.get_spec("plain_sgd")
    assert "'goodpkg'" in str(info.value) and "'copycat'" in str(info.value)


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
