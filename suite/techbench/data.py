"""Dataset files: one cache, a checksummed manifest, resumable verified downloads.

Why a cache and a manifest: a result is only comparable to another if both trained on the same
bytes, so every file `techbench data fetch` writes is checked against a checksum shipped in the
package (``datasets.json``, each value cited to the list it was copied from: TensorFlow Datasets'
``url_checksums`` for SHA-256, torchvision's resource lists for MD5), and lands by atomic rename,
so a reader never sees half a file.

Layout: ``cache_root()/<dataset>/<file>``; an archive is unpacked next to it (into a temporary
folder, then renamed) and removed. The root is ``$TECHBENCH_DATA``, else
``$XDG_CACHE_HOME/techbench``, else ``~/.cache/techbench``. A dataset plugin looks in its own
``root`` parameter, then its environment variable (``TECHBENCH_MNIST_DIR`` ...), then
:func:`dataset_dir`.

Downloads stream in chunks to ``<file>.part``; after an interruption the next attempt asks the
server for the rest (HTTP ``Range: bytes=N-``, RFC 9110 section 14) and appends. A mirror
(``--mirror URL`` or ``$TECHBENCH_DATA_MIRROR``) replaces every base URL by ``URL/<dataset>/``,
the cache's own layout, so serving a filled cache folder over HTTP (or ``file://``) makes one.
``$TECHBENCH_DATA_MANIFEST`` (or ``--manifest``) names a JSON file whose datasets replace the
built-in entries of the same name (tests inject their own URLs and checksums this way).

The module imports only the standard library (and tqdm when drawing a bar), so
``techbench data`` starts fast.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

DATA_ENV = "TECHBENCH_DATA"
MIRROR_ENV = "TECHBENCH_DATA_MIRROR"
MANIFEST_ENV = "TECHBENCH_DATA_MANIFEST"
CHUNK = 1 << 16


class DataError(Exception):
    """A fetch that failed (network, checksum, disk): one line for the user, exit status 1."""


class ManifestError(DataError):
    """A manifest file that cannot be used: names the file and the key (a usage error)."""


class DatasetFilesMissing(FileNotFoundError):
    """The files of a file-backed dataset are not where the config, environment or cache say."""


class DatasetFileError(ValueError):
    """A dataset file that is there but wrong (format, shape, dtype, labels, truncation).

    The message is one line and starts with the file's path, so a failed trial's stored error
    names the file to replace.
    """


# ---------------------------------------------------------------- cache


def cache_root() -> Path:
    """``$TECHBENCH_DATA``, else ``$XDG_CACHE_HOME/techbench``, else ``~/.cache/techbench``."""
    explicit = os.environ.get(DATA_ENV, "")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "techbench"


def dataset_dir(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """Where dataset ``name``'s files live: ``<root>/<name>`` (``root`` defaults to the cache)."""
    return (Path(root).expanduser() if root else cache_root()) / name


# ---------------------------------------------------------------- manifest


@dataclass(frozen=True)
class FileEntry:
    """One published file: its name, size in bytes and checksums (with where they came from)."""

    name: str
    size: int | None
    sha256: str | None
    md5: str | None
    checksums_from: str
    extract: str | None = None  # for an archive: the top folder it unpacks to


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    title: str
    homepage: str
    licence: str
    citation: str
    base_url: str
    files: tuple[FileEntry, ...]

    @property
    def size(self) -> int | None:
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)

    def url(self, file: FileEntry, mirror: str | None = None) -> str:
        if mirror:
            return f"{mirror.rstrip('/')}/{self.name}/{file.name}"
        return self.base_url.rstrip("/") + "/" + file.name


_HEX = {"sha256": 64, "md5": 32}


