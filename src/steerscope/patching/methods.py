"""Attribution methods as records: how the edges and nodes that carry a vector's effect are
scored (anchor: auto-circuit's ``PruneAlgo``, a dataclass of key, name and function).

Each :class:`AttributionMethod` has one signature, ``function(gm, examples, vector, *,
metric, tau, reverse, pooling, progress, **kw) -> Scores`` (a
:class:`~steerscope.patching.forward.GraphModel`, the patching examples, the steering vector
[d] or [n_layers, d]); the built-in ones are EAP-IG (:func:`~steerscope.patching.scores.eap_ig`,
approximate, every edge) and exact patching
(:func:`~steerscope.patching.scores.exact_patching`, one forward pass per node or edge).
Add one with :func:`register_attribution_method`; :func:`~steerscope.patching.run.score_vector`
finds them here by key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from steerscope.errors import SteerscopeError
from steerscope.patching.scores import Scores, eap_ig, exact_patching

AttributionFn = Callable[..., Scores]


@dataclass(frozen=True)
class AttributionMethod:
    """One attribution method: ``key`` (the name of its scores in a
    :class:`~steerscope.patching.result.PatchingResult`), ``name`` (for display),
    ``function`` (see the module docstring) and ``approximate`` (a gradient estimate rather
    than patched forward passes)."""

    key: str
    name: str
    function: AttributionFn
    approximate: bool = True


#: key -> record
ATTRIBUTION_METHODS: dict[str, AttributionMethod] = {}


def register_attribution_method(method: AttributionMethod, *,
                                overwrite: bool = False) -> AttributionMethod:
    """Add ``method`` to :data:`ATTRIBUTION_METHODS` (re-registering a key needs
    ``overwrite=True``)."""
    if not isinstance(method.key, str) or not method.key or not callable(method.function):
        raise SteerscopeError(f"attribution method {method.key!r} needs a non-empty key and a "
                              "callable function")
    if method.key in ATTRIBUTION_METHODS and not overwrite:
        raise SteerscopeError(f"attribution method '{method.key}' is already registered",
                              "pass overwrite=True to replace it")
    ATTRIBUTION_METHODS[method.key] = method
    return method


def attribution_method(key: str) -> AttributionMethod:
    """The :class:`AttributionMethod` registered under ``key`` (a one-line error otherwise)."""
    if key not in ATTRIBUTION_METHODS:
        raise SteerscopeError(f"unknown attribution method {key!r}",
                              f"use one of {', '.join(ATTRIBUTION_METHODS)} or "
                              "register_attribution_method")
    return ATTRIBUTION_METHODS[key]


register_attribution_method(AttributionMethod("eap_ig", "EAP-IG", eap_ig, approximate=True))
register_attribution_method(AttributionMethod("exact", "exact patching", exact_patching,
                                              approximate=False))

__all__ = ["ATTRIBUTION_METHODS", "AttributionFn", "AttributionMethod", "attribution_method",
           "register_attribution_method"]
