"""The engine: one Lightning module trains one stack of K members; a trial alone is a stack of one.

``trial`` (``run_stack``/``run_trial``: build the data, models and trainer for a stack),
``population`` (``StackedModule``, the Lightning module), ``stack_*``/``stacked_*`` (members,
per-member data streams, losses, regularizer hooks, gradient health), ``member_hp`` (per-member
hyper-parameters), ``health``/``layerstats`` (gradient health and probes), ``callbacks`` and
``lit`` (task losses in the loop). Importing this package is cheap; torch loads with the
modules. Imports ``techniques`` and ``plan.stacking`` (the precisions a stack runs in).
"""

__all__ = ["run_stack", "run_trial"]


def __getattr__(name: str) -> object:
    """``run_stack`` and ``run_trial`` load torch, so they are imported on first use."""
    if name in __all__:
        from . import trial

        return getattr(trial, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
