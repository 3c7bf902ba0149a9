"""The built-in pipeline stages, one module each, imported here in pipeline order (each
module registers its stage, its config section and its results.json part with
:func:`~steerscope.pipeline.registry.register_stage`). A new stage is a new module plus its
name in :data:`BUILTIN`, before ``report``."""

import importlib

BUILTIN = ("model", "data", "vectors", "trained", "strength", "evaluation", "patching", "circuits",
           "freeze", "svv", "sparsify", "report")

for _name in BUILTIN:
    importlib.import_module(f"{__name__}.{_name}")
