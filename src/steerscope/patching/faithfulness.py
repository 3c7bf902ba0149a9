"""Per-position faithfulness of circuits on steered-response data, and the paper's size grid.

The released code (``faithfulness.py`` of github.com/step-cheng/steer-interp:
``metric_kl1_fn``, ``metric_kl2_fn``, ``metric_match_fn``, ``metric_logprob_fn``, ``run`` and
the ``__main__`` statistics) evaluates a circuit ``C`` on the prompts whose behaviour
flipped, teacher-forcing the *steered* response, separately for the present and the absent
set. At every response position ``p`` (the logits at ``prompt_len − 1 … S − 2``) it
compares three runs on the same tokens: the steered model ``s``, the base model ``b`` and the
circuit run ``c`` (steered, every edge outside ``C`` carrying its unsteered value):

- ``kl_ratio`` = ``1 − KL(P_s ‖ P_c) / KL(P_s ‖ P_b)`` (``metric_kl1_fn``);
- ``dir_kl`` = ``(m_c − m_b) / (m_s − m_b + 1e-7)`` with ``m_x = KL(P_b ‖ P_x) − KL(P_s ‖ P_x)``,
  i.e. ``m_b = −KL(P_s ‖ P_b)``, ``m_s = KL(P_b ‖ P_s)`` (``metric_kl2_fn``);
- ``token_match`` = ``argmax P_c == argmax P_s`` (``metric_match_fn``);

each pooled over all positions of the set (a plain mean over positions, not per example) and
also split by whether the base and steered greedy tokens agree there (``differ`` /
``same``). Per sequence, ``logprob`` = ``(D_c − D_b) / (D_s − D_b)`` with
``D_x = Σ_p log P_x(ŷ^s_p) − Σ_p log P_x(ŷ^b_p)``, ``ŷ^s`` / ``ŷ^b`` the steered / base greedy
tokens at each position (``metric_logprob_fn``), averaged over sequences. Full circuit: all
four are 1; empty circuit: ``kl_ratio``, ``dir_kl`` and ``logprob`` are 0 and ``token_match``
is the base/steer agreement rate ``base_match``.

As a circuit's faithfulness (``circuits.metric``, :func:`position_faithfulness`): one of
these per steered set, pooled as above, and the lower of the two sets' values (a circuit is
faithful when it is on both sets; the released code reports the sets separately, and the
paper's curves, ``notebooks/playground.ipynb``, plot ``logprob`` per set).

Deviation: a position (or sequence) whose ratio is not finite (``KL(P_s ‖ P_b) = 0``) is left
out of the mean instead of making it NaN. The circuit runs are always in the forward roles
(steered = clean), as in the released code, whatever roles the scores were computed in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

from steerscope.errors import SteerscopeError
from steerscope.patching.circuit_masks import circuit_graph, fine_masks
from steerscope.patching.data import PatchingExample
from steerscope.patching.forward import GraphModel
from steerscope.patching.graph import Graph
from steerscope.patching_conventions import FAITHFULNESS_METRICS, POSITION_METRICS

LOGIT_DIFF = FAITHFULNESS_METRICS[0]  # the logit-difference ratio (circuits.metric default)
POSITION_SETS = {"present": "present/steered", "absent": "absent/steered"}
SPLIT_METRICS = ("kl_ratio", "dir_kl", "token_match")
PAPER_GRID_STEP = 300 / 8790  # the paper's Gemma-2-2B figure: every 300 of 8,790 edges


def grid_sizes(n_edges: int, step: float, max_fraction: float = 1.0) -> list[int]:
    """Circuit sizes ``round(k · step · n_edges)`` for ``k = 1, 2, …`` up to ``max_fraction``
    of the edges (distinct, at least 1)."""
    if not 0 < step <= 1:
        raise SteerscopeError(f"grid step must be a fraction in (0, 1], got {step}")
    if not 0 < max_fraction <= 1:
        raise SteerscopeError(f"grid maximum must be a fraction in (0, 1], got {max_fraction}")
    n_steps = math.floor(max_fraction / step + 1e-9)
    return sorted({max(1, round(k * step * n_edges)) for k in range(1, n_steps + 1)})


def position_scores(steer: torch.Tensor, base: torch.Tensor,
                    circuit: torch.Tensor) -> dict[str, torch.Tensor]:
    """The released code's per-position scores of one sequence from the logits [N, V] of the
    steered, base and circuit runs at its response positions: ``kl_ratio``, ``dir_kl``,
    ``token_match`` [N] float64, ``base_match`` [N] bool, ``logprob`` a 0-dim float64."""
    ls, lb, lc = (torch.log_softmax(x.double(), dim=-1) for x in (steer, base, circuit))
    ps, pb = ls.exp(), lb.exp()

    def kl(p: torch.Tensor, logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
        return (p * (logp - logq)).sum(-1)  # [N]

    kl_s_b, kl_s_c = kl(ps, ls, lb), kl(ps, ls, lc)
    m_b = -kl_s_b
    m_s = kl(pb, lb, ls)
    m_c = kl(pb, lb, lc) - kl_s_c
    ys, yb, yc = ls.argmax(-1), lb.argmax(-1), lc.argmax(-1)

    def seq(logp: torch.Tensor) -> torch.Tensor:
        return (logp.gather(-1, ys[:, None]).sum() - logp.gather(-1, yb[:, None]).sum())

    d_s, d_b, d_c = seq(ls), seq(lb), seq(lc)
    return {"kl_ratio": 1 - kl_s_c / kl_s_b, "dir_kl": (m_c - m_b) / (m_s - m_b + 1e-7),
            "token_match": (yc == ys).double(), "base_match": yb == ys,
            "logprob": (d_c - d_b) / (d_s - d_b)}


def _finite_mean(x: torch.Tensor) -> float | None:
    x = x[torch.isfinite(x)]
    return float(x.mean()) if x.numel() else None


def summarize(records: Sequence[dict[str, torch.Tensor]]) -> dict:
    """Pool the :func:`position_scores` of a set's sequences: per split metric the mean over
    all positions (``overall``) and over those where base and steered greedy tokens differ /
    agree; ``logprob`` the mean over sequences; ``base_match`` the agreement rate."""
    if not records:
        return {"n_sequences": 0, "n_positions": 0}
    same = torch.cat([r["base_match"] for r in records])
    out: dict = {"n_sequences": len(records), "n_positions": int(same.numel()),
                 "base_match": float(same.double().mean())}
    for k in SPLIT_METRICS:
        v = torch.cat([r[k] for r in records])
        out[k] = {"overall": _finite_mean(v), "differ": _finite_mean(v[~same]),
                  "same": _finite_mean(v[same])}
    out["logprob"] = {"overall": _finite_mean(torch.stack([r["logprob"] for r in records]))}
    return out


def evaluate_position_metrics(gm: GraphModel, examples: Iterable[PatchingExample], vector,
                              circuits: Sequence[torch.Tensor], *, graph: Graph | None = None
                              ) -> list[dict[str, dict]]:
    """For each circuit ([E] bool on ``graph``, default ``gm.graph``) the per-set summary
    (:func:`summarize`) of the released code's position metrics, on the examples of the
    ``present/steered`` and ``absent/steered`` datasets: ``[{"present": …, "absent": …}]``.
    """
    g = circuit_graph(gm, graph)
    mats, _ = fine_masks(gm, g, circuits)
    adj = gm.graph.adjacency
    reverted = [adj & ~m for m in mats]  # [U, D] each
    s = vector.vector if hasattr(vector, "vector") else vector
    records: list[dict[str, list]] = [{k: [] for k in POSITION_SETS} for _ in circuits]
    by_dataset = {v: k for k, v in POSITION_SETS.items()}
    for ex in examples:
        which = by_dataset.get(ex.dataset)
        if which is None:
            continue
        prep = gm.prepare(ex.input_ids)
        pos = ex.response_positions  # [N]
        base = gm.run(prep, s, 0.0, positions=pos)
        steer = gm.run(prep, s, ex.alpha, positions=pos).logits[0]  # [N, V]
        for i, r in enumerate(reverted):
            run = gm.run(prep, s, ex.alpha, reverted=r, base=base.upstream, positions=pos)
            records[i][which].append(position_scores(steer, base.logits[0], run.logits[0]))
    return [{k: summarize(v) for k, v in rec.items()} for rec in records]


def headline(values: dict, metric: str) -> float | None:
    """The number a curve plots for ``metric`` from one set's summary: ``overall``."""
    entry = values.get(metric)
    return entry.get("overall") if isinstance(entry, dict) else None


