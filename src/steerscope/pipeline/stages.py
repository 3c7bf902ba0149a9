"""The built-in stages: model, data, vectors (DIM + extraction methods), trained (NTP/PO),
evaluation (steering table, sharded over ranks) and report.

Each is a function ``(ctx, section, inputs) -> outputs`` registered with
:func:`~steerscope.pipeline.registry.register_stage`, plus a ``results`` function giving its
``results.json`` sections. File names inside a stage folder are fixed (docs/pipeline.md).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from steerscope.artifacts import atomic_write_json
from steerscope.pipeline.config import TRAINED_METHODS, TrainSection
from steerscope.pipeline.registry import StageOutput, register_stage

PROMPTS_FILE = "prompts.json"
MODEL_FILE = "model.json"
EVAL_FILE = "evaluation.json"


def _read(output: StageOutput, name: str) -> Any:
    return json.loads(output.path(name).read_text(encoding="utf-8"))


# --- model ---------------------------------------------------------------------------------------
def model_info(loaded) -> dict[str, Any]:
    """The model's identity and shape (the ``model`` section of results.json, less the
    steering layer)."""
    a = loaded.arch
    return {
        "id": loaded.model_id,
        "revision": loaded.revision,
        "architecture": a.name,
        "model_type": getattr(loaded.model.config, "model_type", None),
        "n_layers": a.n_layers,
        "d_model": a.d_model,
        "n_heads": a.n_heads,
        "n_kv_heads": a.n_kv_heads,
        "d_head": a.d_head,
        "vocab_size": a.vocab_size,
        "dtype": str(loaded.dtype).removeprefix("torch."),
    }


def model_stage(ctx, section, inputs) -> dict[str, Any]:
    """Load and validate the model; record its identity. A model without a local folder (a
    .gguf file) is saved as a float safetensors folder ``hf/`` so that ``results.json``'s
    ``model.path`` always loads with ``AutoModelForCausalLM.from_pretrained``."""
    loaded = ctx.model()
    info = model_info(loaded)
    if loaded.path is None:
        if ctx.is_main:
            loaded.model.save_pretrained(ctx.out / "hf")
            loaded.tokenizer.save_pretrained(ctx.out / "hf")
        info["path"] = None
        info["local_copy"] = "hf"
    else:
        info["path"] = str(loaded.path)
    atomic_write_json(ctx.out / MODEL_FILE, info)
    ctx.log(f"{info['id']}: {info['architecture']}, {info['n_layers']} layers, "
            f"d_model {info['d_model']}")
    return {"file": MODEL_FILE}


def model_results(out: StageOutput, so_far: dict) -> dict[str, Any]:
    info = _read(out, MODEL_FILE)
    if info.get("path") is None and info.get("local_copy"):
        info["path"] = str(out.dir / info["local_copy"])
    info.pop("local_copy", None)
    keys = ("id", "revision", "architecture", "path")
    return {"model": {**{k: info.get(k) for k in keys},
                      **{k: v for k, v in info.items() if k not in keys}}}


# --- data ----------------------------------------------------------------------------------------
def data_stage(ctx, section, inputs) -> dict[str, Any]:
    """Seeded, disjoint samples of the six prompt splits (raw instructions)."""
    from steerscope.pipeline.inputs import data_plan, load_source, sample_splits

    loaded = {src: load_source(src, section.data_dir) for src in data_plan(ctx.config)}
    splits = sample_splits(ctx.config, loaded)
    atomic_write_json(ctx.out / PROMPTS_FILE, splits)
    ctx.log(", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    return {"file": PROMPTS_FILE, "counts": {k: len(v) for k, v in splits.items()}}


def data_results(out: StageOutput, so_far: dict) -> dict[str, Any]:
    return {"data": {"counts": out.outputs.get("counts", {})}}


# --- vectors -------------------------------------------------------------------------------------
def _formatted(tokenizer, items: list[str]) -> list[str]:
    from steerscope.models.chat import format_prompt

    return [format_prompt(tokenizer, p) for p in items]


def _vector_entry(sv, file: str) -> dict[str, Any]:
    return {"file": file, "layer": sv.layer, "position": sv.position, "norm": sv.norm,
            "sha256": sv.sha256}


def vectors_stage(ctx, section, inputs) -> dict[str, Any]:
    """DIM with the paper's selection (it fixes the steering layer and position), then every
    other extraction method (pca, probe, caa, ...) read at that layer and position."""
    from steerscope.vectors import extract_vector, select_dim

    lm = ctx.model()
    tok = lm.tokenizer
    p = _read(inputs["data"], PROMPTS_FILE)
    f = {k: _formatted(tok, v) for k, v in p.items()}
    d = section.dim
    layers = d.layers if d.layers is not None else (
        [section.layer] if section.layer is not None else None)
    res = select_dim(lm.model, tok, f["harmful_train"], f["harmless_train"], f["harmful_val"],
                     f["harmless_val"], model_id=lm.model_id, revision=lm.revision,
                     filter=d.filter, layers=layers, positions=d.positions,
                     max_layer_fraction=d.max_layer_fraction, layer_cutoff=d.layer_cutoff,
                     kl_threshold=d.kl_threshold,
                     induce_threshold=d.induce_threshold, batch_size=section.batch_size,
                     arch=lm.arch, progress=ctx.progress and ctx.is_main, score_all=d.score_all,
                     relax_kl=d.relax_kl)
    dim = res.vector
    dim.save(ctx.out / "dim.safetensors")
    res.save_candidates(ctx.out / "dim_candidates.json")
    methods = {"dim": _vector_entry(dim, "dim.safetensors")}
    chosen = res.chosen
    ctx.log(f"DIM: layer {dim.layer}, position {dim.position}, norm {dim.norm:.3f}")
    position = section.position if section.position is not None else dim.position
    for m in section.methods:
        if m == "dim" or m in TRAINED_METHODS:
            continue
        sv = extract_vector(lm.model, tok, f["harmful_train"], f["harmless_train"], method=m,
                            layer=dim.layer, position=position, batch_size=section.batch_size,
                            model_id=lm.model_id, revision=lm.revision, arch=lm.arch,
                            progress=False, **section.extraction.get(m, {}))
        sv.save(ctx.out / f"{m}.safetensors")
        methods[m] = _vector_entry(sv, f"{m}.safetensors")
    return {"steering_layer": dim.layer, "position": dim.position, "methods": methods,
            "dim_selection": {**{k: chosen.get(k) for k in ("bypass", "induce", "kl", "score")},
                              "kl_threshold": dim.hyperparameters["kl_threshold"],
                              "kl_threshold_requested":
                                  dim.hyperparameters["kl_threshold_requested"]},
            "candidates_file": "dim_candidates.json"}


def _vectors_section(out: StageOutput) -> dict[str, Any]:
    return {m: {"path": str(out.dir / e["file"]), **{k: v for k, v in e.items() if k != "file"}}
            for m, e in out.outputs.get("methods", {}).items()}


def vectors_results(out: StageOutput, so_far: dict) -> dict[str, Any]:
    return {"model": {"steering_layer": out.outputs["steering_layer"]},
            "vectors": _vectors_section(out),
            "dim_selection": {**out.outputs.get("dim_selection", {}),
                              "layer": out.outputs["steering_layer"],
                              "position": out.outputs.get("position")}}


# --- trained (NTP / PO) --------------------------------------------------------------------------
_CONVENTIONS = ("lr_schedule", "validation", "keep", "ranking")


def _presets() -> dict[str, dict[str, Any]]:
    from steerscope.vectors.train_config import PAPER_CONVENTIONS

    return {
        "quick": dict(lr=[0.01, 0.04], batch_size=[6], seed=None, phi=[2e-2], epochs=2,
                      max_response_tokens=32, **PAPER_CONVENTIONS),
        "paper": dict(lr=[0.01, 0.04], batch_size=[6, 12], seed=[42, 5], phi=None, epochs=10,
                      max_response_tokens=64, **PAPER_CONVENTIONS),
    }


def train_configs(objective: str, section: TrainSection, seed: int) -> list:
    """The grid of :class:`~steerscope.vectors.trained.TrainConfig` for one objective: the
    preset's values (``quick``: the top-level seed; ``paper``: seeds 42 and 5, φ ∈ {2e-2,
    1e-5} for PO; both: the paper's selection conventions), each overridable by the config."""
    from steerscope.vectors.trained import TrainConfig

    pre = dict(_presets()[section.preset])
    if pre["seed"] is None:
        pre["seed"] = [seed]
    if pre["phi"] is None:
        pre["phi"] = [2e-2, 1e-5] if objective == "po" else [2e-2]
    for k in ("lr", "batch_size", "seed", "phi", "epochs", "max_response_tokens",
              *_CONVENTIONS):
        if getattr(section, k) is not None:
            pre[k] = getattr(section, k)
    extra = {} if section.factors is None else {"factors": tuple(section.factors)}
    extra.update({k: pre[k] for k in _CONVENTIONS})
    phis = pre["phi"] if objective == "po" else pre["phi"][:1]
    return [TrainConfig(objective=objective, lr=lr, batch_size=b, seed=s, phi=phi,
                        epochs=pre["epochs"], max_response_tokens=pre["max_response_tokens"],
                        **extra)
            for lr, b, s, phi in itertools.product(pre["lr"], pre["batch_size"], pre["seed"],
                                                   phis)]


