"""The patching stage end to end: EAP-IG scores → circuits → faithfulness → tables.

:func:`patch_vector` analyses one steering vector on its patching datasets and returns a
:class:`~steerscope.patching.result.PatchingResult`; it is :func:`score_vector` (EAP-IG
scores, head scores, edge types of the top edges) followed by :func:`add_circuits`
(faithfulness curve, minimum faithful circuit, controls), which the pipeline runs as two
stages; :func:`compare_vectors` compares the
circuits of several analysed vectors (overlap, Jaccard at matched sizes, interchangeability).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from steerscope.errors import DataError, SteerscopeError
from steerscope.patching.circuits import (
    FAITHFUL,
    FaithfulnessCurve,
    build_circuit,
    complement,
    default_sizes,
    edge_type_shares,
    evaluate_circuits,
    faithfulness_curve,
    interchange_matrix,
    matched_size_overlap,
    minimal_faithful_circuit,
    overlap_matrix,
    random_circuit,
    top_k_edges,
)
from steerscope.patching.data import PatchingExample
from steerscope.patching.faithfulness import (
    LOGIT_DIFF,
    check_faithfulness_metric,
    evaluate_position_metrics,
    grid_sizes,
    minimal_sizes,
    set_faithfulness,
)
from steerscope.patching.forward import GraphModel
from steerscope.patching.methods import attribution_method
from steerscope.patching.result import PatchingResult
from steerscope.patching.scores import (
    aggregate_records,
    coarsen,
    eap_ig_example,
    head_node_scores,
    prepare_example,
)
from steerscope.patching_conventions import GRAD_AT, LOGITS_AT, POOLING, check_choice


def steered_layers(vector) -> int | list[int]:
    """The layer(s) a vector steers: a vector set's ``layers`` (the graph starts at the first
    and α is the one steering input), else its ``layer``."""
    layers = getattr(vector, "layers", None)
    return list(layers) if layers is not None else vector.layer


def _flatten(datasets) -> list[PatchingExample]:
    if isinstance(datasets, Mapping):
        out = [ex for exs in datasets.values() for ex in exs]
    else:
        out = list(datasets)
    if not out:
        raise DataError("no patching examples (no prompt flipped under steering)",
                        "use more prompts, longer responses or a stronger vector")
    return out


def score_vector(model, vector, datasets, *, arch=None, steps: int = 10,
                 metric: str = "logit_diff", tau: float = 0.0, reverse: bool = False,
                 coarse: bool = False, exact_nodes: bool = False, top_k: int = 100,
                 grad_at: str = GRAD_AT[0], logits_at: str = LOGITS_AT[0],
                 pooling: str = POOLING[0], batch_size: int = 1, progress: bool = False,
                 map_fn=None) -> PatchingResult:
    """The scoring half of :func:`patch_vector`: EAP-IG edge, node and steering-dimension
    scores of one vector on its patching examples (and exact node scores with
    ``exact_nodes``), the node score of every head (``tables["head_scores"]``) and the
    edge-type shares of the top-``top_k`` edges (``tables["edge_types"]["top{k}"]``).

    ``reverse``: clean = unsteered, corrupt = steered (the paper's reverse roles; see
    :class:`~steerscope.patching.scores.ExampleContext`). ``coarse``: the result is on the
    coarse graph (q/k/v inputs grouped per layer; edge scores summed from the fine ones).
    ``grad_at``: EAP-IG's gradient at the ``"pre_norm"`` residual or the ``"post_norm"``
    input of each downstream node; ``logits_at``: the metric reads the logits after
    (``"post_cap"``) or before (``"pre_cap"``) a final-logit soft-cap; ``pooling``: examples
    combine by ``"dataset_mean"`` or ``"positions"`` (:func:`~steerscope.patching.scores.aggregate`).
    ``batch_size``: examples of similar length per batched EAP-IG backward pass (same scores;
    ignored with ``map_fn``).

    ``map_fn(fn, examples) -> [fn(e) for e in examples]`` runs the per-example EAP-IG (default:
    in order here; the pipeline passes a function that shards the examples over ranks and
    gathers the records in example order, which gives the same scores as :func:`eap_ig`).
    """
    examples = _flatten(datasets)
    check_choice("grad_at", grad_at, GRAD_AT)
    check_choice("pooling", pooling, POOLING)
    gm = GraphModel(model, steered_layers(vector), arch=arch, logits_at=logits_at)
    g = gm.graph
    result = PatchingResult(g.coarsened() if coarse else g, meta={
        "vector": {"method": vector.method, "layer": vector.layer, "sha256": vector.sha256,
                   "norm": vector.norm,
                   **({"layers": list(gm.steer_layers)} if len(gm.steer_layers) > 1 else {})},
        "steps": steps, "metric": metric, "tau": tau, "reverse": bool(reverse),
        "grad_at": grad_at, "logits_at": logits_at, "pooling": pooling,
        "examples": {name: sum(1 for e in examples if e.dataset == name)
                     for name in dict.fromkeys(e.dataset for e in examples)},
    })
    if map_fn is None:
        result.scores["eap_ig"] = attribution_method("eap_ig").function(
            gm, examples, vector.vector, steps=steps, metric=metric, tau=tau, reverse=reverse,
            grad_at=grad_at, pooling=pooling, batch_size=batch_size, progress=progress)
    else:
        def one(ex: PatchingExample):
            ctx = prepare_example(gm, ex, vector.vector, metric=metric, tau=tau,
                                  reverse=reverse)
            return eap_ig_example(gm, ctx, steps, grad_at) if ctx.weight else None

        records = [r for r in map_fn(one, examples) if r is not None]
        if not records:
            raise DataError("no patching example has an unmasked position",
                            "use more examples, longer responses or a lower KL threshold")
        result.scores["eap_ig"] = aggregate_records("eap_ig", records, g, pooling, steps=steps,
                                                    metric=metric, tau=tau, reverse=reverse,
                                                    grad_at=grad_at, logits_at=logits_at)
    if exact_nodes:
        result.scores["exact"] = attribution_method("exact").function(
            gm, examples, vector.vector, nodes=None, edges=[], metric=metric, tau=tau,
            reverse=reverse, pooling=pooling, progress=progress)
    if coarse:
        result.scores = {k: coarsen(v, g) for k, v in result.scores.items()}
    scores = result.scores["eap_ig"]
    g = result.graph
    result.tables["edge_types"] = {
        f"top{top_k}": edge_type_shares(g, top_k_edges(scores.edges, min(top_k, g.n_edges))),
    }
    result.tables["head_scores"] = head_node_scores(scores, g)
    return result


def add_circuits(model, vector, datasets, result: PatchingResult, *, arch=None,
                 sizes: Sequence[int] | None = None, threshold: float = FAITHFUL,
                 refine_steps: int = 4, n_random: int = 5, metric: str | None = None,
                 tau: float | None = None, reverse: bool | None = None,
                 grid_step: float | None = None, grid_max: float = 1.0,
                 random_kind: str = "pruned", position_metrics: bool = False,
                 logits_at: str | None = None, faithfulness_metric: str = LOGIT_DIFF,
                 progress: bool = False) -> PatchingResult:
    """The circuits half of :func:`patch_vector`, on a result holding EAP-IG scores (from
    :func:`score_vector` or :meth:`PatchingResult.load`): the faithfulness curve over
    ``sizes`` (None: :func:`~steerscope.patching.circuits.default_sizes`), the minimum
    faithful circuit (``threshold``, refined by ``refine_steps`` bisection steps), the
    faithfulness of its complement and of ``n_random`` random circuits of twice its size
    (seeds 42, 43, ...; ``random_kind``: ``pruned`` = connected like a real circuit, or
    ``unpruned``, see :func:`~steerscope.patching.circuits.random_circuit`), and the edge-type
    shares of the circuit. ``grid_step``: instead of ``sizes``, the sizes
    :func:`~steerscope.patching.faithfulness.grid_sizes` (multiples of ``grid_step`` of the
    edges up to ``grid_max``). ``position_metrics``: also the released code's per-position
    metrics at every curve size (``curve.positions``) and the first size reaching
    ``threshold`` under each (``tables["summary"]["min_size_by_metric"]``). ``metric``/``tau``:
    None takes the scoring run's (``result.meta``), as do ``reverse`` and ``logits_at`` (the
    logits the faithfulness metric reads, see :func:`score_vector`). Circuits are built on
    the result's graph (fine or coarse). ``faithfulness_metric``: what faithfulness is
    measured with for the curve, the minimum circuit, the complement and the random controls
    (:data:`~steerscope.patching.faithfulness.FAITHFULNESS_METRICS`: the logit-difference
    ratio, or a released position metric, :func:`~steerscope.patching.faithfulness.
    position_faithfulness`); recorded as ``tables["summary"]["faithfulness_metric"]``. Adds
    to ``result`` in place and returns it."""
    check_faithfulness_metric(faithfulness_metric)
    examples = _flatten(datasets)
    metric = result.meta.get("metric", "logit_diff") if metric is None else metric
    tau = result.meta.get("tau", 0.0) if tau is None else tau
    reverse = bool(result.meta.get("reverse", False)) if reverse is None else bool(reverse)
    logits_at = result.meta.get("logits_at", LOGITS_AT[0]) if logits_at is None else logits_at
    gm = GraphModel(model, steered_layers(vector), arch=arch, logits_at=logits_at)
    g = gm.graph.coarsened() if result.graph.coarse else gm.graph
    if g.n_edges != result.graph.n_edges or g.layer != result.graph.layer:
        raise DataError(f"the patching result's graph (layer {result.graph.layer}, "
                        f"{result.graph.n_edges} edges) does not fit this model at layer "
                        f"{vector.layer} ({g.n_edges} edges)",
                        "use the model and vector the scores were computed with")
    scores = result.scores["eap_ig"]
    kw = dict(metric=metric, tau=tau, reverse=reverse, graph=g, progress=progress,
              faithfulness_metric=faithfulness_metric)
    result.meta["threshold"] = threshold
    if sizes is not None and grid_step is not None:
        raise SteerscopeError("both circuit sizes and a size grid were given",
                              "pass sizes or grid_step, not both")
    if grid_step is not None:
        sizes = grid_sizes(g.n_edges, grid_step, grid_max)
    sizes = list(sizes) if sizes is not None else default_sizes(g.n_edges)
    built = [build_circuit(g, scores.edges, int(n)) for n in sizes]
    if position_metrics and faithfulness_metric != LOGIT_DIFF:  # one pass gives both
        per = evaluate_position_metrics(gm, examples, vector.vector, built, graph=g)
        curve = FaithfulnessCurve(sizes, [int(c.sum()) for c in built],
                                  [set_faithfulness(p, faithfulness_metric) for p in per],
                                  1.0, 0.0, per)
    else:
        curve = faithfulness_curve(gm, examples, vector.vector, scores.edges, sizes, **kw)
        if position_metrics:
            curve.positions = evaluate_position_metrics(gm, examples, vector.vector, built,
                                                        graph=g)
    result.curves["eap_ig"] = curve
    for n, c in zip(sizes, built):
        result.circuits[f"eap_ig.n{n}"] = c
    circuit, f_min = minimal_faithful_circuit(gm, examples, vector.vector, scores.edges,
                                              threshold=threshold, curve=curve,
                                              refine_steps=refine_steps, **kw)
    size = int(circuit.sum())
    result.circuits["eap_ig.min"] = circuit
    randoms = [random_circuit(g, 2 * size, seed=42 + i, kind=random_kind)
               for i in range(n_random)]
    controls = [complement(g, circuit)] + randoms
    ev = evaluate_circuits(gm, examples, vector.vector, controls, **kw)
    f = ev.faithfulness.tolist()
    result.tables["summary"] = {
        "random_kind": random_kind, "random_sizes": [int(r.sum()) for r in randoms],
        "n_edges": g.n_edges, "min_faithful_size": size,
        "min_faithful_fraction": size / g.n_edges, "min_faithfulness": f_min,
        "faithful": bool(f_min == f_min and f_min >= threshold),
        "complement_faithfulness": f[0], "random_2x_faithfulness": f[1:],
        "m_full": ev.m_full, "m_empty": ev.m_empty, "reverse": reverse,
        "graph": "coarse" if g.coarse else "fine", "faithfulness_metric": faithfulness_metric,
    }
    if curve.positions is not None:
        result.tables["summary"]["min_size_by_metric"] = minimal_sizes(
            curve.actual, curve.positions, threshold)
    result.tables.setdefault("edge_types", {})["circuit"] = edge_type_shares(g, circuit)
    return result


def patch_vector(model, vector, datasets, *, arch=None, steps: int = 10,
                 metric: str = "logit_diff", tau: float = 0.0, reverse: bool = False,
                 coarse: bool = False, sizes: Sequence[int] | None = None,
                 threshold: float = FAITHFUL,
                 refine_steps: int = 4, n_random: int = 5, exact_nodes: bool = False,
                 top_k: int = 100, grid_step: float | None = None, grid_max: float = 1.0,
                 random_kind: str = "pruned", position_metrics: bool = False,
                 grad_at: str = GRAD_AT[0], logits_at: str = LOGITS_AT[0],
                 pooling: str = POOLING[0], batch_size: int = 1,
                 faithfulness_metric: str = LOGIT_DIFF,
                 progress: bool = False) -> PatchingResult:
    """Analyse one :class:`~steerscope.vectors.SteeringVector` on its patching examples:
    :func:`score_vector` then :func:`add_circuits`.

    ``datasets``: ``{name: [PatchingExample]}`` (see :mod:`steerscope.patching.data`) or a
    list. Produces EAP-IG scores (and exact node scores with ``exact_nodes``), the
    faithfulness curve over ``sizes``, the minimum faithful circuit (``threshold``), the
    faithfulness of its complement and of ``n_random`` random circuits of twice its size, and
    edge-type shares of the top-``top_k`` edges and of the circuit. ``reverse``: clean =
    unsteered, corrupt = steered; ``coarse``: scores and circuits on the coarse graph.
    ``grid_step``/``grid_max``, ``random_kind``, ``position_metrics``,
    ``faithfulness_metric``: see :func:`add_circuits`; ``grad_at``, ``logits_at``, ``pooling``, ``batch_size``: see
    :func:`score_vector`.
    """
    result = score_vector(model, vector, datasets, arch=arch, steps=steps, metric=metric,
                          tau=tau, reverse=reverse, coarse=coarse, exact_nodes=exact_nodes,
                          top_k=top_k, grad_at=grad_at, logits_at=logits_at, pooling=pooling,
                          batch_size=batch_size, progress=progress)
    return add_circuits(model, vector, datasets, result, arch=arch, sizes=sizes,
                        threshold=threshold, refine_steps=refine_steps, n_random=n_random,
                        grid_step=grid_step, grid_max=grid_max, random_kind=random_kind,
                        position_metrics=position_metrics,
                        faithfulness_metric=faithfulness_metric, progress=progress)


def compare_vectors(model, results: Mapping[str, PatchingResult],
                    datasets: Mapping[str, tuple[Sequence[PatchingExample], object]], *,
                    sizes: Sequence[int] | None = None, metric: str | None = None,
                    tau: float | None = None, reverse: bool | None = None,
                    faithfulness_metric: str = LOGIT_DIFF, progress: bool = False) -> dict:
    """Compare analysed vectors: overlap and Jaccard of their minimum faithful circuits,
    overlap/Jaccard at matched sizes, and the interchange matrix (circuit of A while steering
    with B on B's examples; faithfulness measured with ``faithfulness_metric``, see
    :func:`add_circuits`). ``datasets[name] = (examples, SteeringVector)``. ``metric``,
    ``tau``, ``reverse``: None takes the first result's scoring settings."""
    check_faithfulness_metric(faithfulness_metric)
    names = list(results)
    first = results[names[0]].graph
    meta = results[names[0]].meta
    metric = meta.get("metric", "logit_diff") if metric is None else metric
    tau = meta.get("tau", 0.0) if tau is None else tau
    reverse = bool(meta.get("reverse", False)) if reverse is None else bool(reverse)
    for n in names[1:]:
        gr = results[n].graph
        if (gr.n_edges, gr.layer, gr.coarse) != (first.n_edges, first.layer, first.coarse):
            raise DataError(f"cannot compare circuits of different graphs ('{names[0]}': "
                            f"layer {first.layer}, {first.n_edges} edges; '{n}': layer "
                            f"{gr.layer}, {gr.n_edges} edges)",
                            "patch every vector at the same layer with the same graph")
    circuits = {n: r.circuits["eap_ig.min"] for n, r in results.items()}
    sizes = list(sizes) if sizes is not None else default_sizes(first.n_edges)
    matched = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            matched[f"{a}|{b}"] = matched_size_overlap(
                first, results[a].scores["eap_ig"].edges, results[b].scores["eap_ig"].edges,
                sizes)
    layer = steered_layers(datasets[names[0]][1])
    gm = GraphModel(model, layer, logits_at=meta.get("logits_at", LOGITS_AT[0]))
    inter = interchange_matrix(
        gm, circuits, {n: (_flatten(exs), v.vector) for n, (exs, v) in datasets.items()},
        metric=metric, tau=tau, reverse=reverse, graph=first, progress=progress,
        faithfulness_metric=faithfulness_metric)
    return {"faithfulness_metric": faithfulness_metric,
            "overlap": overlap_matrix(circuits, "overlap"),
            "jaccard": overlap_matrix(circuits, "jaccard"),
            "sizes": {n: int(c.sum()) for n, c in circuits.items()},
            "matched": matched, "interchange": inter}


