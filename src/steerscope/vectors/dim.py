"""DIM (difference in means) refusal direction with the paper's candidate selection (§3.1).

Pipeline (:func:`select_dim`), following Arditi et al. 2024 as restated in the spec:

1. Optionally filter the prompts (:func:`filter_by_refusal_score`): keep harmful prompts whose
   unsteered refusal score is > 0 and harmless prompts whose score is < 0 (train and val).
2. Candidates: every layer ℓ in [0, L) and every post-instruction position i (the last
   ``k = len(post_instruction_tokens(tokenizer))`` prompt tokens, as negative positions
   ``-k .. -1``): ``s = mean_harmful(h_i^ℓ) − mean_harmless(h_i^ℓ)`` accumulated in float64
   (:func:`candidate_directions`).
3. Scores of each candidate on the validation sets:

   - ``bypass``: mean refusal score of harmful-val with ``steer(s, ℓ, -1.0)`` at every position;
   - ``induce``: mean refusal score of harmless-val with ``steer(s, ℓ, +1.0)``;
   - ``kl``: mean over harmless-val of KL(unablated ‖ ablated) of the last-position next-token
     distribution (float64), ablated = directional ablation of ``s`` at ``resid_pre``,
     ``attn_out`` and ``mlp_out`` of every layer (:func:`next_token_kl`).

4. Discard candidates with ``kl ≥ 0.1``, ``induce ≤ 0``, ``layer ≥ int(0.8·L)`` (Arditi et
   al.'s and the authors' released code; ``layer_cutoff="real"``: ``layer ≥ 0.8·L`` compared
   as real numbers), or a NaN score; candidates excluded by the layer rule are not scored.
   ``at_threshold="keep"`` (the released code's strict comparisons) discards only ``kl > 0.1``
   and ``induce < 0``.
   Pick the survivor maximising ``σ(induce) − σ(bypass)`` (:func:`select_candidate`, in
   :mod:`steerscope.vectors.dim_selection`; ties go to the first row in table order: layers
   ascending, then positions ``-k .. -1``).

The returned vector is the raw (unnormalised) mean difference of the chosen candidate, for
use with α = ±1.

Thresholds (``thresholds=``, :mod:`steerscope.vectors.dim_thresholds`): the comparisons with 0
above are the paper's for the built-in refusal behaviour. For any other behaviour the prompt
filter keeps each side's prompts on its side of the boundary between the two sides' mean fast
scores, the candidate scores are recorded relative to the absent side's mean score, and the
KL filter is relaxed as ``relax_kl`` does when no candidate passes it.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from steerscope.artifacts import atomic_write_json
from steerscope.errors import SteerscopeError
from steerscope.evaluate.refusal import refusal_token_ids
from steerscope.models.archs import ModelArch, validate_model
from steerscope.models.calls import model_device
from steerscope.models.chat import (
    check_formatted_prompts,
    post_instruction_tokens,
)
from steerscope.runtime import ablate_direction, steer
from steerscope.vectors.activations import mean_activations
from steerscope.vectors.dim_scores import (
    encode_batches,
    filter_by_refusal_score,
    kl_rows,
    last_logprobs_batches,
    mean_refusal,
    next_token_kl,
)
from steerscope.vectors.dim_selection import (
    DEFAULT_AT_THRESHOLD,
    DEFAULT_INDUCE_THRESHOLD,
    DEFAULT_KL_THRESHOLD,
    DEFAULT_LAYER_CUTOFF,
    DEFAULT_MAX_LAYER_FRACTION,
    REASON_INDUCE,
    REASON_KL,
    REASON_LAYER,
    REASON_NAN,
    SELECTION_RULE,
    check_at_threshold,
    check_layer_cutoff,
    discard_reason,
    induce_fails,
    is_missing,
    kl_fails,
    layer_excluded,
    relaxed_kl_threshold,
    select_candidate,
    selection_score,
)
from steerscope.vectors.dim_thresholds import (
    DEFAULT_THRESHOLDS,
    RELATIVE,
    filter_by_boundary,
    relative_fix,
    resolve_thresholds,
)
from steerscope.vectors.vector import SteeringVector
from steerscope.vectors.vector_set import SteeringVectorSet

ABLATION_POINTS = ("resid_pre", "attn_out", "mlp_out")


# ---------------------------------------------------------------------------------------
# candidates
# ---------------------------------------------------------------------------------------
def post_instruction_positions(tokenizer) -> list[int]:
    """The post-instruction positions ``[-k, ..., -1]`` of the tokenizer's chat template."""
    k = len(post_instruction_tokens(tokenizer))
    if k == 0:
        raise SteerscopeError("the chat template has no tokens after the user instruction",
                              "pass positions explicitly, e.g. positions=[-1]")
    return list(range(-k, 0))


