"""techbench: a plugin-based benchmark and test suite for neural-network training techniques.

Importing the package is cheap (no torch); the public API lives in ``techbench.techniques.registry``
(``list_techniques``, ``get_spec``, ``create``), ``techbench.techniques.spec`` (``TechniqueSpec``,
``Param``) and ``techbench.testing`` (the conformance suite).
"""

from importlib.metadata import PackageNotFoundError, version

from .techniques.registry import create, get_spec, list_techniques
from .techniques.spec import Param, TechniqueSpec

try:
    __version__ = version("techbench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["Param", "TechniqueSpec", "__version__", "create", "get_spec", "list_techniques"]