def circuit_summary(result: PatchingResult) -> str:
    """A plain-text report: faithfulness curve, minimum circuit, controls, top edges."""
    lines = []
    g = result.graph
    kind = "coarse (q/k/v grouped per layer)" if g.coarse else "fine"
    roles = ("reverse (clean = unsteered, corrupt = steered)" if result.meta.get("reverse")
             else "clean = steered, corrupt = unsteered")
    lines.append(f"graph: {kind}, layers {g.layer}..{g.n_layers - 1}, {g.n_up} upstream nodes, "
                 f"{g.n_down} downstream inputs, {g.n_edges} edges; roles: {roles}")
    for name, c in result.curves.items():
        lines.append(f"faithfulness curve ({name}): m(M)={c.m_full:.4f} m(0)={c.m_empty:.4f}")
        for i, (a, f) in enumerate(zip(c.actual, c.faithfulness)):
            line = f"  {a:>8d} edges ({a / g.n_edges:6.1%})  faithfulness {f:7.3f}"
            if c.positions is not None:
                line += "  " + _position_line(c.positions[i])
            lines.append(line)
    s = result.tables.get("summary")
    if s:
        rnd = ", ".join(f"{x:.3f}" for x in s["random_2x_faithfulness"])
        kind = s.get("random_kind", "unpruned")
        lines.append(f"minimum faithful circuit: {s['min_faithful_size']} edges "
                     f"({s['min_faithful_fraction']:.1%}), faithfulness "
                     f"{s['min_faithfulness']:.3f}; complement {s['complement_faithfulness']:.3f};"
                     f" random 2x ({kind}): {rnd}")
        for metric, per in s.get("min_size_by_metric", {}).items():
            lines.append(f"minimum size reaching {result.meta.get('threshold', FAITHFUL)} by "
                         f"{metric}: " + ", ".join(f"{k} {v}" for k, v in per.items()))
    for key, t in result.tables.get("edge_types", {}).items():
        inc = " ".join(f"{k}={v:.1%}" for k, v in t["incoming"].items())
        out = " ".join(f"{k}={v:.1%}" for k, v in t["outgoing"].items())
        lines.append(f"edge types ({key}, {t['n_edges']} edges): in {inc} | out {out}")
    if "eap_ig" in result.scores:
        lines.append("top edges (EAP-IG):")
        for name, v in result.top_edges("eap_ig", 15):
            lines.append(f"  {v:+.4f}  {name}")
    return "\n".join(lines)


def _position_line(entry: dict) -> str:
    """``<set> kl .. dkl .. match .. lp ..`` for one curve size's position metrics."""
    def fmt(x) -> str:
        return "  n/a" if x is None else f"{x:5.2f}"

    parts = []
    for name, v in entry.items():
        if not v.get("n_positions"):
            continue
        parts.append(f"{name}: kl {fmt(v['kl_ratio']['overall'])} dkl "
                     f"{fmt(v['dir_kl']['overall'])} match {fmt(v['token_match']['overall'])} "
                     f"lp {fmt(v['logprob']['overall'])}")
    return " | ".join(parts)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two score vectors (NaNs dropped)."""
    from scipy.stats import spearmanr

    ok = torch.isfinite(a) & torch.isfinite(b)
    return float(spearmanr(a[ok].double().numpy(), b[ok].double().numpy()).statistic)
