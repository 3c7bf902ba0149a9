"""Each default is defined once: for every option the pipeline config shares with a library
function and a CLI command, the three see the same default (issues 14 and 24). The config
sections read theirs from the library signatures, the CLI options of the stage commands are
generated from the config fields (steerscope.cli.options); these tests walk every such option
and catch any drift."""

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

# (config key, library function, its parameter): the config section reads its default from
# the library function it configures
SHARED = [
    ("vectors.batch_size", select_dim, "batch_size"),
    ("vectors.dim.filter", select_dim, "filter"),
    ("vectors.dim.max_layer_fraction", select_dim, "max_layer_fraction"),
    ("vectors.dim.layer_cutoff", select_dim, "layer_cutoff"),
    ("vectors.dim.at_threshold", select_dim, "at_threshold"),
    ("vectors.dim.kl_threshold", select_dim, "kl_threshold"),
    ("vectors.dim.relax_kl", select_dim, "relax_kl"),
    ("vectors.dim.induce_threshold", select_dim, "induce_threshold"),
    ("vectors.dim.score_all", select_dim, "score_all"),
    ("vectors.dim.layers", select_dim, "layers"),
    ("vectors.dim.positions", select_dim, "positions"),
    ("vectors.preference.max_new_tokens", build_preference_data, "max_new_tokens"),
    ("vectors.preference.harmless_refuse", build_preference_data, "harmless_refuse"),
    ("vectors.preference.end_of_turn", build_preference_data, "end_of_turn"),
    ("vectors.preference.val_fraction", PreferenceData.split, "val_fraction"),
    ("evaluation.max_new_tokens", evaluate_steering, "max_new_tokens"),
    ("evaluation.batch_size", evaluate_steering, "batch_size"),
    ("evaluation.bypass_alpha", evaluate_steering, "bypass_alpha"),
    ("evaluation.induce_alpha", evaluate_steering, "induce_alpha"),
    ("evaluation.judge", evaluate_steering, "judge"),
    ("patching.n_prompts", datasets_from_rollouts, "max_per_dataset"),
    ("patching.max_new_tokens", rollouts, "max_new_tokens"),
    ("patching.ig_steps", score_vector, "steps"),
    ("patching.metric", score_vector, "metric"),
    ("patching.tau", score_vector, "tau"),
    ("patching.reverse", score_vector, "reverse"),
    ("patching.grad_at", score_vector, "grad_at"),
    ("patching.logits_at", score_vector, "logits_at"),
    ("patching.pooling", score_vector, "pooling"),
    ("patching.top_n", score_vector, "top_k"),
    ("circuits.sizes", add_circuits, "sizes"),
    ("circuits.grid_step", add_circuits, "grid_step"),
    ("circuits.grid_max", add_circuits, "grid_max"),
    ("circuits.threshold", add_circuits, "threshold"),
    ("circuits.n_random", add_circuits, "n_random"),
    ("circuits.random", add_circuits, "random_kind"),
    ("circuits.position_metrics", add_circuits, "position_metrics"),
    ("circuits.metric", add_circuits, "faithfulness_metric"),
    ("circuits.refine_steps", add_circuits, "refine_steps"),
    ("freeze.modes", freeze_evaluation, "modes"),
    ("freeze.max_new_tokens", freeze_evaluation, "max_new_tokens"),
    ("svv.top_tokens", svv_report, "top_k"),
    ("sparsify.taus", sparsity_sweep, "taus"),
    ("sparsify.rules", sparsity_sweep, "rules"),
    ("sparsify.seed", sparsity_sweep, "seed"),
]
# the flags of the commands that run a stage that configure a config field: each is generated
# from its field (cli/options.py); the walk below finds them all, this list checks none of
# them went back to a hand-written option
GENERATED = {
    ("vectors", "dim"): ["--batch-size", "--n-train", "--n-val", "--layers", "--no-filter",
                         "--kl-threshold", "--relax-kl", "--score-all", "--induce-threshold",
                         "--max-layer-fraction", "--layer-cutoff", "--at-threshold"],
    ("vectors", "train"): ["--n", "--epochs", "--lr", "--train-batch-size", "--val-prompts",
                           "--n-val", "--val-fraction", "--max-new-tokens",
                           "--harmless-refuse", "--end-of-turn", "--match-scope"],
    ("evaluate",): ["--batch-size", "--max-new-tokens", "--judge"],
    ("patch",): ["--max-per-dataset", "--judge", "--max-new-tokens", "--bypass-alpha",
                 "--induce-alpha", "--steps", "--metric", "--kl-threshold", "--reverse",
                 "--graph", "--grad-at", "--logits-at", "--pooling", "--sizes", "--grid-step",
                 "--grid-max", "--random", "--position-metrics", "--faithfulness-metric",
                 "--threshold", "--top-k"],
    ("freeze",): ["--modes", "--max-new-tokens"],
    ("svv",): ["--top-k", "--heads"],
    ("sparsify", "sweep"): ["--taus", "--rules"],
}


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


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """Every (sub)command parser below ``parser`` with its command path."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def _generated() -> list[tuple[tuple[str, ...], argparse.Action]]:
    return [(path, a) for path, p in _parsers(build_parser()) for a in p._actions
            if hasattr(a, "config_key")]


@pytest.mark.parametrize("key, fn, param", SHARED, ids=[row[0] for row in SHARED])
def test_config_defaults_are_the_library_defaults(key, fn, param):
    assert _norm(_config_default(key)) == _norm(inspect.signature(fn).parameters[param].default)


def test_every_cli_option_of_a_config_field_defaults_to_the_library_default():
    """Walk every option of every command that maps to a config field (or a library
    dataclass field such as TrainConfig's): its default is that field's default (which the
    test above ties to the library signature), unless cli/options.py's CLI_DEFAULTS lists it
    with its reason; its help is the field's docstring."""
    from steerscope.cli.options import CLI_DEFAULTS
    from steerscope.pipeline.fields import field_help, resolve_field
    from steerscope.vectors.train_config import TrainConfig

    found = _generated()
    assert len(found) >= sum(len(v) for v in GENERATED.values())
    overridden = set()
    for path, action in found:
        flag = action.option_strings[0]
        owner, _, name = action.config_key.rpartition(".")
        if owner == "TrainConfig":
            lib = getattr(TrainConfig(), name)
            doc = field_help(TrainConfig)[name]
        else:
            cls, fld, _ = resolve_field(PipelineConfig, action.config_key)
            lib = _config_default(action.config_key)
            doc = field_help(cls)[fld.name]
        assert _norm(action.library_default) == _norm(lib), (path, flag)
        expected = lib
        if (" ".join(path), flag) in CLI_DEFAULTS:
            expected = CLI_DEFAULTS[" ".join(path), flag][0]
            overridden.add((" ".join(path), flag))
        if action.nargs == 0:  # a switch: off unless given (--no-x stores False)
            assert action.default == lib and action.const == (not lib), (path, flag)
        else:
            assert _norm(action.default) == _norm(expected), (path, flag, action.config_key)
        words = doc.rstrip(".").split("(None:")[0].split()[:4]
        assert " ".join(words).lower() in " ".join(action.help.split()).lower(), (path, flag)
    assert overridden == set(CLI_DEFAULTS)  # every listed exception is a real option


@pytest.mark.parametrize("path", list(GENERATED), ids=[" ".join(p) for p in GENERATED])
def test_stage_commands_generate_their_config_options(path):
    flags = {a.option_strings[0] for p, a in _generated() if p == path}
    assert set(GENERATED[path]) <= flags


def test_vectors_train_single_run_defaults_are_train_configs():
    """The drift issue 24 names: --epochs defaulted to 3, TrainConfig to 10 (the quick preset
    sets its own 2 explicitly)."""
    from steerscope.vectors.train_config import PRESETS, TrainConfig

    parser = _subparser(("vectors", "train"))
    assert parser.get_default("epochs") == TrainConfig().epochs == 10
    assert parser.get_default("lr") == TrainConfig().lr
    assert parser.get_default("train_batch_size") == TrainConfig().batch_size
    assert PRESETS["quick"]["epochs"] == 2 and PRESETS["paper"]["epochs"] == 10


def _parse(*argv: str):
    from steerscope.cli.options import parse_list_options

    args = build_parser().parse_args(list(argv))
    parse_list_options(args)  # as run_command does before any check
    return args


def test_cli_spellings_still_parse():
    """Existing spellings and list syntax keep working (users' scripts and tests use them)."""
    args = _parse("vectors", "dim", "m", "--out", "o", "--no-filter", "--layers", "3,5",
                  "--layer-cutoff", "real")
    assert (args.filter, args.layers, args.layer_cutoff) == (False, [3, 5], "real")
    args = _parse("vectors", "dim", "m", "--out", "o")
    assert (args.filter, args.layers) == (True, None)
    args = _parse("sparsify", "sweep", "m", "--out", "o", "--taus", "0,1", "--rules",
                  "gradient, ie")
    assert (args.taus, args.rules) == ([0.0, 1.0], ["gradient", "ie"])
    args = _parse("sparsify", "sweep", "m", "--out", "o")
    assert args.rules == ["gradient", "ie", "magnitude", "random"]
    args = _parse("patch", "m", "--out", "o", "--sizes", "10,50", "--kl-threshold", "0.5",
                  "--top-k", "7")
    assert (args.sizes, args.kl_threshold, args.top_k) == ([10, 50], 0.5, 7)
    assert _parse("freeze", "m", "--vector", "v", "--modes", "qk,ov").modes == ["qk", "ov"]


@pytest.mark.parametrize("argv, message", [
    (["patch", "m", "--out", "o", "--sizes", "10,x"],
     "--sizes '10,x' is not a comma-separated list of integers: write e.g. 8,10,12."),
    (["sparsify", "sweep", "m", "--out", "o", "--taus", "0,-1"],
     "--taus must be a finite number >= 0, got -1"),
])
def test_bad_list_items_are_one_line_errors(argv, message):
    from steerscope.errors import SteerscopeError

    with pytest.raises(SteerscopeError) as info:
        _parse(*argv)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_every_config_field_is_documented():
    """Every field of every config section (and of TrainConfig) has its attribute
    docstring: the text of its CLI help and docs."""
    import dataclasses
    import typing

    from steerscope.pipeline.fields import field_help, section_type
    from steerscope.pipeline.registry import SECTIONS
    from steerscope.vectors.train_config import TrainConfig

    classes = [*SECTIONS.values(), TrainConfig]
    seen = set()
    while classes:
        cls = classes.pop()
        if cls in seen:
            continue
        seen.add(cls)
        docs, hints = field_help(cls), typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            assert docs.get(f.name), f"{cls.__name__}.{f.name} has no docstring"
            if section_type(hints[f.name]) is not None:
                classes.append(section_type(hints[f.name]))
    assert len(seen) >= 14  # the sections, their subsections (dim, preference, ntp/po), TrainConfig


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
