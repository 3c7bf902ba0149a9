"""Stage ``vectors``: DIM with the paper's selection (it fixes the steering layer and
position; scored with the behaviour's fast-score tokens, recorded as ``score_ids`` in the
stage's outputs for the later stages), then every other extraction method (pca, probe, caa, ...) read at that layer and
position. Files ``dim.safetensors``, ``dim_candidates.json``, ``<method>.safetensors``.

Config section ``vectors`` (:class:`VectorsSection`), shared with the ``trained`` stage: its
``preference`` and per-objective (:data:`TRAINED_METHODS`: one field per
:class:`~steerscope.vectors.methods.VectorMethod` of kind ``"trained"``, the trainer's
objectives) subsections configure NTP/PO. Defaults
of ``vectors.dim`` and ``vectors.preference`` are read from the library functions they
configure (:func:`~steerscope.vectors.select_dim`,
:func:`~steerscope.vectors.training_data.build_preference_data`). results.json sections
``vectors``, ``dim_selection`` and ``model.steering_layer``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, make_dataclass
from typing import Any

from steerscope.behaviours.score import score_token_choice
from steerscope.errors import SteerscopeError
from steerscope.pipeline.checks import fail, finite, known, library_default, positive_int
from steerscope.pipeline.registry import StageOutput, register_stage
from steerscope.pipeline.stages.common import (
    read_prompts,
    vector_entry,
    vectors_results_section,
)
from steerscope.validation import check_number
from steerscope.vectors.dim import select_dim
from steerscope.vectors.dim_selection import AT_THRESHOLD, LAYER_CUTOFFS
from steerscope.vectors.dim_thresholds import RELATIVE, is_paper_refusal
from steerscope.vectors.methods import method_keys
from steerscope.vectors.train_config import (
    KEEPS,
    LR_SCHEDULES,
    MATCH_SCOPES,
    PRESETS,
    RANKINGS,
    VALIDATIONS,
)
from steerscope.vectors.training_data import HARMLESS_REFUSE_SOURCES, build_preference_data

# the trained vector methods (records of kind "trained"): one config subsection and one vector each
TRAINED_METHODS = method_keys("trained")
TRAIN_PRESETS = tuple(PRESETS)
VAL_PROMPTS = ("dim_val", "split")
PREFERENCE_PROMPTS = ("train", "released")
PREFERENCE_TEMPLATES = ("run", "tokenizer")


def _dim(name: str):
    return library_default(select_dim, name)


@dataclass
class DimSection:
    """DIM extraction and selection (:func:`steerscope.vectors.select_dim`; its defaults)."""

    layers: list[int] | None = _dim("layers")
    """Candidate layers (None: all)."""
    positions: list[int] | None = _dim("positions")
    """Candidate prompt positions, negative (None: the post-instruction tokens)."""
    filter: bool = _dim("filter")
    """Filter the train/val prompts by their unsteered fast score (refusal: score > 0 /
    < 0; another behaviour: each side's prompts on its side of the boundary between the
    sides' mean scores)."""
    max_layer_fraction: float = _dim("max_layer_fraction")
    """Discard layers past this fraction f of the depth L (see layer_cutoff)."""
    layer_cutoff: str = _dim("layer_cutoff")
    """int: discard layers >= int(f*L) (the released code) | real: layers >= f*L."""
    at_threshold: str = _dim("at_threshold")
    """A candidate exactly at the KL or induce threshold: discard it, or keep it (the
    released code's strict comparisons)."""
    kl_threshold: float = _dim("kl_threshold")
    """Discard candidates whose ablation moves the absent prompts' next-token distribution
    by KL >= this, in nats."""
    relax_kl: bool = _dim("relax_kl")
    """If no candidate passes the KL filter, double its threshold until one does (warned,
    recorded in the vector)."""
    induce_threshold: float = _dim("induce_threshold")
    """Discard candidates whose addition to absent prompts gives a mean fast score <= this
    (another behaviour than refusal: the score relative to the absent prompts' mean)."""
    score_all: bool = _dim("score_all")
    """Score every filter of every candidate (the full candidate table; the same choice;
    off: stop at a candidate's first failed filter)."""


@dataclass
class PreferenceSection:
    """Self-generated preference data for NTP/PO
    (:func:`~steerscope.vectors.training_data.build_preference_data`; its defaults)."""

    n_prompts: int | None = None
    """Training prompts per side, from the train sets (None: all)."""
    max_new_tokens: int = library_default(build_preference_data, "max_new_tokens")
    """Tokens generated per preference completion."""
    val_prompts: str = VAL_PROMPTS[0]
    """dim_val: validation pairs from DIM's validation prompts (the released code) | split:
    hold out val_fraction of the training pairs."""
    val_fraction: float = 0.2
    """Share of the training pairs held out with val_prompts: split."""
    drop_mislabelled: bool = False
    """Drop pairs whose winner fails the refusal-substring check."""
    harmless_refuse: str = library_default(build_preference_data, "harmless_refuse")
    """Where the absent side's behaviour completions come from: instruction (told to refuse;
    the paper, refusal only) | dim (DIM-steered with +1)."""
    prompts: str = PREFERENCE_PROMPTS[0]
    """The released code's NTP/PO inputs (docs/reproduce.md "Conventions"): train, the first
    n_prompts DIM train prompts | released, DIM's n_train and n_prompts - n_train more drawn
    on the released stream (needs data.sampling: released)."""
    end_of_turn: bool = library_default(build_preference_data, "end_of_turn")
    """Targets end with the chat template's end-of-turn token (the assistant turn as
    rendered; the released code's)."""
    template: str = PREFERENCE_TEMPLATES[0]
    """run: the run's chat template | tokenizer: the tokenizer's own (Llama: its system
    block, date pinned) for the NTP/PO data and training, whatever model.chat_template
    says."""
    dtype: str | None = None
    """NTP/PO data and training in this dtype (None: model.dtype)."""


@dataclass
class TrainSection:
    """One NTP or PO training grid: the preset's values
    (:data:`steerscope.vectors.train_config.PRESETS`), each overridable."""

    preset: str = "quick"
    """The grid's preset: quick (CPU-sized) | paper (the paper's grid)."""
    lr: list[float] | None = None
    """Learning rates, a grid axis (None: the preset's)."""
    batch_size: list[int] | None = None
    """Training pairs per optimiser step, a grid axis (None: the preset's)."""
    seed: list[int] | None = None
    """Training seeds, a grid axis (None: the preset's; quick: the top-level seed)."""
    phi: list[float] | None = None
    """PO's phi values, a grid axis for PO (None: the preset's)."""
    epochs: int | None = None
    """Training epochs (None: the preset's)."""
    max_response_tokens: int | None = None
    """Response tokens the loss sees (None: the preset's)."""
    factors: list[float] | None = None
    """Steering factors sampled per example (None: the preset's, the paper's 2, 4, ..., 20)."""
    lr_schedule: str | None = None
    """per_epoch | per_step (None: the preset's; see steerscope.vectors.train_config)."""
    validation: str | None = None
    """deployed | mean_factor (None: the preset's)."""
    keep: str | None = None
    """best_epoch | last_epoch (None: the preset's)."""
    ranking: str | None = None
    """released | loss_then_match (None: the preset's)."""
    match_scope: str | None = None
    """Validation token match over loss_tokens | response (the released code: the whole
    response) (None: the preset's)."""

    def check(self, key: str) -> None:
        """Known preset and conventions, non-empty grids, positive values."""
        known(f"{key}.preset", [self.preset], TRAIN_PRESETS)
        for name, allowed in (("lr_schedule", LR_SCHEDULES), ("validation", VALIDATIONS),
                              ("keep", KEEPS), ("ranking", RANKINGS),
                              ("match_scope", MATCH_SCOPES)):
            if getattr(self, name) is not None:
                known(f"{key}.{name}", [getattr(self, name)], allowed)
        for name in ("lr", "batch_size", "seed", "phi", "factors"):
            vals = getattr(self, name)
            if vals is not None and not vals:
                fail(f"{key}.{name}", "is empty", "list at least one value or drop the key")
        for x in self.lr or []:
            if not (math.isfinite(x) and x > 0):
                fail(f"{key}.lr", f"has a non-positive learning rate {x}", "use e.g. 0.04")
        for x in self.batch_size or []:
            positive_int(f"{key}.batch_size", x)
        for i, x in enumerate(self.seed or []):  # a list: the grid's seed axis
            check_number(x, f"config key '{key}.seed[{i}]'", name="seed")
        positive_int(f"{key}.epochs", self.epochs, allow_none=True)
        positive_int(f"{key}.max_response_tokens", self.max_response_tokens, allow_none=True)


def known_methods() -> list[str]:
    """Every steering-vector method the pipeline can make (the :class:`VectorMethod` records):
    dim, the trained objectives and the registered extraction methods."""
    return list(dict.fromkeys(["dim", *TRAINED_METHODS, *sorted(method_keys("extraction"))]))


def _check_vectors(self, cfg) -> None:
    """Known methods (dim required), layers and positions in range, DIM, preference and
    training settings valid, extraction keywords only for listed extraction methods."""
    v = self
    known("vectors.methods", v.methods, known_methods())
    if "dim" not in v.methods:
        fail("vectors.methods", "must include 'dim'",
             "add dim: it selects the layer every method steers at")
    if v.layer is not None and v.layer < 0:
        fail("vectors.layer", f"must be a non-negative layer index, got {v.layer}",
             "use a 0-indexed block number")
    if v.layers is not None:
        _check_multi_layer(v)
    positive_int("vectors.batch_size", v.batch_size)
    if v.dim.layers is not None:
        if not v.dim.layers:
            fail("vectors.dim.layers", "is empty", "list at least one layer or drop the key")
        for x in v.dim.layers:
            if x < 0:
                fail("vectors.dim.layers", f"has a negative layer {x}", "use 0-indexed layers")
    if v.dim.positions is not None:
        if not v.dim.positions or any(p >= 0 for p in v.dim.positions):
            fail("vectors.dim.positions", f"must be negative prompt positions, got "
                 f"{v.dim.positions}", "use e.g. [-1] (the last prompt token)")
    if v.position is not None and v.position >= 0:
        fail("vectors.position", f"must be a negative prompt position, got {v.position}",
             "use e.g. -1 (the last prompt token)")
    if not 0 < v.dim.max_layer_fraction <= 1:
        fail("vectors.dim.max_layer_fraction", f"must be in (0, 1], got "
             f"{v.dim.max_layer_fraction}", "use e.g. 0.8")
    known("vectors.dim.layer_cutoff", [v.dim.layer_cutoff], LAYER_CUTOFFS)
    known("vectors.dim.at_threshold", [v.dim.at_threshold], AT_THRESHOLD)
    finite("vectors.dim.kl_threshold", v.dim.kl_threshold)
    finite("vectors.dim.induce_threshold", v.dim.induce_threshold)
    pref = v.preference
    positive_int("vectors.preference.n_prompts", pref.n_prompts, allow_none=True)
    positive_int("vectors.preference.max_new_tokens", pref.max_new_tokens)
    known("vectors.preference.val_prompts", [pref.val_prompts], VAL_PROMPTS)
    known("vectors.preference.harmless_refuse", [pref.harmless_refuse],
          HARMLESS_REFUSE_SOURCES)
    known("vectors.preference.prompts", [pref.prompts], PREFERENCE_PROMPTS)
    known("vectors.preference.template", [pref.template], PREFERENCE_TEMPLATES)
    if pref.dtype is not None:
        from steerscope.models.loading import resolve_dtype

        try:
            resolve_dtype(pref.dtype)
        except SteerscopeError as exc:
            raise SteerscopeError(f"config key 'vectors.preference.dtype': {exc}") from None
    if pref.prompts == "released":
        if cfg.data.sampling != "released":
            fail("vectors.preference.prompts", "'released' continues the released sampling "
                 "stream", "set data.sampling: released as well, or prompts: train")
        if pref.n_prompts is not None and pref.n_prompts < cfg.data.n_train:
            fail("vectors.preference.n_prompts", f"({pref.n_prompts}) is below data.n_train "
                 f"({cfg.data.n_train}), which prompts: released starts from",
                 f"use at least {cfg.data.n_train} (the released code: 256)")
    if not 0 < pref.val_fraction < 1:
        fail("vectors.preference.val_fraction", f"must be in (0, 1), got {pref.val_fraction}",
             "use e.g. 0.2")
    for obj in TRAINED_METHODS:
        getattr(v, obj).check(f"vectors.{obj}")
    from steerscope.pipeline.behaviour import run_behaviour

    name = run_behaviour(cfg).name
    if (name != "refusal" and pref.harmless_refuse == "instruction"
            and any(m in TRAINED_METHODS for m in v.methods)):
        fail("vectors.preference.harmless_refuse", f"'instruction' (a refusal instruction) "
             f"does not apply to behaviour '{name}'",
             "set vectors.preference.harmless_refuse: dim (DIM-steered completions)")
    for m in v.extraction:
        if m not in v.methods or m == "dim" or m in TRAINED_METHODS:
            fail(f"vectors.extraction.{m}", "names a method that is not an extraction method "
                 "in vectors.methods", "use the name of a listed method such as pca or probe")


def _check_multi_layer(v) -> None:
    """``vectors.layers``: a non-empty list of distinct non-negative layers, alone (not with
    ``vectors.layer`` or ``vectors.dim.layers``), no trained objective."""
    from steerscope.vectors.vector_set import check_steering_layers

    try:
        check_steering_layers(v.layers, what="layers")
    except SteerscopeError as exc:
        raise SteerscopeError(f"config key 'vectors.layers': {exc}") from None
    for key, value in (("vectors.layer", v.layer), ("vectors.dim.layers", v.dim.layers)):
        if value is not None:
            fail(key, f"cannot be combined with vectors.layers {v.layers} (DIM's candidates "
                 "are then those layers)", f"drop {key} or vectors.layers")
    trained = [m for m in v.methods if m in TRAINED_METHODS]
    if trained:
        fail("vectors.layers", f"makes multi-layer vectors, but '{trained[0]}' trains one "
             "layer's vector", f"drop {', '.join(trained)} from vectors.methods or drop "
             "vectors.layers")


@dataclass
class VectorsFields:
    """The fields of :class:`VectorsSection` other than its per-objective subsections."""

    methods: list[str] = field(default_factory=lambda: ["dim", *TRAINED_METHODS])
    """Vector methods to make: dim (required), the trained objectives, extraction methods."""
    layer: int | None = None
    """Restrict DIM's candidate layers to this one."""
    layers: list[int] | None = None
    """Steer these layers together: multi-layer dim / extraction vectors (DIM's
    candidates)."""
    position: int | None = None
    """Extraction read position, negative (None: DIM's)."""
    batch_size: int = _dim("batch_size")
    """Prompts per forward pass of DIM and the extraction methods."""
    dim: DimSection = field(default_factory=DimSection)
    preference: PreferenceSection = field(default_factory=PreferenceSection)
    extraction: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Keyword arguments per extraction method (method -> {keyword: value})."""


# One TrainSection field per trainer objective: adding an objective to the trainer adds its
# config subsection here.
VectorsSection = make_dataclass("VectorsSection", [
    (obj, TrainSection, field(default_factory=TrainSection)) for obj in TRAINED_METHODS
], bases=(VectorsFields,), namespace={"check": _check_vectors, "__module__": __name__,
                                      "__doc__": """Which steering
    vectors to make. ``dim`` is required (it picks the layer every other method steers at);
    the trained objectives (``ntp``, ``po``) each have a :class:`TrainSection`; others
    (``pca``, ``probe``, ``caa``, any registered method) are read at DIM's layer and
    position."""})


def formatted(tokenizer, items: list[str]) -> list[str]:
    """``items`` in the model's chat format."""
    from steerscope.models.chat import format_prompt

    return [format_prompt(tokenizer, p) for p in items]


def vectors_stage(ctx, section, inputs) -> dict[str, Any]:
    """DIM with the paper's selection (it fixes the steering layer and position), then every
    other extraction method (pca, probe, caa, ...) read at that layer and position."""
    from steerscope.vectors import extract_vector

    lm = ctx.model()
    tok = lm.tokenizer
    p = read_prompts(inputs["data"])
    f = {k: formatted(tok, v) for k, v in p.items()}
    d = section.dim
    layers = d.layers if d.layers is not None else (
        [section.layer] if section.layer is not None else section.layers)
    # the behaviour's fast score (refusal: the paper's refusal tokens); auto: from the
    # model's own completions on the train prompts (docs/behaviours.md)
    behaviour = ctx.behaviour
    choice = score_token_choice(behaviour, tok, model=lm.model,
                                present_formatted=f["present_train"],
                                absent_formatted=f["absent_train"])
    ids = list(choice.ids)
    score_tokens = choice.describe(tok)
    ctx.log(f"score tokens ({choice.rule}): {score_tokens['tokens']}"
            + (f", gap {choice.gap:.3f}" if choice.gap is not None else ""))
    # thresholds: the paper's for refusal, relative to the behaviour's scores otherwise
    res = select_dim(lm.model, tok, f["present_train"], f["absent_train"], f["present_val"],
                     f["absent_val"], model_id=lm.model_id, revision=lm.revision,
                     refusal_ids=ids, behaviour=behaviour,
                     filter=d.filter, layers=layers, positions=d.positions,
                     max_layer_fraction=d.max_layer_fraction, layer_cutoff=d.layer_cutoff,
                     at_threshold=d.at_threshold,
                     kl_threshold=d.kl_threshold,
                     induce_threshold=d.induce_threshold, batch_size=section.batch_size,
                     arch=lm.arch, progress=ctx.progress and ctx.is_main, score_all=d.score_all,
                     relax_kl=d.relax_kl)
    dim = res.vector
    relative = dim.hyperparameters.get("thresholds") == RELATIVE
    if relative:
        ctx.log(f"DIM thresholds relative to the boundary between the sides' mean val scores "
                f"({dim.hyperparameters['score_boundary']:.4g})")
    ctx.log(f"DIM: layer {dim.layer}, position {dim.position}, norm {dim.norm:.3f}")
    steered = dim.layer
    if section.layers is not None:  # the multi-layer DIM vector at the chosen position
        dim = res.layer_set()
        steered = dim.layers
        ctx.log(f"DIM over layers {dim.layers} at position {dim.position}, norm {dim.norm:.3f}")
    dim.save(ctx.out / "dim.safetensors")
    res.save_candidates(ctx.out / "dim_candidates.json")
    methods = {"dim": vector_entry(dim, "dim.safetensors")}
    chosen = res.chosen
    position = section.position if section.position is not None else dim.position
    for m in section.methods:
        if m == "dim" or m in TRAINED_METHODS:
            continue
        sv = extract_vector(lm.model, tok, f["present_train"], f["absent_train"], method=m,
                            layer=steered, position=position, batch_size=section.batch_size,
                            model_id=lm.model_id, revision=lm.revision, arch=lm.arch,
                            progress=False, **section.extraction.get(m, {}))
        sv.save(ctx.out / f"{m}.safetensors")
        methods[m] = vector_entry(sv, f"{m}.safetensors")
    multi = {"steering_layers": dim.layers} if section.layers is not None else {}
    return {"steering_layer": dim.layer, **multi, "position": dim.position, "methods": methods,
            "dim_selection": {**{k: chosen.get(k) for k in ("bypass", "induce", "kl", "score")},
                              "kl_threshold": dim.hyperparameters["kl_threshold"],
                              "kl_threshold_requested":
                                  dim.hyperparameters["kl_threshold_requested"],
                              "score_tokens": score_tokens,
                              **({"thresholds": RELATIVE,
                                  "score_boundary": dim.hyperparameters["score_boundary"]}
                                 if relative else {})},
            "candidates_file": "dim_candidates.json", "score_ids": [int(i) for i in ids]}


def vectors_results(out: StageOutput, so_far: dict) -> dict[str, Any]:
    """``vectors`` (DIM and the extraction methods), ``dim_selection`` and the steering
    layer."""
    multi = ({"steering_layers": out.outputs["steering_layers"]}
             if "steering_layers" in out.outputs else {})
    return {"model": {"steering_layer": out.outputs["steering_layer"], **multi},
            "vectors": vectors_results_section(out),
            "dim_selection": {**out.outputs.get("dim_selection", {}),
                              "layer": out.outputs["steering_layer"],
                              "position": out.outputs.get("position")}}


def seed_key(cfg, inputs) -> dict[str, Any]:
    """The top-level seed keys the vector stages."""
    return {"seed": cfg.seed}


def vectors_key(cfg, inputs) -> dict[str, Any]:
    """:func:`seed_key`, and for a behaviour other than the built-in refusal the rule of its
    relative DIM thresholds (so runs selected before that rule existed recompute; refusal's
    keys are unchanged)."""
    from steerscope.pipeline.behaviour import run_behaviour

    relative = not is_paper_refusal(run_behaviour(cfg))
    return {**seed_key(cfg, inputs), **({"dim_thresholds": RELATIVE} if relative else {})}


register_stage("vectors", deps=("model", "data"), section="vectors", config=VectorsSection,
               results=vectors_results, key_extra=vectors_key, order=30)(vectors_stage)
