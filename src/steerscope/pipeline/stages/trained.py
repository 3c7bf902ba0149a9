"""Stage ``trained``: NTP and PO vectors (the trained objectives in ``vectors.methods``) at
DIM's layer: self-generated preference data, grid training with validation selection,
rescaled to the DIM norm. Files ``preference_data.json``, ``preference_val.json`` (with
``val_prompts: dim_val``), ``<objective>.safetensors``.

Config: the ``vectors`` section's ``preference`` and ``<objective>`` subsections (defined
with the section in :mod:`steerscope.pipeline.stages.vectors`); the grids come from the
trainer's presets (:func:`steerscope.vectors.train_config.preset_grid`). results.json: the
trained vectors' ``vectors`` entries.
"""

from __future__ import annotations

from typing import Any

from steerscope.pipeline.registry import StageOutput, register_stage
from steerscope.pipeline.stages.common import (
    read_prompts,
    vector_entry,
    vectors_results_section,
)
from steerscope.pipeline.stages.vectors import TRAINED_METHODS, TrainSection, seed_key
from steerscope.results_schema import LEGACY_SIDES

# TrainSection fields passed to the trainer's preset grid when set (None: the preset's)
OVERRIDES = ("lr", "batch_size", "seed", "phi", "epochs", "max_response_tokens",
             "lr_schedule", "validation", "keep", "ranking", "match_scope")


def train_configs(objective: str, section: TrainSection, seed: int) -> list:
    """The grid of :class:`~steerscope.vectors.trained.TrainConfig` for one objective: the
    preset's values (``quick``: the top-level seed; ``paper``: seeds 42 and 5, φ ∈ {2e-2,
    1e-5} for PO; both: the paper's selection conventions), each overridable by the config
    (``<objective>.seed``: a list of seeds, the grid's seed axis)."""
    from steerscope.vectors.train_config import preset_grid

    overrides: dict[str, Any] = {k: getattr(section, k) for k in OVERRIDES
                                 if getattr(section, k) is not None}
    if section.factors is not None:
        overrides["factors"] = tuple(section.factors)
    seeds = overrides.pop("seed", None)  # the seed axis: preset_grid's seed takes a list
    return preset_grid(objective, section.preset,
                       seed=seed if seeds is None else tuple(seeds), **overrides)


