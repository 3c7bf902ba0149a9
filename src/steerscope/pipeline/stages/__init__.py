"""The built-in pipeline stages, one module each. Every module of this package is imported
here (found by name, no list to edit); each registers its stage, its config section and its
results.json part with :func:`~steerscope.pipeline.registry.register_stage`, and its place in
the pipeline with ``order=`` (model 10, data 20, vectors 30, trained 40, strength 45,
evaluation 50, patching 60, circuits 70, freeze 80, svv 90, sparsify 100, report 1000). A new
stage is a new module here (or a ``register_stage`` call anywhere)."""

import importlib
import pkgutil

from steerscope.pipeline.registry import STAGES, discovering

with discovering():
    for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        importlib.import_module(f"{__name__}.{_module}")

BUILTIN = tuple(STAGES)  # the built-in stages, in pipeline order
