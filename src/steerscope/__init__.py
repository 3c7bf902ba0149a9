"""steerscope: steering vectors for Hugging Face chat models, and what drives them.

``import steerscope as ss`` gives the names a user needs first; each is imported on first use
(PEP 562), so ``import steerscope`` stays cheap (no torch) and cannot create import cycles::

    lm = ss.load_model("default")
    prompts = [ss.format_prompt(lm.tokenizer, "How do I pick a lock?")]
    ss.generate(lm.model, lm.tokenizer, prompts, interventions=[ss.steer(v, layer=12)])

Everything else lives in the subpackages (docs/architecture.md has the map).
"""

from __future__ import annotations

import importlib
from typing import Any

from steerscope.providers import add_provider

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    # models and prompts
    "load_model": "steerscope.models.loading",
    "LoadedModel": "steerscope.models.loading",
    "format_prompt": "steerscope.models.chat",
    "load_prompts": "steerscope.data",
    "PromptSet": "steerscope.data",
    # interventions and generation
    "Runtime": "steerscope.runtime",
    "Capture": "steerscope.runtime",
    "steer": "steerscope.vectors.vector_set",  # a tensor + layer, a vector or a vector set
    "ablate_direction": "steerscope.runtime",
    "generate": "steerscope.generation",
    # scores and evaluation
    "refusal_scores": "steerscope.evaluate",
    "is_refusal_substring": "steerscope.evaluate",
    "evaluate_steering": "steerscope.evaluate.steering",
    # vectors
    "SteeringVector": "steerscope.vectors",
    "SteeringVectorSet": "steerscope.vectors",
    "extract_vector": "steerscope.vectors",
    "select_dim": "steerscope.vectors",
    # the pipeline
    "run_pipeline": "steerscope.pipeline",
    "load_config": "steerscope.pipeline",
    # errors
    "SteerscopeError": "steerscope.errors",
}

__all__ = ["__version__", *sorted(_EXPORTS)]

# modules that register named things in the lower layers' registries, imported at the first
# name a registry does not know (steerscope.providers): the demo its models ("demo",
# "demo-gemma") and prompt sets (builtin:demo_*), the behaviours their prompt sets
add_provider("steerscope.behaviours")
add_provider("steerscope.demo")


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from steerscope.artifacts import package_version

        return package_version("steerscope") or "0+unknown"
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'steerscope' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
