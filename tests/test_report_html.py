"""End-to-end: a synthetic store -> index.html + CSVs, escaping, CLI, headless Chromium."""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from techbench.cli import main as cli_main
from techbench.report import build_report, htmlpage
from techbench.report import sections as report_sections
from techbench.techniques.palette import technique_color

from .report_fixtures import (
    chromium,
    make_config,
    screenshot,
    table_from_rows,
    write_store,
    write_trial,
)

# Also unbalanced mathtext: a plugin name must never crash matplotlib.
EVIL = "<script>alert(1)</script>$\\undefinedcmd{$"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("report")
    store = root / "store"
    write_store(
        store,
        axes={"activation": ["relu", "tanh", "sigmoid", EVIL], "initializer": ["he_normal"]},
        datasets=["digits", "moons", "xor"],
        seeds=range(3),
        ceilings={"relu": 0.15, "sigmoid": -0.2},
        statuses={("tanh", 1): "diverged", ("sigmoid", 2): "failed"},
        epochs=5,
        meta={"health_overhead": 0.45},
    )
    out = root / "out"
    path = build_report(store, out, baselines=["tanh"])
    return path, out


def test_writes_index_and_csvs(report: tuple[Path, Path]) -> None:
    path, out = report
    assert path == out / "index.html"
    for name in ("runs", "cells", "techniques", "best_flags", "friedman", "profiles"):
        assert (out / f"{name}.csv").stat().st_size > 0
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 4 * 3 * 3
    # Diverged and failed runs are listed, not dropped.
    assert (runs["status"] == "diverged").sum() == 3
    assert (runs["status"] == "failed").sum() == 3
    poi = pd.read_csv(out / "improvement.csv")
    assert set(poi["baseline"]) == {"tanh"}
    fried = pd.read_csv(out / "friedman.csv")
    assert bool(fried.loc[0, "ran"]) and fried.loc[0, "n_datasets"] == 3


def test_html_is_self_contained_with_sections(report: tuple[Path, Path]) -> None:
    text = report[0].read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)
    assert text.count("data:image/png;base64,") >= 6
    for anchor in ("overview", "convergence", "profiles", "statistics", "health", "interactions"):
        assert f'id="{anchor}"' in text
    assert "Critical-difference diagram" in text
    assert 'table class="sortable"' in text
    assert "median 0.45 s per run in health hooks" in text
    assert "fewer than 5 seeds" in text


def test_plugin_strings_are_escaped(report: tuple[Path, Path]) -> None:
    text = report[0].read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert EVIL not in text
    assert text.count("<script>") == 1  # the page's own sort script


