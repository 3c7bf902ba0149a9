"""``steerscope run CONFIG --set section.key=VALUE``: the values are applied to the config's
data before it is built (validated like the file), change only the keys of the stages whose
section they set, and every bad input is one line naming the key and the fix."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from steerscope.errors import SteerscopeError
from steerscope.pipeline.config import PipelineConfig, config_from_dict, load_config
from steerscope.pipeline.overrides import (
    apply_sets,
    check_sets_run,
    load_config_with_sets,
    parse_set,
)
from steerscope.pipeline.registry import STAGES
from steerscope.pipeline.runner import stage_key


@pytest.mark.parametrize("text, key, value", [
    ("evaluation.batch_size=8", "evaluation.batch_size", 8),
    ("vectors.dim.kl_threshold=0.5", "vectors.dim.kl_threshold", 0.5),
    ("vectors.dim.relax_kl=true", "vectors.dim.relax_kl", True),
    ("circuits.sizes=[10, 50]", "circuits.sizes", [10, 50]),
    ("evaluation.judge=null", "evaluation.judge", None),
    ("evaluation.judge=chat:some/model=x", "evaluation.judge", "chat:some/model=x"),
    (" name = my-run", "name", "my-run"),
])
def test_values_are_read_as_yaml(text, key, value):
    assert parse_set(text) == (key, value)


def test_sets_apply_in_order_without_touching_the_data():
    data = {"evaluation": {"batch_size": 4}, "name": "a"}
    out, given = apply_sets(data, ["evaluation.batch_size=2", "vectors.dim.filter=false",
                                   "evaluation.batch_size=3"])
    assert out == {"evaluation": {"batch_size": 3}, "name": "a",
                   "vectors": {"dim": {"filter": False}}}
    assert given == {"evaluation.batch_size": 3, "vectors.dim.filter": False}
    assert data == {"evaluation": {"batch_size": 4}, "name": "a"}


def test_a_set_config_equals_the_file_with_that_value(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\nevaluation:\n  max_new_tokens: 8\n")
    cfg = load_config_with_sets(path, ["evaluation.max_new_tokens=5", "svv.n_heads=2"])
    assert cfg == config_from_dict({"name": "x", "evaluation": {"max_new_tokens": 5},
                                    "svv": {"n_heads": 2}})
    assert load_config_with_sets(path) == load_config(path)
    # a config object: its allow_code survives
    given = PipelineConfig(allow_code=True)
    assert load_config_with_sets(given, ["seed=3"]).allow_code is True


@pytest.mark.parametrize("text, match", [
    ("evaluation.batch_size", r"--set 'evaluation.batch_size' is not KEY=VALUE: write e\.g\."),
    ("=3", r"is not KEY=VALUE"),
    ("evaluation..batch_size=3", r"is not KEY=VALUE"),
    ("evaluation.batchsize=3", r"--set evaluation.batchsize: unknown config key "
                               r"'evaluation.batchsize': valid keys of evaluation: "
                               r"max_new_tokens, batch_size"),
    ("evalution.batch_size=3", r"unknown config key 'evalution.batch_size': valid keys: name"),
    ("evaluation.max_new_tokens.x=3", r"\(evaluation.max_new_tokens is int, not a section\)"),
    ("evaluation.max_new_tokens=eight", r"--set evaluation.max_new_tokens: config key "
                                        r"'evaluation.max_new_tokens' must be int, got 'eight': "
                                        r"pass a value of that type, e\.g\. --set "
                                        r"evaluation.max_new_tokens=64"),
    ("evaluation.batch_size=eight", r"config key 'evaluation.batch_size' is 'eight', neither "
                                    r"auto nor a number: set evaluation.batch_size to a "
                                    r"positive integer or auto"),
    ("vectors.dim.relax_kl=maybe", r"'vectors.dim.relax_kl' must be bool"),
    ("circuits.sizes=[10, ten]", r"'circuits.sizes\[1\]' must be int"),
    ("sparsify.taus=[0.1", r"--set sparsify.taus: the value '\[0.1' is not valid YAML: quote"),
    ("evaluation.judge={a: [}", r"--set evaluation.judge: the value .* is not valid YAML"),
    ("evaluation.batch_size=0", r"config key 'evaluation.batch_size' must be a positive "
                                r"integer, got 0: set evaluation.batch_size to 1 or more"),
])
def test_bad_sets_fail_with_one_line(text, match):
    with pytest.raises(SteerscopeError, match=match) as info:
        load_config_with_sets({}, [text])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("data, sets, until, match", [
    ({"sparsify": {"enabled": False}}, ["sparsify.taus=[0.5]"], None,
     r"--set sparsify.taus: stage sparsify does not run \(sparsify.enabled is false\): drop "
     r"the --set, or add --set sparsify.enabled=true"),
    ({}, ["sparsify.enabled=false", "sparsify.seed=3"], None, r"stage sparsify does not run"),
    ({}, ["circuits.threshold=0.5"], "evaluation",
     r"stage circuits does not run \(it comes after --until evaluation\)"),
    ({"vectors": {"methods": ["dim", "po"]}}, ["vectors.ntp.epochs=2"], None,
     r"--set vectors.ntp.epochs: the ntp vector is not made in this run"),
    ({"vectors": {"methods": ["dim", "pca"]}}, ["vectors.preference.max_new_tokens=3"], None,
     r"no trained vector \(ntp, po\) is made in this run"),
])
def test_a_set_of_a_stage_that_does_not_run_fails(data, sets, until, match):
    cfg = load_config_with_sets(data, sets)
    with pytest.raises(SteerscopeError, match=match) as info:
        check_sets_run(cfg, sets, until)
    assert "\n" not in str(info.value)


def test_sets_of_running_stages_and_switches_pass():
    sets = ["sparsify.enabled=false", "evaluation.batch_size=2", "name=x", "vectors.ntp.epochs=1",
            "vectors.dim.kl_threshold=0.2"]
    check_sets_run(load_config_with_sets({}, sets), sets)
    sets = ["sparsify.enabled=true"]
    check_sets_run(load_config_with_sets({"sparsify": {"enabled": False}}, sets), sets)
    check_sets_run(load_config_with_sets({}, ["evaluation.batch_size=2"]),
                   ["evaluation.batch_size=2"], until="evaluation")


def _keys(cfg) -> dict[str, str]:
    """Every stage's key with the same (fake) inputs and upstream digests."""
    inputs = SimpleNamespace(data={"x": "digest"}, model=SimpleNamespace(digest="m"))
    return {n: stage_key(s, cfg, inputs, {"up": "same"}) for n, s in STAGES.items()}


@pytest.mark.parametrize("text, changed", [
    ("evaluation.max_new_tokens=9", {"strength", "evaluation"}),  # both generate with it
    ("circuits.threshold=0.9", {"circuits"}),
    ("patching.ig_steps=3", {"patching"}),
    ("svv.n_heads=4", {"svv"}),
    ("vectors.dim.kl_threshold=0.2", {"vectors", "trained"}),  # one section, two stages
    ("data.n_test=50", {"data"}),
])
def test_a_set_changes_only_the_keys_of_the_stages_it_configures(text, changed):
    """Later stages are keyed by their inputs' digests: they recompute only when the
    changed stage's files change."""
    before, after = _keys(load_config({})), _keys(load_config_with_sets({}, [text]))
    assert {n for n in STAGES if before[n] != after[n]} == changed