def _warn_suffix(tokenizer, prompts: list[str], positions: list[int]) -> None:
    """Warn when prompts do not end with the template's post-instruction tokens."""
    suffix = post_instruction_tokens(tokenizer)
    if not suffix or -min(positions) > len(suffix):
        return
    rows = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    bad = sum(1 for r in rows if list(r[-len(suffix):]) != list(suffix))
    if bad:
        warnings.warn(
            f"{bad} of {len(prompts)} prompts do not end with the chat template's "
            "post-instruction tokens; format them with format_prompt", stacklevel=3)


def candidate_directions(
    model,
    tokenizer,
    harmful_formatted: Sequence[str],
    harmless_formatted: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    batch_size: int = 16,
    arch: ModelArch | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    """DIM candidates ``mean_harmful − mean_harmless`` of ``resid_pre`` (float64).

    Returns [len(layers), len(positions), d] float64; defaults: every layer ``0 .. L-1`` and
    every post-instruction position ``-k .. -1``.
    """
    arch = arch if arch is not None else validate_model(model)
    layers = list(range(arch.n_layers)) if layers is None else list(layers)
    positions = post_instruction_positions(tokenizer) if positions is None else list(positions)
    kw = dict(layers=layers, positions=positions, batch_size=batch_size, arch=arch,
              progress=progress)
    mu_harmful = mean_activations(model, tokenizer, harmful_formatted, **kw)  # [nL, K, d]
    mu_harmless = mean_activations(model, tokenizer, harmless_formatted, **kw)  # [nL, K, d]
    return mu_harmful - mu_harmless  # [nL, K, d] float64


# ---------------------------------------------------------------------------------------
# result
# ---------------------------------------------------------------------------------------
@dataclass
class DimResult:
    """Output of :func:`select_dim`.

    ``vector``: the chosen DIM vector; ``candidates``: one row per (layer, position) with
    ``layer``, ``position``, ``bypass``, ``induce``, ``kl``, ``norm``, ``score``
    (σ(induce) − σ(bypass)) and ``discarded`` (reason or ``None``), unscored rows holding
    ``None``; ``selected``: index of the chosen row; ``directions``: every candidate vector,
    [len(layers), len(positions), d] float64, indexed like ``layers`` × ``positions``.
    """

    vector: SteeringVector
    candidates: list[dict[str, Any]]
    selected: int
    layers: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    directions: torch.Tensor | None = field(default=None, repr=False)

    @property
    def chosen(self) -> dict[str, Any]:
        return self.candidates[self.selected]

    def layer_set(self) -> SteeringVectorSet:
        """The multi-layer DIM vector: at every candidate layer, the mean difference at the
        chosen position (``directions[:, chosen position]``, the prompts the selection
        used), with the chosen vector's fields; ``metadata["selected_layer"]`` is the layer
        the selection picked."""
        v = self.vector
        k = self.positions.index(v.position)
        return SteeringVectorSet(vector=self.directions[:, k], layers=list(self.layers),
                                 method=v.method, model_id=v.model_id, revision=v.revision,
                                 position=v.position, hyperparameters=dict(v.hyperparameters),
                                 metadata={**v.metadata, "selected_layer": v.layer})

    def save_candidates(self, path: str | os.PathLike) -> Path:
        """Write the candidate table as a JSON list of rows, atomically (NaN → null)."""
        return atomic_write_json(path, self.candidates, indent=1)


# ---------------------------------------------------------------------------------------
# pipeline
# ---------------------------------------------------------------------------------------
def select_dim(
    model,
    tokenizer,
    harmful_train: Sequence[str],
    harmless_train: Sequence[str],
    harmful_val: Sequence[str],
    harmless_val: Sequence[str],
    *,
    model_id: str | None = None,
    revision: str | None = None,
    filter: bool = True,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    max_layer_fraction: float = DEFAULT_MAX_LAYER_FRACTION,
    kl_threshold: float = DEFAULT_KL_THRESHOLD,
    induce_threshold: float = DEFAULT_INDUCE_THRESHOLD,
    layer_cutoff: str = DEFAULT_LAYER_CUTOFF,
    at_threshold: str = DEFAULT_AT_THRESHOLD,
    refusal_ids: Sequence[int] | None = None,
    batch_size: int = 16,
    arch: ModelArch | None = None,
    progress: bool | None = None,
    score_all: bool = False,
    relax_kl: bool = False,
    behaviour=None,
    thresholds: str = DEFAULT_THRESHOLDS,
) -> DimResult:
    """Extract the DIM refusal direction and select its layer and position (spec §3.1).

    All prompt lists are already formatted with the chat template. ``filter``: apply
    :func:`filter_by_refusal_score` to the train and val pairs first. ``layers`` /
    ``positions`` restrict the candidates (defaults: all layers, every post-instruction
    position). ``refusal_ids`` (the fast score's token ids) default to ``behaviour``'s
    (a :class:`~steerscope.behaviours.Behaviour`, whose ``score_tokens: auto`` is derived
    from the harmful/present and harmless/absent train prompts given here), and without a
    behaviour to ``refusal_token_ids(tokenizer)``; "harmful" / "harmless" then read "present"
    / "absent", and "refusal score" the behaviour's fast score. ``progress``: a
    tqdm bar over candidates (None: shown for more than 4 candidates). ``score_all=False``
    (the default, as the pipeline's ``vectors.dim.score_all``; ``True``: the full table)
    scores each candidate only until its first failed filter (induce, then KL, then bypass):
    the same vector is selected for up to 3x less compute, and the table has gaps.
    ``relax_kl``: when no candidate survives, double the KL threshold (up to
    ``MAX_RELAXED_KL``) until one does, warn, and record the threshold used in the vector's
    ``hyperparameters["kl_threshold"]`` (the requested one in ``kl_threshold_requested``);
    the other filters are never relaxed. Small validation sets make the KL filter noisy.
    ``layer_cutoff``: ``"int"`` discards layers ``≥ int(max_layer_fraction·L)`` (the released
    code), ``"real"`` layers ``≥ max_layer_fraction·L`` (see
    :mod:`steerscope.vectors.dim_selection`). ``at_threshold``: a candidate exactly at the KL
    or induce threshold is discarded (``"discard"``) or kept (``"keep"``: the released code's
    strict comparisons, KL > t and induce < t discard). ``thresholds``: ``"auto"`` (the
    paper's absolute thresholds for the built-in refusal behaviour or no behaviour, relative
    ones otherwise), ``"paper"`` or ``"relative"``
    (:mod:`steerscope.vectors.dim_thresholds`: relative filters keep prompts on their side
    of the boundary between the sides' mean scores, candidate scores are recorded minus the
    absent val prompts' mean score, and ``relax_kl`` is on).
    """
    arch = arch if arch is not None else validate_model(model)
    L = arch.n_layers
    sets = {}
    for name, prompts in (("harmful_train", harmful_train), ("harmless_train", harmless_train),
                          ("harmful_val", harmful_val), ("harmless_val", harmless_val)):
        sets[name] = check_formatted_prompts(prompts, f"{name} prompts")
    counts_before = {k: len(v) for k, v in sets.items()}
    if refusal_ids is None and behaviour is not None:
        refusal_ids = behaviour.score_token_ids(
            tokenizer, model=model, present_formatted=sets["harmful_train"],
            absent_formatted=sets["harmless_train"])
    if refusal_ids is None:
        refusal_ids = refusal_token_ids(tokenizer)
    refusal_ids = [int(i) for i in refusal_ids]
    relative = resolve_thresholds(thresholds, behaviour) == RELATIVE
    relax_kl = relax_kl or relative
    if filter:
        for split in ("train", "val"):
            pair = (sets[f"harmful_{split}"], sets[f"harmless_{split}"])
            if relative:
                kept = filter_by_boundary(model, tokenizer, *pair, score_ids=refusal_ids,
                                          batch_size=batch_size, label=split,
                                          behaviour=behaviour)[:2]
            else:
                kept = filter_by_refusal_score(model, tokenizer, *pair, refusal_ids=refusal_ids,
                                               batch_size=batch_size, progress=False,
                                               label=split)
            sets[f"harmful_{split}"], sets[f"harmless_{split}"] = kept
    check_layer_cutoff(layer_cutoff)
    check_at_threshold(at_threshold)
    if not 0 < max_layer_fraction <= 1:
        raise SteerscopeError(f"max_layer_fraction must be in (0, 1], got {max_layer_fraction}",
                              "pass e.g. 0.8")
    layers = list(range(L)) if layers is None else [int(x) for x in layers]
    for layer in layers:
        arch.check_layer(layer)
    positions = post_instruction_positions(tokenizer) if positions is None else list(positions)
    _warn_suffix(tokenizer, sets["harmful_train"] + sets["harmless_train"], positions)

    directions = candidate_directions(
        model, tokenizer, sets["harmful_train"], sets["harmless_train"], layers=layers,
        positions=positions, batch_size=batch_size, arch=arch, progress=False)  # [nL, K, d]

    device = model_device(model)
    harmful_val_b = encode_batches(tokenizer, sets["harmful_val"], batch_size, device)
    harmless_val_b = encode_batches(tokenizer, sets["harmless_val"], batch_size, device)
    base_logprobs = last_logprobs_batches(model, harmless_val_b, (), arch)  # [N, V]
    baseline_bypass = mean_refusal(model, harmful_val_b, refusal_ids, (), arch)
    baseline_induce = mean_refusal(model, harmless_val_b, refusal_ids, (), arch)
    # relative thresholds: every val score is recorded minus the absent side's unsteered mean
    boundary = baseline_induce if relative else 0.0
    baseline_bypass, baseline_induce = baseline_bypass - boundary, baseline_induce - boundary

    def val_score(batches, interventions) -> float:
        return mean_refusal(model, batches, refusal_ids, interventions, arch) - boundary

    grid = [(j, k) for j in range(len(layers)) for k in range(len(positions))]
    if progress is None:
        progress = len(grid) > 4
    it = grid
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(grid, desc="DIM candidates", unit="cand")
    rows: list[dict[str, Any]] = []
    for j, k in it:
        layer, pos = layers[j], positions[k]
        s = directions[j, k]  # [d] float64
        row: dict[str, Any] = {"layer": layer, "position": pos, "bypass": None, "induce": None,
                               "kl": None, "norm": float(s.norm()), "score": None,
                               "discarded": None}
        if layer_excluded(layer, L, max_layer_fraction, layer_cutoff):
            row["discarded"] = REASON_LAYER
            rows.append(row)
            continue
        # cheapest decisive filter first: with score_all=False a candidate stops being scored
        # at the first filter it fails (the selection is the same; the table has gaps)
        row["induce"] = val_score(harmless_val_b, [steer(s, layer, 1.0)])
        if not score_all and (is_missing(row["induce"])
                              or induce_fails(row["induce"], induce_threshold, at_threshold)):
            row["discarded"] = REASON_NAN if is_missing(row["induce"]) else REASON_INDUCE
            rows.append(row)
            continue
        if row["norm"] > 0:
            ablated = last_logprobs_batches(
                model, harmless_val_b, ablate_direction(s, range(L), points=ABLATION_POINTS),
                arch)  # [N, V]
            row["kl"] = float(kl_rows(base_logprobs, ablated).mean())
        else:
            row["kl"] = math.nan  # ablating the zero vector is undefined
        if not score_all and (is_missing(row["kl"])
                              or kl_fails(row["kl"], kl_threshold, at_threshold)):
            row["discarded"] = REASON_NAN if is_missing(row["kl"]) else REASON_KL
            rows.append(row)
            continue
        row["bypass"] = val_score(harmful_val_b, [steer(s, layer, -1.0)])
        row["score"] = selection_score(row["bypass"], row["induce"])
        row["discarded"] = discard_reason(row, n_layers=L, max_layer_fraction=max_layer_fraction,
                                          kl_threshold=kl_threshold,
                                          induce_threshold=induce_threshold,
                                          layer_cutoff=layer_cutoff, at_threshold=at_threshold)
        rows.append(row)

    requested_kl = kl_threshold
    if relax_kl and not any(r["discarded"] is None for r in rows):
        kl_threshold = relaxed_kl_threshold(rows, kl_threshold, at_threshold)
        if kl_threshold is not None:
            warnings.warn(f"no DIM candidate passed KL < {requested_kl}; selected with KL < "
                          f"{kl_threshold} instead (use more validation prompts for the "
                          "paper's filter)", stacklevel=2)
            for row in rows:
                if (row["discarded"] == REASON_KL
                        and not kl_fails(row["kl"], kl_threshold, at_threshold)
                        and row["bypass"] is None):  # score_all=True rows are fully scored
                    s = directions[layers.index(row["layer"]), positions.index(row["position"])]
                    row["bypass"] = val_score(harmful_val_b, [steer(s, row["layer"], -1.0)])
                    row["score"] = selection_score(row["bypass"], row["induce"])
            for row in rows:
                if row["discarded"] != REASON_LAYER and row["bypass"] is not None:
                    row["discarded"] = discard_reason(
                        row, n_layers=L, max_layer_fraction=max_layer_fraction,
                        kl_threshold=kl_threshold, induce_threshold=induce_threshold,
                        layer_cutoff=layer_cutoff, at_threshold=at_threshold)
        else:
            kl_threshold = requested_kl
    selected = select_candidate(rows, n_layers=L, max_layer_fraction=max_layer_fraction,
                                kl_threshold=kl_threshold, induce_threshold=induce_threshold,
                                layer_cutoff=layer_cutoff, at_threshold=at_threshold,
                                fix=relative_fix(boundary) if relative else None)
    chosen = rows[selected]
    j, k = layers.index(chosen["layer"]), positions.index(chosen["position"])
    n_survivors = sum(1 for r in rows if r["discarded"] is None)
    vector = SteeringVector(
        vector=directions[j, k],
        layer=int(chosen["layer"]),
        method="dim",
        model_id=model_id,
        revision=revision,
        position=int(chosen["position"]),
        hyperparameters={
            "selection": SELECTION_RULE,
            "max_layer_fraction": float(max_layer_fraction),
            "layer_cutoff": layer_cutoff,
            "at_threshold": at_threshold,
            "kl_threshold": float(kl_threshold),
            "kl_threshold_requested": float(requested_kl),
            "induce_threshold": float(induce_threshold),
            "filter": bool(filter),
            "layers": layers,
            "positions": positions,
            "ablation_points": list(ABLATION_POINTS),
            "refusal_ids": refusal_ids,
            **({"thresholds": RELATIVE, "score_boundary": boundary} if relative else {}),
        },
        metadata={
            "bypass": chosen["bypass"],
            "induce": chosen["induce"],
            "kl": chosen["kl"],
            "score": chosen["score"],
            "baseline_bypass": baseline_bypass,
            "baseline_induce": baseline_induce,
            "n_layers": L,
            "n_candidates": len(rows),
            "n_survivors": n_survivors,
            **{f"n_{name}": len(v) for name, v in sets.items()},
            "n_prompts_before_filter": counts_before,
        },
    )
    return DimResult(vector=vector, candidates=rows, selected=selected, layers=layers,
                     positions=positions, directions=directions)


__all__ = [
    "ABLATION_POINTS",
    "DimResult",
    "candidate_directions",
    "discard_reason",
    "filter_by_refusal_score",
    "next_token_kl",
    "post_instruction_positions",
    "select_candidate",
    "select_dim",
    "selection_score",
]
