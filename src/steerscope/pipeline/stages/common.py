"""Helpers the stage modules share: reading a finished stage's files and the run's vectors.
File names inside a stage folder are fixed (docs/pipeline.md)."""

from __future__ import annotations

import json
from typing import Any

from steerscope.errors import SteerscopeError
from steerscope.evaluate.repetition import repetition_rate
from steerscope.pipeline.registry import StageOutput
from steerscope.results_schema import upgrade_prompts

PROMPTS_FILE = "prompts.json"  # the data stage's samples, {split key: [instruction]}
BEHAVIOUR_FILE = "behaviour.json"  # the data stage's record of the run's behaviour


def read_json(output: StageOutput, name: str) -> Any:
    """The JSON file ``name`` of a finished stage."""
    return json.loads(output.path(name).read_text(encoding="utf-8"))


def read_prompts(data: StageOutput) -> dict[str, list[str]]:
    """The data stage's ``prompts.json``: ``{"present_train": [instruction], ...}`` (a file
    of an earlier version, with refusal's side names, read under today's keys)."""
    return upgrade_prompts(read_json(data, PROMPTS_FILE))


def row_loop_rate(row: dict, completions: list[str]) -> float:
    """A stored table row's ``repetition_rate``, or, for tables written before rows carried
    it, :func:`~steerscope.evaluate.repetition.repetition_rate` of the row's stored
    ``completions``."""
    stored = row.get("repetition_rate")
    return repetition_rate(completions) if stored is None else stored


def first(items: list[str], n: int | None) -> list[str]:
    """The first ``n`` items (all for None)."""
    return list(items) if n is None else list(items)[:n]


def vector_entry(sv, file: str) -> dict[str, Any]:
    """A vector's record in a stage's outputs (file name, layer, position, norm, sha256; a
    multi-layer vector also ``layers``, ``layer`` being the first)."""
    layers = {"layers": list(sv.layers)} if hasattr(sv, "layers") else {}
    return {"file": file, "layer": sv.layer, **layers, "position": sv.position, "norm": sv.norm,
            "sha256": sv.sha256}


def single_layer_only(cfg, stage: str, enabled: bool = True) -> None:
    """A one-line config error when ``vectors.layers`` asks for multi-layer vectors and the
    (enabled) stage ``stage`` needs a single-layer one."""
    if enabled and cfg.vectors.layers is not None and len(cfg.vectors.layers) > 1:
        raise SteerscopeError(
            f"config key 'vectors.layers' ({cfg.vectors.layers}) makes multi-layer vectors, "
            f"but the {stage} stage needs a single-layer vector",
            f"set {stage}.enabled: false or drop vectors.layers")


def vectors_results_section(out: StageOutput) -> dict[str, Any]:
    """The ``vectors`` results.json entries of the vectors a stage wrote."""
    return {m: {"path": str(out.dir / e["file"]), **{k: v for k, v in e.items() if k != "file"}}
            for m, e in out.outputs.get("methods", {}).items()}


def load_vectors(cfg, inputs: dict[str, StageOutput], arch=None) -> dict:
    """The run's vectors in ``vectors.methods`` order, from the vectors and trained stages
    (:class:`~steerscope.vectors.SteeringVectorSet` for multi-layer ones)."""
    from steerscope.vectors import load_vector_file

    out = {}
    for m in cfg.vectors.methods:
        for stage in ("vectors", "trained"):
            entry = inputs[stage].outputs.get("methods", {}).get(m) if stage in inputs else None
            if entry is not None:
                out[m] = load_vector_file(inputs[stage].path(entry["file"]), arch)
                break
    return out


def analysed_methods(patching: StageOutput) -> list[str]:
    """The methods the patching stage analysed (its outputs' ``methods``, in order)."""
    return [m for m in patching.outputs.get("methods", {})
            if (patching.dir / m / "result.json").is_file()]


def patching_result(patching: StageOutput, method: str):
    """The :class:`~steerscope.patching.result.PatchingResult` of ``method``."""
    from steerscope.patching.result import PatchingResult

    return PatchingResult.load(patching.path(method))


def patched_vectors(ctx, inputs: dict[str, StageOutput], arch) -> dict:
    """method -> SteeringVector for every method the patching stage analysed."""
    vectors = load_vectors(ctx.config, inputs, arch)
    methods = analysed_methods(inputs["patching"])
    missing = [m for m in methods if m not in vectors]
    if missing:
        raise SteerscopeError(f"patched method '{missing[0]}' has no vector in this run",
                              "list it in vectors.methods")
    return {m: vectors[m] for m in methods}


def score_ids(inputs: dict[str, StageOutput]) -> list[int] | None:
    """The behaviour's fast-score token ids the vectors stage used (None for a vectors stage
    that recorded none)."""
    ids = inputs["vectors"].outputs.get("score_ids") if "vectors" in inputs else None
    return None if ids is None else [int(i) for i in ids]
