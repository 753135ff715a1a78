"""The old path of :mod:`techbench.techniques.registry` (before 0.4); plugins may keep importing it."""

from .techniques.registry import *  # noqa: F403
from .techniques.registry import __all__ as __all__
