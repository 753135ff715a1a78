"""``techbench probe``: the physics against an independent mean-field computation, and the CLI.

Mean-field reference (Poole et al. 2016; the notes' Xavier/He derivation, seed 004): with
i.i.d. weights of variance s2 and width n, a unit's pre-activation is ~ N(0, v_l) with
v_l = n * s2 * q_{l-1}, where q_l = E[h_l^2] = E_z[phi(sqrt(v_l) z)^2] and q_0 = 1 (unit-Gaussian
input). The expectations are computed with scipy quadrature, not with the probe's code.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import scipy.integrate
import scipy.stats

from techbench.cli import main as cli_main
from techbench.report.probe import ProbeResult, run_probe, split_technique_list, write_report
from techbench.techniques.spec import ParamError
from tests.fakedist import make_dist

WIDTH = 500


def _gauss(f, v: float) -> float:
    s = math.sqrt(v)
    val, _ = scipy.integrate.quad(
        lambda z: f(s * z) * scipy.stats.norm.pdf(z), -12, 12, limit=400, points=[0.0]
    )
    return val


def mean_field(phi, s2: float, depth: int, width: int = WIDTH) -> list[dict]:
    """Per layer: pre-activation variance, mean, std and E[h^2] of phi(N(0, v))."""
    q, out = 1.0, []
    for _ in range(depth):
        v = width * s2 * q
        m = _gauss(phi, v)
        q = _gauss(lambda s: phi(s) ** 2, v)
        out.append({"v": v, "mean": m, "std": math.sqrt(max(q - m * m, 0.0))})
    return out


def _records(result: ProbeResult, **match) -> list[dict]:
    rows = [r for r in result.records if all(r[k] == v for k, v in match.items())]
    return sorted(rows, key=lambda r: r["layer"])


@pytest.fixture(scope="module")
def default_probe() -> ProbeResult:
    return run_probe(threads=1)  # one thread: robust on a shared, busy 2-core machine


def test_default_probe_shape(default_probe: ProbeResult) -> None:
    assert len(default_probe.combinations) == 8
    assert len(default_probe.records) == 80
    keys = {
        "activation",
        "initializer",
        "normalizer",
        "layer",
        "act_mean",
        "act_std",
        "saturated_fraction",
        "dead_fraction",
        "grad_norm",
    }
    assert keys <= set(default_probe.records[0])
    assert {r["layer"] for r in default_probe.records} == set(range(1, 11))


def test_tanh_small_normal_shrinks_by_001_sqrt500(default_probe: ProbeResult) -> None:
    rows = _records(default_probe, activation="tanh", initializer="small_normal")
    stds = np.array([r["act_std"] for r in rows])
    ratios = stds[1:] / stds[:-1]
    expected = 0.01 * math.sqrt(WIDTH)
    assert np.allclose(ratios, expected, rtol=0.05), (ratios, expected)
    mf = mean_field(math.tanh, 0.01**2, 10)
    assert np.allclose(stds, [m["std"] for m in mf], rtol=0.1)
    assert stds[-1] < 1e-5
    # vanishing signal: every weight gradient is tiny
    assert max(r["grad_norm"] for r in rows) < 1e-4


def test_tanh_large_normal_saturates(default_probe: ProbeResult) -> None:
    rows = _records(default_probe, activation="tanh", initializer="large_normal")
    edge = math.atanh(0.99)  # tanh's declared saturation interval is (-0.99, 0.99)
    for r, m in zip(rows, mean_field(math.tanh, 1.0, 10), strict=True):
        predicted = 2 * scipy.stats.norm.sf(edge / math.sqrt(m["v"]))
        assert r["saturated_fraction"] > 0.8
        assert r["saturated_fraction"] == pytest.approx(predicted, abs=0.03)
        assert r["act_std"] == pytest.approx(m["std"], rel=0.05)
    assert rows[0]["dead_fraction"] is None  # tanh units cannot die


def test_tanh_xavier_keeps_signal(default_probe: ProbeResult) -> None:
    rows = _records(default_probe, activation="tanh", initializer="xavier_normal")
    mf = mean_field(math.tanh, 1.0 / WIDTH, 10)
    for r, m in zip(rows, mf, strict=True):
        assert r["act_std"] == pytest.approx(m["std"], rel=0.1)
        assert r["saturated_fraction"] < 0.05
    assert rows[-1]["act_std"] > 0.2


def _relu(s: float) -> float:
    return max(s, 0.0)


def test_relu_he_keeps_std_constant(default_probe: ProbeResult) -> None:
    rows = _records(default_probe, activation="relu", initializer="he_normal")
    stds = np.array([r["act_std"] for r in rows])
    expected = math.sqrt(1 - 1 / math.pi)  # v = 2 at every layer: std of relu(N(0, 2))
    assert np.allclose([m["std"] for m in mean_field(_relu, 2.0 / WIDTH, 10)], expected)
    assert np.allclose(stds, expected, rtol=0.15)
    assert stds.max() / stds.min() < 1.25
    grads = np.array([r["grad_norm"] for r in rows])
    assert grads.max() / grads.min() < 1.5  # gradients flow evenly too


def test_relu_xavier_halves_variance(default_probe: ProbeResult) -> None:
    rows = _records(default_probe, activation="relu", initializer="xavier_normal")
    var = np.array([r["act_std"] for r in rows]) ** 2
    ratio = math.exp(np.mean(np.log(var[1:] / var[:-1])))
    assert ratio == pytest.approx(0.5, rel=0.1)
    assert rows[0]["dead_fraction"] is not None and rows[0]["saturated_fraction"] is None


def test_relu_large_normal_explodes(default_probe: ProbeResult) -> None:
    rows = _records(default_probe, activation="relu", initializer="large_normal")
    stds = np.array([r["act_std"] for r in rows])
    ratios = stds[1:] / stds[:-1]
    assert np.allclose(ratios, math.sqrt(WIDTH / 2), rtol=0.15)  # sqrt(n * 1 / 2) per layer


def test_batchnorm_rescues_50_layer_relu() -> None:
    result = run_probe(
        ["relu"], ["xavier_normal"], ["none", "batchnorm"], depth=50, width=256, batch=512
    )
    plain = _records(result, normalizer="none")
    bn = _records(result, normalizer="batchnorm")
    assert plain[-1]["act_std"] < 1e-5 * plain[0]["act_std"]  # collapse: ~2^-49 variance
    # batch norm standardises every pre-activation: relu(N(0, 1)) at the first layers, and the
    # scale is held over all 50 layers (the per-unit laws drift from Gaussian with depth)
    relu_std, relu_mean = math.sqrt(0.5 - 1 / (2 * math.pi)), 1 / math.sqrt(2 * math.pi)
    for r in bn[:10]:
        assert r["act_std"] == pytest.approx(relu_std, rel=0.05)
        assert r["act_mean"] == pytest.approx(relu_mean, rel=0.05)
    for r in bn:
        assert 0.5 < r["act_std"] < 0.7 and 0.3 < r["act_mean"] < 0.45
        assert r["dead_fraction"] == 0.0
    assert max(r["grad_norm"] for r in plain) < 1e-5  # no signal, no gradient
    assert min(r["grad_norm"] for r in bn) > 1.0


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_grad_norm_matches_numpy_backprop(activation: str) -> None:
    result = run_probe(
        [activation], ["he_normal"], ["none"], depth=4, width=30, batch=50, keep_tensors=True
    )
    combo = result.combinations[0]
    x = combo.tensors["x"].double().numpy()
    r = combo.tensors["readout"].double().numpy()
    ws = [w.double().numpy() for w in combo.tensors["weights"]]
    if activation == "tanh":
        phi, dphi = np.tanh, lambda s: 1 - np.tanh(s) ** 2
    else:
        phi, dphi = (lambda s: np.maximum(s, 0)), (lambda s: (s > 0).astype(float))
    hs, ss = [x], []
    for w in ws:
        ss.append(hs[-1] @ w.T)
        hs.append(phi(ss[-1]))
    assert np.sum(hs[-1] * r) / len(x) == pytest.approx(combo.tensors["loss"], rel=1e-4)
    delta = r / len(x)  # dL/dh_last
    norms = []
    for layer in reversed(range(len(ws))):
        ds = delta * dphi(ss[layer])
        norms.append(np.linalg.norm(ds.T @ hs[layer]))
        delta = ds @ ws[layer]
    norms.reverse()
    got = [row["grad_norm"] for row in combo.records]
    np.testing.assert_allclose(got, norms, rtol=1e-4)
    stds = [h.std() for h in hs[1:]]
    np.testing.assert_allclose([row["act_std"] for row in combo.records], stds, rtol=1e-4)


def test_split_technique_list() -> None:
    assert split_technique_list("tanh,relu") == ["tanh", "relu"]
    assert split_technique_list("normal(std=0.01, mean=0.0), he_normal") == [
        "normal(std=0.01, mean=0.0)",
        "he_normal",
    ]
    assert split_technique_list("gelu(approximate='a,b'),x") == ["gelu(approximate='a,b')", "x"]
    for bad in ("tanh,,relu", "normal(std=0.01", "relu)", ""):
        with pytest.raises(ParamError):
            split_technique_list(bad)


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(["probe", *argv])
    return code, out.getvalue(), err.getvalue()


SMALL = ("--depth", "3", "--width", "20", "--batch", "30")


def test_cli_json_keeps_arguments_as_given() -> None:
    code, out, _ = _cli(
        *SMALL, "--activation", "tanh,relu", "--initializer", "normal(std=0.01),he_normal", "--json"
    )
    assert code == 0
    records = json.loads(out)
    assert len(records) == 2 * 2 * 3
    assert {r["initializer"] for r in records} == {"normal(std=0.01)", "he_normal"}
    tanh = [r for r in records if r["activation"] == "tanh"]
    assert all(r["dead_fraction"] is None for r in tanh)
    assert all(isinstance(r["saturated_fraction"], float) for r in tanh)
    assert [r["layer"] for r in records[:3]] == [1, 2, 3]


def test_cli_table() -> None:
    code, out, _ = _cli(*SMALL, "--activation", "relu", "--initializer", "he_normal")
    assert code == 0
    assert "relu x he_normal x none" in out
    assert "grad_norm" in out and "dead" in out
    rows = [line.split() for line in out.splitlines() if re.match(r"^\s+\d+\s", line)]
    assert [row[0] for row in rows] == ["1", "2", "3"]
    assert all(row[3] == "-" for row in rows)  # relu cannot saturate


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (("--activation", "relux"), "relux"),
        (("--initializer", "normal(sdt=0.01)"), "sdt"),
        (("--initializer", "normal(std=-1.0)"), "std"),
        (("--normalizer", "batchnorm(momentum=0.1"), "unbalanced"),
    ],
)
def test_cli_bad_input_exits_2(argv: tuple[str, ...], needle: str) -> None:
    code, _, err = _cli(*SMALL, *argv)
    assert code == 2
    assert needle in err and "Traceback" not in err


def test_out_writes_selfcontained_escaped_html_and_csv(tmp_path) -> None:
    code, _, _ = _cli(
        *SMALL, "--activation", "tanh", "--initializer", "he_normal", "--out", str(tmp_path)
    )
    assert code == 0
    page = (tmp_path / "probe.html").read_text()
    assert page.count("data:image/png;base64,") == 2  # curves + one histogram grid
    assert "http://" not in page and "https://" not in page
    import pandas as pd

    csv = pd.read_csv(tmp_path / "probe.csv")
    assert list(csv["layer"]) == [1, 2, 3]
    assert set(csv["initializer"]) == {"he_normal"}

    result = run_probe(["tanh"], ["he_normal"], depth=2, width=10, batch=8, histograms=True)
    result.combinations[0].activation = "<script>alert(1)</script>"
    for r in result.combinations[0].records:
        r["activation"] = "<script>alert(1)</script>"
    page = write_report(result, tmp_path / "esc").read_text()
    assert page.count("<script>") == 1  # the page's own table-sorting script
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 3  # heading, caption, alt


def test_third_party_plugin_is_probed(tmp_path) -> None:
    make_dist(
        tmp_path,
        "probe_plugin",
        {"techbench.activations": {"scaled_tanh": "probe_plugin_mod:scaled_tanh"}},
        {
            "probe_plugin_mod.py": """
            import torch
            from techbench.techniques.spec import Param, TechniqueSpec

            class ScaledTanh(torch.nn.Module):
                def __init__(self, scale=1.0):
                    super().__init__()
                    self.scale = scale

                def forward(self, x):
                    return self.scale * torch.tanh(x)

            scaled_tanh = TechniqueSpec(
                name="scaled_tanh", family="activation", summary="a * tanh(x)",
                citation="test", fast=ScaledTanh, reference=None,
                params=(Param(name="scale", type=float, default=1.0),),
                properties=dict(output_range=(-2.0, 2.0), zero_centered=True, monotonic=True,
                                saturation=None, dead_below=None, kinks=()),
            )
            """
        },
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    proc = subprocess.run(
        [sys.executable, "-m", "techbench.cli", "probe", *SMALL, "--json",
         "--activation", "scaled_tanh(scale=2.0)", "--initializer", "he_normal"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = json.loads(proc.stdout)
    assert {r["activation"] for r in records} == {"scaled_tanh(scale=2.0)"}
    assert 0 < records[0]["act_std"] < 2.0
