"""The DIM candidate selection rule (spec §3.1): filters and the objective, on a table of rows.

A row is a dict with ``layer``, ``bypass``, ``induce`` and ``kl`` (``None``/NaN when
unscored). A candidate is discarded when its layer is in the last part of the model, a score
is NaN, ``kl ≥ kl_threshold`` or ``induce ≤ induce_threshold``; among the survivors the row
maximising ``σ(induce) − σ(bypass)`` wins, ties going to the earliest row.

A candidate exactly at a threshold (``at_threshold``): ``"discard"`` (default; steerscope's
rule above) or ``"keep"`` (the authors' released ``filter_fn``: discard only ``kl >
kl_threshold`` and ``induce < induce_threshold``, strict comparisons).

The layer rule has two conventions (``layer_cutoff``):

- ``"int"`` (default; Arditi et al.'s and the authors' released code): discard
  ``layer ≥ int(max_layer_fraction · L)``;
- ``"real"`` (steerscope before issue 12): discard ``layer ≥ max_layer_fraction · L``
  compared as real numbers.

They differ only when ``max_layer_fraction · L`` is not an integer: with 0.8, Gemma-2-2B
(L = 26) loses layer 20 and Llama-3.2-3B (L = 28) layer 22 under ``"int"``; for L a multiple
of 5 (SmolLM2-135M, L = 30) they are the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from steerscope.errors import SteerscopeError

SELECTION_RULE = "argmax sigmoid(induce) - sigmoid(bypass)"
LAYER_CUTOFFS = ("int", "real")
DEFAULT_LAYER_CUTOFF = "int"  # the released code's rule
DEFAULT_MAX_LAYER_FRACTION = 0.8
DEFAULT_KL_THRESHOLD = 0.1
AT_THRESHOLD = ("discard", "keep")  # a candidate exactly at a threshold: discarded | kept
DEFAULT_AT_THRESHOLD = "discard"
DEFAULT_INDUCE_THRESHOLD = 0.0
# The largest KL threshold relax_kl may reach (0.1 doubled 6 times). 6.4, not 3.2: on the
# Gemma-3-270M demo model (massive-activation residual features) ablating even a *random*
# direction at every layer gives KL 2.1 and the best DIM candidate 4.35 (docs/demo_model.md).
MAX_RELAXED_KL = 6.4

# discard reasons, in the order they are checked
REASON_LAYER = "layer"  # layer past the cutoff (not scored)
REASON_NAN = "nan"  # a score is NaN (e.g. a zero mean difference)
REASON_KL = "kl"  # kl >= kl_threshold (at_threshold "keep": kl > kl_threshold)
REASON_INDUCE = "induce"  # induce <= induce_threshold (at_threshold "keep": induce < ...)


def check_at_threshold(at_threshold: str) -> str:
    """``at_threshold`` itself, or a one-line error when it is not one of :data:`AT_THRESHOLD`."""
    if at_threshold not in AT_THRESHOLD:
        raise SteerscopeError(f"unknown at_threshold '{at_threshold}'",
                              f"use one of {', '.join(AT_THRESHOLD)}")
    return at_threshold


def kl_fails(kl: float, kl_threshold: float, at_threshold: str = DEFAULT_AT_THRESHOLD) -> bool:
    """Whether a (non-missing) KL fails the KL filter: ``kl ≥ t`` (``"discard"``) or
    ``kl > t`` (``"keep"``, the released code)."""
    return kl > kl_threshold if at_threshold == "keep" else kl >= kl_threshold


def induce_fails(induce: float, induce_threshold: float,
                 at_threshold: str = DEFAULT_AT_THRESHOLD) -> bool:
    """Whether a (non-missing) induce score fails the induce filter: ``induce ≤ t``
    (``"discard"``) or ``induce < t`` (``"keep"``, the released code)."""
    return induce < induce_threshold if at_threshold == "keep" else induce <= induce_threshold


def _sigmoid(x: float) -> float:
    if math.isnan(x):
        return math.nan
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def selection_score(bypass: float, induce: float) -> float:
    """The selection rule's objective ``σ(induce) − σ(bypass)`` (NaN if either is NaN)."""
    return _sigmoid(float(induce)) - _sigmoid(float(bypass))


