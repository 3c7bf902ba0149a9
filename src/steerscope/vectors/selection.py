"""Model selection for trained steering vectors: which epoch of a run, and which run of a grid.

Two rankings (``TrainConfig.ranking``), applied alike to the epochs of one run and to the
best epochs of a grid's runs:

* ``"released"`` (the authors' released code, ``eval_all_epochs``): NTP picks the smallest
  ``rank(loss) + rank(−match)``, PO the smallest ``rank(loss)``. Ranks are 0-based positions
  in a stable sort (ties keep their order); ties of the sum go to the earlier candidate.
  ``match`` is the per-example token-match rate averaged over examples.
* ``"loss_then_match"`` (steerscope's earlier choice): the lexicographically smallest
  ``(loss rounded to 4 decimals, −match, index)``, ``match`` pooled over tokens.

A missing or NaN loss ranks last; a missing or NaN match ranks last among equal losses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

SELECTION_DECIMALS = 4


def _clean(values: Sequence[float | None], bad: float) -> list[float]:
    return [bad if v is None or math.isnan(v) else float(v) for v in values]


def ranks(values: Sequence[float]) -> list[int]:
    """0-based rank of every value in ascending order; equal values keep their input order."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0] * len(values)
    for r, i in enumerate(order):
        out[i] = r
    return out


def best_index(losses: Sequence[float | None], matches: Sequence[float | None], *,
               objective: str, ranking: str) -> int:
    """Index of the best candidate given validation ``losses`` and token-match rates
    ``matches`` (one per candidate), by ``ranking`` (see the module docstring)."""
    if not losses or len(losses) != len(matches):
        raise ValueError("best_index needs one loss and one match per candidate")
    loss = _clean(losses, math.inf)
    neg_match = [-m for m in _clean(matches, -math.inf)]
    n = len(loss)
    if ranking == "released":
        score = ranks(loss)
        if objective == "ntp":
            score = [a + b for a, b in zip(score, ranks(neg_match))]
        return min(range(n), key=lambda i: (score[i], i))
    if ranking == "loss_then_match":
        return min(range(n), key=lambda i: (_rounded(loss[i]), neg_match[i], i))
    raise ValueError(f"unknown ranking {ranking!r}")


def _rounded(x: float) -> float:
    return x if math.isinf(x) else round(x, SELECTION_DECIMALS)


def selection_key(result, index: int = 0) -> tuple[float, float, int]:
    """The ``loss_then_match`` key of a :class:`~steerscope.vectors.trained.TrainResult`
    (smaller is better): (val loss rounded to 4 decimals, −val token-match rate, index)."""
    loss = result.val_loss
    loss = math.inf if loss is None or math.isnan(loss) else round(loss, SELECTION_DECIMALS)
    match = result.val_match
    match = -math.inf if match is None or math.isnan(match) else match
    return (loss, -match, index)


__all__ = ["SELECTION_DECIMALS", "ranks", "best_index", "selection_key"]