def preference_splits(ctx, lm, dim, section, prompts: dict[str, list[str]]):
    """(train, val) preference data: ``val_prompts: dim_val`` trains on every train prompt
    and generates the validation pairs from DIM's validation prompts (the released code);
    ``split`` holds out ``val_fraction`` of the training pairs; ``drop_mislabelled`` keeps
    only pairs whose winner does what its kind asks. Writes ``preference_data.json`` (and
    ``preference_val.json`` for ``dim_val``), as generated."""
    from steerscope.vectors.training_data import build_preference_data, drop_mislabelled

    pref = section.preference
    n = pref.n_prompts
    opts = dict(max_new_tokens=pref.max_new_tokens, batch_size=section.batch_size,
                progress=ctx.progress, harmless_refuse=pref.harmless_refuse)
    data = build_preference_data(lm.model, lm.tokenizer, prompts["harmful_train"][:n],
                                 prompts["harmless_train"][:n], dim, **opts)
    data.save(ctx.out / "preference_data.json")
    ctx.log(f"preference pairs: {data.metadata['label_check']}")
    if pref.drop_mislabelled:
        data = drop_mislabelled(data)
    if pref.val_prompts == "split":
        return data.split(pref.val_fraction, seed=ctx.config.seed)
    val = build_preference_data(lm.model, lm.tokenizer, prompts["harmful_val"],
                                prompts["harmless_val"], dim, **opts)
    val.save(ctx.out / "preference_val.json")
    if pref.drop_mislabelled:
        val = drop_mislabelled(val)
    return data, val


