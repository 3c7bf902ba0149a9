"""Dimension-level scores at the steering node by integrated gradients (paper sections 4, 7).

A small self-contained version of the steering-node part of EAP-IG, so sparsification works
before (and independently of) :mod:`steerscope.patching`; any IE vector with the same
convention can be fed to the rules instead.

For one teacher-forced rollout set (prompt + response, steering coefficient α):

- clean run = steered (h^ℓ + α·s at every position), corrupt run = unsteered, same tokens;
- at every labelled response position t: y_t = clean greedy token, y*_t = corrupt greedy
  token; positions with y_t = y*_t are masked out;
- M(β) = Σ_unmasked [logit_β(y_t) − logit_β(y*_t)] with the model steered by β·s;
- G = (1/T) Σ_{i<T} ∂M/∂h^ℓ at β_i = (i + 0.5)/T · α, summed over all positions ([d]).

Within a dataset D (N_D unmasked positions) examples are combined position-weighted
(m_D = M_D / N_D), then the datasets are averaged (the paper's order; the same convention as
``steerscope.patching``'s ``steer_dimension_scores``):

    grad = mean_D (α_D · G_D / N_D)        ie = s ⊙ grad        (both [d])

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
from steerscope.errors import SteerscopeError
from steerscope.generate import generate, position_ids_from_mask
from steerscope.models.chat import format_prompt
from steerscope.runtime import Edit, Runtime
from steerscope.vectors.trained import TeacherForcedBatch, _collate, _encode_rows, _pad_id
from steerscope.vectors.vector import SteeringVector


@dataclass
class IGResult:
    """Integrated-gradient sums of one rollout set (see the module docstring)."""

    grad_sum: torch.Tensor  # [d] float64: G = (1/T) Σ_i ∂M/∂h at β_i, summed over positions
    n_positions: int  # unmasked positions N
    m_clean: float  # M(α): summed logit differences, steered
    m_corrupt: float  # M(0): unsteered


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


def _logit_diff(logits: torch.Tensor, y: torch.Tensor, y_star: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
    """Σ over masked positions of logit(y) − logit(y*); logits [B, K, V], y/y*/mask [B, K]."""
    ly = logits.gather(-1, y.unsqueeze(-1)).squeeze(-1)  # [B, K]
    ls = logits.gather(-1, y_star.unsqueeze(-1)).squeeze(-1)  # [B, K]
    return ((ly - ls) * mask).sum()


def _forward_logits(model, batch: TeacherForcedBatch, layer: int, add: torch.Tensor | None,
                    k: int, arch=None) -> torch.Tensor:
    """Logits [B, K, V] predicting the last K positions' tokens, with ``add`` [d] added to the
    residual entering block ``layer`` at every position (differentiable in ``add``)."""
    ops = [] if add is None else [Edit("resid_pre", layer, fn=lambda x, ctx: x + add.to(x))]
    with Runtime(model, ops, arch=arch):
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    position_ids=position_ids_from_mask(batch.attention_mask),
                    use_cache=False, logits_to_keep=k + 1)
    return out.logits[:, :-1]


def ig_gradient(model, batch: TeacherForcedBatch, vector: torch.Tensor, layer: int,
                alpha: float, *, steps: int = 10, arch=None) -> IGResult:
    """Integrated gradient of the summed metric M w.r.t. the steering input (one batch)."""
    if steps < 1:
        raise SteerscopeError(f"steps must be >= 1, got {steps}")
    device = batch.input_ids.device
    dtype = next(model.parameters()).dtype
    s = vector.detach().to(device=device, dtype=dtype)  # [d]
    t = batch.input_ids.shape[1]
    k = int(batch.n_tokens.max())
    if k == 0:
        return IGResult(torch.zeros(s.shape[0], dtype=torch.float64), 0, 0.0, 0.0)
    label = batch.label_mask[:, t - k:]  # [B, K]
    with torch.no_grad():
        clean = _forward_logits(model, batch, layer, alpha * s, k, arch)  # [B, K, V]
        corrupt = _forward_logits(model, batch, layer, None, k, arch)
        y, y_star = clean.argmax(-1), corrupt.argmax(-1)  # [B, K]
        mask = (label & (y != y_star)).to(clean.dtype)  # [B, K]
        m_clean = float(_logit_diff(clean, y, y_star, mask))
        m_corrupt = float(_logit_diff(corrupt, y, y_star, mask))
    n = int(mask.sum())
    total = torch.zeros(s.shape[0], dtype=torch.float64, device=device)
    if n == 0:
        return IGResult(total.cpu(), 0, m_clean, m_corrupt)
    for i in range(steps):
        beta = (i + 0.5) / steps * alpha
        delta = torch.zeros_like(s, requires_grad=True)  # [d]: gradient = Σ_pos ∂M/∂h
        logits = _forward_logits(model, batch, layer, beta * s + delta, k, arch)
        m = _logit_diff(logits, y, y_star, mask)
        (g,) = torch.autograd.grad(m, delta)
        total += g.double()
    return IGResult((total / steps).cpu(), n, m_clean, m_corrupt)


def ig_scores_from_rollouts(
    model,
    tokenizer,
    vector: SteeringVector,
    rollouts: Mapping[str, tuple[Sequence[str], Sequence[str], float]],
    *,
    steps: int = 10,
    max_response_tokens: int = 64,
    batch_size: int = 8,
    arch=None,
) -> DimensionScores:
    """IE at the steering node from teacher-forced rollouts.

    ``rollouts``: dataset name → (chat-formatted prompts, responses, α). Position-weighted
    within a dataset, then the mean over datasets (module docstring).
    """
    if arch is None:
        from steerscope.models.archs import validate_model

        arch = validate_model(model)
    vector.check_fits(arch)
    if not rollouts:
        raise SteerscopeError("no rollouts to score", "pass at least one dataset")
    device = next(model.parameters()).device
    pad = _pad_id(tokenizer)
    per_dataset: list[torch.Tensor] = []
    counts: dict[str, int] = {}
    metric: dict[str, dict[str, float]] = {}
    for name, (prompts, responses, alpha) in rollouts.items():
        rows = _encode_rows(tokenizer, list(prompts), list(responses), max_response_tokens)
        n, mc, mk = 0, 0.0, 0.0
        g_sum = torch.zeros(vector.d_model, dtype=torch.float64)
        for i in range(0, len(rows), batch_size):
            batch = _collate(rows[i:i + batch_size], pad, device)
            r = ig_gradient(model, batch, vector.vector, vector.layer, alpha, steps=steps,
                            arch=arch)
            g_sum += alpha * r.grad_sum
            n, mc, mk = n + r.n_positions, mc + r.m_clean, mk + r.m_corrupt
        if n:
            per_dataset.append(g_sum / n)
        counts[name] = n
        metric[name] = {"alpha": float(alpha), "m_clean": mc / n if n else float("nan"),
                        "m_corrupt": mk / n if n else float("nan")}
    if not per_dataset:
        raise SteerscopeError("steering changes no greedy token on these rollouts, so the "
                              "patching metric is empty",
                              "use prompts where steering changes the output or a larger alpha")
    grad = torch.stack(per_dataset).mean(0)  # [d]: datasets without positions are skipped
    if not torch.isfinite(grad).all():
        raise SteerscopeError("the integrated gradient is not finite", "check the model dtype")
    ie = vector.vector.double() * grad
    meta = {"steps": steps, "layer": vector.layer, "vector_method": vector.method,
            "vector_sha256": vector.sha256, "convention": "ie = s * grad; grad = mean_D alpha_D "
            "* IG_D / N_D (position-summed IG, position-weighted within a dataset)"}
    return DimensionScores(ie.float(), grad.float(), counts, metric, meta)


def dimension_scores(
    model,
    tokenizer,
    vector: SteeringVector,
    harmful: Sequence[str],
    harmless: Sequence[str],
    *,
    bypass_alpha: float = -1.0,
    induce_alpha: float = 1.0,
    steps: int = 10,
    max_new_tokens: int = 64,
    only_flipped: bool = True,
    batch_size: int = 8,
    arch=None,
) -> DimensionScores:
    """IE = s ⊙ grad on the paper's four rollout sets.

    Generates unsteered and steered greedy completions of the harmful (α = ``bypass_alpha``)
    and harmless (α = ``induce_alpha``) instructions; with ``only_flipped`` keeps the prompts
    whose outcome flipped by the substring matcher (harmful: base refuses, steered does not;
    harmless: steered refuses, base does not); then teacher-forces both the steered and the
    base response of each kept prompt and averages (:func:`ig_scores_from_rollouts`).
    """
    from steerscope.evaluate.matchers import is_refusal_substring

    if not harmful or not harmless:
        raise SteerscopeError("dimension scores need harmful and harmless prompts",
                              "pass non-empty prompt lists")
    if arch is None:
        from steerscope.models.archs import validate_model

        arch = validate_model(model)
    vector.check_fits(arch)
    rollouts = {}
    kept_counts = {}
    for set_name, instructions, alpha in (("harmful", harmful, bypass_alpha),
                                          ("harmless", harmless, induce_alpha)):
        texts = [format_prompt(tokenizer, p) for p in instructions]
        base = generate(model, tokenizer, texts, max_new_tokens=max_new_tokens,
                        batch_size=batch_size, desc=f"base {set_name}")
        steered = generate(model, tokenizer, texts, interventions=[vector.intervention(alpha)],
                           max_new_tokens=max_new_tokens, batch_size=batch_size,
                           desc=f"steered {set_name}")
        idx = list(range(len(texts)))
        if only_flipped:
            want_refusal = set_name == "harmless"  # steered should refuse on harmless
            idx = [i for i in idx if is_refusal_substring(steered[i]) == want_refusal
                   and is_refusal_substring(base[i]) != want_refusal]
            if not idx:
                raise SteerscopeError(f"steering flips no {set_name} prompt's outcome",
                                      "use more prompts or only_flipped=False")
        kept_counts[set_name] = len(idx)
        sel = [texts[i] for i in idx]
        rollouts[f"{set_name}/steered"] = (sel, [steered[i] for i in idx], alpha)
        rollouts[f"{set_name}/base"] = (sel, [base[i] for i in idx], alpha)
    res = ig_scores_from_rollouts(model, tokenizer, vector, rollouts, steps=steps,
                                  max_response_tokens=max_new_tokens, batch_size=batch_size,
                                  arch=arch)
    res.metadata.update(prompts_kept=kept_counts, only_flipped=only_flipped)
    return res
