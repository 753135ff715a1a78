"""The old path of :mod:`techbench.plan.matrix` (before 0.4)."""

from .plan.matrix import *  # noqa: F403
from .plan.matrix import __all__ as __all__
