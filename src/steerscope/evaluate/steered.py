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
from typing import Any

import torch

from steerscope.errors import SteerscopeError
from steerscope.evaluate.presence import SubstringPresence
from steerscope.evaluate.refusal import refusal_score_from_logits, refusal_scores
from steerscope.generation import generate
from steerscope.generation_sizes import fixed_batch_size
from steerscope.runtime import Add, Runtime


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
    completions: Sequence[str] | None = None,
) -> SideOutcome:
    """Completions, judge verdicts and fast scores of ``formatted`` prompts under steering.

    Default generation: :func:`~steerscope.generation.generate` (greedy, length-batched) with
    ``interventions``; scores: :func:`~steerscope.evaluate.refusal.refusal_scores` with
    ``score_ids`` under the same interventions (input-order batches of ``batch_size``).
    ``generator(formatted) -> (completions, logits)`` replaces both (the scores then come
    from its last-prompt-position ``logits`` [N, V]). ``judge``: ``judge(prompts,
    responses) -> list[bool]`` (True = present), default the paper's refusal substrings;
    ``instructions`` (the raw prompts, default ``formatted``) are what it is shown.
    ``completions`` (already generated under ``interventions``, e.g. by
    :func:`packed_outcomes`) skip the generation; scores and verdicts are computed as usual.
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
        outs = list(completions) if completions is not None else generate(
            model, tokenizer, texts, interventions=list(interventions),
            max_new_tokens=max_new_tokens, batch_size=batch_size, desc=desc,
            progress=progress)
        if score_ids is not None:
            with Runtime(model, list(interventions), arch=arch), torch.no_grad():
                scores = refusal_scores(model, tokenizer, texts, refusal_ids=score_ids,
                                        batch_size=batch_size, progress=False)  # [N] float64
    shown = list(instructions) if instructions is not None else texts
    present = [bool(v) for v in judge.judge(shown, outs)]
    return SideOutcome(list(outs), present, scores)


@dataclass
class Setting:
    """One cell of a table or sweep: ``formatted`` prompts (with their raw ``instructions``
    for the judge) steered by ``steerer`` (anything with ``intervention(alpha)``, e.g. a
    SteeringVector; None = unsteered) with coefficient ``alpha``."""

    formatted: list[str]
    instructions: list[str]
    steerer: Any | None
    alpha: float


def _parts(op) -> list:
    """The interventions of one cell: ``op`` itself, or the list a multi-layer vector's
    ``intervention`` returns; [] for None."""
    if op is None:
        return []
    return list(op) if isinstance(op, (list, tuple)) else [op]


def _pack_key(op) -> tuple | None:
    """((layer, scope), ...) of a cell whose interventions are all plain one-vector steering
    Adds (one per layer), which can share a batch with per-row vectors; else None."""
    keys = []
    for part in _parts(op):
        if not (isinstance(part, Add) and part.point == "resid_pre" and part.heads is None
                and part.n_rows is None and part.vector.ndim == 1):
            return None
        keys.append((part.layer, part.scope if isinstance(part.scope, str)
                     else tuple(part.scope)))
    return tuple(keys) or None


def packed_generate(model, tokenizer, cells: Sequence[tuple[Sequence[str], Any]], *,
                    max_new_tokens: int = 64, batch_size: int | str = 16,
                    desc: str = "generating", progress: bool | None = None
                    ) -> list[list[str] | None]:
    """Greedy completions of every cell ``(formatted prompts, intervention or None)``, the
    cells that steer at the same layers and scopes (an intervention may be the list of a
    multi-layer vector; the unsteered cells join as α = 0) packed
    into shared length-sorted batches: one per-row steering intervention ([S, d] vectors,
    [S] alphas), each prompt row carrying its cell. Each completion is the one its cell
    alone gives. None for a cell whose intervention cannot be packed (run it alone)."""
    ops = [op for _, op in cells]
    groups: dict[tuple, list[int]] = {}
    for i, op in enumerate(ops):
        key = None if op is None else _pack_key(op)
        if key is not None:
            groups.setdefault(key, []).append(i)
    unsteered = [i for i, op in enumerate(ops) if op is None]
    if unsteered:  # join the first group (α = 0 adds exactly nothing), or form one
        first = next(iter(groups), ("none",))
        groups[first] = sorted(groups.get(first, []) + unsteered)
    completions: list[list[str] | None] = [None] * len(cells)
    for members in groups.values():
        texts = [t for i in members for t in cells[i][0]]
        rows = [k for k, i in enumerate(members) for _ in cells[i][0]]
        steered = [i for i in members if ops[i] is not None]
        interventions = []
        for j, ref in enumerate(_parts(ops[steered[0]]) if steered else []):
            # one per-row Add per layer of the cells' interventions, in their order
            vecs = torch.stack([_parts(ops[i])[j].vector if ops[i] is not None
                                else torch.zeros_like(ref.vector) for i in members])  # [S, d]
            alphas = [0.0 if ops[i] is None else float(_parts(ops[i])[j].alpha)
                      for i in members]
            interventions.append(Add("resid_pre", ref.layer, scope=ref.scope, vector=vecs,
                                     alpha=alphas))
        outs = generate(model, tokenizer, texts, interventions=interventions,
                        row_settings=rows if interventions else None,
                        max_new_tokens=max_new_tokens, batch_size=batch_size, desc=desc,
                        progress=progress)
        start = 0
        for i in members:
            n = len(cells[i][0])
            completions[i] = outs[start:start + n]
            start += n
    return completions


def packed_outcomes(model, tokenizer, settings: Sequence[Setting], *, judge=None,
                    score_ids: Sequence[int] | None = None, max_new_tokens: int = 64,
                    batch_size: int | str = 16, arch=None, desc: str = "generating",
                    progress: bool | None = None) -> list[SideOutcome]:
    """:func:`steered_outcome` of every setting, the generations packed into shared batches
    by :func:`packed_generate` (each completion is the one its setting alone gives). Fast
    scores (no generation) and verdicts are computed per setting as in
    :func:`steered_outcome`; settings that cannot be packed run alone."""
    ops = [None if st.steerer is None else st.steerer.intervention(st.alpha) for st in settings]
    completions = packed_generate(model, tokenizer, [(st.formatted, op) for st, op in
                                                     zip(settings, ops)],
                                  max_new_tokens=max_new_tokens, batch_size=batch_size,
                                  desc=desc, progress=progress)
    score_bs = fixed_batch_size(batch_size)
    return [steered_outcome(
        model, tokenizer, st.formatted, instructions=st.instructions,
        interventions=_parts(op), judge=judge, score_ids=score_ids,
        max_new_tokens=max_new_tokens, batch_size=score_bs, arch=arch, desc=desc,
        progress=progress, completions=done)
        for st, op, done in zip(settings, ops, completions)]


__all__ = ["Generator", "Setting", "SideOutcome", "packed_generate", "packed_outcomes",
           "steered_outcome"]
