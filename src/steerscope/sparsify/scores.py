"""Dimension-level scores at the steering node (paper sections 4, 7), from
:mod:`steerscope.patching`'s EAP-IG.

The steering node's per-dimension EAP-IG score is
:func:`steerscope.patching.steer_dimension_scores`; this module builds the patching examples
and wraps the result as :class:`DimensionScores` for the sparsification rules (any IE vector
with the same convention can be fed to the rules instead).

For one teacher-forced example (prompt + response token ids, steering coefficient α):

- clean run = steered (h^ℓ + α·s at every position), corrupt run = unsteered, same tokens;
- at every response position t: y_t = clean greedy token, y*_t = corrupt greedy token;
  positions with y_t = y*_t are masked out; m = mean over the unmasked positions of
  logit(y_t) − logit(y*_t);
- G = (1/T) Σ_{i<T} ∂m/∂h^ℓ at β_i = (i + 0.5)/T · α, summed over all positions ([d]).

Examples are combined position-weighted within a dataset, then the datasets are averaged:

    grad = mean_D Σ_{e∈D} N_e α_e G_e / N_D        ie = s ⊙ grad        (both [d])

so ``ie_i`` = Σ_pos (h_clean − h_corrupt)_i · ∂m/∂h_i (the EAP-IG node score per dimension of
the mean metric). Completeness: Σ_i ie_i ≈ mean_D (m_D(α_D) − m_D(0)) (exact as T → ∞).
Gradients are w.r.t. the residual entering block ℓ (the steering input).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from steerscope.artifacts import atomic_write
from steerscope.errors import DataError, SteerscopeError
from steerscope.results_schema import accepts_old_keywords
from steerscope.vectors.vector import SteeringVector


@dataclass
class DimensionScores:
    """IE = s ⊙ grad at the steering node, and how it was obtained."""

    ie: torch.Tensor  # [d] float32
    grad: torch.Tensor  # [d] float32
    n_positions: dict[str, int] = field(default_factory=dict)
    metric: dict[str, dict[str, float]] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> Path:
        """safetensors file with tensors ``ie`` and ``grad`` and JSON metadata, atomically."""
        import json

        from safetensors.torch import save_file

        meta = json.dumps({"n_positions": self.n_positions, "metric": self.metric,
                           **self.metadata}, sort_keys=True)
        tensors = {"ie": self.ie.float().contiguous(), "grad": self.grad.float().contiguous()}
        return atomic_write(Path(path), lambda tmp: save_file(tensors, tmp,
                                                              metadata={"steerscope": meta}))


def load_ie(path: str | os.PathLike) -> torch.Tensor:
    """The IE vector [d] from a file: a scores file (tensor ``ie``) or any safetensors file
    with exactly one 1-D tensor."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise SteerscopeError(f"IE file {path} does not exist", "check the path")
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            key = "ie" if "ie" in keys else (keys[0] if len(keys) == 1 else None)
            if key is None:
                raise SteerscopeError(f"IE file {path} holds tensors {keys} and none is 'ie'",
                                      "save the IE vector as tensor 'ie'")
            t = f.get_tensor(key)
    except SteerscopeError:
        raise
    except Exception as exc:
        raise SteerscopeError(f"cannot read IE file {path} ({type(exc).__name__})",
                              "pass a .safetensors file") from exc
    if t.ndim != 1 or not torch.isfinite(t).all():
        raise SteerscopeError(f"IE in {path} is not a finite 1-D tensor", "recompute it")
    return t.float()