def is_missing(x) -> bool:
    """True for an unscored (None) or NaN score."""
    return x is None or (isinstance(x, float) and math.isnan(x))


def check_layer_cutoff(layer_cutoff: str) -> str:
    """``layer_cutoff`` itself, or a one-line error when it is not one of :data:`LAYER_CUTOFFS`."""
    if layer_cutoff not in LAYER_CUTOFFS:
        raise SteerscopeError(f"unknown layer cutoff '{layer_cutoff}'",
                              f"use one of {', '.join(LAYER_CUTOFFS)}")
    return layer_cutoff


def layer_cutoff_text(max_layer_fraction: float, layer_cutoff: str) -> str:
    """The layer rule as text, e.g. ``int(0.8*L)`` or ``0.8*L``."""
    return f"int({max_layer_fraction}*L)" if layer_cutoff == "int" else f"{max_layer_fraction}*L"


def layer_excluded(layer: int, n_layers: int, max_layer_fraction: float,
                   layer_cutoff: str = DEFAULT_LAYER_CUTOFF) -> bool:
    """Whether a candidate at ``layer`` is discarded by the layer rule (see module doc)."""
    if check_layer_cutoff(layer_cutoff) == "int":
        return layer >= int(n_layers * max_layer_fraction)
    return layer >= max_layer_fraction * n_layers - 1e-9


def discard_reason(
    row: dict[str, Any],
    *,
    n_layers: int,
    max_layer_fraction: float = DEFAULT_MAX_LAYER_FRACTION,
    kl_threshold: float = DEFAULT_KL_THRESHOLD,
    induce_threshold: float = DEFAULT_INDUCE_THRESHOLD,
    layer_cutoff: str = DEFAULT_LAYER_CUTOFF,
    at_threshold: str = DEFAULT_AT_THRESHOLD,
) -> str | None:
    """Why a candidate row is discarded (``None`` if it survives).

    Reasons (comma-joined when several apply; the layer rule alone for unscored rows):
    ``"layer"`` (the layer rule, :func:`layer_excluded`), ``"nan"`` (bypass, induce or kl is
    NaN or missing), ``"kl"`` (:func:`kl_fails`), ``"induce"`` (:func:`induce_fails`).
    """
    if layer_excluded(int(row["layer"]), n_layers, max_layer_fraction, layer_cutoff):
        return REASON_LAYER
    bypass, induce, kl = row.get("bypass"), row.get("induce"), row.get("kl")
    reasons = []
    if any(is_missing(v) for v in (bypass, induce, kl)):
        reasons.append(REASON_NAN)
    if not is_missing(kl) and kl_fails(kl, kl_threshold, at_threshold):
        reasons.append(REASON_KL)
    if not is_missing(induce) and induce_fails(induce, induce_threshold, at_threshold):
        reasons.append(REASON_INDUCE)
    return ",".join(reasons) or None


def relaxed_kl_threshold(rows, kl_threshold: float,
                         at_threshold: str = DEFAULT_AT_THRESHOLD) -> float | None:
    """The smallest ``kl_threshold * 2**k`` (k ≥ 1, at most ``MAX_RELAXED_KL``) that some row
    discarded only for its KL passes, or None."""
    kls = [r["kl"] for r in rows if r["discarded"] == REASON_KL and not is_missing(r["kl"])]
    t = kl_threshold
    while kls and t * 2 <= MAX_RELAXED_KL + 1e-12:
        t *= 2
        if any(not kl_fails(k, t, at_threshold) for k in kls):
            return t
    return None