def _parse_file(raw: Any, where: str) -> FileEntry:
    if not isinstance(raw, Mapping):
        raise ManifestError(f"{where}: expected a table, got {type(raw).__name__}")
    name = raw.get("name")
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        raise ManifestError(f"{where}.name: expected a plain file name, got {name!r}")
    sums: dict[str, str | None] = {}
    for algo, width in _HEX.items():
        value = raw.get(algo)
        if value is not None and not (
            isinstance(value, str) and re.fullmatch(f"[0-9a-fA-F]{{{width}}}", value)
        ):
            raise ManifestError(f"{where}.{algo}: expected {width} hex digits, got {value!r}")
        sums[algo] = value.lower() if isinstance(value, str) else None
    if not any(sums.values()):
        raise ManifestError(f"{where}: no checksum (give sha256, or md5 if that is all published)")
    size = raw.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise ManifestError(f"{where}.size: expected a byte count, got {size!r}")
    extract = raw.get("extract")
    if extract is not None and (not isinstance(extract, str) or "/" in extract or not extract):
        raise ManifestError(f"{where}.extract: expected a folder name, got {extract!r}")
    return FileEntry(
        name=name,
        size=size,
        sha256=sums["sha256"],
        md5=sums["md5"],
        checksums_from=str(raw.get("checksums_from", "")),
        extract=extract,
    )


def _parse_manifest(text: str, source: str) -> dict[str, DatasetEntry]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{source}: not valid JSON ({exc})") from None
    datasets = doc.get("datasets") if isinstance(doc, Mapping) else None
    if not isinstance(datasets, Mapping):
        raise ManifestError(f"{source}: expected a top-level 'datasets' table")
    out: dict[str, DatasetEntry] = {}
    for name, raw in datasets.items():
        where = f"{source}: datasets.{name}"
        if not isinstance(raw, Mapping):
            raise ManifestError(f"{where}: expected a table")
        base_url = raw.get("base_url")
        if not isinstance(base_url, str) or not base_url:
            raise ManifestError(f"{where}.base_url: expected a URL")
        files = raw.get("files")
        if not isinstance(files, list) or not files:
            raise ManifestError(f"{where}.files: expected a non-empty list")
        out[name] = DatasetEntry(
            name=name,
            title=str(raw.get("title", name)),
            homepage=str(raw.get("homepage", "")),
            licence=str(raw.get("licence", "")),
            citation=str(raw.get("citation", "")),
            base_url=base_url,
            files=tuple(_parse_file(f, f"{where}.files[{i}]") for i, f in enumerate(files)),
        )
    return out


def load_manifest(override: str | os.PathLike[str] | None = None) -> dict[str, DatasetEntry]:
    """The built-in manifest, with the datasets of ``override`` (or ``$TECHBENCH_DATA_MANIFEST``)
    replacing the built-in entries of the same name."""
    text = resources.files("techbench").joinpath("datasets.json").read_text(encoding="utf-8")
    manifest = _parse_manifest(text, "techbench/datasets.json")
    path = override or os.environ.get(MANIFEST_ENV, "")
    if path:
        try:
            extra = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ManifestError(f"{path}: cannot read the manifest ({exc.strerror})") from None
        manifest.update(_parse_manifest(extra, str(path)))
    return manifest


# ---------------------------------------------------------------- state on disk


def file_present(folder: Path, file: FileEntry) -> bool:
    """The file (or, for an archive, the folder it unpacks to) is in ``folder``.

    A ``.gz`` file also counts when it sits there decompressed (how many people keep MNIST).
    """
    if file.extract:  # also when a variable points into the unpacked folder itself
        return (folder / file.extract).is_dir() or (folder.name == file.extract)
    if (folder / file.name).is_file():
        return True
    return file.name.endswith(".gz") and (folder / file.name[:-3]).is_file()


def missing_files(entry: DatasetEntry, folder: Path) -> list[str]:
    return [f.name for f in entry.files if not file_present(folder, f)]


