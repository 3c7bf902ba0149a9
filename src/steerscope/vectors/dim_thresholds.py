"""DIM's score thresholds for a behaviour: the paper's for refusal, relative to the behaviour's
own fast-score distribution otherwise (``select_dim(..., thresholds=)``).

The paper's filters compare refusal scores (log-odds of the refusal tokens' probability) with
0, i.e. with P = 1/2: harmful prompts are kept when the model more likely than not starts a
refusal, a candidate survives when +s makes harmless prompts do so on average, and the
objective ``σ(induce) − σ(bypass)`` is centred on 0. For refusal, 0 lies between the two
sides. For another behaviour it need not: when the present answers share no first token
(a style, a persona, a language), the score-token set's probability stays below 1/2 on both
sides, so every score is negative and 0 separates nothing.

**Relative thresholds** make the paper's comparisons with 0 on the behaviour's own scale. The
**boundary** between the sides is ``b = (mean present score + mean absent score) / 2`` (the
midpoint of the two sides' mean unsteered fast scores; :func:`side_boundary`):

- **prompt filter** (train and val, each split its own ``b``): present prompts are kept when
  their score is ``> b``, absent prompts when it is ``< b`` (:func:`filter_by_boundary`);
- **candidate scores**: ``bypass`` and ``induce`` (and the baselines) are recorded as the
  fast score minus ``r``, the mean unsteered score of the (filtered) absent val prompts: the
  level at which the model does not show the behaviour. The induce filter
  ``induce > induce_threshold`` (default 0) then reads "+s raises the absent prompts' mean
  score", the direction the paper's filter asks for, on the behaviour's own scale, and
  ``σ(induce) − σ(bypass)`` is centred on that level; ``r`` is recorded in the vector's
  ``hyperparameters["score_boundary"]``. (Measured from the midpoint of the sides instead,
  the induce filter discarded every candidate of a persona behaviour on SmolLM2-135M whose
  +1·s raises the score but not half-way to the present side.)
- the **KL filter** measures the model's next-token distribution, not the score: its
  threshold stays, and when no candidate passes it is relaxed as ``relax_kl=True`` does
  (doubled up to ``MAX_RELAXED_KL``, warned, the threshold used recorded).

``thresholds="auto"`` (default): the paper's for the built-in refusal behaviour (or no
behaviour), relative for any other; ``"paper"`` / ``"relative"`` force one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from steerscope.errors import SteerscopeError
from steerscope.evaluate.refusal import refusal_scores
from steerscope.models.chat import check_formatted_prompts

THRESHOLDS = ("auto", "paper", "relative")
DEFAULT_THRESHOLDS = "auto"
PAPER, RELATIVE = "paper", "relative"


def is_paper_refusal(behaviour) -> bool:
    """Whether ``behaviour`` is the built-in refusal behaviour (the paper's setup): ``None``
    or a behaviour whose definition equals :data:`steerscope.behaviours.REFUSAL`'s."""
    from steerscope.behaviours import REFUSAL

    return behaviour is None or behaviour.to_dict() == REFUSAL.to_dict()


def resolve_thresholds(thresholds: str, behaviour) -> str:
    """``"paper"`` or ``"relative"`` for ``thresholds`` (one of :data:`THRESHOLDS`) and the
    behaviour; a one-line error for an unknown value."""
    if thresholds not in THRESHOLDS:
        raise SteerscopeError(f"unknown thresholds '{thresholds}'",
                              f"use one of {', '.join(THRESHOLDS)}")
    if thresholds == "auto":
        return PAPER if is_paper_refusal(behaviour) else RELATIVE
    return thresholds


def side_boundary(present_scores: torch.Tensor, absent_scores: torch.Tensor) -> float:
    """The boundary between the sides: the midpoint of the two sides' mean scores,
    ``(mean(present) + mean(absent)) / 2`` (float64)."""
    return float((present_scores.to(torch.float64).mean()
                  + absent_scores.to(torch.float64).mean()) / 2)


def side_words(behaviour) -> tuple[str, str]:
    """How errors name the two sides: ``present`` / ``absent``, with the behaviour's own
    labels in parentheses when it has any."""
    out = []
    for side in ("present", "absent"):
        label = behaviour.label(side) if behaviour is not None else side
        out.append(side if label == side else f"{side} ({label})")
    return out[0], out[1]


def filter_by_boundary(
    model,
    tokenizer,
    present_formatted: Sequence[str],
    absent_formatted: Sequence[str],
    *,
    score_ids: Sequence[int],
    batch_size: int = 16,
    label: str = "",
    behaviour=None,
) -> tuple[list[str], list[str], float]:
    """The relative prompt filter: keep present prompts whose unsteered fast score is above
    the boundary ``b`` (:func:`side_boundary` of these prompts' scores) and absent ones below
    it. Returns ``(kept_present, kept_absent, b)`` in the given order; a one-line error in the
    behaviour's words when a side is left empty (``label``, e.g. ``"val"``, names the set)."""
    tag = f" {label}" if label else ""
    present_word, absent_word = side_words(behaviour)
    present = check_formatted_prompts(present_formatted, f"present{tag} prompts")
    absent = check_formatted_prompts(absent_formatted, f"absent{tag} prompts")
    kw = dict(refusal_ids=list(score_ids), batch_size=batch_size, progress=False)
    s_present = refusal_scores(model, tokenizer, present, **kw)  # [N] float64
    s_absent = refusal_scores(model, tokenizer, absent, **kw)  # [M] float64
    b = side_boundary(s_present, s_absent)
    kept_present = [p for p, s in zip(present, s_present.tolist()) if s > b]
    kept_absent = [p for p, s in zip(absent, s_absent.tolist()) if s < b]
    where = f"{b:.4g}, the midpoint of the two sides' mean fast scores"
    fix = ("use prompts on which the model shows the behaviour more clearly on one side than "
           "the other, other score_tokens, or turn the filter off (vectors.dim.filter: false; "
           "in Python filter=False)")
    for kept, prompts, word, above in ((kept_present, present, present_word, "above"),
                                       (kept_absent, absent, absent_word, "below")):
        if not kept:
            raise SteerscopeError(
                f"no {word}{tag} prompt is left after the fast-score filter (0 of "
                f"{len(prompts)} scores {above} {where})", fix)
    return kept_present, kept_absent, b


def relative_fix(boundary: float) -> str:
    """The advice of DIM's no-survivor error under relative thresholds."""
    return (f"the induce scores are relative to the absent val prompts' mean fast score "
            f"({boundary:.4g}): no candidate raises it; lower vectors.dim.induce_threshold (e.g. -1) or "
            "raise max_layer_fraction, or use prompts on which the model shows the behaviour "
            "more clearly")


__all__ = ["DEFAULT_THRESHOLDS", "PAPER", "RELATIVE", "THRESHOLDS", "filter_by_boundary",
           "is_paper_refusal", "relative_fix", "resolve_thresholds", "side_boundary", "side_words"]
