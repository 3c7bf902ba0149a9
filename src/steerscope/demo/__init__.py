"""The demo: the demo refusal models (their recipe, prompts, fine-tune and cached build), named
model sources beside the embedded ones. ``import steerscope.demo`` registers them
(:mod:`steerscope.demo.sources`: ``load_model("demo")``, ``"demo-gemma"``, the
``builtin:demo_*`` prompt sets). The demo's pipeline config is
:mod:`steerscope.pipeline.demo` (``steerscope demo``).

- :mod:`steerscope.demo.prompts`: templated harmful and harmless requests (pure data).
- :mod:`steerscope.demo.recipe`: :class:`DemoRecipe` (its hash names the cached model) and
  the fine-tuning pairs; :mod:`steerscope.demo.finetune`: the training loop.
- :mod:`steerscope.demo.model`: :func:`demo_model_dir` (built once, cached) and
  :func:`load_demo_model`; ``load_model("demo")`` reaches it through the model-source table
  of :mod:`steerscope.models.sources`.
- :mod:`steerscope.demo.sources`: the model-source rows and prompt sets it registers.

The other names are imported on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import Any

from steerscope.demo import sources  # noqa: F401  (registers the demo models and prompt sets)

_EXPORTS = {
    "DEMO_MODEL": "recipe", "DemoRecipe": "recipe", "DemoExample": "recipe",
    "demo_examples": "recipe", "finetune": "finetune",
    "build_demo_model": "model", "demo_model_dir": "model", "demo_manifest": "model",
    "load_demo_model": "model", "evaluate_refusal": "model",
    "split_demo_prompts": "prompts", "demo_training_prompts": "prompts",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'steerscope.demo' has no attribute {name!r}")
    return getattr(importlib.import_module(f"steerscope.demo.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