def training_prompts(cfg, prompts: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """(present, absent) instructions of the NTP/PO training pairs:
    ``vectors.preference.prompts: train``, the first ``n_prompts`` DIM train prompts;
    ``released``, DIM's train prompts and ``n_prompts − n_train`` more per class drawn on the
    released stream (:func:`steerscope.data.sampling.released_training_prompts`)."""
    pref, d = cfg.vectors.preference, cfg.data
    if pref.prompts != "released":
        n = pref.n_prompts
        return prompts["present_train"][:n], prompts["absent_train"][:n]
    from steerscope.data.sampling import released_training_prompts
    from steerscope.pipeline.inputs import released_pools

    drawn = released_training_prompts(released_pools(cfg), n_train=d.n_train, n_val=d.n_val,
                                      n_total=pref.n_prompts or d.n_train, seed=cfg.data_seed)
    by_side = {LEGACY_SIDES[k]: v for k, v in drawn.items()}  # the released sampler's names
    return by_side["present"], by_side["absent"]


class TrainingModel:
    """The model and tokenizer the NTP/PO data and training use: the run's, or a float32
    (``vectors.preference.dtype``) copy loaded from the same source, with the tokenizer's own
    chat template when ``vectors.preference.template: tokenizer``."""

    def __init__(self, ctx, pref):
        from steerscope.models.chat import with_own_chat_template

        lm = ctx.model()
        m = ctx.config.model
        if pref.dtype is not None and pref.dtype != m.dtype:
            from steerscope.models.loading import load_model
            from steerscope.pipeline.distributed import device_for

            lm = load_model(m.source, dtype=pref.dtype, device=device_for(m.device, ctx.dist),
                            device_map=m.device_map, revision=m.revision,
                            attn_implementation=m.attn_implementation)
            if pref.template == "run":
                from steerscope.models.chat import set_chat_template

                set_chat_template(lm.tokenizer, m.chat_template)
        self.model, self.arch, self.model_id = lm.model, lm.arch, lm.model_id
        self.tokenizer = (with_own_chat_template(lm.tokenizer) if pref.template == "tokenizer"
                          else lm.tokenizer)


def preference_splits(ctx, lm, dim, section, prompts: dict[str, list[str]], behaviour=None):
    """(train, val) preference data: ``val_prompts: dim_val`` trains on every train prompt
    (:func:`training_prompts`) and generates the validation pairs from DIM's validation
    prompts (the released code); ``split`` holds out ``val_fraction`` of the training pairs;
    ``drop_mislabelled`` keeps only pairs whose winner does what its kind asks (by
    ``behaviour``'s judge; None: refusal's); ``end_of_turn``: targets end with the template's
    end-of-turn token. ``lm``: a :class:`TrainingModel`. Writes ``preference_data.json`` (and
    ``preference_val.json`` for ``dim_val``), as generated."""
    from steerscope.vectors.training_data import build_preference_data, drop_mislabelled

    pref = section.preference
    opts = dict(max_new_tokens=pref.max_new_tokens, batch_size=section.batch_size,
                progress=ctx.progress, harmless_refuse=pref.harmless_refuse,
                behaviour=behaviour, end_of_turn=pref.end_of_turn)
    present, absent = training_prompts(ctx.config, prompts)
    data = build_preference_data(lm.model, lm.tokenizer, present, absent, dim, **opts)
    data.save(ctx.out / "preference_data.json")
    ctx.log(f"preference pairs: {data.metadata['label_check']}")
    presence = None if behaviour is None else behaviour.make_judge()
    if pref.drop_mislabelled:
        data = drop_mislabelled(data, presence)
    if pref.val_prompts == "split":
        return data.split(pref.val_fraction, seed=ctx.config.seed)
    val = build_preference_data(lm.model, lm.tokenizer, prompts["present_val"],
                                prompts["absent_val"], dim, **opts)
    val.save(ctx.out / "preference_val.json")
    if pref.drop_mislabelled:
        val = drop_mislabelled(val, presence)
    return data, val


def trained_stage(ctx, section, inputs) -> dict[str, Any]:
    """The trained vectors in ``vectors.methods`` at DIM's layer: self-generated preference
    data (train and validation, :func:`preference_splits`), grid training with selection,
    rescaled to the DIM norm. Writes nothing when none is asked for."""
    objectives = [m for m in section.methods if m in TRAINED_METHODS]
    if not objectives:
        return {"methods": {}}
    from steerscope.vectors import SteeringVector
    from steerscope.vectors.trained import train_grid

    lm = TrainingModel(ctx, section.preference)
    dim = SteeringVector.load(inputs["vectors"].path("dim.safetensors"), lm.arch)
    train, val = preference_splits(ctx, lm, dim, section, read_prompts(inputs["data"]),
                                   behaviour=ctx.behaviour)
    methods = {}
    for obj in objectives:
        res = train_grid(lm.model, lm.tokenizer, train, layer=dim.layer,
                         configs=train_configs(obj, getattr(section, obj), ctx.config.seed),
                         val_data=val, rescale_to=dim.norm, model_id=lm.model_id,
                         eval_batch_size=section.batch_size, progress=ctx.progress)
        res.vector.save(ctx.out / f"{obj}.safetensors")
        methods[obj] = vector_entry(res.vector, f"{obj}.safetensors")
        ctx.log(f"{obj}: val loss {res.val_loss:.4f} (epoch {res.best_epoch}), cosine with "
                f"DIM {res.vector.cosine(dim):+.3f}")
    return {"methods": methods, "preference": {"n_examples": len(train) + len(val),
                                               "n_train": len(train), "n_val": len(val),
                                               "counts": train.counts(),
                                               "val_counts": val.counts()}}


def trained_results(out: StageOutput, so_far: dict) -> dict[str, Any]:
    """The trained vectors' ``vectors`` entries (none when none was trained)."""
    section = vectors_results_section(out)
    return {"vectors": section} if section else {}


register_stage("trained", deps=("model", "data", "vectors"), section="vectors",
               results=trained_results, key_extra=seed_key, order=40)(trained_stage)
