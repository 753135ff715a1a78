"""The report's curvature section end to end: a synthetic store whose SGD runs sit at 2/lr and
whose Adam runs stay below -> the section, its sentences, its CSVs and the header's probe cost;
no section without curvature rows."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from techbench.report import build_report

from .report_fixtures import make_config, synthetic_metrics, write_trial


def _store(root: Path, curvature: bool, annealed: bool = False) -> Path:
    """``annealed``: the last probe of every run at a learning rate of 0 (no threshold row)."""
    store = root / ("with" if curvature else "without") / ("annealed" if annealed else "")
    for opt, lr in (("sgd", 0.1), ("sgd", 0.05), ("adam", 0.001)):
        for seed in range(3):
            config = make_config(optimizer=(opt, {"lr": lr}), seed=seed)
            config["budget"]["epochs"] = 4
            rows = synthetic_metrics(config, ceiling=0.9)
            meta = {"health_overhead": 0.2}
            if curvature:
                limit = 2 / lr if opt == "sgd" else 38 / lr
                ratios = [0.2, 0.6, 0.95, 1.0, 0.98] if opt == "sgd" else [0.1, 0.2, 0.3, 0.3, 0.3]
                kind = "" if opt == "sgd" else "precond_"
                for i, r in enumerate(ratios):
                    rows.append(_row(10 * i, f"{kind}sharpness", r * limit))
                    if not (annealed and i == len(ratios) - 1):
                        rows.append(_row(10 * i, f"{kind}threshold", limit))
                meta |= {"curvature_overhead": 0.05, "curvature_probes": 5}
            write_trial(store, config, rows, meta=meta)
    return store


def _row(step: int, metric: str, value: float) -> dict:
    return {"step": step, "epoch": 0, "split": "curvature", "metric": metric, "layer": "",
            "value": value}  # fmt: skip


def test_curvature_section(tmp_path: Path) -> None:
    out = tmp_path / "out"
    page = build_report(_store(tmp_path, True), out).read_text()
    assert 'id="curvature"' in page
    assert "reached the edge of stability at step 20" in page
    assert "stayed below the edge of stability" in page
    assert "curvature probe" in page and "10 ms per probe" in page
    table = pd.read_csv(out / "curvature.csv")
    assert set(table["n_reached"]) == {3, 0}
    lrs = pd.read_csv(out / "curvature_lr.csv")
    sgd = lrs[lrs["optimizer"] == "sgd"].set_index("lr")
    assert sgd["threshold"].tolist() == [2 / 0.05, 2 / 0.1]
    assert sgd["ratio"].tolist() == pytest.approx([0.98, 0.98])


def test_no_section_without_curvature_rows(tmp_path: Path) -> None:
    out = tmp_path / "out"
    page = build_report(_store(tmp_path, False), out).read_text()
    assert 'id="curvature"' not in page
    assert not (out / "curvature.csv").exists()


def test_curvature_section_with_a_zero_rate_probe(tmp_path: Path) -> None:
    """A last probe at rate 0 (no threshold: +inf) builds the section and counts as below the
    edge: SGD's runs were at the edge on 2 of 5 probes (steps 20, 30; the last, at rate 0, not)
    and Adam's final sharpness is still its preconditioned one."""
    out = tmp_path / "out"
    page = build_report(_store(tmp_path, True, annealed=True), out).read_text()
    assert 'id="curvature"' in page
    table = pd.read_csv(out / "curvature.csv").set_index("technique")
    sgd = table.loc[[t for t in table.index if t.startswith("sgd")]]
    assert sgd["edge_fraction"].tolist() == pytest.approx([2 / 5])
    assert sgd["first_edge_step"].tolist() == [20]
    adam = table.loc[[t for t in table.index if t.startswith("adam")]]
    assert adam["final_sharpness"].tolist() == pytest.approx([0.3 * 38 / 0.001])