def verify(path: Path, file: FileEntry) -> None:
    """Check size and every published checksum of ``path``; raise :class:`DataError` if one
    differs (the message names the file, both values and the checksum's source)."""
    try:
        actual_size = path.stat().st_size
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    if file.size is not None and actual_size != file.size:
        raise DataError(f"{path}: {actual_size} bytes, expected {file.size}")
    hashes = {algo: hashlib.new(algo) for algo in _HEX if getattr(file, algo)}
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            for h in hashes.values():
                h.update(chunk)
    for algo, h in hashes.items():
        want = getattr(file, algo)
        if h.hexdigest() != want:
            cited = f" (published in {file.checksums_from})" if file.checksums_from else ""
            raise DataError(f"{path}: {algo.upper()} is {h.hexdigest()}, expected {want}{cited}")


def _strongest(file: FileEntry) -> str:
    return "sha256" if file.sha256 else "md5"


# ---------------------------------------------------------------- download


class _Unreachable(DataError):
    """No answer from the host (DNS, refused, timeout) or an HTTP error status."""


class _Dropped(DataError):
    """The connection broke mid-stream; the ``.part`` file keeps what arrived."""


def _progress_bar(total: int | None, initial: int, desc: str, enabled: bool | None) -> Any:
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return contextlib.nullcontext(None)
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        dynamic_ncols=True,
        leave=False,
    )


def _open(url: str, offset: int, timeout: float) -> Any:
    import urllib.error
    import urllib.parse
    import urllib.request

    from . import __version__

    req = urllib.request.Request(url, headers={"User-Agent": f"techbench/{__version__}"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    try:
        return urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            return None  # nothing left to send: the .part file is complete (verify decides)
        raise _Unreachable(f"{url} answered HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        host = urllib.parse.urlsplit(url).netloc or url
        raise _Unreachable(f"cannot reach {host} ({getattr(exc, 'reason', exc)})") from None


def _download_once(url: str, part: Path, size: int | None, timeout: float, progress: Any) -> None:
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset >= size:
        if offset == size:
            return  # complete already: verify decides
        offset = 0
    resp = _open(url, offset, timeout)
    if resp is None:
        return
    with resp:
        if offset and getattr(resp, "status", 200) != 206:
            offset = 0  # the server ignored Range and sends the whole file
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else size
        got = offset
        try:
            with (
                open(part, "ab" if offset else "wb") as fh,
                _progress_bar(total, offset, part.name[:-5], progress) as bar,
            ):
                while chunk := resp.read(CHUNK):
                    fh.write(chunk)
                    got += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
                fh.flush()
                os.fsync(fh.fileno())
        except (http.client.HTTPException, ConnectionError, TimeoutError) as exc:
            raise _Dropped(f"{url}: connection lost after {got} bytes ({exc!r})") from None
    if total is not None and got < total:
        raise _Dropped(f"{url}: connection closed after {got} of {total} bytes")


def download(
    url: str,
    dest: Path,
    file: FileEntry,
    *,
    timeout: float = 30.0,
    retries: int = 3,
    retry_wait: float = 1.0,
    progress: bool | None = None,
) -> None:
    """Stream ``url`` to ``dest`` via ``dest.part``, resuming after drops, then verify and rename.

    After a drop the download resumes from where it stopped; it gives up after ``retries``
    attempts in a row that brought no new byte (``retries=0``: at the first drop, keeping the
    ``.part`` file for the next call). A checksum mismatch removes the ``.part`` file.
    """
    part = dest.with_name(dest.name + ".part")
    failures = 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            _download_once(url, part, file.size, timeout, progress)
            break
        except _Dropped as exc:
            now = part.stat().st_size if part.exists() else 0
            failures = 0 if now > before else failures + 1
            if retries == 0 or failures > retries:
                raise _Dropped(f"{exc}; run the command again to resume from {part}") from None
            time.sleep(retry_wait * failures)
    try:
        verify(part, file)
    except DataError as exc:
        part.unlink(missing_ok=True)
        raise DataError(f"{exc}; the download was removed") from None
    os.replace(part, dest)


# ---------------------------------------------------------------- archives


def _safe_members(tar: tarfile.TarFile, archive: Path, top: str) -> list[tarfile.TarInfo]:
    members = tar.getmembers()
    for m in members:
        parts = PurePosixPath(m.name).parts
        if not (m.isfile() or m.isdir()) or m.name.startswith("/") or ".." in parts:
            raise DatasetFileError(f"{archive}: refusing to unpack member {m.name!r}")
        if not parts or parts[0] != top:
            raise DatasetFileError(f"{archive}: member {m.name!r} is outside {top}/")
    return members


def extract(archive: Path, top: str) -> Path:
    """Unpack ``archive`` (a tar, any compression) into its folder, atomically: into a temporary
    folder first, then one rename of ``top``. Only regular files and folders under ``top/``.
    Returns the unpacked folder; raises :class:`DatasetFileError` for a truncated archive."""
    folder = archive.parent
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=folder))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = _safe_members(tar, archive, top)
                tar.extractall(tmp, members=members, filter="data")
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise DatasetFileError(f"{archive}: truncated or corrupt archive ({exc})") from None
        if not (tmp / top).is_dir():
            raise DatasetFileError(f"{archive}: has no {top}/ folder")
        target = folder / top
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp / top, target)
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- fetch


