"""The one steered-evaluation primitive: generate under steering, judge, fast-score.

:func:`steered_outcome` runs one prompt set under one set of interventions (or a custom
generator, e.g. frozen generation) and returns a :class:`SideOutcome`: every completion, the
judge's verdict per completion (True = the behaviour is present; refusal: the paper's
substring matcher) and, when score ids are given, the fast score of every prompt under the
same steering. The steering table (:mod:`steerscope.evaluate.steering`), its sharded form in
the pipeline, the sparsity sweep and the freezing table all call it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from steerscope.errors import SteerscopeError
from steerscope.evaluate.presence import SubstringPresence
from steerscope.evaluate.refusal import refusal_score_from_logits, refusal_scores
from steerscope.generation import generate
from steerscope.runtime import Runtime


@dataclass
class SideOutcome:
    """One prompt set under one steering: completions, verdicts and fast scores."""

    completions: list[str]
    present: list[bool]  # judge verdict per completion (True = behaviour present)
    scores: torch.Tensor | None = field(default=None, repr=False)  # [n] float64, or None

    @property
    def n(self) -> int:
        return len(self.completions)

    @property
    def rate(self) -> float:
        """Fraction of completions judged to show the behaviour."""
        return sum(self.present) / self.n

    @property
    def score_rate(self) -> float | None:
        """Fraction of prompts with fast score > 0 (None without scores)."""
        return None if self.scores is None else float((self.scores > 0).double().mean())

    @property
    def mean_score(self) -> float | None:
        return None if self.scores is None else float(self.scores.mean())


# (formatted prompts) -> (completions, last-prompt-position logits [N, V] or None)
Generator = Callable[[list[str]], tuple[list[str], torch.Tensor | None]]


def steered_outcome(
    model,
    tokenizer,
    formatted: Sequence[str],
    *,
    instructions: Sequence[str] | None = None,
    interventions: Sequence = (),
    judge=None,
    score_ids: Sequence[int] | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    arch=None,
    desc: str = "generating",
    progress: bool | None = None,
    generator: Generator | None = None,
) -> SideOutcome:
    """Completions, judge verdicts and fast scores of ``formatted`` prompts under steering.

    Default generation: :func:`~steerscope.generation.generate` (greedy, length-batched) with
    ``interventions``; scores: :func:`~steerscope.evaluate.refusal.refusal_scores` with
    ``score_ids`` under the same interventions (input-order batches of ``batch_size``).
    ``generator(formatted) -> (completions, logits)`` replaces both (the scores then come
    from its last-prompt-position ``logits`` [N, V]). ``judge``: ``judge(prompts,
    responses) -> list[bool]`` (True = present), default the paper's refusal substrings;
    ``instructions`` (the raw prompts, default ``formatted``) are what it is shown.
    """
    texts = list(formatted)
    if not texts:
        raise SteerscopeError("no prompts to evaluate", "pass a non-empty prompt list")
    judge = judge if judge is not None else SubstringPresence()
    scores = None
    if generator is not None:
        outs, logits = generator(texts)
        if score_ids is not None and logits is not None:
            scores = refusal_score_from_logits(logits, score_ids)  # [N] float64
    else:
        outs = generate(model, tokenizer, texts, interventions=list(interventions),
                        max_new_tokens=max_new_tokens, batch_size=batch_size, desc=desc,
                        progress=progress)
        if score_ids is not None:
            with Runtime(model, list(interventions), arch=arch), torch.no_grad():
                scores = refusal_scores(model, tokenizer, texts, refusal_ids=score_ids,
                                        batch_size=batch_size, progress=False)  # [N] float64
    shown = list(instructions) if instructions is not None else texts
    present = [bool(v) for v in judge.judge(shown, outs)]
    return SideOutcome(list(outs), present, scores)


__all__ = ["Generator", "SideOutcome", "steered_outcome"]
