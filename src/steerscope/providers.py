"""Modules that register named things (models, prompt sets) in the lower layers' registries.

A lower layer never imports a higher one, yet ``load_model("demo")`` must find the demo model
that :mod:`steerscope.demo` builds. The registries (:mod:`steerscope.models.sources`,
:mod:`steerscope.data.builtin`) call :func:`load_providers` when a name is not registered: it
imports, once, every module listed with :func:`add_provider`, whose import registers its
names. The public face (``steerscope/__init__.py``, the top layer) lists ``steerscope.demo``;
a user's package may list its own. Pure mechanism: this module imports no steerscope module.
"""

from __future__ import annotations

import importlib

PROVIDERS: list[str] = []  # module names, in the order they were added
_LOADED: set[str] = set()


def add_provider(module: str) -> None:
    """List ``module`` (a dotted name) as one whose import registers named things."""
    if module not in PROVIDERS:
        PROVIDERS.append(module)


def load_providers() -> None:
    """Import every listed provider not imported yet (each once)."""
    for module in list(PROVIDERS):
        if module not in _LOADED:
            _LOADED.add(module)
            importlib.import_module(module)


__all__ = ["PROVIDERS", "add_provider", "load_providers"]
