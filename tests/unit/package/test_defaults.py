"""Each default is defined once: for every option the pipeline config shares with a library
function and a CLI command, the three see the same default (issue 14). The config sections
read theirs from the library signatures; this test also catches the CLI drifting."""

from __future__ import annotations

import argparse
import inspect

import pytest

from steerscope.cli import build_parser
from steerscope.evaluate.steering import evaluate_steering
from steerscope.mechanisms import freeze_evaluation, svv_report
from steerscope.patching.data import datasets_from_rollouts, rollouts
from steerscope.patching.run import add_circuits, score_vector
from steerscope.pipeline import PipelineConfig
from steerscope.sparsify.sweep import sparsity_sweep
from steerscope.vectors.dim import select_dim
from steerscope.vectors.training_data import PreferenceData, build_preference_data


def _comma(text):
    return [x.strip() for x in text.split(",")] if text is not None else None


def _floats(text):
    return [float(x) for x in text.split(",")]


# (config key, library function, its parameter, CLI command path, CLI dest, CLI -> value)
SHARED = [
    ("vectors.batch_size", select_dim, "batch_size", ("vectors", "dim"), "batch_size", None),
    ("vectors.dim.filter", select_dim, "filter", ("vectors", "dim"), "no_filter",
     lambda no: not no),
    ("vectors.dim.max_layer_fraction", select_dim, "max_layer_fraction", ("vectors", "dim"),
     "max_layer_fraction", None),
    ("vectors.dim.layer_cutoff", select_dim, "layer_cutoff", ("vectors", "dim"),
     "layer_cutoff", None),
    ("vectors.dim.kl_threshold", select_dim, "kl_threshold", ("vectors", "dim"),
     "kl_threshold", None),
    ("vectors.dim.relax_kl", select_dim, "relax_kl", ("vectors", "dim"), "relax_kl", None),
    ("vectors.dim.induce_threshold", select_dim, "induce_threshold", ("vectors", "dim"),
     "induce_threshold", None),
    ("vectors.dim.score_all", select_dim, "score_all", ("vectors", "dim"), "score_all", None),
    ("vectors.preference.max_new_tokens", build_preference_data, "max_new_tokens",
     ("vectors", "train"), "max_new_tokens", None),
    ("vectors.preference.absent_shown", build_preference_data, "absent_shown",
     ("vectors", "train"), "absent_shown", None),
    ("vectors.preference.val_fraction", PreferenceData.split, "val_fraction",
     ("vectors", "train"), "val_fraction", None),
    ("evaluation.max_new_tokens", evaluate_steering, "max_new_tokens", ("evaluate",),
     "max_new_tokens", None),
    ("evaluation.batch_size", evaluate_steering, "batch_size", ("evaluate",), "batch_size",
     None),
    ("evaluation.bypass_alpha", evaluate_steering, "bypass_alpha", ("patch",), "bypass_alpha",
     None),
    ("evaluation.induce_alpha", evaluate_steering, "induce_alpha", ("patch",), "induce_alpha",
     None),
    ("patching.n_prompts", datasets_from_rollouts, "max_per_dataset", ("patch",),
     "max_per_dataset", None),
    ("patching.max_new_tokens", rollouts, "max_new_tokens", ("patch",), "max_new_tokens", None),
    ("patching.ig_steps", score_vector, "steps", ("patch",), "steps", None),
    ("patching.metric", score_vector, "metric", ("patch",), "metric", None),
    ("patching.tau", score_vector, "tau", ("patch",), "kl_threshold", None),
    ("patching.grad_at", score_vector, "grad_at", ("patch",), "grad_at", None),
    ("patching.logits_at", score_vector, "logits_at", ("patch",), "logits_at", None),
    ("patching.pooling", score_vector, "pooling", ("patch",), "pooling", None),
    ("patching.top_n", score_vector, "top_k", ("patch",), "top_k", None),
    ("circuits.threshold", add_circuits, "threshold", ("patch",), "threshold", None),
    ("circuits.grid_max", add_circuits, "grid_max", ("patch",), "grid_max", None),
    ("circuits.random", add_circuits, "random_kind", ("patch",), "random", None),
    ("circuits.position_metrics", add_circuits, "position_metrics", ("patch",),
     "position_metrics", None),
    ("freeze.modes", freeze_evaluation, "modes", ("freeze",), "modes", _comma),
    ("freeze.max_new_tokens", freeze_evaluation, "max_new_tokens", ("freeze",),
     "max_new_tokens", None),
    ("svv.top_tokens", svv_report, "top_k", ("svv",), "top_k", None),
    ("sparsify.taus", sparsity_sweep, "taus", ("sparsify", "sweep"), "taus", _floats),
    ("sparsify.rules", sparsity_sweep, "rules", ("sparsify", "sweep"), "rules", _comma),
    ("sparsify.seed", sparsity_sweep, "seed", ("sparsify", "sweep"), "seed", None),
]
# options of the config and the library that no CLI command exposes
LIBRARY_ONLY = [
    ("vectors.dim.layers", select_dim, "layers"),
    ("vectors.dim.positions", select_dim, "positions"),
    ("evaluation.judge", evaluate_steering, "judge"),
    ("patching.reverse", score_vector, "reverse"),
    ("circuits.sizes", add_circuits, "sizes"),
    ("circuits.grid_step", add_circuits, "grid_step"),
    ("circuits.n_random", add_circuits, "n_random"),
    ("circuits.refine_steps", add_circuits, "refine_steps"),
]


