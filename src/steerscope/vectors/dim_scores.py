"""The refusal-score filter of DIM's prompts (:func:`filter_by_refusal_score`) and the scores
of DIM candidates on the validation prompts: the mean refusal score under steering
(:func:`mean_refusal`) and the next-token KL under directional ablation
(:func:`next_token_kl`), over prompts tokenized once (:func:`encode_batches`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from steerscope.errors import SteerscopeError
from steerscope.evaluate.refusal import (
    refusal_scores,
    refusal_scores_from_ids,
    refusal_token_ids,
)
from steerscope.models.archs import ModelArch, validate_model
from steerscope.models.calls import forward_accepts, model_device
from steerscope.models.chat import check_formatted_prompts, encode_prompts
from steerscope.results_schema import accepts_old_keywords
from steerscope.runtime import Intervention, Runtime


@accepts_old_keywords
def filter_by_refusal_score(
    model,
    tokenizer,
    present_formatted: Sequence[str],
    absent_formatted: Sequence[str],
    *,
    refusal_ids: Sequence[int] | None = None,
    batch_size: int = 16,
    progress: bool | None = None,
    label: str = "",
) -> tuple[list[str], list[str]]:
    """Keep present prompts with unsteered refusal score > 0 and absent ones with score < 0.

    Returns ``(kept_present, kept_absent)`` in the given order. Raises a one-line error when
    a list is empty, before or after filtering (``label``, e.g. ``"train"``, names the set).
    """
    tag = f" {label}" if label else ""
    present = check_formatted_prompts(present_formatted, f"present{tag} prompts")
    absent = check_formatted_prompts(absent_formatted, f"absent{tag} prompts")
    if refusal_ids is None:
        refusal_ids = refusal_token_ids(tokenizer)
    kw = dict(refusal_ids=refusal_ids, batch_size=batch_size, progress=progress)
    s_present = refusal_scores(model, tokenizer, present, **kw)  # [N] float64
    s_absent = refusal_scores(model, tokenizer, absent, **kw)  # [M] float64
    kept_present = [p for p, s in zip(present, s_present.tolist()) if s > 0]
    kept_absent = [p for p, s in zip(absent, s_absent.tolist()) if s < 0]
    if not kept_present:
        raise SteerscopeError(
            f"no present{tag} prompt is left after the refusal-score filter (0 of "
            f"{len(present)} has a refusal score > 0)",
            "pass more present prompts, use a model that refuses them, or pass filter=False")
    if not kept_absent:
        raise SteerscopeError(
            f"no absent{tag} prompt is left after the refusal-score filter (0 of "
            f"{len(absent)} has a refusal score < 0)",
            "pass more absent prompts, use a model that answers them, or pass filter=False")
    return kept_present, kept_absent


def encode_batches(tokenizer, prompts: list[str], batch_size: int, device):
    """The prompts tokenized (left padding) in batches of ``batch_size``: a list of
    ``(input_ids, attention_mask)``, each [B, T] on ``device``."""
    if int(batch_size) < 1:
        raise SteerscopeError(f"batch_size must be at least 1, got {batch_size}", "pass e.g. 16")
    out = []
    for s in range(0, len(prompts), int(batch_size)):
        enc = encode_prompts(tokenizer, prompts[s : s + int(batch_size)], device=device)
        out.append((enc["input_ids"], enc["attention_mask"]))  # [B, T] each
    return out


def last_logprobs_batches(model, batches, interventions: Sequence[Intervention] = (),
                          arch: ModelArch | None = None) -> torch.Tensor:
    """Last-position next-token log-probabilities [N, V] float64 (CPU) under interventions."""
    kwargs = {}
    if forward_accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = 1
    if forward_accepts(model, "use_cache"):
        kwargs["use_cache"] = False
    out = []
    for ids, mask in batches:
        position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, T]
        with torch.no_grad(), Runtime(model, list(interventions), arch=arch):
            logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids,
                           **kwargs).logits[:, -1, :]  # [B, V]
        out.append(torch.log_softmax(logits.to(torch.float64), dim=-1).cpu())
    return torch.cat(out)  # [N, V] float64


def kl_rows(base: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """KL(P_base ‖ P_other) per row of log-probabilities [N, V]: returns [N] float64."""
    p = base.exp()
    terms = torch.where(p > 0, p * (base - other), torch.zeros_like(p))  # 0·log 0 = 0
    return terms.sum(-1)  # [N]


def next_token_kl(
    model,
    tokenizer,
    formatted_prompts: Sequence[str],
    interventions: Iterable[Intervention],
    *,
    batch_size: int = 16,
    arch: ModelArch | None = None,
) -> torch.Tensor:
    """KL(P_plain ‖ P_intervened) of the last-position next-token distribution, per prompt.

    Returns [N] float64: for each prompt, ``Σ_v p(v) (log p(v) − log q(v))`` with ``p`` the
    unmodified model's and ``q`` the model's under ``interventions`` (e.g.
    :func:`~steerscope.runtime.ablate_direction`), both in float64.
    """
    prompts = check_formatted_prompts(formatted_prompts)
    arch = arch if arch is not None else validate_model(model)
    batches = encode_batches(tokenizer, prompts, batch_size, model_device(model))
    base = last_logprobs_batches(model, batches, (), arch)  # [N, V]
    other = last_logprobs_batches(model, batches, list(interventions), arch)  # [N, V]
    return kl_rows(base, other)  # [N]


def mean_refusal(model, batches, refusal_ids, interventions, arch) -> float:
    """The mean refusal score (float64) over ``batches`` under ``interventions``."""
    with Runtime(model, list(interventions), arch=arch):
        scores = [refusal_scores_from_ids(model, ids, mask, refusal_ids) for ids, mask in batches]
    return float(torch.cat(scores).mean())  # float64 mean
