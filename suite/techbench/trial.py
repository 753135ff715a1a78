"""The old path of :mod:`techbench.engine.trial` (before 0.4)."""

from .engine.trial import *  # noqa: F403
from .engine.trial import __all__ as __all__