def _config_default(key: str):
    value = PipelineConfig()
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _norm(value):
    """Sequences as lists (a tuple in a signature, a list in a dataclass)."""
    return list(value) if isinstance(value, (list, tuple)) else value


def _subparser(path: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


@pytest.mark.parametrize("key, fn, param, command, dest, parse", SHARED,
                         ids=[row[0] for row in SHARED])
def test_library_config_and_cli_defaults_agree(key, fn, param, command, dest, parse):
    lib = inspect.signature(fn).parameters[param].default
    cli = _subparser(command).get_default(dest)
    if parse is not None:
        cli = parse(cli)
    if cli is None and key == "sparsify.rules":  # --rules unset: every rule, the library's
        cli = list(lib)
    assert _norm(_config_default(key)) == _norm(lib), f"config {key} vs {fn.__qualname__}"
    assert _norm(cli) == _norm(lib), f"steerscope {' '.join(command)} --{dest} vs {key}"


@pytest.mark.parametrize("key, fn, param", LIBRARY_ONLY, ids=[row[0] for row in LIBRARY_ONLY])
def test_config_defaults_are_the_library_defaults(key, fn, param):
    assert _norm(_config_default(key)) == _norm(inspect.signature(fn).parameters[param].default)


def test_training_presets_are_defined_once():
    """The pipeline's grid for a preset is the trainer's preset grid (quick: the run seed)."""
    from steerscope.pipeline.stages.trained import train_configs
    from steerscope.pipeline.stages.vectors import TRAINED_METHODS, TrainSection
    from steerscope.vectors.train_config import OBJECTIVES, PRESETS, paper_grid, quick_grid

    assert TRAINED_METHODS == tuple(OBJECTIVES)
    assert set(TrainSection().__dict__) >= {"preset"} and TrainSection().preset in PRESETS
    for obj in OBJECTIVES:
        assert train_configs(obj, TrainSection(preset="paper"), 7) == paper_grid(obj)
        assert train_configs(obj, TrainSection(preset="quick"), 42) == quick_grid(obj)
        assert [c.seed for c in train_configs(obj, TrainSection(preset="quick"), 7)] == [7, 7]
    # one config subsection per trainer objective
    cfg = PipelineConfig()
    assert all(isinstance(getattr(cfg.vectors, obj), TrainSection) for obj in OBJECTIVES)


def test_sparsify_rule_aliases_load_and_keep_their_names():
    """The config takes the library's rule names and the older ones as aliases; a rule given
    twice (name and alias) is an error."""
    from steerscope.errors import SteerscopeError
    from steerscope.pipeline import config_from_dict
    from steerscope.sparsify import RULE_ALIASES, RULES, canonical_rule

    assert config_from_dict({"sparsify": {"rules": ["grad", "ie", "dropout", "bottomk"]}})
    assert [canonical_rule(r) for r in ("grad", "ie", "dropout", "bottomk")] == [
        "gradient", "ie", "random", "magnitude"]
    assert set(RULE_ALIASES.values()) <= set(RULES)
    with pytest.raises(SteerscopeError, match="sparsify.rules.*twice"):
        config_from_dict({"sparsify": {"rules": ["grad", "gradient"]}})
