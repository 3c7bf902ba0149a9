"""benchmarks/eval_demo_model.py: recipe variants from ``--set FIELD=VALUE``."""

from __future__ import annotations

import pytest
from conftest import load_script

from steerscope.demo.families import GEMMA_RECIPE


@pytest.fixture(scope="module")
def script():
    return load_script("benchmarks/eval_demo_model.py", "eval_demo_model")


def test_overrides_parse_json_values_and_change_the_hash(script):
    variant = script.recipe_with_overrides(
        GEMMA_RECIPE, ["harmless_sample=100", "steps=7", "harmful_fraction=0.4",
                       "betas=[0.9, 0.99]", "schedule=cosine"])
    assert (variant.harmless_sample, variant.steps, variant.harmful_fraction) == (100, 7, 0.4)
    assert (GEMMA_RECIPE.harmless_sample, GEMMA_RECIPE.steps) != (100, 7)
    assert variant.betas == (0.9, 0.99) and variant.schedule == "cosine"
    assert variant.base_model == GEMMA_RECIPE.base_model  # the rest is the family's recipe
    assert variant.hash() != GEMMA_RECIPE.hash()
    assert script.recipe_with_overrides(GEMMA_RECIPE, []) == GEMMA_RECIPE


@pytest.mark.parametrize("pair, words", [("stepz=3", "no field 'stepz'"),
                                         ("steps", "expected FIELD=VALUE"),
                                         ("=3", "expected FIELD=VALUE")])
def test_bad_overrides_fail_in_one_line(script, pair, words):
    with pytest.raises(SystemExit, match=words):
        script.recipe_with_overrides(GEMMA_RECIPE, [pair])


def test_an_override_the_recipe_rejects_names_the_problem(script):
    with pytest.raises(SystemExit, match="--set.*harmful_fraction must be in"):
        script.recipe_with_overrides(GEMMA_RECIPE, ["harmful_fraction=1.5"])