def test_overhead_not_measured_and_enough_seeds(tmp_path: Path) -> None:
    store = tmp_path / "s"
    write_store(store, axes={"activation": ["relu", "tanh"]}, seeds=range(5), epochs=3)
    text = build_report(store, tmp_path / "o").read_text(encoding="utf-8")
    assert "not measured" in text
    assert "fewer than 5 seeds" not in text
    assert "needs &gt;= 3" in text  # Friedman skipped, and the page says why


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "s"
    write_store(store, axes={"activation": ["relu", "tanh"]}, seeds=range(2), epochs=2)
    assert cli_main(["report", str(store), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "index.html").exists()
    assert cli_main(["report", str(tmp_path / "nothing")]) == 2
    assert cli_main(["report", str(store), "--out", str(tmp_path / "x"), "--baseline", "selu"]) == 2
    assert "selu" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(
    chromium() is None and not os.environ.get("CI"),
    reason="needs chromium (scripts/install.sh --test installs it; CI always runs this)",
)
def test_renders_in_headless_chromium(report: tuple[Path, Path]) -> None:
    path, out = report
    png = out / "screenshot.png"
    screenshot(path, png, 1400, 6000, timeout=120)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 50_000  # a blank page compresses to a few kB
    import matplotlib.image

    pixels = matplotlib.image.imread(png)[..., :3]
    palette = {  # the techniques' line colours: only figures draw them
        t: tuple(int(technique_color(t)[i : i + 2], 16) / 255 for i in (1, 3, 5))
        for t in ("relu", "tanh", "sigmoid")
    }
    drawn = {
        name: int((np.abs(pixels - np.array(rgb)).max(axis=-1) < 0.08).sum())
        for name, rgb in palette.items()
    }
    assert sum(n >= 50 for n in drawn.values()) >= 3, f"figure colours on the page: {drawn}"


def test_degenerate_stores(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "trials").mkdir(parents=True)
    assert "no trials" in build_report(empty, tmp_path / "o0").read_text(encoding="utf-8")
    failed = tmp_path / "failed"
    for seed, act in ((0, "relu"), (1, "tanh")):
        write_trial(
            failed, make_config(seed=seed, activation=act), table_from_rows([]), status="failed"
        )
    text = build_report(failed, tmp_path / "o1").read_text(encoding="utf-8")
    assert "2 runs diverged or failed" in text
    assert "No run reached the target" in text
    runs = pd.read_csv(tmp_path / "o1" / "runs.csv")
    assert list(runs["status"]) == ["failed", "failed"]


def test_page_writer_escapes_every_string() -> None:
    df = pd.DataFrame({EVIL: [EVIL, "x"], "n": [1.5, float("nan")]})
    blocks = [
        htmlpage.para(EVIL),
        htmlpage.warning(EVIL),
        htmlpage.heading(EVIL),
        htmlpage.link(EVIL, EVIL),
        htmlpage.table(df, csv_name=EVIL),
        htmlpage.image(b"\x89PNG fake", EVIL),
        htmlpage.image(None, EVIL),
    ]
    header = htmlpage.meta_list([(EVIL, EVIL)])
    page = htmlpage.render(EVIL, header, [(EVIL, EVIL, blocks)])
    assert EVIL not in page
    assert page.count("<script>") == 1  # the page's own sort script
    # title x2, header x2, nav x2, section id + h2, 7 blocks: para, warning, h3, href + text,
    # column + cell + csv name, alt + caption, note
    assert page.count(html.escape(EVIL, quote=True)) == 2 + 2 + 2 + 2 + 1 + 1 + 1 + 2 + 3 + 2 + 1


def test_page_writer_replaces_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "page.html"
    path.write_text("old page", encoding="utf-8")
    sections = [("a", "A", [htmlpage.para("ünïcode ∞")])]
    replaced: list[tuple[Path, Path]] = []
    real_replace = os.replace

    def spy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        replaced.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    assert htmlpage.write_page(path, "t", "", sections) == path
    assert path.read_text(encoding="utf-8") == htmlpage.render("t", "", sections)
    assert len(replaced) == 1 and replaced[0][0].parent == tmp_path and replaced[0][1] == path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["page.html"]
    plain = tmp_path / "plain"
    plain.write_text("")  # created by open(): the mode the umask gives
    assert path.stat().st_mode == plain.stat().st_mode
    plain.unlink()

    def fail(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        htmlpage.write_page(path, "new", "", sections)
    assert path.read_text(encoding="utf-8") == htmlpage.render("t", "", sections)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["page.html"]  # no temp file left


def test_a_section_is_one_function(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "s"
    write_store(store, axes={"activation": ["relu", "tanh"]}, seeds=range(2), epochs=2)
    seen: list[int] = []

    def extra(ctx: report_sections.ReportContext) -> report_sections.Section:
        seen.append(len(ctx.runs))
        table = ctx.runs[["trial_id", "score"]]
        return report_sections.Section(
            "extra", "Extra", [htmlpage.para("added by one function")], {"extra.csv": table}
        )

    monkeypatch.setattr(report_sections, "SECTIONS", [*report_sections.SECTIONS, extra])
    text = build_report(store, tmp_path / "o").read_text(encoding="utf-8")
    assert seen == [4]  # 2 activations x 2 seeds x 1 dataset, called once
    assert '<a href="#extra">Extra</a>' in text
    assert '<section id="extra"><h2>Extra</h2><p>added by one function</p></section>' in text
    extra_csv = pd.read_csv(tmp_path / "o" / "extra.csv")
    runs = pd.read_csv(tmp_path / "o" / "runs.csv")
    pd.testing.assert_frame_equal(extra_csv, runs[["trial_id", "score"]])

    def clash(ctx: report_sections.ReportContext) -> report_sections.Section:
        return report_sections.Section("clash", "Clash", [], {"runs.csv": ctx.runs})

    monkeypatch.setattr(report_sections, "SECTIONS", [report_sections.runs, clash])
    with pytest.raises(RuntimeError, match=r"runs\.csv twice"):
        build_report(store, tmp_path / "o2")
