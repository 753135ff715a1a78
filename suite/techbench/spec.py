"""The old path of :mod:`techbench.techniques.spec` (before 0.4); plugins may keep importing it."""

from .techniques.spec import *  # noqa: F403
from .techniques.spec import __all__ as __all__
