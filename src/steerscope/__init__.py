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
# names that accept a named model or prompt set: first register the demo's ("demo",
# "demo-gemma", builtin:demo_*; steerscope.demo.sources)
_NEEDS_DEMO_SOURCES = ("load_model", "load_prompts")


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from steerscope.artifacts import package_version

        return package_version("steerscope") or "0+unknown"
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'steerscope' has no attribute {name!r}")
    if name in _NEEDS_DEMO_SOURCES:
        importlib.import_module("steerscope.demo")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
