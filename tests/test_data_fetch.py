"""`techbench data fetch/list` against a local HTTP server in the test process.

The server serves files the tests generate (MNIST-format IDX, CIFAR python tarballs, text);
their checksums come from hashlib on the served bytes and reach the fetcher through the
documented manifest override, so the whole path (download, resume by HTTP Range, checksum,
atomic rename, extraction, the plugins reading the cache) runs offline.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import socket
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from techbench import data
from techbench.cli import main
from techbench.techniques.registry import get_spec
from techbench.testing.dataset import write_cifar10_batches, write_cifar100_files, write_idx

# ---------------------------------------------------------------- server


class _State:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drop_after: dict[str, int] = {}  # path -> bytes sent before the first close
        self.honour_range = True
        self.requests: list[tuple[str, str | None]] = []


class _Handler(BaseHTTPRequestHandler):
    server: Any

    def do_GET(self) -> None:
        st: _State = self.server.state
        rng = self.headers.get("Range")
        st.requests.append((self.path, rng))
        body = st.files.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m and st.honour_range:
            start = int(m[1])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        drop = st.drop_after.pop(self.path, None)
        if drop is not None:
            self.wfile.write(payload[:drop])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, _State]]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.state = _State()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.state  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("TECHBENCH_DATA", str(root))
    for var in (
        "TECHBENCH_DATA_MANIFEST",
        "TECHBENCH_DATA_MIRROR",
        "TECHBENCH_MNIST_DIR",
        "TECHBENCH_FASHION_MNIST_DIR",
        "TECHBENCH_CIFAR10_DIR",
        "TECHBENCH_CIFAR100_DIR",
    ):
        monkeypatch.delenv(var, raising=False)
    return root


def _entry(files: dict[str, bytes], base_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "base_url": base_url,
        "licence": "test",
        "files": [
            {
                "name": name,
                "size": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
                "checksums_from": "the test",
                **extra.get(name, {}),
            }
            for name, body in files.items()
        ],
    }


def _manifest(tmp_path: Path, datasets: dict[str, Any]) -> str:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"datasets": datasets}))
    return str(path)


def _serve(state: _State, dataset: str, files: dict[str, bytes]) -> None:
    for name, body in files.items():
        state.files[f"/{dataset}/{name}"] = body


def _mnist_files(tmp_path: Path, n_train: int = 60, n_test: int = 20) -> dict[str, Any]:
    rng = np.random.default_rng(7)
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    files = {}
    for stem, a in arrays.items():
        path = write_idx(src / stem, a, compress=True)
        files[path.name] = path.read_bytes()
    return {"files": files, "arrays": arrays}


def _tarball(tmp_path: Path, top: str, writer: Any) -> tuple[bytes, tuple[Any, ...]]:
    folder = tmp_path / "tar-src" / top
    folder.mkdir(parents=True)
    arrays = writer(folder)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(folder, arcname=top)
    return buf.getvalue(), arrays


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    """The one error line (other stderr lines are the per-file "verified" notes)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "verified" not in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("techbench data")
    return lines[0]


# ---------------------------------------------------------------- fetch