def trained_stage(ctx, section, inputs) -> dict[str, Any]:
    """NTP and PO vectors (those in ``vectors.methods``) at DIM's layer: self-generated
    preference data (train and validation, :func:`preference_splits`), grid training with
    selection, rescaled to the DIM norm. Writes nothing when neither is asked for."""
    objectives = [m for m in section.methods if m in TRAINED_METHODS]
    if not objectives:
        return {"methods": {}}
    from steerscope.vectors import SteeringVector
    from steerscope.vectors.trained import train_grid

    lm = ctx.model()
    dim = SteeringVector.load(inputs["vectors"].path("dim.safetensors"), lm.arch)
    train, val = preference_splits(ctx, lm, dim, section, _read(inputs["data"], PROMPTS_FILE))
    methods = {}
    for obj in objectives:
        res = train_grid(lm.model, lm.tokenizer, train, layer=dim.layer,
                         configs=train_configs(obj, getattr(section, obj), ctx.config.seed),
                         val_data=val, rescale_to=dim.norm, model_id=lm.model_id,
                         eval_batch_size=section.batch_size, progress=ctx.progress)
        res.vector.save(ctx.out / f"{obj}.safetensors")
        methods[obj] = _vector_entry(res.vector, f"{obj}.safetensors")
        ctx.log(f"{obj}: val loss {res.val_loss:.4f} (epoch {res.best_epoch}), cosine with "
                f"DIM {res.vector.cosine(dim):+.3f}")
    return {"methods": methods, "preference": {"n_examples": len(train) + len(val),
                                               "n_train": len(train), "n_val": len(val),
                                               "counts": train.counts(),
                                               "val_counts": val.counts()}}