def ig_scores_from_examples(model, vector: SteeringVector, datasets, *, steps: int = 10,
                            arch=None, progress: bool = False) -> DimensionScores:
    """IE at the steering node from patching examples, by the patching package's EAP-IG.

    ``datasets``: ``{name: [PatchingExample]}`` or a list of examples (each carries its
    token ids, prompt length, α and dataset name); see the module docstring for the
    aggregation. Raises when no example has an unmasked position.
    """
    from steerscope.patching.forward import GraphModel
    from steerscope.patching.scores import eap_ig, steer_dimension_scores

    if arch is None:
        from steerscope.models.archs import validate_model

        arch = validate_model(model)
    vector.check_fits(arch)
    examples = ([e for exs in datasets.values() for e in exs] if isinstance(datasets, Mapping)
                else list(datasets))
    if not examples:
        raise SteerscopeError("no patching examples to score", "pass at least one example")
    gm = GraphModel(model, vector.layer, arch=arch)
    try:
        scores = eap_ig(gm, examples, vector.vector, steps=steps, progress=progress)
    except DataError:  # no example with an unmasked position
        raise SteerscopeError("steering changes no greedy token on these examples, so the "
                              "patching metric is empty", "use prompts where steering changes "
                              "the output or a larger alpha") from None
    grad, ie = steer_dimension_scores(scores)
    if not torch.isfinite(grad).all():
        raise SteerscopeError("the integrated gradient is not finite", "check the model dtype")
    names = list(dict.fromkeys(e.dataset for e in examples))
    counts = {n: int(scores.weights.get(n, 0)) for n in names}
    metric = {n: {"alpha": float(next(e.alpha for e in examples if e.dataset == n)),
                  "examples": sum(1 for e in examples if e.dataset == n)} for n in names}
    meta = {"steps": steps, "layer": vector.layer, "vector_method": vector.method,
            "vector_sha256": vector.sha256, "source": "steerscope.patching.eap_ig",
            "convention": "ie = s * grad; grad = mean_D alpha_D * IG_D / N_D (position-summed "
            "IG, position-weighted within a dataset)"}
    return DimensionScores(ie.float(), grad.float(), counts, metric, meta)


@accepts_old_keywords
def dimension_scores(
    model,
    tokenizer,
    vector: SteeringVector,
    present: Sequence[str],
    absent: Sequence[str],
    *,
    bypass_alpha: float = -1.0,
    induce_alpha: float = 1.0,
    steps: int = 10,
    max_new_tokens: int = 64,
    only_flipped: bool = True,
    batch_size: int = 8,
    arch=None,
    progress: bool = False,
) -> DimensionScores:
    """IE = s ⊙ grad on the paper's four patching datasets.

    Greedy unsteered and steered rollouts of the present (α = ``bypass_alpha``) and absent
    (α = ``induce_alpha``) instructions (:func:`steerscope.patching.data.rollouts`); with
    ``only_flipped`` the prompts whose outcome flipped by the refusal substring matcher
    (present: the base response shows the behaviour, the steered one does not; absent: the
    reverse), otherwise
    every prompt; each kept prompt teacher-forces both its steered and its base response
    token ids (:func:`ig_scores_from_examples`).
    """
    from steerscope.patching.data import PatchingExample, datasets_from_rollouts, rollouts

    if not present or not absent:
        raise SteerscopeError("dimension scores need present and absent prompts",
                              "pass non-empty prompt lists")
    if arch is None:
        from steerscope.models.archs import validate_model

        arch = validate_model(model)
    vector.check_fits(arch)
    kw = dict(max_new_tokens=max_new_tokens, batch_size=batch_size)
    rolls = {"present": rollouts(model, tokenizer, list(present), vector, bypass_alpha, **kw),
             "absent": rollouts(model, tokenizer, list(absent), vector, induce_alpha, **kw)}
    kept = {}
    for name, rs in rolls.items():
        flips = [(r.base_refused and not r.steered_refused) if name == "present" else
                 (r.steered_refused and not r.base_refused) for r in rs]
        kept[name] = sum(flips) if only_flipped else len(rs)
        if only_flipped and not kept[name]:
            raise SteerscopeError(f"steering flips no {name} prompt's outcome",
                                  "use more prompts or only_flipped=False")
    if only_flipped:
        datasets = datasets_from_rollouts(
            rolls["present"], rolls["absent"], bypass_alpha=bypass_alpha,
            induce_alpha=induce_alpha, max_per_dataset=max(len(present), len(absent)))
    else:
        datasets = {}
        for name, alpha in (("present", bypass_alpha), ("absent", induce_alpha)):
            for which in ("steered", "base"):
                datasets[f"{name}/{which}"] = [
                    PatchingExample(torch.tensor(r.prompt_ids + ids), len(r.prompt_ids), alpha,
                                    f"{name}/{which}", r.prompt, text)
                    for r in rolls[name]
                    for ids, text in [(r.steered_ids, r.steered_text) if which == "steered"
                                      else (r.base_ids, r.base_text)] if ids]
    res = ig_scores_from_examples(model, vector, datasets, steps=steps, arch=arch,
                                  progress=progress)
    res.metadata.update(prompts_kept=kept, only_flipped=only_flipped)
    return res
