"""Techniques: what a plugin is and how one is found.

``spec`` (a technique's declared parameters), ``registry`` (entry points without importing
plugins, lazy load, broken plugins isolated, qualified names), ``families`` (the base classes
that declare every hook the engine calls), ``provenance`` (which distribution a technique came
from) and ``palette`` (one colour per technique). Imports only the top-level leaves (``schema``,
``errors``); everything else in techbench imports this.
"""

from .registry import (
    PluginWarning,
    Registry,
    UnknownTechniqueError,
    create,
    default_registry,
    get_spec,
    list_techniques,
)
from .spec import Param, ParamError, TechniqueError, TechniqueSpec, parse_technique_arg

__all__ = [
    "Param",
    "ParamError",
    "PluginWarning",
    "Registry",
    "TechniqueError",
    "TechniqueSpec",
    "UnknownTechniqueError",
    "create",
    "default_registry",
    "get_spec",
    "list_techniques",
    "parse_technique_arg",
]
