"""``--shard K/N`` through the CLI: for random matrices and N, the dry runs of the N shards list
disjoint sets of trial ids whose union is the matrix's expansion (read back from the dry run of
the whole matrix and from the matrix loader)."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from techbench.cli import main
from techbench.plan.matrix import load_matrix
from techbench.schema import trial_id

ID_LINE = re.compile(r"^  ([0-9a-f]{16})  ", re.M)
ACTIVATIONS = ["relu", "tanh", "sigmoid", "elu", "leaky_relu", "gelu"]
INITIALIZERS = ["he_normal", "xavier_normal", "xavier_uniform"]


def _dry_run_ids(capsys, path: Path, out: Path, *extra: str) -> list[str]:
    capsys.readouterr()
    assert (
        main(["run", str(path), "--dry-run", "--out", str(out), "--sample", "100000", *extra]) == 0
    )
    text = capsys.readouterr().out
    total = int(re.search(r": (\d+) trials", text).group(1))
    ids = ID_LINE.findall(text)
    assert len(ids) == total
    return ids


matrices = st.fixed_dictionaries(
    {
        "activations": st.lists(st.sampled_from(ACTIVATIONS), min_size=1, max_size=4, unique=True),
        "initializers": st.lists(
            st.sampled_from(INITIALIZERS), min_size=1, max_size=3, unique=True
        ),
        "seeds": st.integers(1, 4),
        "lrs": st.lists(st.sampled_from([0.1, 0.01, 0.001]), min_size=1, max_size=2, unique=True),
        "exclude": st.booleans(),
    }
)


def _toml(m: dict) -> str:
    lines = [
        'name = "prop"',
        f"seeds = {m['seeds']}",
        "[axes]",
        f"activation = {m['activations']!r}".replace("'", '"'),
        f"initializer = {m['initializers']!r}".replace("'", '"'),
        f'optimizer = {{ name = "sgd", lr = {m["lrs"]!r} }}',
    ]
    if m["exclude"] and (len(m["activations"]) > 1 or m["seeds"] > 1):
        # (an exclude that empties the matrix is a usage error, tested with the preflight)
        lines += ["[[exclude]]", f'activation = "{m["activations"][0]}"', "seed = 0"]
    return "\n".join(lines) + "\n"


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(m=matrices, n=st.integers(1, 7))
def test_shards_of_random_matrices_partition_the_expansion(capsys, m, n):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "prop.toml"
        path.write_text(_toml(m), encoding="utf-8")
        out = Path(tmp) / "store"
        whole = _dry_run_ids(capsys, path, out)
        assert set(whole) == {trial_id(t) for t in load_matrix(path).trials()}
        shards = [_dry_run_ids(capsys, path, out, "--shard", f"{k}/{n}") for k in range(1, n + 1)]
    seen: set[str] = set()
    for ids in shards:
        assert seen.isdisjoint(ids)
        seen.update(ids)
    assert seen == set(whole)
    sizes = [len(ids) for ids in shards]
    assert max(sizes) - min(sizes) <= 1


def test_shard_of_a_ready_made_matrix_is_deterministic(capsys, tmp_path):
    first = _dry_run_ids(capsys, Path("demo"), tmp_path, "--shard", "3/4")
    again = _dry_run_ids(capsys, Path("demo"), tmp_path, "--shard", " 3 / 4 ")
    assert first == again and len(first) in (12, 13)


def test_malformed_shards_exit_2(capsys):
    for bad in ("0/3", "4/3", "1/0", "a/b", "1", "-1/2"):
        assert main(["run", "smoke", "--dry-run", f"--shard={bad}"]) == 2, bad
        assert "--shard" in capsys.readouterr().err
