"""The old path of :mod:`techbench.techniques.families` (before 0.4); plugins may keep importing it."""

from .techniques.families import *  # noqa: F403
from .techniques.families import __all__ as __all__
