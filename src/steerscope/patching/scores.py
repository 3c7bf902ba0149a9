"""Per-example patching contexts, EAP-IG and exact patching scores, and their aggregation.

Conventions (clean = steered run, corrupt = unsteered run, same tokens; ``reverse=True``
swaps the roles: clean = unsteered, corrupt = steered, see :class:`ExampleContext`):

- the score of an edge ``u → d`` or a node ``u`` is the effect of restoring it to its clean
  value, ``m(clean) − m(clean with u→d / u patched to corrupt)`` for exact patching; EAP-IG
  estimates the same quantity:
  ``score(u→d) = Σ_positions (u_clean − u_corrupt) · (1/T) Σ_i ∂m/∂res_d |_{H + ((i+0.5)/T)·α·S}``
  where ``res_d`` is where the gradient is taken (``grad_at``):

  - ``"pre_norm"`` (steerscope's default): ``d``'s pre-norm residual; the norm's Jacobian is
    included, so the scores of a node's edges sum to its node score and the steering node's
    score converges to ``m(M) − m(∅)``;
  - ``"post_norm"`` (the paper, and the authors' released code with its norm-gradient
    correction off): ``d``'s post-norm input (the per-head query input, the per-KV-head key
    and value inputs, the MLP input, the unembedding input), the RMSNorm Jacobian ignored:
    each edge is then scaled by roughly ``γ/rms`` of its target relative to ``"pre_norm"``.

  The node score takes the gradient at ``u``'s own output (both variants).
- examples are combined (``pooling``) by a position-weighted average (weight = number of
  unmasked positions) within each dataset, then by the plain mean over datasets
  (``"dataset_mean"``, the default), or by one position-weighted average over all examples
  (``"positions"``, the released code's default).
- multi-layer steering (``vector`` [K, d] over the graph model's K steered layers): the
  steering node is the shared coefficient α. Its node score is
  ``(α_clean − α_corrupt) · Σ_k s_k · Σ_positions g_k`` (``g_k`` the average IG gradient at
  the residual entering steered layer ``k``), i.e. EAP-IG of the α input, converging to
  ``m(clean) − m(corrupt)``; ``steer_grad`` / ``steer_ie`` are [K, d], one row per layer; an
  edge ``steer → d`` carries every steering term that has reached ``d``
  (:mod:`~steerscope.patching.forward`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from steerscope.errors import DataError, SteerscopeError
from steerscope.patching.data import PatchingExample
from steerscope.patching.forward import GraphModel, Prepared
from steerscope.patching.gradients import batched_ig_gradients, ig_gradients
from steerscope.patching.metrics import make_metric
from steerscope.patching_conventions import GRAD_AT, POOLING, check_choice


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
        every = bool(keep.all())  # no copies of the logits
        m_clean = float(m(clean.logits if every else clean.logits[:, keep]))
        m_corrupt = float(m(corrupt.logits if every else corrupt.logits[:, keep]))
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
def aggregate(values: Sequence, weights: Sequence[int], datasets: Sequence[str],
              pooling: str = POOLING[0]):
    """Position-weighted mean within each dataset; overall: the mean over datasets
    (``pooling="dataset_mean"``) or the position-weighted mean over every example
    (``"positions"``: each dataset's mean weighted by its number of unmasked positions).

    ``values``: floats or equally shaped tensors. Returns ``(overall, {dataset: mean})``.
    """
    check_choice("pooling", pooling, POOLING)
    if not values:
        raise DataError("no patching example has an unmasked position",
                        "use more examples, longer responses or a lower KL threshold")
    per: dict[str, list] = {}
    for v, w, name in zip(values, weights, datasets):
        acc = per.setdefault(name, [0.0, 0])
        acc[0] = acc[0] + w * (v.double() if isinstance(v, torch.Tensor) else float(v))
        acc[1] += w
    means = {k: acc[0] / acc[1] for k, acc in per.items()}
    if pooling == "positions":
        overall = sum(acc[0] for acc in per.values()) / sum(acc[1] for acc in per.values())
    else:
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


def aggregate_records(method: str, records: list[dict], graph, pooling: str = POOLING[0],
                      **meta) -> Scores:
    """Per-example records (``edges`` [U, D], ``nodes`` [U], ...; ``weight``, ``dataset``)
    → aggregated :class:`Scores` (``pooling``: see :func:`aggregate`), ``meta`` recorded."""
    if not records:
        raise DataError("no patching example has a position where the steered and base "
                        "greedy tokens differ, so the metric is empty",
                        "use prompts whose output steering changes, or a larger alpha")
    keys = [k for k in ("edges", "nodes", "steer_grad", "steer_ie") if k in records[0]]
    weights = [r["weight"] for r in records]
    names = [r["dataset"] for r in records]
    out = Scores(method, meta={**meta, "pooling": pooling})
    for k in keys:
        overall, per = aggregate([r[k] for r in records], weights, names, pooling)
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
def eap_ig_example(gm: GraphModel, ctx: ExampleContext, steps: int = 10,
                   grad_at: str = GRAD_AT[0], *, low_memory: bool = True) -> dict:
    """EAP-IG scores of one example: ``edges`` [U, D] (0 off the graph; the gradient at each
    downstream input's pre- or post-norm activation, ``grad_at``), ``nodes`` [U],
    ``steer_grad`` [d] = (α_clean − α_corrupt) · Σ_positions (average IG gradient at the
    steering input), and ``steer_ie`` [d] = s ⊙ steer_grad (sums to the steering node's
    score). The path runs from the corrupt run's coefficient to the clean run's.
    ``low_memory``: checkpointed backward passes (same numbers, see
    :mod:`~steerscope.patching.gradients`)."""
    if not isinstance(steps, int) or steps < 1:
        raise SteerscopeError(f"EAP-IG needs a positive number of steps, got {steps!r}")
    a0, a1 = ctx.corrupt_alpha, ctx.clean_alpha
    g_up, g_down = ig_gradients(gm, ctx.prep, ctx.vector, a0, a1, ctx.metric,
                                ctx.metric.positions, steps, grad_at=grad_at,
                                low_memory=low_memory)  # [U | D, 1, S, d]
    return _scores_from_gradients(gm, ctx, g_up, g_down)


def eap_ig_batch(gm: GraphModel, ctxs: Sequence[ExampleContext], steps: int = 10,
                 grad_at: str = GRAD_AT[0]) -> list[dict]:
    """:func:`eap_ig_example` of several examples (same vector) in one batched backward pass
    per IG step (right-padded; padding is outside every metric and, attention being causal,
    never reaches a real position): the same records, example by example."""
    if not isinstance(steps, int) or steps < 1:
        raise SteerscopeError(f"EAP-IG needs a positive number of steps, got {steps!r}")
    prep = gm.prepare_batch([c.prep.input_ids[0] for c in ctxs])
    g_up, g_down = batched_ig_gradients(
        gm, prep, ctxs[0].vector, [(c.corrupt_alpha, c.clean_alpha) for c in ctxs],
        [c.metric for c in ctxs], [c.metric.positions for c in ctxs], steps,
        grad_at=grad_at)  # [U | D, B, S, d]
    out = []
    for b, c in enumerate(ctxs):
        n = c.prep.seq_len
        out.append(_scores_from_gradients(gm, c, g_up[:, b:b + 1, :n], g_down[:, b:b + 1, :n]))
    return out


def _scores_from_gradients(gm: GraphModel, ctx: ExampleContext, g_up: torch.Tensor,
                           g_down: torch.Tensor) -> dict:
    """The EAP-IG record of one example from its average gradients g_up [U, 1, S, d] and
    g_down [D, 1, S, d] (see :func:`eap_ig_example`)."""
    g = gm.graph
    U, D = g.n_up, g.n_down
    a0, a1 = ctx.corrupt_alpha, ctx.clean_alpha
    delta = (ctx.clean_up - ctx.corrupt_up).float()  # [U, 1, S, d]
    edges = delta.reshape(U, -1) @ g_down.reshape(D, -1).T  # [U, D]
    edges = edges * g.adjacency.to(edges.device)
    # Δ_u · g_u per node as one batched dot product: no [U, 1, S, d] temporary (issue 17)
    nodes = torch.bmm(delta.reshape(U, 1, -1), g_up[:U].reshape(U, -1, 1)).flatten()  # [U]
    steer_grad = (a1 - a0) * g_up[0, 0].sum(0)  # [d]
    s = ctx.vector.to(steer_grad.device).float()
    if g_up.shape[0] > U:  # multi-layer steering: α feeds every steered layer
        return _multi_layer_record(gm, ctx, g_up, g_down, edges, nodes)
    return {"edges": edges.cpu(), "nodes": nodes.cpu(), "steer_grad": steer_grad.cpu(),
            "steer_ie": (s * steer_grad).cpu(), "weight": ctx.weight, "dataset": ctx.dataset}


def _multi_layer_record(gm: GraphModel, ctx: ExampleContext, g_up: torch.Tensor,
                        g_down: torch.Tensor, edges: torch.Tensor, nodes: torch.Tensor) -> dict:
    """The EAP-IG record of one example under K-layer steering: the steering row of
    ``edges`` with the later layers' terms (``steer → d`` carries ``(α_clean − α_corrupt)·
    Σ_{ℓk ≤ layer(d)} s_k``, row 0 of ``edges`` already holds the ``k = 0`` term), the α
    node score and the [K, d] ``steer_grad`` / ``steer_ie`` (see the module doc)."""
    g = gm.graph
    U = g.n_up
    a0, a1 = ctx.corrupt_alpha, ctx.clean_alpha
    s = gm.steering_rows(ctx.vector, torch.float32).to(g_up.device)  # [K, d]
    g_k = torch.cat([g_up[:1], g_up[U:]]).sum(2)[:, 0]  # [K, d] Σ_positions g at each layer
    steer_grad = (a1 - a0) * g_k  # [K, d]
    steer_ie = s * steer_grad  # [K, d]
    later = torch.zeros(g.n_down, s.shape[1], dtype=s.dtype, device=s.device)  # [D, d]
    down_layer = g.down_layer.to(s.device)
    for L, k in gm.later_injections().items():
        later += (down_layer >= L).to(s.dtype)[:, None] * s[k]
    g_down_sum = g_down.sum(2)[:, 0]  # [D, d]
    edges = edges.clone()
    edges[0] += (a1 - a0) * (later * g_down_sum).sum(1) * g.adjacency[0].to(edges.device)
    nodes = nodes.clone()
    nodes[0] = steer_ie.sum()
    return {"edges": edges.cpu(), "nodes": nodes.cpu(), "steer_grad": steer_grad.cpu(),
            "steer_ie": steer_ie.cpu(), "weight": ctx.weight, "dataset": ctx.dataset}


def eap_ig(gm: GraphModel, examples: Iterable[PatchingExample], vector, *, steps: int = 10,
           metric: str = "logit_diff", tau: float = 0.0, reverse: bool = False,
           grad_at: str = GRAD_AT[0], pooling: str = POOLING[0], batch_size: int = 1,
           progress: bool = False) -> Scores:
    """EAP-IG edge and node scores aggregated over ``examples`` (see :func:`aggregate` for
    ``pooling``; :func:`eap_ig_example` for ``grad_at``). ``batch_size`` > 1: examples of
    similar length (sorted by length) share one backward pass per IG step
    (:func:`eap_ig_batch`; same scores)."""
    check_choice("grad_at", grad_at, GRAD_AT)
    check_choice("pooling", pooling, POOLING)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise SteerscopeError(f"EAP-IG batch size must be a positive int, got {batch_size!r}")
    if batch_size == 1:
        records = [eap_ig_example(gm, ctx, steps, grad_at)
                   for ctx in iter_contexts(gm, examples, vector, metric=metric, tau=tau,
                                            reverse=reverse, progress=progress, desc="EAP-IG")]
    else:
        exs = list(examples)
        order = sorted(range(len(exs)), key=lambda i: int(exs[i].input_ids.numel()))
        by_index: dict[int, dict] = {}
        for k in tqdm(range(0, len(order), batch_size), desc="EAP-IG batches",
                      disable=not progress):
            idx = order[k:k + batch_size]
            ctxs = [(i, prepare_example(gm, exs[i], vector, metric=metric, tau=tau,
                                        reverse=reverse)) for i in idx]
            ctxs = [(i, c) for i, c in ctxs if c.weight]
            if ctxs:
                recs = eap_ig_batch(gm, [c for _, c in ctxs], steps, grad_at)
                by_index.update(zip([i for i, _ in ctxs], recs))
        records = [by_index[i] for i in sorted(by_index)]
    return aggregate_records("eap_ig", records, gm.graph, pooling, steps=steps, metric=metric,
                              tau=tau, reverse=reverse, grad_at=grad_at,
                              logits_at=gm.logits_at)


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
                 positions=ctx.metric.positions, base_alpha=ctx.corrupt_alpha)
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
                   pooling: str = POOLING[0], progress: bool = False) -> Scores:
    """Exact node (default: all) and edge (default: none; ``None`` = all) patching scores,
    aggregated like EAP-IG. Unscored entries are NaN."""
    check_choice("pooling", pooling, POOLING)
    records = [exact_example(gm, ctx, nodes=nodes, edges=edges)
               for ctx in iter_contexts(gm, examples, vector, metric=metric, tau=tau,
                                        reverse=reverse, progress=progress,
                                        desc="exact patching")]
    return aggregate_records("exact", records, gm.graph, pooling, metric=metric, tau=tau,
                              reverse=reverse, logits_at=gm.logits_at)