def trained_results(out: StageOutput, so_far: dict) -> dict[str, Any]:
    section = _vectors_section(out)
    return {"vectors": section} if section else {}


# --- evaluation ----------------------------------------------------------------------------------
def load_vectors(cfg, inputs: dict[str, StageOutput], arch=None) -> dict:
    """The run's vectors in ``vectors.methods`` order, from the vectors and trained stages."""
    from steerscope.vectors import SteeringVector

    out = {}
    for m in cfg.vectors.methods:
        for stage in ("vectors", "trained"):
            entry = inputs[stage].outputs.get("methods", {}).get(m) if stage in inputs else None
            if entry is not None:
                out[m] = SteeringVector.load(inputs[stage].path(entry["file"]), arch)
                break
    return out


def evaluation_stage(ctx, section, inputs) -> dict[str, Any]:
    """The steering table on the test prompts (sharded over ranks under torchrun)."""
    from steerscope.pipeline.evaluation import sharded_steering_eval

    lm = ctx.model()
    vectors = load_vectors(ctx.config, inputs, lm.arch)
    p = _read(inputs["data"], PROMPTS_FILE)
    judge = None
    if section.judge is not None and ctx.is_main:
        from steerscope.evaluate import get_judge

        judge = get_judge(section.judge)
    table = sharded_steering_eval(
        lm.model, lm.tokenizer, vectors, p["harmful_test"], p["harmless_test"], arch=lm.arch,
        bypass_alpha=section.bypass_alpha, induce_alpha=section.induce_alpha,
        max_new_tokens=section.max_new_tokens, batch_size=section.batch_size, judge=judge,
        dist=ctx.dist, progress=ctx.progress)
    if ctx.is_main:
        atomic_write_json(ctx.out / EVAL_FILE, table)
    for r in table["rows"]:
        ctx.log(f"{r['method']:6s} {r['prompt_set']:8s} ASR {r['asr']:.3f} "
                f"mean refusal score {r['mean_refusal_score']:+.3f}")
    return {"file": EVAL_FILE}


def evaluation_results(out: StageOutput, so_far: dict) -> dict[str, Any]:
    table = _read(out, EVAL_FILE)
    steering: dict[str, dict[str, Any]] = {}
    for r in table["rows"]:
        steering.setdefault(r["method"], {})[r["prompt_set"]] = {
            "asr": r["asr"], "mean_refusal_score": r["mean_refusal_score"],
            "judge_asr": r["judge_asr"], "refusal_rate": r["refusal_rate"],
            "score_refusal_rate": r["score_refusal_rate"], "alpha": r["alpha"], "n": r["n"]}
    names = list(table["cosine"])
    matrix = [[table["cosine"][a][b] for b in names] for a in names]
    return {"steering": steering, "cosine": {"methods": names, "matrix": matrix}}


# --- report --------------------------------------------------------------------------------------
def report_stage(ctx, section, inputs) -> dict[str, Any]:
    """The HTML report and PNG figures, built from ``results.json``; with patching results
    also the circuit explorer (from the patching, circuits and svv folders and the model)."""
    from steerscope.report import build_report
    from steerscope.report.explorer import run_explorer_data

    results = json.loads(Path(ctx.run_dir, "results.json").read_text(encoding="utf-8"))
    dirs = {name: out.dir for name, out in inputs.items()}
    explorer = None
    if "patching" in dirs:
        explorer = run_explorer_data(results, dirs, lm=ctx.model())
    html = build_report(results, ctx.out, title=section.title, explorer=explorer)
    return {"file": html.name, "figures": sorted(p.name for p in (ctx.out / "figures").glob("*.png"))}


register_stage("model", results=model_results)(model_stage)
register_stage("data", results=data_results)(data_stage)
register_stage("vectors", results=vectors_results)(vectors_stage)
register_stage("trained", results=trained_results)(trained_stage)
register_stage("evaluation", results=evaluation_results, distributed=True)(evaluation_stage)
register_stage("report")(report_stage)