def minimal_sizes(actual: Sequence[int], per_size: Sequence[dict], threshold: float
                  ) -> dict[str, dict[str, int | None]]:
    """The first curve size whose ``overall`` value reaches ``threshold``, per position
    metric and set: ``{metric: {"present": n | None, "absent": n | None}}``."""
    out: dict[str, dict[str, int | None]] = {}
    for metric in POSITION_METRICS:
        out[metric] = {}
        for name in POSITION_SETS:
            hit = None
            for n, entry in zip(actual, per_size):
                v = headline(entry.get(name, {}), metric)
                if v is not None and v >= threshold:
                    hit = int(n)
                    break
            out[metric][name] = hit
    return out


def check_faithfulness_metric(metric: str) -> str:
    """``metric`` itself, or a one-line error when it is not one of
    :data:`FAITHFULNESS_METRICS`."""
    if metric not in FAITHFULNESS_METRICS:
        raise SteerscopeError(f"unknown faithfulness metric '{metric}'",
                              f"use one of {', '.join(FAITHFULNESS_METRICS)}")
    return metric


def set_faithfulness(per_set: dict, metric: str) -> float:
    """A circuit's faithfulness under a position ``metric`` from its per-set summaries
    (:func:`evaluate_position_metrics`): the lower ``overall`` value of the steered sets
    that have positions (NaN when none has)."""
    values = [headline(summary, metric) for summary in per_set.values()
              if summary.get("n_positions", 0) > 0]
    values = [v for v in values if v is not None]
    return min(values) if values else float("nan")


def position_faithfulness(gm: GraphModel, examples: Iterable[PatchingExample], vector,
                          circuits: Sequence[torch.Tensor], metric: str, *,
                          graph: Graph | None = None) -> tuple[list[float], list[dict]]:
    """Each circuit's faithfulness under the position ``metric`` (:func:`set_faithfulness`)
    and its per-set summaries (:func:`evaluate_position_metrics`)."""
    if metric not in POSITION_METRICS:
        raise SteerscopeError(f"'{metric}' is not a position metric",
                              f"use one of {', '.join(POSITION_METRICS)}")
    per = evaluate_position_metrics(gm, examples, vector, circuits, graph=graph)
    return [set_faithfulness(p, metric) for p in per], per
