"""The ``techbench`` command: ``list | show | check | run | status | clean | probe | report | data``.

Each sub-command lives in ``techbench.cli.commands.<name>`` with ``add_parser(subparsers)`` and
``main(args) -> int``; modules import their heavy dependencies inside ``main`` so that
``techbench list`` starts without torch, Lightning or pandas. Usage errors and bad input exit
with status 2 and a one-line message, never a traceback; an I/O fault (read-only, full disk, a
file where a folder should be) exits 1 with one line naming the path (:mod:`techbench.cli.clio`);
a closed pipe on stdout (``techbench list | head -3``) exits quietly with 141; Ctrl-C exits 130,
SIGTERM 143 (one line each).
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from collections.abc import Sequence

from .. import __version__
from ..errors import Terminated, UsageError, raise_terminated
from ..techniques.spec import TechniqueError
from .clio import describe, quiet_broken_pipe

COMMANDS = ("list", "show", "check", "run", "status", "clean", "probe", "report", "data")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="techbench",
        description="Benchmark and test suite for neural-network training techniques.",
    )
    parser.add_argument("--version", action="version", version=f"techbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"{__package__}.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.commands.{name}":
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        return quiet_broken_pipe()
    except KeyboardInterrupt:  # while the command modules were still importing
        print("techbench: interrupted", file=sys.stderr)
        return 130


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, raise_terminated) if main else None
    try:
        code = int(args.handler(args))
        sys.stdout.flush()
        return code
    except (UsageError, TechniqueError) as exc:
        print(f"techbench {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        hint = "; run the same command again to resume" if args.command == "run" else ""
        how = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(f"techbench {args.command}: {how}{hint}", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except BrokenPipeError:
        raise
    except OSError as exc:
        where = getattr(args, "out", None) or getattr(args, "results_dir", None)
        print(f"techbench {args.command}: error: {describe(exc, where)}", file=sys.stderr)
        return 1
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous or signal.SIG_DFL)
