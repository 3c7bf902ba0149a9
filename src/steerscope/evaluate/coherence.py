"""Coherence of steered text: what steering costs, measured beside the behaviour rate.

A vector that is too strong does not steer the model, it breaks it: the substring matcher then
counts gibberish and loops as success. Three measures, reported in every steering, freezing
and sparsity row (docs/results.md):

- ``fluency`` of a completion: its mean per-token cross-entropy (nats) under the
  **unsteered** model, teacher-forced on prompt + completion (the completion's tokens only:
  the text ``prompt + completion`` is tokenized as one string and the completion starts after
  the longest common prefix with the prompt's own tokens, as generation's decode/re-encode
  gives). A row's ``fluency`` is the token-weighted mean over its completions (total CE /
  total tokens); high = text the model would not write. An empty completion has no tokens
  and no fluency.
- ``ce_reference``: the steered model's mean per-token CE on fixed **reference completions**
  (the unsteered model's own greedy completions of absent-side val prompts, computed once per
  run) minus the unsteered model's CE on them (token-weighted over all reference tokens): how
  much the steering damages ordinary text (the released refusal-direction code's
  ``evaluate_loss``). 0 under a zero vector.
- a completion is **coherent** when it is not a repetition loop
  (:func:`~steerscope.evaluate.repetition.is_repetitive`) and its fluency is at most
  ``fluency_threshold`` (:data:`DEFAULT_FLUENCY_THRESHOLD` nats per token unless configured;
  empty completions are not coherent). ``coherent_share`` = coherent completions / all;
  ``coherent_behaviour_rate`` = the behaviour rate among the coherent ones (None when none
  is coherent); ``coherent_success`` = the share of **all** completions that are coherent and
  show the use's intended outcome (remove: behaviour absent; induce: behaviour present), the
  quantity the strength sweep (:mod:`steerscope.evaluate.alpha_sweep`) maximises.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from steerscope.errors import SteerscopeError
from steerscope.evaluate.repetition import is_repetitive
from steerscope.generation import position_ids_from_mask
from steerscope.generation_sizes import fixed_batch_size
from steerscope.runtime import Runtime

# nats per token: a completion whose mean CE under the unsteered model is above this is not
# coherent (perplexity e^4.5 ≈ 90: ordinary greedy text of a small chat model scores ~0.3-2,
# shuffled or garbled text 6+).
DEFAULT_FLUENCY_THRESHOLD = 4.5


def check_fluency_threshold(value, key: str = "fluency_threshold") -> float:
    """``value`` as a float; a one-line error unless it is a finite positive number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
            value) or value <= 0:
        raise SteerscopeError(f"{key} must be a positive number of nats per token, got {value!r}",
                              f"set {key} to e.g. {DEFAULT_FLUENCY_THRESHOLD}")
    return float(value)


def _encode(tokenizer, prompt: str, completion: str) -> tuple[list[int], int]:
    """(ids of prompt + completion, number of completion tokens at the end)."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    f = tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]
    boundary = 0
    for a, b in zip(p, f):
        if a != b:
            break
        boundary += 1
    boundary = max(boundary, 1)  # at least one prompt token to predict from
    return list(f), len(f) - boundary


@torch.no_grad()
def completion_ce(model, tokenizer, prompts: Sequence[str], completions: Sequence[str], *,
                  interventions: Sequence = (), arch=None, batch_size: int | str = 16
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced cross-entropy of each completion given its (chat-formatted) prompt,
    under ``interventions`` (none: the unsteered model): ``(ce_sum [N] float64, n_tokens [N]
    long)``, the summed per-token CE (nats) of the completion's tokens and their number."""
    if len(prompts) != len(completions):
        raise SteerscopeError(f"{len(prompts)} prompts but {len(completions)} completions",
                              "pass one completion per prompt")
    batch_size = fixed_batch_size(batch_size)
    rows = [_encode(tokenizer, p, c) for p, c in zip(prompts, completions)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else \
        tokenizer.eos_token_id
    pad = 0 if pad is None else int(pad if not isinstance(pad, (list, tuple)) else pad[0])
    device = next(model.parameters()).device
    sums = torch.zeros(len(rows), dtype=torch.float64)  # [N]
    counts = torch.tensor([k for _, k in rows], dtype=torch.long)  # [N]
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))  # similar lengths batch
    with Runtime(model, list(interventions), arch=arch):
        for start in range(0, len(order), batch_size):
            idx = [i for i in order[start:start + batch_size] if rows[i][1] > 0]
            if not idx:
                continue
            width = max(len(rows[i][0]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)  # [B, T]
            mask = torch.zeros((len(idx), width), dtype=torch.long)  # [B, T]
            labels = torch.zeros((len(idx), width), dtype=torch.bool)  # [B, T]
            for j, i in enumerate(idx):
                seq, k = rows[i]
                ids[j, width - len(seq):] = torch.tensor(seq)
                mask[j, width - len(seq):] = 1
                labels[j, width - k:] = True
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask,
                           position_ids=position_ids_from_mask(mask),
                           use_cache=False).logits[:, :-1].float()  # [B, T-1, V]
            ce = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:],
                                 reduction="none").double().cpu()  # [B, T-1]
            per_row = (ce * labels[:, 1:]).sum(-1)  # [B]
            for j, i in enumerate(idx):
                sums[i] = per_row[j]
    return sums, counts


