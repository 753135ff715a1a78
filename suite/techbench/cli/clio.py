"""The CLI's I/O faults as one line each: the path and the problem, never a traceback.

:func:`describe` turns an ``OSError`` (Python's or pyarrow's) into ``PATH: problem`` with the
problem in words a user acts on (read-only file system, no space left, not a folder, ...);
:func:`writable_dir` checks an output folder *before* any work is done, so a long computation
never ends in a write error; :func:`quiet_broken_pipe` is the standard recipe for a reader that
went away (``techbench list | head -3``): stop writing, exit quietly.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import sys
from pathlib import Path

SIGPIPE_EXIT = 141
"""What a shell reports for a process killed by SIGPIPE (128 + 13)."""

_PROBLEMS = {
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENOTDIR: "not a directory (a file is in the way)",
    errno.EISDIR: "is a directory",
    errno.EEXIST: "exists as a file",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOENT: "no such file or directory",
    errno.ENAMETOOLONG: "file name too long",
    errno.EIO: "input/output error",
}


def _errno(exc: OSError) -> int | None:
    if exc.errno is not None:
        return exc.errno
    found = re.search(r"\[Errno (\d+)\]", str(exc))
    return int(found.group(1)) if found else None


def describe(exc: OSError, where: str | os.PathLike[str] | None = None) -> str:
    """``PATH: problem``, one line; ``where`` (e.g. the output folder) names the place when the
    error itself names no path (a failed flush or close carries none)."""
    code = _errno(exc)
    problem = _PROBLEMS.get(code) if code is not None else None
    if problem is None:
        text = exc.strerror or str(exc) or type(exc).__name__
        problem = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    path = exc.filename2 if code == errno.EEXIST and exc.filename2 else exc.filename
    if path is None:
        found = re.search(r"(?:file|path|directory)[: ]+'?([^'\s,]+)'?", str(exc))
        path = found.group(1) if found else None
    if path is None and where is not None:
        return f"{os.fsdecode(where)}: {problem} (while writing there)"
    return f"{os.fsdecode(path)}: {problem}" if path is not None else problem


def writable_dir(path: str | os.PathLike[str]) -> Path:
    """Create folder ``path`` (and parents) and prove it writable; ``OSError`` naming it if not.

    A file in the way is ``ENOTDIR`` naming that file (``mkdir`` alone says "File exists"
    without saying it is a file)."""
    folder = Path(path)
    for part in (folder, *folder.parents):
        if part.exists() and not part.is_dir():
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(part))
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".techbench-write-test.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(folder)) from None
    os.close(fd)
    probe.unlink()
    return folder


def quiet_broken_pipe() -> int:
    """After ``BrokenPipeError`` on stdout: send further output to /dev/null, return 141.

    Python flushes stdout again at exit; pointing the descriptor at /dev/null keeps that flush
    from raising a second time (the recipe of the ``signal`` module's documentation)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
    return SIGPIPE_EXIT