def test_fetch_verifies_and_the_plugin_reads_the_cache(server, cache, tmp_path, capsys) -> None:
    url, state = server
    mn = _mnist_files(tmp_path)
    _serve(state, "mnist", mn["files"])
    manifest = _manifest(tmp_path, {"mnist": _entry(mn["files"], f"{url}/mnist/")})

    assert main(["data", "fetch", "mnist", "--manifest", manifest]) == 0
    for name, body in mn["files"].items():
        assert (cache / "mnist" / name).read_bytes() == body
    assert not list((cache / "mnist").glob("*.part"))

    # the plugin finds the cache with no further configuration
    s = get_spec("mnist", "dataset").create(0, val_fraction=0.25)
    want = mn["arrays"]["t10k-images-idx3-ubyte"].astype(np.float32)[:, None] / 255
    assert torch.equal(s.x_test, torch.from_numpy(want))
    assert s.y_test.tolist() == mn["arrays"]["t10k-labels-idx1-ubyte"].tolist()
    assert len(s.x_train) + len(s.x_val) == 60

    # a second fetch verifies what is there and downloads nothing
    n_requests = len(state.requests)
    capsys.readouterr()
    assert main(["data", "fetch", "mnist", "--manifest", manifest]) == 0
    assert len(state.requests) == n_requests
    capsys.readouterr()

    assert main(["data", "list", "--json", "--manifest", manifest]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["mnist"]["present"] is True and rows["mnist"]["path"] == str(cache / "mnist")
    assert rows["mnist"]["size"] == sum(len(b) for b in mn["files"].values())
    assert rows["cifar10"]["present"] is False and rows["digits"]["present"] is True
    assert {"cifar100", "fashion_mnist", "tiny_shakespeare"} <= set(rows)


@pytest.mark.parametrize(
    ("name", "top", "archive"),
    [
        ("cifar10", "cifar-10-batches-py", "cifar-10-python.tar.gz"),
        ("cifar100", "cifar-100-python", "cifar-100-python.tar.gz"),
    ],
)
def test_fetch_unpacks_cifar_archives(server, cache, tmp_path, name, top, archive) -> None:
    url, state = server
    if name == "cifar10":
        blob, (_, _, xt, yt) = _tarball(tmp_path, top, lambda d: write_cifar10_batches(d, 8, 6))
    else:
        blob, (_, _, xt, yt) = _tarball(tmp_path, top, lambda d: write_cifar100_files(d, 40, 6))
    files = {archive: blob}
    _serve(state, name, files)
    manifest = _manifest(
        tmp_path, {name: _entry(files, f"{url}/{name}/", **{archive: {"extract": top}})}
    )

    assert main(["data", "fetch", name, "--manifest", manifest]) == 0
    folder = cache / name
    assert sorted(p.name for p in folder.iterdir()) == [top]  # archive removed, no temp folder
    s = get_spec(name, "dataset").create(0)
    assert torch.equal(
        s.x_test, torch.from_numpy(xt.reshape(-1, 3, 32, 32).astype(np.float32) / 255)
    )
    assert s.y_test.tolist() == yt.tolist()


def test_fetch_text_corpus_into_dataset_dir(server, cache, tmp_path) -> None:
    url, state = server
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 50
    files = {"input.txt": text.encode()}
    _serve(state, "tiny_shakespeare", files)
    manifest = _manifest(tmp_path, {"tiny_shakespeare": _entry(files, f"{url}/tiny_shakespeare/")})
    assert main(["data", "fetch", "tiny_shakespeare", "--manifest", manifest]) == 0
    assert data.dataset_dir("tiny_shakespeare") == cache / "tiny_shakespeare"
    assert (cache / "tiny_shakespeare" / "input.txt").read_text() == text


def test_interrupted_fetch_resumes_with_a_range_request(server, cache, tmp_path, capsys) -> None:
    url, state = server
    body = bytes(np.random.default_rng(1).integers(0, 256, 300_000, dtype=np.uint8))
    files = {"input.txt": body}
    _serve(state, "tiny_shakespeare", files)
    state.drop_after["/tiny_shakespeare/input.txt"] = 100_000
    manifest = _manifest(tmp_path, {"tiny_shakespeare": _entry(files, f"{url}/tiny_shakespeare/")})
    args = ["data", "fetch", "tiny_shakespeare", "--manifest", manifest]

    # no retries: the first call stops with one line and keeps what arrived
    assert main([*args, "--retries", "0"]) == 1
    line = _one_line_error(capsys)
    part = cache / "tiny_shakespeare" / "input.txt.part"
    assert "connection" in line and str(part) in line
    assert part.read_bytes() == body[:100_000]
    assert not (cache / "tiny_shakespeare" / "input.txt").exists()

    # the next call asks for the rest only
    assert main(args) == 0
    assert state.requests[-1] == ("/tiny_shakespeare/input.txt", "bytes=100000-")
    assert (cache / "tiny_shakespeare" / "input.txt").read_bytes() == body
    assert not part.exists()


def test_a_drop_is_resumed_within_one_fetch(server, cache, tmp_path) -> None:
    url, state = server
    body = bytes(np.random.default_rng(2).integers(0, 256, 200_000, dtype=np.uint8))
    files = {"input.txt": body}
    _serve(state, "tiny_shakespeare", files)
    state.drop_after["/tiny_shakespeare/input.txt"] = 70_001
    entry = data.load_manifest(
        _manifest(tmp_path, {"tiny_shakespeare": _entry(files, f"{url}/tiny_shakespeare/")})
    )["tiny_shakespeare"]
    folder = data.fetch(entry, retries=2, retry_wait=0.0, progress=False)
    assert (folder / "input.txt").read_bytes() == body
    assert [r[1] for r in state.requests] == [None, "bytes=70001-"]


def test_server_without_range_support_restarts_from_zero(server, cache, tmp_path) -> None:
    url, state = server
    state.honour_range = False
    body = bytes(range(256)) * 1000
    files = {"input.txt": body}
    _serve(state, "tiny_shakespeare", files)
    state.drop_after["/tiny_shakespeare/input.txt"] = 5000
    entry = data.load_manifest(
        _manifest(tmp_path, {"tiny_shakespeare": _entry(files, f"{url}/tiny_shakespeare/")})
    )["tiny_shakespeare"]
    folder = data.fetch(entry, retries=2, retry_wait=0.0, progress=False)
    assert (folder / "input.txt").read_bytes() == body


def test_checksum_mismatch_removes_the_download(server, cache, tmp_path, capsys) -> None:
    url, state = server
    mn = _mnist_files(tmp_path)
    _serve(state, "mnist", mn["files"])
    entry = _entry(mn["files"], f"{url}/mnist/")
    entry["files"][1]["sha256"] = hashlib.sha256(b"something else").hexdigest()
    entry["files"][1]["size"] = None
    manifest = _manifest(tmp_path, {"mnist": entry})

    assert main(["data", "fetch", "mnist", "--manifest", manifest]) == 1
    line = _one_line_error(capsys)
    bad = cache / "mnist" / "train-labels-idx1-ubyte.gz"
    assert "SHA256" in line and entry["files"][1]["sha256"] in line and "removed" in line
    assert str(bad) + ".part" in line
    assert not bad.exists() and not Path(str(bad) + ".part").exists()


def test_size_mismatch_is_caught_before_hashing(server, cache, tmp_path, capsys) -> None:
    url, state = server
    files = {"input.txt": b"abc" * 100}
    _serve(state, "tiny_shakespeare", files)
    entry = _entry(files, f"{url}/tiny_shakespeare/")
    entry["files"][0]["size"] = 299
    manifest = _manifest(tmp_path, {"tiny_shakespeare": entry})
    assert main(["data", "fetch", "tiny_shakespeare", "--manifest", manifest]) == 1
    assert "300 bytes, expected 299" in _one_line_error(capsys)
    assert not (cache / "tiny_shakespeare").exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_host_is_one_line_saying_where_to_put_the_files(
    cache, tmp_path, capsys, monkeypatch
) -> None:
    port = _closed_port()
    files = {"train-images-idx3-ubyte.gz": b"x", "t10k-images-idx3-ubyte.gz": b"y"}
    monkeypatch.setenv(
        "TECHBENCH_DATA_MANIFEST",
        _manifest(tmp_path, {"mnist": _entry(files, f"http://127.0.0.1:{port}/mnist/")}),
    )
    assert main(["data", "fetch", "mnist", "--timeout", "5"]) == 1
    line = _one_line_error(capsys)
    assert f"cannot reach 127.0.0.1:{port}" in line
    assert str(cache / "mnist") in line and "train-images-idx3-ubyte.gz" in line
    assert "--mirror" in line
    assert not cache.exists()  # the folders it created are not left behind


def test_http_error_is_one_line(server, cache, tmp_path, capsys) -> None:
    url, _ = server
    files = {"input.txt": b"abc"}
    manifest = _manifest(tmp_path, {"tiny_shakespeare": _entry(files, f"{url}/nowhere/")})
    assert main(["data", "fetch", "tiny_shakespeare", "--manifest", manifest]) == 1
    assert "HTTP 404" in _one_line_error(capsys)


def test_mirror_replaces_the_base_url(server, cache, tmp_path, monkeypatch) -> None:
    url, state = server
    files = {"input.txt": b"to be or not to be\n"}
    _serve(state, "tiny_shakespeare", files)
    manifest = _manifest(
        tmp_path, {"tiny_shakespeare": _entry(files, f"http://127.0.0.1:{_closed_port()}/x/")}
    )
    assert main(["data", "fetch", "tiny_shakespeare", "--manifest", manifest, "--mirror", url]) == 0
    (cache / "tiny_shakespeare" / "input.txt").unlink()
    monkeypatch.setenv("TECHBENCH_DATA_MIRROR", url + "/")
    assert main(["data", "fetch", "tiny_shakespeare", "--manifest", manifest]) == 0
    assert state.requests[-1][0] == "/tiny_shakespeare/input.txt"


def test_file_url_mirror(cache, tmp_path) -> None:
    # a folder laid out like the cache is a mirror, through file://
    mirror = tmp_path / "mirror"
    (mirror / "tiny_shakespeare").mkdir(parents=True)
    (mirror / "tiny_shakespeare" / "input.txt").write_bytes(b"hello\n")
    manifest = _manifest(
        tmp_path, {"tiny_shakespeare": _entry({"input.txt": b"hello\n"}, "http://invalid./")}
    )
    assert (
        main(
            [
                "data",
                "fetch",
                "tiny_shakespeare",
                "--manifest",
                manifest,
                "--mirror",
                mirror.as_uri(),
            ]
        )
        == 0
    )
    assert (cache / "tiny_shakespeare" / "input.txt").read_bytes() == b"hello\n"


def test_files_put_there_by_hand_are_verified_not_downloaded(
    server, cache, tmp_path, capsys
) -> None:
    url, state = server
    files = {"input.txt": b"by hand\n"}
    manifest = _manifest(tmp_path, {"tiny_shakespeare": _entry(files, f"{url}/tiny_shakespeare/")})
    (cache / "tiny_shakespeare").mkdir(parents=True)
    (cache / "tiny_shakespeare" / "input.txt").write_bytes(b"by hand\n")
    assert main(["data", "fetch", "tiny_shakespeare", "--manifest", manifest]) == 0
    assert state.requests == []
    (cache / "tiny_shakespeare" / "input.txt").write_bytes(b"by hand, but wrong\n")
    capsys.readouterr()
    assert main(["data", "fetch", "tiny_shakespeare", "--manifest", manifest]) == 1
    assert "remove it or replace it" in _one_line_error(capsys)
    assert state.requests == []


def test_truncated_archive_fails_cleanly(server, cache, tmp_path, capsys) -> None:
    url, state = server
    blob, _ = _tarball(tmp_path, "cifar-10-batches-py", lambda d: write_cifar10_batches(d, 8, 6))
    files = {"cifar-10-python.tar.gz": blob[: len(blob) // 2]}  # checksummed as truncated
    _serve(state, "cifar10", files)
    manifest = _manifest(
        tmp_path,
        {
            "cifar10": _entry(
                files,
                f"{url}/cifar10/",
                **{"cifar-10-python.tar.gz": {"extract": "cifar-10-batches-py"}},
            )
        },
    )
    assert main(["data", "fetch", "cifar10", "--manifest", manifest]) == 1
    line = _one_line_error(capsys)
    assert str(cache / "cifar10" / "cifar-10-python.tar.gz") in line and "truncated" in line
    assert sorted(p.name for p in (cache / "cifar10").iterdir()) == ["cifar-10-python.tar.gz"]


def test_archive_members_outside_the_folder_are_refused(tmp_path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/../../evil")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(buf.getvalue())
    with pytest.raises(data.DatasetFileError, match="refusing to unpack"):
        data.extract(archive, "cifar-10-batches-py")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.gz"]


def test_unknown_dataset_and_bad_manifest_are_usage_errors(cache, tmp_path, capsys) -> None:
    assert main(["data", "fetch", "mnsit"]) == 2
    assert "did you mean 'mnist'" in _one_line_error(capsys)
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "datasets": {
                    "mnist": {"base_url": "http://x/", "files": [{"name": "a", "sha256": "zz"}]}
                }
            }
        )
    )
    assert main(["data", "fetch", "mnist", "--manifest", str(bad)]) == 2
    line = _one_line_error(capsys)
    assert str(bad) in line and "datasets.mnist.files[0].sha256" in line
    bad.write_text("{not json")
    assert main(["data", "list", "--manifest", str(bad)]) == 2
    assert "not valid JSON" in _one_line_error(capsys)


def test_cache_root_rule(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TECHBENCH_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert data.cache_root() == tmp_path / "home" / ".cache" / "techbench"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_root() == tmp_path / "xdg" / "techbench"
    monkeypatch.setenv("TECHBENCH_DATA", str(tmp_path / "mine"))
    assert data.cache_root() == tmp_path / "mine"
    assert data.dataset_dir("mnist") == tmp_path / "mine" / "mnist"
    assert data.dataset_dir("mnist", tmp_path / "other") == tmp_path / "other" / "mnist"


def test_per_dataset_variable_overrides_the_cache(cache, tmp_path, monkeypatch) -> None:
    other = tmp_path / "elsewhere"
    other.mkdir()
    for stem, a in _mnist_files(tmp_path, 30, 12)["arrays"].items():
        write_idx(other / stem, a)
    monkeypatch.setenv("TECHBENCH_MNIST_DIR", str(other))
    assert len(get_spec("mnist", "dataset").create(0).x_test) == 12


def test_shipped_manifest_cites_a_published_checksum_for_every_file() -> None:
    manifest = data.load_manifest()
    assert {"mnist", "fashion_mnist", "cifar10", "cifar100", "tiny_shakespeare"} <= set(manifest)
    for name, entry in manifest.items():
        assert entry.licence and entry.citation and entry.base_url.startswith("http"), name
        for f in entry.files:
            assert f.sha256 and f.size, (name, f.name)
            assert "tensorflow/datasets" in f.checksums_from, (name, f.name)
    # the plugins' file names are the published ones
    assert [f.name for f in manifest["cifar10"].files] == ["cifar-10-python.tar.gz"]
    assert manifest["cifar100"].files[0].extract == "cifar-100-python"


def test_verify_checks_md5_when_it_is_all_that_is_published(tmp_path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"payload")
    md5 = hashlib.md5(b"payload").hexdigest()
    data.verify(path, data.FileEntry("f", 7, None, md5, "test"))
    with pytest.raises(data.DataError, match="MD5 is"):
        data.verify(path, data.FileEntry("f", 7, None, "0" * 32, "test"))
    # a .gz file kept decompressed counts as present (the IDX reader takes both)
    (tmp_path / "g").write_bytes(b"x")
    assert data.file_present(tmp_path, data.FileEntry("g.gz", None, None, md5, ""))
    assert not data.file_present(tmp_path, data.FileEntry("h.gz", None, None, md5, ""))
