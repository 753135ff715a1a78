"""Planning: from a matrix TOML to the trials to run, grouped into stacks.

``matrix`` (the TOML front end: axes, ``Trial`` values), ``scale`` and ``scale_parse`` (scale
ladders: rungs of width and depth, their budgets and parameter counts), ``tune`` and ``search``
(tuning: search points, selection, finals), ``seedplan`` (the two-stage seed plan's values),
``stacking`` (the one stacking policy, used by the executors and ``--dry-run`` alike),
``shard`` (split trials between machines), ``narrow`` (``--only``-style filters) and
``preflight`` (checks before anything trains). Imports ``techniques`` and ``store`` (tuning and
the seed plan read finished trials), never the engine or the executors.
"""

from .matrix import Matrix, MatrixError, builtin_matrices, load_matrix, load_matrix_dict
from .stacking import Stack, plan_stacks

__all__ = [
    "Matrix",
    "MatrixError",
    "Stack",
    "builtin_matrices",
    "load_matrix",
    "load_matrix_dict",
    "plan_stacks",
]
