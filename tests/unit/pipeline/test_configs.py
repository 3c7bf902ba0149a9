"""The shipped configs (configs/*.yaml) load under the strict schema and keep the paper's
hyperparameters that docs/reproduce.md promises."""

from __future__ import annotations

from pathlib import Path

import pytest

from steerscope.pipeline.config import load_config

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("paper-*.yaml"))
STUDY_CONFIGS = sorted(CONFIG_DIR.glob("study-*.yaml"))  # issue 13's study (docs/behaviour_study.md)
FAMILY_CONFIGS = sorted(CONFIG_DIR.glob("gemma-*.yaml"))  # docs/families.md


def test_there_are_paper_configs():
    assert {p.name for p in CONFIGS} >= {"paper-gemma2-2b.yaml", "paper-llama32-3b.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_strictly_with_the_paper_settings(path):
    cfg = load_config(path)
    assert cfg.seed == 42
    assert (cfg.data.n_train, cfg.data.n_val, cfg.data.n_test) == (128, 32, 100)
    assert cfg.data.harmful_test == "jailbreakbench"
    assert cfg.vectors.methods == ["dim", "ntp", "po"]
    assert cfg.vectors.dim.kl_threshold == 0.1 and not cfg.vectors.dim.relax_kl
    assert cfg.vectors.ntp.preset == cfg.vectors.po.preset == "paper"
    assert cfg.vectors.preference.val_prompts == "dim_val"
    from steerscope.pipeline.stages.trained import train_configs
    from steerscope.vectors.train_config import PAPER_CONVENTIONS

    for obj, n in (("ntp", 8), ("po", 16)):
        grid = train_configs(obj, getattr(cfg.vectors, obj), cfg.seed)
        assert len(grid) == n and all(c.epochs == 10 for c in grid)
        assert all({k: getattr(c, k) for k in PAPER_CONVENTIONS} == PAPER_CONVENTIONS
                   for c in grid)
    assert cfg.evaluation.max_new_tokens == 512
    assert cfg.patching.ig_steps == 10 and cfg.circuits.threshold == 0.85
    assert (cfg.patching.grad_at, cfg.patching.logits_at, cfg.patching.pooling) == (
        "post_norm", "pre_cap", "positions")  # the paper's / released code's conventions
    assert cfg.sparsify.taus == [0, 0.1, 0.3, 0.5, 1, 1.5, 2, 2.5]
    # circuits: the paper's size grid, pruned random control, the released code's metrics
    assert cfg.circuits.sizes is None and cfg.circuits.grid_step == pytest.approx(300 / 8790,
                                                                                  abs=1e-4)
    assert cfg.circuits.random == "pruned" and cfg.circuits.position_metrics


@pytest.mark.parametrize("circuits, key", [
    ({"grid_step": 0.05, "sizes": [10]}, "circuits.grid_step"),
    ({"grid_step": 0.0}, "circuits.grid_step"),
    ({"grid_max": 1.5}, "circuits.grid_max"),
    ({"random": "dangling"}, "circuits.random"),
])
def test_bad_circuit_options_fail_naming_the_key(circuits, key):
    from steerscope.errors import SteerscopeError
    from steerscope.pipeline import config_from_dict

    with pytest.raises(SteerscopeError, match=key.replace(".", r"\.")):
        config_from_dict({"circuits": circuits})


def test_paper_configs_use_the_released_prompt_format():
    """Llama: the released code's template without the dated system header; Gemma: its own
    template (the same text as the released code's, which has no system header either)."""
    by_name = {p.name: load_config(p) for p in CONFIGS}
    assert by_name["paper-llama32-3b.yaml"].model.chat_template == "llama3-no-system-header"
    assert by_name["paper-gemma2-2b.yaml"].model.chat_template is None


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_paper_configs_use_the_released_dim_layer_rule(path):
    assert load_config(path).vectors.dim.layer_cutoff == "int"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_paper_configs_judge_harmful_flips_with_llamaguard(path):
    cfg = load_config(path)
    assert cfg.patching.flip == "refusal" and cfg.patching.judge == "llamaguard"


def test_unknown_chat_template_is_a_config_error():
    from steerscope.errors import SteerscopeError

    with pytest.raises(SteerscopeError, match="model.chat_template.*unknown chat template"):
        load_config({"model": {"chat_template": "llama9"}})


def test_unknown_layer_cutoff_is_a_config_error():
    from steerscope.errors import SteerscopeError

    with pytest.raises(SteerscopeError, match="vectors.dim.layer_cutoff.*'round'"):
        load_config({"vectors": {"dim": {"layer_cutoff": "round"}}})


def test_every_shipped_config_is_a_paper_or_a_study_config():
    assert sorted(CONFIG_DIR.glob("*.yaml")) == sorted(CONFIGS + STUDY_CONFIGS + FAMILY_CONFIGS)


def test_the_gemma_layer10_config_is_the_demo_config_with_dim_at_layer_10():
    from steerscope.pipeline.demo import demo_run_config

    cfg = load_config(CONFIG_DIR / "gemma-layer10.yaml")
    assert cfg.model.source == "demo-gemma" and cfg.vectors.methods == ["dim"]
    assert cfg.vectors.dim.layers == [10] and cfg.vectors.dim.kl_threshold == 12.0
    assert cfg.vectors.dim.relax_kl is False
    demo = demo_run_config(model="demo-gemma")
    for section in ("data", "evaluation", "patching", "circuits", "freeze", "svv", "sparsify"):
        assert getattr(cfg, section) == getattr(demo, section), section


@pytest.mark.parametrize("path", STUDY_CONFIGS, ids=lambda p: p.name)
def test_study_configs_load_strictly_on_their_behaviour(path):
    from steerscope.behaviours import load_behaviour

    cfg = load_config(path)
    assert cfg.name == path.stem and cfg.vectors.methods == ["dim"]
    behaviour = path.stem.removeprefix("study-")
    assert load_behaviour(cfg.behaviour).name == behaviour


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_paper_configs_use_the_released_choices_of_issue_26(path):
    from steerscope.pipeline.stages.trained import train_configs

    cfg = load_config(path)
    assert cfg.data.sampling == "released"
    assert cfg.vectors.dim.at_threshold == "keep"
    assert cfg.circuits.metric == "logprob"  # the paper's curves (notebooks/playground.ipynb)
    pref = cfg.vectors.preference
    assert (pref.prompts, pref.n_prompts, pref.max_new_tokens) == ("released", 256, 512)
    assert pref.end_of_turn and pref.template == "tokenizer" and pref.dtype == "float32"
    for obj in ("ntp", "po"):
        grid = train_configs(obj, getattr(cfg.vectors, obj), cfg.seed)
        assert all(c.match_scope == "response" and c.max_response_tokens == 64 for c in grid)


def test_defaults_keep_the_per_split_sampling_and_steerscope_choices():
    cfg = load_config({})
    assert cfg.data.sampling == "per_split" and cfg.vectors.dim.at_threshold == "discard"
    assert cfg.circuits.metric == "logit_diff"
    pref = cfg.vectors.preference
    assert (pref.prompts, pref.end_of_turn, pref.template, pref.dtype) == (
        "train", False, "run", None)