def no_survivor_error(rows, n_layers, max_layer_fraction, kl_threshold, induce_threshold,
                      layer_cutoff: str = DEFAULT_LAYER_CUTOFF,
                      at_threshold: str = DEFAULT_AT_THRESHOLD,
                      fix: str | None = None) -> SteerscopeError:
    """The one-line error for a table where no row survives, with counts per filter
    (``fix``: the advice after the counts; None: refusal's)."""
    counts = {REASON_LAYER: 0, REASON_NAN: 0, REASON_KL: 0, REASON_INDUCE: 0}
    for row in rows:
        reason = discard_reason(row, n_layers=n_layers, max_layer_fraction=max_layer_fraction,
                                kl_threshold=kl_threshold, induce_threshold=induce_threshold,
                                layer_cutoff=layer_cutoff, at_threshold=at_threshold)
        for r in (reason or "").split(","):
            if r in counts:
                counts[r] += 1
        # a value left unscored (None, score_all=False) is not a NaN score
        if reason and REASON_NAN in reason and not any(
                isinstance(row.get(k), float) and math.isnan(row[k])
                for k in ("bypass", "induce", "kl")):
            counts[REASON_NAN] -= 1
    ge, le = (">", "<") if at_threshold == "keep" else (">=", "<=")
    return SteerscopeError(
        f"no DIM candidate of {len(rows)} survived the filters (discarded: "
        f"{counts[REASON_LAYER]} with layer >= {layer_cutoff_text(max_layer_fraction, layer_cutoff)}"
        f", {counts[REASON_KL]} with KL {ge} {kl_threshold}, {counts[REASON_INDUCE]} with induce "
        f"{le} {induce_threshold}, {counts[REASON_NAN]} with a NaN score)",
        fix or "relax them with kl_threshold=, induce_threshold=, max_layer_fraction= or "
        "relax_kl=True (CLI: --relax-kl), or use more prompts and a model that shows the "
        "behaviour on its present prompts")


def select_candidate(
    rows: Sequence[dict[str, Any]],
    *,
    n_layers: int,
    max_layer_fraction: float = DEFAULT_MAX_LAYER_FRACTION,
    kl_threshold: float = DEFAULT_KL_THRESHOLD,
    induce_threshold: float = DEFAULT_INDUCE_THRESHOLD,
    layer_cutoff: str = DEFAULT_LAYER_CUTOFF,
    at_threshold: str = DEFAULT_AT_THRESHOLD,
    fix: str | None = None,
) -> int:
    """Index of the chosen candidate in a table of rows (pure; the rows are not modified).

    Each row has ``layer``, ``bypass``, ``induce`` and ``kl`` (``None``/NaN when unscored).
    Rows failing :func:`discard_reason` are dropped; among the rest the row maximising
    ``σ(induce) − σ(bypass)`` wins, ties going to the earliest row. Raises a one-line
    :class:`SteerscopeError` naming the filters when no row survives (``fix``: its advice,
    see :func:`no_survivor_error`).
    """
    rows = list(rows)
    if not rows:
        raise SteerscopeError("the DIM candidate table is empty", "score at least one candidate")
    if not isinstance(n_layers, int) or n_layers < 1:
        raise SteerscopeError(f"n_layers must be a positive int, got {n_layers!r}")
    check_layer_cutoff(layer_cutoff)
    check_at_threshold(at_threshold)
    best, best_score = None, -math.inf
    for i, row in enumerate(rows):
        if discard_reason(row, n_layers=n_layers, max_layer_fraction=max_layer_fraction,
                          kl_threshold=kl_threshold, induce_threshold=induce_threshold,
                          layer_cutoff=layer_cutoff, at_threshold=at_threshold):
            continue
        score = selection_score(row["bypass"], row["induce"])
        if best is None or score > best_score:
            best, best_score = i, score
    if best is None:
        raise no_survivor_error(rows, n_layers, max_layer_fraction, kl_threshold,
                                induce_threshold, layer_cutoff, at_threshold, fix)
    return best


__all__ = [
    "AT_THRESHOLD",
    "DEFAULT_AT_THRESHOLD",
    "DEFAULT_LAYER_CUTOFF",
    "LAYER_CUTOFFS",
    "MAX_RELAXED_KL",
    "SELECTION_RULE",
    "check_at_threshold",
    "check_layer_cutoff",
    "discard_reason",
    "induce_fails",
    "is_missing",
    "kl_fails",
    "layer_excluded",
    "no_survivor_error",
    "relaxed_kl_threshold",
    "select_candidate",
    "selection_score",
]
