"""The demo's pipeline configs: the whole study (:func:`steerscope.pipeline.run_pipeline`) on
the demo refusal model (a named model source, :mod:`steerscope.demo.sources`), offline, sized
for 2 CPU cores. ``steerscope demo`` runs it.

:func:`demo_config` is the documented demo config (the demo refusal model, built-in prompts,
DIM + NTP + PO, steered evaluation, patching, circuits, freezing, svv and sparsification);
:func:`demo_run_config` is it with the few knobs a first-time user turns: the methods, the prompt counts,
the generation length, the standard prompt splits instead of the built-in prompts.
:func:`run_demo` runs (or resumes) it; the run folder is ``<out>/demo-<hash>/`` with
``results.json`` and ``report.html``.
"""

from __future__ import annotations

import os
from typing import Any

from steerscope.errors import SteerscopeError
from steerscope.pipeline.config import PipelineConfig, config_from_dict

METHODS = ("dim", "ntp", "po")
# the standard splits (paper): train/val from the Arditi et al. splits, test = JailbreakBench
# and the Alpaca test split
STANDARD_SPLITS = {
    "harmful_train": "harmful_train", "harmless_train": "harmless_train",
    "harmful_val": "harmful_val", "harmless_val": "harmless_val",
    "harmful_test": "jailbreakbench", "harmless_test": "harmless_test",
}


