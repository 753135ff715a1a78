"""Progress of a matrix run: a tqdm bar on a terminal, silence otherwise, one summary line.

The bar (on stderr) shows done/total, failed, diverged and tqdm's ETA. When stderr is not a
terminal (CI logs, pipes) nothing is printed per trial; :meth:`Progress.summary` gives the one
line the caller prints at the end, from the counts :meth:`Progress.settle` read from the store.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Mapping
from typing import IO, Any

NOT_STORED = "not stored"
"""The count of planned trials without a stored result at the end (not run, or not written)."""


class Progress:
    """Count trial outcomes and draw them; ``enabled=None`` means "only on a terminal"."""

    def __init__(
        self,
        total: int,
        *,
        enabled: bool | None = None,
        stream: IO[str] | None = None,
        desc: str = "trials",
        already: int = 0,
    ) -> None:
        self.total = total
        self.already = already
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self.counts: Counter[str] = Counter()
        self.by_others: set[str] = set()
        self.started = time.monotonic()
        self.bar: Any = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                initial=already,
                file=self.stream,
                desc=desc,
                unit="trial",
                dynamic_ncols=True,
                smoothing=0.1,
            )
            self._postfix()

    @property
    def done(self) -> int:
        return self.already + sum(
            self.counts[s] for s in ("completed", "diverged", "failed", "skipped")
        )

    def _postfix(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix(
                {
                    "done": f"{self.done}/{self.total}",
                    "failed": self.counts["failed"],
                    "diverged": self.counts["diverged"],
                },
                refresh=False,
            )

    def update(self, status: str, trial_id: str | None = None) -> None:
        """Record one trial that ended with ``status`` (completed/diverged/failed/skipped)."""
        self.counts[status] += 1
        if status == "skipped" and trial_id is not None:
            self.by_others.add(trial_id)
        if self.bar is not None:
            self.bar.update(1)
            self._postfix()
            self.bar.refresh()

    def note(self, message: str) -> None:
        """A message that must be seen (interrupts, crashed workers), bar or not."""
        if self.bar is not None:
            self.bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def settle(self, stored: Mapping[str, str | None]) -> Counter[str]:
        """Replace the event counts with the store's: ``stored`` maps each trial this run was to
        run to its stored status (None: no result). Events miss results a killed worker wrote
        and count writes that failed; the store does not. Returns the new counts."""
        counts: Counter[str] = Counter()
        for tid, status in stored.items():
            if status is None:
                counts[NOT_STORED] += 1
            else:
                counts["skipped" if tid in self.by_others else status] += 1
        self.counts = counts
        return counts

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def summary(self) -> str:
        """``12/12 trials done: 10 completed, 1 diverged, 1 failed, 0 already stored in 3.2 s``."""
        c = self.counts
        seconds = time.monotonic() - self.started
        parts = [
            f"{c['completed']} completed",
            f"{c['diverged']} diverged",
            f"{c['failed']} failed",
        ]
        if c["skipped"]:
            parts.append(f"{c['skipped']} done by another worker")
        parts.append(f"{self.already} already stored")
        if c["cancelled"]:
            parts.append(f"{c['cancelled']} cancelled")
        if c[NOT_STORED]:
            parts.append(f"{c[NOT_STORED]} {NOT_STORED}")
        return f"{self.done}/{self.total} trials done: " + ", ".join(parts) + f" in {seconds:.1f} s"

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
