"""Per-example patching contexts, EAP-IG and exact patching scores, and their aggregation.

Conventions (clean = steered run, corrupt = unsteered run, same tokens; ``reverse=True``
swaps the roles: clean = unsteered, corrupt = steered, see :class:`ExampleContext`):

- the score of an edge ``u → d`` or a node ``u`` is the effect of restoring it to its clean
  value, ``m(clean) − m(clean with u→d / u patched to corrupt)`` for exact patching; EAP-IG
  estimates the same quantity:
  ``score(u→d) = Σ_positions (u_clean − u_corrupt) · (1/T) Σ_i ∂m/∂res_d |_{H + ((i+0.5)/T)·α·S}``
  where ``res_d`` is ``d``'s pre-norm residual (the norm's Jacobian is included, so the
  scores of a node's edges sum to its node score and the steering node's score converges to
  ``m(M) − m(∅)``). The node score takes the gradient at ``u``'s own output.
- examples are combined by a position-weighted average (weight = number of unmasked positions)
  within each dataset, then by the plain mean over datasets.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from steerscope.errors import DataError, SteerscopeError
from steerscope.patching.data import PatchingExample
from steerscope.patching.forward import GraphModel, Prepared, frozen_parameters
from steerscope.patching.metrics import make_metric


@dataclass
class ExampleContext:
    """One example ready for patching: its prepared sequence, metric and the upstream outputs
    of the unsteered (``base_up``) and steered (``steered_up``) runs, [U, 1, S, d] each.

    ``reverse=False`` (the paper's main setting): clean = steered (coefficient ``alpha``),
    corrupt = unsteered; a patched run is the steered run with some edges carrying their
    unsteered value. ``reverse=True``: clean = unsteered, corrupt = steered; a patched run is
    the unsteered run with some edges carrying their steered value. ``m_clean`` /
    ``m_corrupt`` are the metric of the clean / corrupt run (the metric is built with the
    clean run's greedy tokens as ``y``)."""

    example: PatchingExample
    vector: torch.Tensor
    alpha: float
    prep: Prepared
    metric: object
    base_up: torch.Tensor
    steered_up: torch.Tensor
    m_clean: float
    m_corrupt: float
    reverse: bool = False

    @property
    def weight(self) -> int:
        return self.metric.weight

    @property
    def clean_alpha(self) -> float:
        """Steering coefficient of the clean run."""
        return 0.0 if self.reverse else self.alpha

    @property
    def corrupt_alpha(self) -> float:
        """Steering coefficient of the corrupt run."""
        return self.alpha if self.reverse else 0.0

    @property
    def clean_up(self) -> torch.Tensor:
        """[U, 1, S, d] upstream outputs of the clean run."""
        return self.base_up if self.reverse else self.steered_up

    @property
    def corrupt_up(self) -> torch.Tensor:
        """[U, 1, S, d] upstream outputs of the corrupt run (what a reverted edge carries)."""
        return self.steered_up if self.reverse else self.base_up

    @property
    def dataset(self) -> str:
        return self.example.dataset


def _vector_tensor(vector) -> torch.Tensor:
    return vector.vector if hasattr(vector, "vector") else vector


def prepare_example(gm: GraphModel, example: PatchingExample, vector, *,
                    metric: str = "logit_diff", tau: float = 0.0,
                    reverse: bool = False) -> ExampleContext:
    """Run the base and steered graph forward over one example and build its metric
    (``reverse``: clean = unsteered, corrupt = steered; see :class:`ExampleContext`)."""
    s = _vector_tensor(vector)
    prep = gm.prepare(example.input_ids)
    positions = example.response_positions
    base = gm.run(prep, s, 0.0, positions=positions)
    steered = gm.run(prep, s, example.alpha, positions=positions)
    # masks (y = y*, KL(P_steer ‖ P_base) < τ) do not depend on the roles
    m = make_metric(metric, positions, steered.logits, base.logits, tau=tau)
    clean, corrupt = (steered, base)
    if reverse:
        m, clean, corrupt = m.swapped(), base, steered
    if m.weight:
        keep = torch.isin(positions.to(m.positions.device), m.positions)
        m_clean = float(m(clean.logits[:, keep]))
        m_corrupt = float(m(corrupt.logits[:, keep]))
    else:
        m_clean = m_corrupt = 0.0
    return ExampleContext(example, s, float(example.alpha), prep, m, base.upstream,
                          steered.upstream, m_clean, m_corrupt, bool(reverse))


def iter_contexts(gm: GraphModel, examples: Iterable[PatchingExample], vector, *,
                  metric: str = "logit_diff", tau: float = 0.0, reverse: bool = False,
                  progress: bool = False, desc: str = "patching"):
    """Yield the :class:`ExampleContext` of each example with at least one unmasked position
    (one at a time: contexts are large)."""
    examples = list(examples)
    for ex in tqdm(examples, desc=desc, disable=not progress):
        ctx = prepare_example(gm, ex, vector, metric=metric, tau=tau, reverse=reverse)
        if ctx.weight:
            yield ctx


# ----------------------------------------------------------------------------------------
# aggregation
# ----------------------------------------------------------------------------------------
def aggregate(values: Sequence, weights: Sequence[int], datasets: Sequence[str]):
    """Position-weighted mean within each dataset, then the mean over datasets.

    ``values``: floats or equally shaped tensors. Returns ``(overall, {dataset: mean})``.
    """
    if not values:
        raise DataError("no patching example has an unmasked position",
                        "use more examples, longer responses or a lower KL threshold")
    per: dict[str, list] = {}
    for v, w, name in zip(values, weights, datasets):
        acc = per.setdefault(name, [0.0, 0])
        acc[0] = acc[0] + w * (v.double() if isinstance(v, torch.Tensor) else float(v))
        acc[1] += w
    means = {k: acc[0] / acc[1] for k, acc in per.items()}
    overall = sum(means.values()) / len(means)
    if isinstance(overall, torch.Tensor):
        overall = overall.float()
        means = {k: v.float() for k, v in means.items()}
    return overall, means


@dataclass
class Scores:
    """Aggregated patching scores of one method.

    ``edges`` [E] (graph edge order) and ``nodes`` [U] float32, or ``None`` when the method
    did not score them; ``steer_grad`` / ``steer_ie`` [d] (EAP-IG only, see
    :func:`steer_dimension_scores`); ``per_dataset``: the same per dataset; ``weights``:
    unmasked positions per dataset.
    """

    method: str
    edges: torch.Tensor | None = None
    nodes: torch.Tensor | None = None
    steer_grad: torch.Tensor | None = None
    steer_ie: torch.Tensor | None = None
    per_dataset: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    weights: dict[str, int] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


def coarsen(scores: Scores, graph) -> Scores:
    """The scores of the fine ``graph`` on its coarse graph (:meth:`Graph.coarsened`): the
    score of a coarse edge ``u → a{L}.q`` (``.k``, ``.v``) is the sum of the scores of the fine
    edges it groups (exact for EAP-IG: the gradient w.r.t. a shared input is the sum of the
    gradients w.r.t. its copies); node and steering-dimension scores are unchanged."""
    if graph.coarse:
        raise SteerscopeError("these scores are already on the coarse graph")
    coarse = graph.coarsened()

    def edges(e):
        return None if e is None else coarse.from_matrix(graph.coarsen_scores(graph.to_matrix(e)))

    per = {n: {k: (edges(v) if k == "edges" else v) for k, v in d.items()}
           for n, d in scores.per_dataset.items()}
    return Scores(scores.method, edges(scores.edges), scores.nodes, scores.steer_grad,
                  scores.steer_ie, per, dict(scores.weights), {**scores.meta, "coarse": True})


def _aggregate_records(method: str, records: list[dict], graph, **meta) -> Scores:
    if not records:
        raise DataError("no patching example has a position where the steered and base "
                        "greedy tokens differ, so the metric is empty",
                        "use prompts whose output steering changes, or a larger alpha")
    keys = [k for k in ("edges", "nodes", "steer_grad", "steer_ie") if k in records[0]]
    weights = [r["weight"] for r in records]
    names = [r["dataset"] for r in records]
    out = Scores(method, meta=meta)
    for k in keys:
        overall, per = aggregate([r[k] for r in records], weights, names)
        if k == "edges":
            overall = graph.from_matrix(overall)
            per = {n: graph.from_matrix(v) for n, v in per.items()}
        setattr(out, k, overall)
        for n, v in per.items():
            out.per_dataset.setdefault(n, {})[k] = v
    for w, n in zip(weights, names):
        out.weights[n] = out.weights.get(n, 0) + w
    return out


# ----------------------------------------------------------------------------------------
# EAP-IG
# ----------------------------------------------------------------------------------------
def eap_ig_example(gm: GraphModel, ctx: ExampleContext, steps: int = 10) -> dict:
    """EAP-IG scores of one example: ``edges`` [U, D] (0 off the graph), ``nodes`` [U],
    ``steer_grad`` [d] = (α_clean − α_corrupt) · Σ_positions (average IG gradient at the
    steering input), and ``steer_ie`` [d] = s ⊙ steer_grad (sums to the steering node's
    score). The path runs from the corrupt run's coefficient to the clean run's."""
    if not isinstance(steps, int) or steps < 1:
        raise SteerscopeError(f"EAP-IG needs a positive number of steps, got {steps!r}")
    g = gm.graph
    U, D = g.n_up, g.n_down
    delta = (ctx.clean_up - ctx.corrupt_up).float()  # [U, 1, S, d]
    a0, a1 = ctx.corrupt_alpha, ctx.clean_alpha
    g_up = torch.zeros_like(delta)  # [U, 1, S, d]
    g_down = delta.new_zeros((D, *delta.shape[1:]))  # [D, 1, S, d]
    positions = ctx.metric.positions
    with frozen_parameters(gm.model):
        for i in range(steps):
            a = a0 + (a1 - a0) * (i + 0.5) / steps
            run = gm.run(ctx.prep, ctx.vector, a, positions=positions, track=True)
            m = ctx.metric(run.logits)
            grads = torch.autograd.grad(m, run.up_parts + run.down_parts)
            n_up = len(run.up_parts)
            g_up += torch.cat(grads[:n_up]).float()
            g_down += torch.cat(grads[n_up:]).float()
            del run, grads, m
    g_up /= steps
    g_down /= steps
    edges = delta.reshape(U, -1) @ g_down.reshape(D, -1).T  # [U, D]
    edges = edges * g.adjacency.to(edges.device)
    nodes = (delta * g_up).sum(dim=(1, 2, 3))  # [U]
    steer_grad = (a1 - a0) * g_up[0, 0].sum(0)  # [d]
    s = ctx.vector.to(steer_grad.device).float()
    return {"edges": edges.cpu(), "nodes": nodes.cpu(), "steer_grad": steer_grad.cpu(),
            "steer_ie": (s * steer_grad).cpu(), "weight": ctx.weight, "dataset": ctx.dataset}


def eap_ig(gm: GraphModel, examples: Iterable[PatchingExample], vector, *, steps: int = 10,
           metric: str = "logit_diff", tau: float = 0.0, reverse: bool = False,
           progress: bool = False) -> Scores:
    """EAP-IG edge and node scores aggregated over ``examples`` (position-weighted per
    dataset, then averaged over datasets)."""
    records = [eap_ig_example(gm, ctx, steps)
               for ctx in iter_contexts(gm, examples, vector, metric=metric, tau=tau,
                                        reverse=reverse, progress=progress, desc="EAP-IG")]
    return _aggregate_records("eap_ig", records, gm.graph, steps=steps, metric=metric, tau=tau,
                              reverse=reverse)


def steer_dimension_scores(scores: Scores) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension scores at the steering node, for sparsification.

    Returns ``(g, ie)``, both [d] float32: ``g`` = α · Σ_positions of the average IG gradient
    of the metric w.r.t. the steering input (α the example's coefficient, so ``g`` is the
    gradient along the applied direction), aggregated like every score; ``ie = s ⊙ g``. The
    entries of ``ie`` sum to the steering node's EAP-IG score ``m``-units; a positive entry
    means that dimension of ``α·s`` moves the metric toward the steered behaviour.
    """
    if scores.steer_grad is None or scores.steer_ie is None:
        raise SteerscopeError(f"'{scores.method}' scores have no steering-node gradient",
                              "use EAP-IG scores")
    return scores.steer_grad.float(), scores.steer_ie.float()


def head_node_scores(scores: Scores, graph) -> dict[str, float]:
    """Node score of every attention head, keyed ``"a{L}.h{H}"``."""
    if scores.nodes is None:
        raise SteerscopeError(f"'{scores.method}' scores have no node scores")
    return {name: float(scores.nodes[i]) for i, (name, kind) in
            enumerate(zip(graph.up_names, graph.up_kind.tolist())) if kind == 1}


# ----------------------------------------------------------------------------------------
# exact patching (the reference)
# ----------------------------------------------------------------------------------------
def patched_metric(gm: GraphModel, ctx: ExampleContext, reverted: torch.Tensor) -> float:
    """``m`` of a real forward pass of the clean run in which the ``reverted`` [U, D] edges
    carry their corrupt value (their unsteered value; the steered one with ``reverse``)."""
    run = gm.run(ctx.prep, ctx.vector, ctx.clean_alpha, reverted=reverted, base=ctx.corrupt_up,
                 positions=ctx.metric.positions)
    return float(ctx.metric(run.logits))


def exact_example(gm: GraphModel, ctx: ExampleContext, *, nodes: Sequence[int] | None = None,
                  edges: Sequence[int] | None = None) -> dict:
    """Exact patching effects ``m(clean) − m(patched)`` of nodes (all outgoing edges of the
    node reverted) and of single edges; ``None`` selects all, ``[]`` none."""
    g = gm.graph
    out = {"weight": ctx.weight, "dataset": ctx.dataset}
    if nodes is None or len(nodes):
        idx = range(g.n_up) if nodes is None else nodes
        vals = torch.full((g.n_up,), float("nan"))
        for u in idx:
            mask = torch.zeros_like(g.adjacency)
            mask[u] = g.adjacency[u]
            vals[u] = ctx.m_clean - patched_metric(gm, ctx, mask)
        out["nodes"] = vals
    if edges is None or len(edges):
        idx = range(g.n_edges) if edges is None else edges
        vals = torch.full((g.n_edges,), float("nan"))
        ei = g.edge_index
        for e in idx:
            mask = torch.zeros_like(g.adjacency)
            mask[ei[e, 0], ei[e, 1]] = True
            vals[e] = ctx.m_clean - patched_metric(gm, ctx, mask)
        out["edges"] = g.to_matrix(vals, float("nan"))
    return out


def exact_patching(gm: GraphModel, examples: Iterable[PatchingExample], vector, *,
                   nodes: Sequence[int] | None = None, edges: Sequence[int] | None = [],
                   metric: str = "logit_diff", tau: float = 0.0, reverse: bool = False,
                   progress: bool = False) -> Scores:
    """Exact node (default: all) and edge (default: none; ``None`` = all) patching scores,
    aggregated like EAP-IG. Unscored entries are NaN."""
    records = [exact_example(gm, ctx, nodes=nodes, edges=edges)
               for ctx in iter_contexts(gm, examples, vector, metric=metric, tau=tau,
                                        reverse=reverse, progress=progress,
                                        desc="exact patching")]
    return _aggregate_records("exact", records, gm.graph, metric=metric, tau=tau,
                              reverse=reverse)
