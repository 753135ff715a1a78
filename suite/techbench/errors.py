"""The errors every layer may raise for the user, and the one "did you mean" helper.

Kept at the bottom of the import graph (it imports nothing of techbench) so that the core
(schema, matrix, store, executors) can raise a usage error without importing the CLI, which
only catches and prints them.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UsageError(Exception):
    """Bad input from the user: the CLI prints it as one line and exits with status 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread (see :func:`raise_terminated`): stop now, like a
    second Ctrl-C; the CLI exits with status 143."""


def raise_terminated(signum: int, frame: object) -> None:
    """A SIGTERM handler: raise :class:`Terminated` where the main thread is."""
    raise Terminated


def did_you_mean(word: str, known: Iterable[str], *, list_up_to: int = 30) -> str:
    """A hint for an unknown ``word``: the close matches among ``known``, else the known values.

    Close matches use :func:`difflib.get_close_matches` (ratio >= 0.7: "nonexistent" is not
    "constant" at 0.63), so a typo gets
    "did you mean 'relu'?"; with no close match and at most ``list_up_to`` known values they are
    listed ("expected one of: ..."), otherwise the hint is empty.
    """
    options = list(dict.fromkeys(known))
    close = difflib.get_close_matches(word, options, n=3, cutoff=0.7)
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close) + "?"
    if not options:
        return "none is registered"
    if len(options) <= list_up_to:
        return "expected one of: " + ", ".join(options)
    return ""