def per_token(sums: torch.Tensor, counts: torch.Tensor) -> float | None:
    """Token-weighted mean CE (total CE / total tokens); None without tokens."""
    total = int(counts.sum())
    return None if total == 0 else float(sums.sum()) / total


@dataclass
class Coherence:
    """The coherence columns of one row (module doc)."""

    fluency: float | None  # token-weighted mean CE of the completions, unsteered model
    n_coherent: int
    coherent_share: float  # coherent completions / all
    coherent_behaviour_rate: float | None  # behaviour rate among coherent completions
    coherent_success: float  # share of all completions coherent with the intended outcome
    fluency_threshold: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def coherence_of(completions: Sequence[str], present: Sequence[bool], sums: torch.Tensor,
                 counts: torch.Tensor, *, use: str,
                 fluency_threshold: float = DEFAULT_FLUENCY_THRESHOLD) -> Coherence:
    """The coherence columns from completions, their verdicts (True = behaviour present),
    their unsteered CE (:func:`completion_ce`) and the row's ``use`` (``remove``: success is
    the behaviour absent; ``induce`` or anything else: present)."""
    n = len(completions)
    if n == 0:
        raise SteerscopeError("no completions to measure", "pass a non-empty row")
    coherent = [int(counts[i]) > 0 and float(sums[i]) / int(counts[i]) <= fluency_threshold
                and not is_repetitive(completions[i]) for i in range(n)]
    kept = [bool(present[i]) for i in range(n) if coherent[i]]
    want = use != "remove"
    success = sum(1 for i in range(n) if coherent[i] and bool(present[i]) == want)
    return Coherence(per_token(sums, counts), len(kept), len(kept) / n,
                     sum(kept) / len(kept) if kept else None, success / n,
                     float(fluency_threshold))


def steering_parts(steerer, alpha: float) -> list:
    """The runtime interventions of ``steerer`` (``intervention(alpha)``: one, or a list for
    a multi-layer vector) at ``alpha``; [] for None."""
    if steerer is None:
        return []
    op = steerer.intervention(alpha)
    return list(op) if isinstance(op, (list, tuple)) else [op]


class ReferenceCE:
    """``ce_reference`` against fixed reference completions: the unsteered CE is computed
    once; :meth:`delta` gives a steering's increase over it."""

    def __init__(self, model, tokenizer, prompts: Sequence[str], completions: Sequence[str], *,
                 arch=None, batch_size: int = 16) -> None:
        if not prompts:
            raise SteerscopeError("no reference completions for ce_reference",
                                  "pass at least one absent-side val prompt")
        self.model, self.tokenizer, self.arch = model, tokenizer, arch
        self.prompts, self.completions = list(prompts), list(completions)
        self.batch_size = batch_size
        self.base = per_token(*completion_ce(model, tokenizer, self.prompts, self.completions,
                                             arch=arch, batch_size=batch_size))
        self._cache: dict[tuple, float | None] = {}

    def delta(self, steerer, alpha: float, key=None) -> float | None:
        """Steered minus unsteered per-token CE on the reference completions (None without
        reference tokens); ``key`` (e.g. the vector's sha256) caches the value per α."""
        if self.base is None:
            return None
        cache_key = None if key is None else (key, float(alpha))
        if cache_key is not None and cache_key in self._cache:
            return self._cache[cache_key]
        parts = steering_parts(steerer, alpha)
        value = 0.0 if not parts else per_token(*completion_ce(
            self.model, self.tokenizer, self.prompts, self.completions, interventions=parts,
            arch=self.arch, batch_size=self.batch_size)) - self.base
        if cache_key is not None:
            self._cache[cache_key] = value
        return value


def row_coherence(model, tokenizer, formatted: Sequence[str], completions: Sequence[str],
                  present: Sequence[bool], *, use: str, steerer=None, alpha: float = 0.0,
                  reference: ReferenceCE | None = None, key=None,
                  fluency_threshold: float = DEFAULT_FLUENCY_THRESHOLD, arch=None,
                  batch_size: int = 16) -> dict:
    """The coherence columns of one table row as a dict: :func:`coherence_of` of the row's
    completions (their CE under the unsteered model) and ``ce_reference`` of its steering
    (``steerer`` at ``alpha``; None without ``reference``)."""
    sums, counts = completion_ce(model, tokenizer, formatted, completions, arch=arch,
                                 batch_size=batch_size)
    coh = coherence_of(completions, present, sums, counts, use=use,
                       fluency_threshold=fluency_threshold)
    ce_ref = None if reference is None else reference.delta(steerer, alpha, key=key)
    return {**coh.to_dict(), "ce_reference": ce_ref}


# the coherence keys a table row carries (docs/results.md)
COHERENCE_KEYS = ("fluency", "ce_reference", "n_coherent", "coherent_share",
                  "coherent_behaviour_rate", "coherent_success", "fluency_threshold")


__all__ = ["COHERENCE_KEYS", "Coherence", "DEFAULT_FLUENCY_THRESHOLD", "ReferenceCE", "check_fluency_threshold",
           "coherence_of", "completion_ce", "per_token", "row_coherence", "steering_parts"]
