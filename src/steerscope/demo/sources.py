"""The demo's named model sources and built-in prompt sets, registered on ``import
steerscope.demo``: the demo refusal models are model sources beside the embedded ones
(``load_model("demo")``, ``"demo-gemma"``; :mod:`steerscope.models.sources`) and the demo
prompts are ``builtin:`` sets (:mod:`steerscope.data.builtin`). The lower layers hold only the
registries; they never import the demo."""

from __future__ import annotations

from pathlib import Path

from steerscope.data.builtin import register_builtin_set
from steerscope.demo import model as demo_model
from steerscope.demo import prompts as demo_prompts
from steerscope.demo.families import GEMMA_DEMO_MODEL
from steerscope.demo.recipe import DEMO_MODEL
from steerscope.models.embedded import embedded_cache_folder, embedded_shape
from steerscope.models.gemma3 import gemma3_shape
from steerscope.models.sources import ModelSource, register_model_source


def _demo_dir() -> Path:
    return demo_model.demo_model_dir()  # looked up on call (tests replace it)


def _gemma_demo_dir() -> Path:
    return demo_model.gemma_demo_model_dir()


# the demo refusal model: a fine-tune of the embedded model (same shape and tokenizer)
DEMO_SOURCE = ModelSource(DEMO_MODEL, ("demo", DEMO_MODEL), folder=_demo_dir,
                          fingerprint=demo_model.demo_fingerprint, shape=embedded_shape,
                          tokenizer_folder=embedded_cache_folder)
# the Gemma-3 demo refusal model: a fine-tune of Gemma-3-270M (its own tokenizer folder: the
# turn template and end-of-turn EOS are set at build time)
GEMMA_DEMO_SOURCE = ModelSource(GEMMA_DEMO_MODEL, ("demo-gemma", GEMMA_DEMO_MODEL),
                                folder=_gemma_demo_dir,
                                fingerprint=demo_model.gemma_demo_fingerprint,
                                shape=gemma3_shape,
                                tokenizer_folder=demo_model.gemma_demo_folder)
register_model_source(DEMO_SOURCE)
register_model_source(GEMMA_DEMO_SOURCE)

# builtin:demo_<side>_<part>: the default split of the demo prompts
for _name, _part in (("demo_harmful_train", "train_harmful"),
                     ("demo_harmless_train", "train_harmless"),
                     ("demo_harmful_held_out", "held_out_harmful"),
                     ("demo_harmless_held_out", "held_out_harmless")):
    register_builtin_set(_name, demo_prompts.demo_split_part, _part)

__all__ = ["DEMO_SOURCE", "GEMMA_DEMO_SOURCE"]