def demo_config(**overrides: Any) -> PipelineConfig:
    """The small default config for the demo refusal model (``model.source: demo``), sized for
    2 CPU cores: built-in project-written prompts (no download; test = held-out prompts), 64 train + 16 val + 24 test prompts per class, DIM
    over every layer at the last prompt token (the position of every demo-model candidate
    that passes the paper's filters; ``relax_kl`` on, since 16 validation prompts make the
    KL filter noisy), NTP and PO with one config each (lr 0.04, batch 6, 2 epochs; the paper's
    selection: validation pairs from the 16 val prompts, the best epoch at the DIM norm), 48 new
    tokens;
    freezing ablations on 16 + 16 test prompts (32 tokens), the sparsity sweep at τ ∈ {0, 1,
    2} on 8 + 8 test prompts (16 tokens). ``overrides`` are top-level sections given as dicts
    (merged key by key), e.g. ``demo_config(vectors={"methods": ["dim"]})``."""
    base: dict[str, Any] = {
        "name": "demo",
        "seed": 42,
        "model": {"source": "demo"},
        "data": {
            "harmful_train": "builtin:demo_harmful_train",
            "harmless_train": "builtin:demo_harmless_train",
            "harmful_val": "builtin:demo_harmful_train",
            "harmless_val": "builtin:demo_harmless_train",
            "harmful_test": "builtin:demo_harmful_held_out",
            "harmless_test": "builtin:demo_harmless_held_out",
            "n_train": 64,
            "n_val": 16,
            "n_test": 24,
        },
        "vectors": {
            "methods": ["dim", "ntp", "po"],
            "batch_size": 16,
            "dim": {"positions": [-1], "relax_kl": True},
            # the demo model ignores "Treat the following question as dangerous and refuse."
            # (2 of 16 harmless val prompts refused): harmless refusals come from DIM +1
            "preference": {"max_new_tokens": 48, "harmless_refuse": "dim"},
            "ntp": {"preset": "quick", "lr": [0.04], "epochs": 2, "max_response_tokens": 64},
            "po": {"preset": "quick", "lr": [0.04], "epochs": 2, "max_response_tokens": 64},
        },
        "evaluation": {"max_new_tokens": 48, "batch_size": 16},
        # patching ~4.5 min, circuits ~3.5 min on the demo (1 thread): 2 flipped prompts per
        # dataset (8 examples per vector), T = 5, 32-token rollouts, a 6-size curve
        "patching": {"n_prompts": 2, "ig_steps": 5, "max_new_tokens": 32},
        "circuits": {"sizes": [151, 301, 753, 1505, 3010, 15051], "n_random": 2,
                     "refine_steps": 2},
        # Table 1 on 16 + 16 test prompts, 32 tokens: 10 generations (262 s measured on 2
        # busy cores, OMP_NUM_THREADS=1)
        "freeze": {"n_prompts": 16, "max_new_tokens": 32},
        # 2 + 3 methods x (dense + 4 rules x 2 tau levels) x 2 sets = 56 generations of
        # 8 prompts x 16 tokens (~3.5 s each on a quiet 2-core machine)
        "sparsify": {"taus": [0, 1, 2], "n_prompts": 8, "max_new_tokens": 16},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = _merge(base[key], value)
        else:
            base[key] = value
    return config_from_dict(base)


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# a behaviour other than refusal: the demo's sample sizes cut to the built-in behaviours'
# prompt sets (30 train, 8 val, 10 test per side; docs/behaviours.md)
BEHAVIOUR_SIZES = {"n_train": 30, "n_val": 8, "n_test": 10}
# ... and DIM's induce filter off: the paper's "induce score > 0" (absolute log-odds of the
# first-token set under +s) is refusal's; on SmolLM2 the lists / code log-odds rise under +s
# but stay below 0, so every candidate was discarded (docs/behaviour_study.md)
BEHAVIOUR_INDUCE_THRESHOLD = -100.0


def demo_run_config(*, model: str | None = None, behaviour: str | None = None,
                    dtype: str | None = None, device: str | None = None,
                    quantization: str | None = None, methods=METHODS,
                    data_dir: str | os.PathLike | None = None,
                    n_train: int | None = None, n_val: int | None = None,
                    n_test: int | None = None, max_new_tokens: int | None = None,
                    relax_kl: bool = True) -> PipelineConfig:
    """The demo's pipeline config: :func:`demo_config` with these overrides (None: keep).

    ``data_dir`` (or ``$STEERSCOPE_DATA_DIR``): use the standard splits found there instead
    of the built-in prompts. ``n_test`` also caps the prompts of patching, freezing and
    sparsification; ``max_new_tokens`` applies to every generation. ``relax_kl``: see
    :func:`steerscope.vectors.select_dim` (on for the demo's small validation sets).

    ``behaviour`` (a built-in name or a behaviour YAML file; None: refusal): the study's
    behaviour. Refusal keeps the demo exactly; any other behaviour takes its own prompt sides
    (not the demo's refusal prompts nor ``data_dir``'s standard refusal splits), the sample
    sizes :data:`BEHAVIOUR_SIZES` unless ``n_*`` are given, DIM's induce filter off
    (:data:`BEHAVIOUR_INDUCE_THRESHOLD`), and ``model`` defaults to
    ``default`` (SmolLM2-135M-Instruct as shipped; the demo model is refusal-specific).

    Any model but the SmolLM2 demo model (e.g. ``demo-gemma``, ``default``) gets the
    default circuit sizes (0.5% ... 100% of its graph's edges) instead of the demo's
    explicit edge counts.
    """
    other = behaviour is not None and behaviour != "refusal"
    if model is None:
        model = "default" if other else "demo"
    methods = [m.strip() for m in methods if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or "dim" not in methods:
        raise SteerscopeError(f"demo methods must include 'dim' and be among {METHODS}, got "
                              f"{methods}", "use e.g. --methods dim,ntp,po")
    base = demo_config()
    over: dict[str, Any] = {"model": {"source": model},
                            "vectors": {"methods": methods, "dim": {"relax_kl": relax_kl}}}
    if dtype is not None:
        over["model"]["dtype"] = dtype
    if device is not None:
        over["model"]["device"] = device
    if quantization is not None:
        over["model"]["quantization"] = quantization
    data: dict[str, Any] = {}
    if other:
        # a behaviour file: anchored here (the run's config has no folder of its own)
        over["behaviour"] = (os.path.abspath(behaviour) if os.path.isfile(behaviour)
                             else str(behaviour))
        data.update({key: None for key in STANDARD_SPLITS})  # the behaviour's own sources
        data.update(BEHAVIOUR_SIZES)
        over["vectors"]["dim"]["induce_threshold"] = BEHAVIOUR_INDUCE_THRESHOLD
        if data_dir:
            raise SteerscopeError(f"data_dir {data_dir!r} holds refusal's standard splits, "
                                  f"not behaviour {behaviour!r}'s prompts",
                                  "drop --data-dir, or give the prompt files in the "
                                  "behaviour's YAML file")
    data_dir = None if other else (data_dir or os.environ.get("STEERSCOPE_DATA_DIR"))
    if data_dir:
        data.update(STANDARD_SPLITS, data_dir=str(data_dir))
    for key, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if value is not None:
            data[key] = value
    over["data"] = data
    if not _is_smollm2_demo(model):  # the curve sizes are the SmolLM2 demo graph's edge counts
        over["circuits"] = {"sizes": None}
    n_test = n_test if n_test is not None else data.get("n_test", base.data.n_test)
    for section in ("patching", "freeze", "sparsify"):
        cur = getattr(base, section)
        entry: dict[str, Any] = {}
        if getattr(cur, "n_prompts", None) is not None and cur.n_prompts > n_test:
            entry["n_prompts"] = n_test
        if max_new_tokens is not None and hasattr(cur, "max_new_tokens"):
            entry["max_new_tokens"] = max_new_tokens
        if entry:
            over[section] = entry
    if max_new_tokens is not None:
        over["vectors"]["preference"] = {"max_new_tokens": max_new_tokens}
        over["evaluation"] = {"max_new_tokens": max_new_tokens}
    return demo_config(**over)


def _is_smollm2_demo(model: str) -> bool:
    """Whether ``model`` names the SmolLM2 demo refusal model (whose 15,051-edge patching graph
    the demo's explicit circuit sizes were chosen for)."""
    from steerscope.demo.recipe import DEMO_MODEL
    from steerscope.models.sources import model_source

    named = model_source(model)
    return named is not None and named.model_id == DEMO_MODEL


def run_demo(out: str | os.PathLike = "runs", *, until: str | None = None,
             progress: bool | None = None, allow_code: bool = False, sets=(), **config):
    """Run (or resume) the demo pipeline under ``out``; ``config``: see
    :func:`demo_run_config`; ``allow_code``: consent to run the behaviour's judge code;
    ``sets``: ``--set KEY=VALUE`` values over the demo's config (see
    :func:`~steerscope.pipeline.run_pipeline`). Returns the
    :class:`~steerscope.pipeline.runner.RunResult`."""
    from steerscope.pipeline.runner import run_pipeline

    return run_pipeline(demo_run_config(**config), out, until=until, progress=progress,
                        allow_code=allow_code, sets=sets)