def _by_hand(entry: DatasetEntry, folder: Path) -> str:
    names = ", ".join(f.name for f in entry.files)
    return (
        f"put {names} (from {entry.base_url}) into {folder}/ by hand, or point --mirror / "
        f"${MIRROR_ENV} at a copy, then run `techbench data fetch {entry.name}` again"
    )


def fetch(
    entry: DatasetEntry,
    *,
    root: str | os.PathLike[str] | None = None,
    mirror: str | None = None,
    timeout: float = 30.0,
    retries: int = 3,
    retry_wait: float = 1.0,
    progress: bool | None = None,
    say: Callable[[str], None] | None = None,
) -> Path:
    """Make every file of ``entry`` present and verified in ``<root>/<name>``; returns the folder.

    Present files are verified, not downloaded again (a file put there by hand is checked the
    same way); archives are unpacked and then removed. Raises :class:`DataError` (or
    :class:`DatasetFileError` for a corrupt archive) with one line; folders this call created
    are removed again if they stay empty.
    """
    folder = dataset_dir(entry.name, root)
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV) or None
    created = [d for d in (folder, *folder.parents) if not d.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{folder}: cannot create the folder ({exc.strerror})") from None
    try:
        for file in entry.files:
            _fetch_file(entry, file, folder, mirror, timeout, retries, retry_wait, progress, say)
    except BaseException:
        for d in created:
            with contextlib.suppress(OSError):
                d.rmdir()  # only if empty
        raise
    return folder


def _fetch_file(
    entry: DatasetEntry,
    file: FileEntry,
    folder: Path,
    mirror: str | None,
    timeout: float,
    retries: int,
    retry_wait: float,
    progress: bool | None,
    say: Callable[[str], None] | None,
) -> None:
    dest = folder / file.name
    if file.extract and (folder / file.extract).is_dir():
        return
    if dest.is_file():
        try:
            verify(dest, file)
        except DataError as exc:
            raise DataError(f"{exc}; remove it or replace it with the published file") from None
    elif not file.extract and file_present(folder, file):
        return  # kept decompressed by the user: the plugin reads it, nothing to verify
    else:
        try:
            download(
                entry.url(file, mirror),
                dest,
                file,
                timeout=timeout,
                retries=retries,
                retry_wait=retry_wait,
                progress=progress,
            )
        except _Unreachable as exc:
            raise DataError(f"{entry.name}: {exc}; {_by_hand(entry, folder)}") from None
        except OSError as exc:
            raise DataError(f"{dest}: cannot write ({exc.strerror or exc})") from None
        if say is not None:
            size = dest.stat().st_size
            say(f"{entry.name}/{file.name}: {size} bytes, {_strongest(file)} verified")
    if file.extract:
        try:
            extract(dest, file.extract)
        except OSError as exc:
            raise DataError(f"{dest}: cannot unpack ({exc.strerror or exc})") from None
        dest.unlink()
