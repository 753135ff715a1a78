"""The store: the only reader and writer of results.

``writer`` (``ResultStore``: the on-disk layout, verified metas, metric rows in Parquet batches,
claims and locks, atomic writes), ``reader`` (bulk loaders for the report and tuning) and
``integrity`` (``status``/``clean``: what is held, corrupt or orphaned). Imports only
``techniques`` and the top-level leaves. ``techbench.store`` was a module before 0.4; its public
names (and the loaders of the old ``techbench.store_read``) are here.
"""

from .reader import load_matrix_info, load_metrics, load_results, load_trials
from .writer import META_DIGEST, ResultStore, file_digest, meta_digest, same_file, seal_meta

__all__ = [
    "META_DIGEST",
    "ResultStore",
    "file_digest",
    "load_matrix_info",
    "load_metrics",
    "load_results",
    "load_trials",
    "meta_digest",
    "same_file",
    "seal_meta",
]
