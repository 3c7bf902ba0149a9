"""Circuits from edge scores, faithfulness by real reverted-edge runs, and comparisons.

- :func:`build_circuit`: the top-``n`` edges by ``|score|``, pruned to edges on a path from the
  steering node to the logits, refilled with the next-best edges until at least ``n`` remain
  (adding one edge can connect several dangling ones, so a circuit may exceed ``n`` by a few).
- :func:`faithfulness`: ``(m(C) − m(∅)) / (m(M) − m(∅))`` where ``m(C)`` is a real forward pass
  in which every edge outside ``C`` carries its unsteered value, ``∅`` the unsteered model and
  ``M`` the steered model; metrics are aggregated over examples like the scores.
- curves over circuit sizes, the minimum faithful size, the complement, random circuits;
  overlap / Jaccard across vectors, interchangeability, edge-type shares.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from steerscope.errors import SteerscopeError
from steerscope.patching.circuit_masks import circuit_graph, fine_masks
from steerscope.patching.data import PatchingExample
from steerscope.patching.faithfulness import position_faithfulness
from steerscope.patching.forward import GraphModel
from steerscope.patching.graph import DOWN_KINDS, UP_KINDS, Graph
from steerscope.patching.scores import aggregate, iter_contexts, patched_metric
from steerscope.results_schema import upgrade_keys

FAITHFUL = 0.85


# ----------------------------------------------------------------------------------------
# circuits
# ----------------------------------------------------------------------------------------
def prune(graph: Graph, mask: torch.Tensor) -> torch.Tensor:
    """[E] bool: the edges of ``mask`` on a path from ``"steer"`` to ``"logits"``."""
    mask = graph.edge_mask(mask)
    m = graph.to_matrix(mask, False)  # [U, D]
    U, D = graph.n_up, graph.n_down
    consumers = graph.consumers()
    inputs_of: list[list[int]] = [[] for _ in range(U)]
    for d, us in enumerate(consumers):
        for u in us:
            inputs_of[u].append(d)
    # forward: reachable from the steering node (upstream nodes are in topological order)
    reach_up = torch.zeros(U, dtype=torch.bool)
    reach_up[0] = True
    reach_down: dict[int, bool] = {}

    def down_reached(d: int) -> bool:
        if d not in reach_down:
            reach_down[d] = bool((m[:, d] & reach_up).any())
        return reach_down[d]

    for u in range(1, U):
        reach_up[u] = any(down_reached(d) for d in inputs_of[u])
    # backward: reaches the logits
    co_down = torch.zeros(D, dtype=torch.bool)
    co_down[D - 1] = True
    co_up = torch.zeros(U, dtype=torch.bool)
    for u in range(U - 1, -1, -1):
        co_up[u] = bool((m[u] & co_down).any())
        for d in inputs_of[u]:
            if co_up[u]:
                co_down[d] = True
    keep = m & reach_up[:, None] & co_down[None, :]
    return graph.from_matrix(keep)


def build_circuit(graph: Graph, scores: torch.Tensor, n: int) -> torch.Tensor:
    """[E] bool: a circuit of (at least) ``n`` edges, see the module docstring."""
    E = graph.n_edges
    if scores.shape != (E,):
        raise SteerscopeError(f"edge scores have shape {tuple(scores.shape)}, expected ({E},)")
    if not isinstance(n, int) or n < 0:
        raise SteerscopeError(f"circuit size must be a non-negative int, got {n!r}")
    n = min(n, E)
    if n == 0:
        return torch.zeros(E, dtype=torch.bool)
    order = torch.argsort(-torch.nan_to_num(scores.abs(), nan=-1.0), stable=True)

    def top(k: int) -> torch.Tensor:
        mask = torch.zeros(E, dtype=torch.bool)
        mask[order[:k]] = True
        return prune(graph, mask)

    best = top(E)
    if int(best.sum()) <= n:
        return best
    lo, hi = n, E  # smallest k with |prune(top k)| >= n (monotone in k)
    while lo < hi:
        mid = (lo + hi) // 2
        if int(top(mid).sum()) >= n:
            hi = mid
        else:
            lo = mid + 1
    return top(lo)


RANDOM_KINDS = ("pruned", "unpruned")
RANDOM_EXTRA_DRAWS = 64  # extra random edges tried when no trim lands exactly on the size
RANDOM_EXHAUSTIVE_MAX = 200  # circuits up to this many edges get the exhaustive trim too


def random_circuit(graph: Graph, size: int, seed: int = 42, *,
                   kind: str = "pruned") -> torch.Tensor:
    """[E] bool: a random circuit of ``size`` edges (seeded).

    ``kind="pruned"`` (the paper's control, like a real circuit): edges are taken in a random
    order until the edges on a steer→logits path number at least ``size`` (the
    :func:`build_circuit` rule with random scores), then edges are dropped, last-drawn first,
    while the re-pruned circuit keeps at least ``size`` edges, until exactly ``size`` remain;
    when no drop lands on ``size`` (circuits of at most ``RANDOM_EXHAUSTIVE_MAX`` edges first
    retry with every drop tried at each step) one more random edge is drawn and the trim
    repeated (up to
    ``RANDOM_EXTRA_DRAWS`` times; then the smallest circuit found, which only happens for
    sizes of a few edges). Every edge lies on a steer→logits path inside the circuit. ``kind="unpruned"``: ``size`` edges
    drawn uniformly, dangling ones included (an easier control).
    """
    if kind not in RANDOM_KINDS:
        raise SteerscopeError(f"unknown random-circuit kind '{kind}'",
                              "use 'pruned' or 'unpruned'")
    E = graph.n_edges
    size = min(int(size), E)
    order = torch.randperm(E, generator=torch.Generator().manual_seed(seed))  # [E]
    mask = torch.zeros(E, dtype=torch.bool)
    if kind == "unpruned":
        mask[order[:size]] = True
        return mask
    if size <= 0:
        return mask
    rank = torch.empty(E, dtype=torch.long)
    rank[order] = torch.arange(E)  # draw position of each edge
    scores = (E - rank).double()  # [E]: earlier draws score higher
    first = build_circuit(graph, scores, size)
    k0 = int(rank[first].max()) + 1  # edges drawn so far
    best = None
    for k in range(k0, min(E, k0 + RANDOM_EXTRA_DRAWS) + 1):
        drawn = torch.zeros(E, dtype=torch.bool)
        drawn[order[:k]] = True
        pruned = prune(graph, drawn)
        circuit = _trim(graph, pruned, size, rank)
        if int(circuit.sum()) != size and int(pruned.sum()) <= RANDOM_EXHAUSTIVE_MAX:
            circuit = _trim_best_fit(graph, pruned, size, rank)
        if int(circuit.sum()) == size:
            return circuit
        if best is None or int(circuit.sum()) < int(best.sum()):
            best = circuit
    return best


def _trim_best_fit(graph: Graph, circuit: torch.Tensor, size: int,
                   rank: torch.Tensor) -> torch.Tensor:
    """Like :func:`_trim` but trying every drop at each step: one that lands exactly on
    ``size`` if any, else the one losing the fewest edges (last-drawn first among ties)."""
    while int(circuit.sum()) > size:
        excess = int(circuit.sum()) - size
        best, best_loss = None, None
        for e in sorted(circuit.nonzero().flatten().tolist(), key=lambda i: -int(rank[i])):
            cand = circuit.clone()
            cand[e] = False
            cand = prune(graph, cand)
            loss = int(circuit.sum()) - int(cand.sum())
            if loss == excess:
                return cand
            if loss < excess and (best_loss is None or loss < best_loss):
                best, best_loss = cand, loss
        if best is None:
            return circuit
        circuit = best
    return circuit


def _trim(graph: Graph, circuit: torch.Tensor, size: int, rank: torch.Tensor) -> torch.Tensor:
    """Drop edges of a pruned ``circuit`` (last-drawn by ``rank`` first) while the re-pruned
    circuit keeps at least ``size`` edges; stops at ``size``."""
    for e in sorted(circuit.nonzero().flatten().tolist(), key=lambda i: -int(rank[i])):
        if int(circuit.sum()) == size:
            break
        if not circuit[e]:
            continue
        cand = circuit.clone()
        cand[e] = False
        cand = prune(graph, cand)
        if int(cand.sum()) >= size:
            circuit = cand
    return circuit


# ----------------------------------------------------------------------------------------
# faithfulness
# ----------------------------------------------------------------------------------------
@dataclass
class CircuitEval:
    """Aggregated metrics: ``m_circuits`` [K] for K circuits, ``m_full`` = m(M),
    ``m_empty`` = m(∅); ``faithfulness`` [K]."""

    m_circuits: torch.Tensor
    m_full: float
    m_empty: float
    sizes: list[int] = field(default_factory=list)

    @property
    def faithfulness(self) -> torch.Tensor:
        denom = self.m_full - self.m_empty
        if denom == 0:
            return torch.full_like(self.m_circuits, float("nan"))
        return (self.m_circuits - self.m_empty) / denom


def evaluate_circuits(gm: GraphModel, examples: Iterable[PatchingExample], vector,
                      circuits: Sequence[torch.Tensor], *, metric: str = "logit_diff",
                      tau: float = 0.0, reverse: bool = False, graph: Graph | None = None,
                      progress: bool = False,
                      faithfulness_metric: str = "logit_diff") -> CircuitEval:
    """Run every example once per circuit with the edges outside the circuit reverted.

    ``circuits``: [E] bool masks of ``graph`` (default ``gm.graph``; the coarse graph of the
    same model is accepted, a coarse edge standing for every fine edge it groups).
    ``m(M)`` and ``m(∅)`` come from the clean and corrupt graph forward of each example (the
    steered and unsteered runs; swapped with ``reverse``). ``faithfulness_metric``:
    ``"logit_diff"`` (this ratio of ``metric``) or a position metric of the released code
    (:func:`~steerscope.patching.faithfulness.position_faithfulness`: its value is the
    faithfulness, ``m_full = 1``, ``m_empty = 0``; ``metric``, ``tau`` and ``reverse`` do not
    enter).
    """
    g = circuit_graph(gm, graph)
    if faithfulness_metric != "logit_diff":
        values, _ = position_faithfulness(gm, examples, vector, circuits, faithfulness_metric,
                                          graph=g)
        return CircuitEval(torch.tensor(values, dtype=torch.float64), 1.0, 0.0,
                           fine_masks(gm, g, circuits)[1])
    mats, sizes = fine_masks(gm, g, circuits)
    adj = gm.graph.adjacency
    reverted = [adj & ~m for m in mats]
    vals, full, empty, weights, names = [], [], [], [], []
    for ctx in iter_contexts(gm, examples, vector, metric=metric, tau=tau, reverse=reverse,
                             progress=progress, desc="faithfulness"):
        vals.append(torch.tensor([patched_metric(gm, ctx, r) for r in reverted],
                                 dtype=torch.float64))
        full.append(ctx.m_clean)
        empty.append(ctx.m_corrupt)
        weights.append(ctx.weight)
        names.append(ctx.dataset)
    m_c, _ = aggregate(vals, weights, names)
    m_full, _ = aggregate(full, weights, names)
    m_empty, _ = aggregate(empty, weights, names)
    return CircuitEval(m_c.double(), float(m_full), float(m_empty), sizes)


def faithfulness(gm: GraphModel, examples, vector, circuit: torch.Tensor, **kw) -> float:
    """Faithfulness of one circuit ([E] bool)."""
    return float(evaluate_circuits(gm, examples, vector, [circuit], **kw).faithfulness[0])


def default_sizes(n_edges: int) -> list[int]:
    """Circuit sizes for a curve: 0.5% … 100% of the edges."""
    fracs = (0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0)
    return sorted({max(1, round(f * n_edges)) for f in fracs})


@dataclass
class FaithfulnessCurve:
    """Faithfulness by requested size (``sizes``) and actual circuit size (``actual``);
    ``positions``: per size, the position metrics of
    :func:`~steerscope.patching.faithfulness.evaluate_position_metrics` (None: not computed)."""

    sizes: list[int]
    actual: list[int]
    faithfulness: list[float]
    m_full: float
    m_empty: float
    positions: list[dict] | None = None

    def minimal_size(self, threshold: float = FAITHFUL) -> int | None:
        """The smallest evaluated size whose faithfulness reaches ``threshold``."""
        for n, f in zip(self.actual, self.faithfulness):
            if f == f and f >= threshold:
                return n
        return None

    def to_json(self) -> dict:
        out = {"sizes": self.sizes, "actual": self.actual, "faithfulness": self.faithfulness,
               "m_full": self.m_full, "m_empty": self.m_empty}
        if self.positions is not None:
            out["positions"] = self.positions
        return out

    @classmethod
    def from_json(cls, d: dict) -> FaithfulnessCurve:
        return cls(list(d["sizes"]), list(d["actual"]), [float("nan") if f is None else f
                                                         for f in d["faithfulness"]],
                   d["m_full"], d["m_empty"],
                   None if d.get("positions") is None else
                   [upgrade_keys(p) for p in d["positions"]])


def faithfulness_curve(gm: GraphModel, examples, vector, scores: torch.Tensor,
                       sizes: Sequence[int] | None = None, *, graph: Graph | None = None,
                       **kw) -> FaithfulnessCurve:
    """Faithfulness of the circuits built from ``scores`` (edges of ``graph``, default
    ``gm.graph``) at each size."""
    g = circuit_graph(gm, graph)
    sizes = list(sizes) if sizes is not None else default_sizes(g.n_edges)
    circuits = [build_circuit(g, scores, int(n)) for n in sizes]
    ev = evaluate_circuits(gm, examples, vector, circuits, graph=g, **kw)
    return FaithfulnessCurve(sizes, ev.sizes, [float(f) for f in ev.faithfulness],
                             ev.m_full, ev.m_empty)


def minimal_faithful_circuit(gm: GraphModel, examples, vector, scores: torch.Tensor, *,
                             threshold: float = FAITHFUL, curve: FaithfulnessCurve | None = None,
                             refine_steps: int = 4, graph: Graph | None = None,
                             **kw) -> tuple[torch.Tensor, float]:
    """The smallest circuit found reaching ``threshold``: the first curve size that does,
    refined by ``refine_steps`` bisection steps toward the previous size (assumes
    faithfulness grows with size there). Returns ``(mask [E], faithfulness)``, edges of
    ``graph`` (default ``gm.graph``)."""
    g = circuit_graph(gm, graph)
    kw["graph"] = g
    examples = list(examples)
    if curve is None:
        curve = faithfulness_curve(gm, examples, vector, scores, **kw)
    hit = None
    for i, f in enumerate(curve.faithfulness):
        if f == f and f >= threshold:
            hit = i
            break
    if hit is None:
        return torch.ones(g.n_edges, dtype=torch.bool), float(curve.faithfulness[-1])
    hi, f_hi = curve.sizes[hit], curve.faithfulness[hit]
    lo = curve.sizes[hit - 1] if hit > 0 else 0
    for _ in range(refine_steps):
        if hi - lo <= 1:
            break
        mid = (lo + hi) // 2
        f = faithfulness(gm, examples, vector, build_circuit(g, scores, mid), **kw)
        if f == f and f >= threshold:
            hi, f_hi = mid, f
        else:
            lo = mid
    return build_circuit(g, scores, hi), float(f_hi)


def complement(graph: Graph, circuit: torch.Tensor) -> torch.Tensor:
    """[E] bool: every edge not in ``circuit``."""
    return ~graph.edge_mask(circuit)


# ----------------------------------------------------------------------------------------
# comparisons across vectors
# ----------------------------------------------------------------------------------------
def overlap(c1: torch.Tensor, c2: torch.Tensor) -> float:
    """``|C1 ∩ C2| / min(|C1|, |C2|)``."""
    n = min(int(c1.sum()), int(c2.sum()))
    return float((c1 & c2).sum()) / n if n else float("nan")


def jaccard(c1: torch.Tensor, c2: torch.Tensor) -> float:
    """``|C1 ∩ C2| / |C1 ∪ C2|``."""
    u = int((c1 | c2).sum())
    return float((c1 & c2).sum()) / u if u else float("nan")


def overlap_matrix(circuits: Mapping[str, torch.Tensor], kind: str = "overlap"
                   ) -> dict[str, dict[str, float]]:
    """Pairwise overlap (or ``kind="jaccard"``) between named circuits."""
    fn = {"overlap": overlap, "jaccard": jaccard}.get(kind)
    if fn is None:
        raise SteerscopeError(f"unknown overlap kind '{kind}'", "use 'overlap' or 'jaccard'")
    return {a: {b: fn(ca, cb) for b, cb in circuits.items()} for a, ca in circuits.items()}


def matched_size_overlap(graph: Graph, scores_a: torch.Tensor, scores_b: torch.Tensor,
                         sizes: Sequence[int]) -> list[dict]:
    """Overlap and Jaccard of the two vectors' circuits at each size."""
    rows = []
    for n in sizes:
        a, b = build_circuit(graph, scores_a, int(n)), build_circuit(graph, scores_b, int(n))
        rows.append({"size": int(n), "overlap": overlap(a, b), "jaccard": jaccard(a, b)})
    return rows


def interchange_matrix(gm: GraphModel, circuits: Mapping[str, torch.Tensor],
                       data: Mapping[str, tuple[Sequence[PatchingExample], object]],
                       **kw) -> dict[str, dict[str, float]]:
    """``M[A][B]``: faithfulness of vector A's circuit while steering with vector B on B's own
    examples. ``data[B] = (examples_B, vector_B)``."""
    out: dict[str, dict[str, float]] = {a: {} for a in circuits}
    names = list(circuits)
    for b, (examples, vector) in data.items():
        ev = evaluate_circuits(gm, examples, vector, [circuits[a] for a in names], **kw)
        for a, f in zip(names, ev.faithfulness.tolist()):
            out[a][b] = f
    return out


def edge_type_shares(graph: Graph, edges: torch.Tensor) -> dict[str, dict[str, float]]:
    """Share of incoming types (``q``/``k``/``v``/``mlp``/``logits``) and outgoing types
    (``steer``/``attn``/``mlp``) among the edges of an [E] bool mask."""
    mask = graph.edge_mask(edges)
    n = int(mask.sum())
    ei = graph.edge_index[mask]
    inc = torch.bincount(graph.down_kind[ei[:, 1]], minlength=len(DOWN_KINDS)).tolist()
    out = torch.bincount(graph.up_kind[ei[:, 0]], minlength=len(UP_KINDS)).tolist()
    share = (lambda c: c / n) if n else (lambda c: float("nan"))
    return {"incoming": {k: share(c) for k, c in zip(DOWN_KINDS, inc)},
            "outgoing": {k: share(c) for k, c in zip(UP_KINDS, out)}, "n_edges": n}


def top_k_edges(scores: torch.Tensor, k: int) -> torch.Tensor:
    """[E] bool: the ``k`` edges with the largest ``|score|`` (no pruning)."""
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[torch.argsort(-scores.abs(), stable=True)[:k]] = True
    return mask
