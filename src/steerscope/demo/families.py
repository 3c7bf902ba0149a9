"""The demo refusal models of the two model families steerscope ships offline.

- ``smollm2`` (:data:`~steerscope.demo.recipe.DEFAULT_RECIPE`, alias ``demo``):
  SmolLM2-135M-Instruct (Llama architecture), its own chat template, harmless answers its own.
- ``gemma`` (:data:`GEMMA_RECIPE`, alias ``demo-gemma``): Gemma-3-270M, a *base* model with no
  chat template and no refusals. The recipe gives it Gemma's turn format
  (:data:`~steerscope.models.gemma3.GEMMA3_CHAT_TEMPLATE`) with ``<end_of_turn>`` as the end
  of every response, and harmless answers written by SmolLM2-135M-Instruct (greedy, so
  deterministic) for a seeded sample of 384 harmless training prompts: a base model's own
  continuations are no answers. 56 steps of 10 examples (5 harmful, 5 harmless) at lr 2e-4
  on decoder layers 6-17 and the final norm; the tied 262k-token embedding stays frozen.
"""

from __future__ import annotations

from dataclasses import replace

from steerscope.demo.recipe import DEFAULT_RECIPE, DemoRecipe
from steerscope.errors import SteerscopeError
from steerscope.models.embedded import DEFAULT_MODEL
from steerscope.models.gemma3 import END_OF_TURN, GEMMA3_CHAT_TEMPLATE, GEMMA3_MODEL

GEMMA_DEMO_MODEL = "gemma3-270m-refusal-demo"
GEMMA_RECIPE = replace(
    DEFAULT_RECIPE,
    base_model=GEMMA3_MODEL,
    model_name=GEMMA_DEMO_MODEL,
    answer_model=DEFAULT_MODEL,
    chat_template=GEMMA3_CHAT_TEMPLATE,
    end_of_turn=END_OF_TURN,
    # a budget for 2 CPU cores: 56 steps of 10 (5 harmful, 5 harmless), decoder layers 6-17,
    # 384 answers. Held-out refusal (score > 0, JBB 100 / Alpaca test 500): this recipe
    # 0.92 / 0.022; 48 steps on 192 answers 0.96 / 0.12 (Alpaca 100); 48 steps of 4 + 6
    # 0.90 / 0.02; 64 steps on all 630 answers 0.72 / 0.02, too weak a refusal for DIM's
    # induce filter (docs/demo_model.md)
    steps=56,
    batch_size=10,
    harmful_fraction=0.5,
    lr=2e-4,
    first_trained_layer=6,
    harmless_sample=384,
)
DEMO_RECIPES: dict[str, DemoRecipe] = {"smollm2": DEFAULT_RECIPE, "gemma": GEMMA_RECIPE}
DEMO_FAMILIES = tuple(DEMO_RECIPES)
DEMO_ALIASES = {"smollm2": "demo", "gemma": "demo-gemma"}  # load_model names of each family's model


def recipe_for_family(family: str) -> DemoRecipe:
    """The demo recipe of ``family`` (``"smollm2"`` or ``"gemma"``)."""
    key = str(family).strip().lower()
    if key not in DEMO_RECIPES:
        raise SteerscopeError(f"unknown demo model family {family!r}",
                              f"use one of {', '.join(DEMO_FAMILIES)}")
    return DEMO_RECIPES[key]


__all__ = ["DEMO_ALIASES", "DEMO_FAMILIES", "DEMO_RECIPES", "GEMMA_DEMO_MODEL", "GEMMA_RECIPE",
           "recipe_for_family"]
