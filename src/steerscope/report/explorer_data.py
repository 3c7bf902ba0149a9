"""The circuit explorer's data, from a run's artifacts on disk (no model needed).

For each patched vector the explorer shows its circuit along the faithfulness curve: a
slider over the circuit sizes (the curve's sizes up to ``max_edges``, plus the minimum
faithful circuit), each circuit being :func:`~steerscope.patching.circuits.build_circuit` of
the EAP-IG edge scores at that size. Those circuits are nested (the top-k edge sets grow
with k and pruning to the steer→logits paths is monotone), so each edge and node carries
the index of the first step it belongs to (``entry``) and the page shows the edges with
``entry <= step``. Only the largest shown circuit is stored, never the whole graph.

Per head it adds the node score, the top incoming and outgoing edges over the whole graph,
and its steering value vector's logit-lens tokens (from the svv stage, plus their SUM).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from steerscope.errors import SteerscopeError

MAX_EDGES = 1500  # the largest circuit the explorer stores (edges)
TOP_EDGES = 6  # incoming / outgoing edges listed per node
EXPLORER_VERSION = 1


def stage_dirs_of_run(run_dir: str | Path) -> dict[str, Path]:
    """The folder of each finished stage of a run folder, from its ``run.json``."""
    run_dir = Path(run_dir)
    info_path = run_dir / "run.json"
    if not info_path.is_file():
        raise SteerscopeError(f"{info_path} does not exist",
                              "pass a run folder written by 'steerscope run'")
    fix = "rerun 'steerscope run' with the run's config: it rewrites run.json"
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise SteerscopeError(f"{info_path} is not valid JSON ({exc})", fix) from None
    stages = info.get("stages") if isinstance(info, dict) else None
    if not isinstance(stages, dict):
        raise SteerscopeError(f"{info_path} has no 'stages' object", fix)
    out = {}
    for name, rec in stages.items():
        folder = rec.get("dir") if isinstance(rec, dict) else None
        if isinstance(folder, str) and folder and (run_dir / folder).is_dir() \
                and (run_dir / folder).resolve().parent == run_dir.resolve():
            out[name] = run_dir / folder
    return out


def _finite(x) -> float | None:
    x = float(x)
    return x if x == x and abs(x) != float("inf") else None


def circuit_steps(graph, scores: torch.Tensor, sizes: list[int]) -> tuple[list[int],
                                                                            torch.Tensor]:
    """The circuits of ``sizes`` (ascending) as per-edge entry steps.

    Returns ``(actual sizes, entry [E] long)``: ``entry[e]`` is the first step whose circuit
    holds edge ``e`` (``len(sizes)`` if none does). Raises if the circuits are not nested.
    """
    from steerscope.patching.circuits import build_circuit

    E = graph.n_edges
    entry = torch.full((E,), len(sizes), dtype=torch.long)
    previous = torch.zeros(E, dtype=torch.bool)
    actual = []
    for i, n in enumerate(sizes):
        c = build_circuit(graph, scores, int(n))  # [E] bool
        if bool((previous & ~c).any()):
            raise SteerscopeError(f"the circuit of {n} edges does not contain the smaller ones",
                                  "report this as a bug")
        entry[c & ~previous] = i
        previous = c
        actual.append(int(c.sum()))
    return actual, entry


def _node_entry(graph, entry: torch.Tensor, n_steps: int) -> list[int]:
    """Per upstream node: the first step where it has an outgoing edge in the circuit."""
    ei = graph.edge_index  # [E, 2]
    out = torch.full((graph.n_up,), n_steps, dtype=torch.long)
    out.scatter_reduce_(0, ei[:, 0], entry, reduce="amin")
    return out.tolist()


def _top_edges(names: list[str], scores: torch.Tensor, mask: torch.Tensor, k: int) -> list:
    idx = mask.nonzero().flatten()
    if idx.numel() == 0:
        return []
    order = idx[torch.argsort(-scores[idx].abs(), stable=True)[:k]]
    return [[names[i], _finite(scores[i])] for i in order.tolist()]


def slider_grid(limit: int) -> list[int]:
    """Extra slider sizes between the curve's: 5, 10, 20, 50, 100, ... up to ``limit``."""
    out, base = [], 1
    while base <= limit:
        out += [n for n in (base, 2 * base, 5 * base) if 5 <= n <= limit]
        base *= 10
    return out


def _steps(curve, n_edges: int, min_size: int | None, max_edges: int) -> tuple[list[int], dict]:
    """Requested sizes (ascending, distinct, ≤ max_edges: the curve's, the minimum circuit's
    and :func:`slider_grid`) and their curve faithfulness (keyed by requested size)."""
    faith = {}
    if curve is not None:
        for n, a, f in zip(curve.sizes, curve.actual, curve.faithfulness):
            faith[int(n)] = _finite(f)
            faith.setdefault(int(a), _finite(f))
        wanted = [int(n) for n in curve.sizes]
    else:
        from steerscope.patching.circuits import default_sizes

        wanted = default_sizes(n_edges)
    if min_size:
        wanted.append(int(min_size))
    wanted += slider_grid(min(max_edges, n_edges))
    sizes = sorted({min(n, n_edges) for n in wanted if 0 < n <= max_edges})
    if not sizes:  # every curve size is too large: show the top max_edges edges
        sizes = [min(max_edges, n_edges)]
    return sizes, faith


def vector_view(result, *, svv: dict | None = None, min_faithfulness: float | None = None,
                max_edges: int = MAX_EDGES, top_edges: int = TOP_EDGES) -> dict[str, Any]:
    """The explorer data of one patched vector from its :class:`PatchingResult` (with or
    without circuits) and its svv report JSON (``svv``, optional)."""
    g = result.graph
    sc = result.scores.get("eap_ig")
    if sc is None or sc.edges is None:
        raise SteerscopeError("the patching result has no EAP-IG edge scores",
                              "re-run the patching stage")
    edges = sc.edges.float()  # [E]
    curve = result.curves.get("eap_ig")
    min_mask = result.circuits.get("eap_ig.min")
    min_size = int(min_mask.sum()) if min_mask is not None and bool(min_mask.any()) else None
    sizes, faith = _steps(curve, g.n_edges, min_size, max_edges)
    actual, entry = circuit_steps(g, edges, sizes)
    # nested circuits of equal size are equal: one step per distinct actual size
    steps, remap = [], []
    for n, a in zip(sizes, actual):
        f = faith.get(n, faith.get(a))
        if n == min_size and min_faithfulness is not None:
            f = _finite(min_faithfulness)
        if steps and steps[-1]["size"] == a:
            last = steps[-1]
            last["min"] = last["min"] or n == min_size
            last["faithfulness"] = f if n == min_size or last["faithfulness"] is None \
                else last["faithfulness"]
        else:
            steps.append({"size": a, "requested": n, "faithfulness": f, "min": n == min_size})
        remap.append(len(steps) - 1)
    n_steps = len(steps)
    entry = torch.tensor(remap + [n_steps], dtype=torch.long)[entry]  # [E]
    default = next((i for i, s in enumerate(steps) if s["min"]), n_steps - 1)

    node_entry = _node_entry(g, entry, n_steps)
    kinds = ("steer", "attn", "mlp")
    node_scores = sc.nodes.float() if sc.nodes is not None else None
    shown = [u for u in range(g.n_up) if node_entry[u] < n_steps]
    index = {u: i for i, u in enumerate(shown)}
    consumers = g.consumers()
    ei = g.edge_index
    names = g.edge_names
    inputs_of: dict[int, list[int]] = {}
    for d, us in enumerate(consumers):
        for u in us:
            inputs_of.setdefault(u, []).append(d)
    nodes = []
    for u in shown:
        name = g.up_names[u]
        kind = kinds[int(g.up_kind[u])]
        into = torch.isin(ei[:, 1], torch.tensor(inputs_of.get(u, []), dtype=torch.long))
        nodes.append({
            "id": name, "kind": kind, "layer": int(g.up_layer[u]),
            "index": int(name.split(".h")[1]) if kind == "attn" else 0,
            "score": _finite(node_scores[u]) if node_scores is not None else None,
            "entry": int(node_entry[u]),
            "top_in": _top_edges(names, edges, into, top_edges),
            "top_out": _top_edges(names, edges, ei[:, 0] == u, top_edges),
        })
    logits = len(nodes)
    nodes.append({"id": "logits", "kind": "logits", "layer": g.n_layers, "index": 0,
                  "score": None, "entry": 0, "top_out": [],
                  "top_in": _top_edges(names, edges, ei[:, 1] == g.n_down - 1, top_edges)})
    inc, _ = g.edge_types()
    rows = []
    for e in (entry < n_steps).nonzero().flatten().tolist():
        u, d = ei[e].tolist()
        targets = [index[c] for c in consumers[d] if c in index] if consumers[d] else [logits]
        rows.append([index[u], targets, inc[e], _finite(edges[e]), int(entry[e]),
                     g.down_names[d]])
    rows.sort(key=lambda r: (r[4], -abs(r[3] or 0.0)))
    view = {"total_edges": g.n_edges, "steps": steps, "default_step": default,
            "nodes": nodes, "edges": rows,
            "steer_score": _finite(node_scores[0]) if node_scores is not None else None}
    if svv:
        view["svv"] = svv_tokens(svv, {n["id"] for n in nodes if n["kind"] == "attn"})
    return view


def svv_tokens(report: dict, heads: set[str]) -> dict[str, Any]:
    """The svv report's logit-lens tokens of ``heads`` and of the SUM over all heads."""
    out: dict[str, Any] = {"heads": {}}
    for h in report.get("heads", []):
        if h["head"] in heads:
            out["heads"][h["head"]] = {"tokens": [t for t, _ in h["tokens"]],
                                       "logits": [_finite(v) for _, v in h["tokens"]],
                                       "flipped": bool(h.get("flipped")),
                                       "norm": _finite(h.get("norm", float("nan")))}
    total = report.get("total")
    if total:
        out["sum"] = {"tokens": [t for t, _ in total["tokens"]],
                      "logits": [_finite(v) for _, v in total["tokens"]]}
    return out


def explorer_data(results: dict, stage_dirs: dict[str, Path], *,
                  max_edges: int = MAX_EDGES) -> dict[str, Any] | None:
    """The explorer's data for every patched vector of a run (``stage_dirs``: stage name →
    folder), or None when the run has no patching results."""
    from steerscope.patching import PatchingResult

    if not isinstance(max_edges, int) or max_edges < 1:
        raise SteerscopeError(f"the explorer's largest circuit must be a positive number of "
                              f"edges, got {max_edges!r}", "pass --max-edges 1500")
    source = stage_dirs.get("circuits")
    patched = stage_dirs.get("patching")
    if source is None and patched is None:
        return None
    folder = source if source is not None else patched
    methods = sorted(p.name for p in folder.iterdir() if (p / "result.json").is_file())
    order = list(results.get("vectors", {}))
    methods.sort(key=lambda m: (order.index(m) if m in order else len(order), m))
    if not methods:
        return None
    circuits = results.get("circuits") or {}
    vectors, graph = {}, None
    for m in methods:
        res = PatchingResult.load(folder / m)
        svv_path = stage_dirs["svv"] / f"{m}.json" if "svv" in stage_dirs else None
        svv = (json.loads(svv_path.read_text(encoding="utf-8"))
               if svv_path is not None and svv_path.is_file() else None)
        vectors[m] = vector_view(res, svv=svv, max_edges=max_edges,
                                 min_faithfulness=(circuits.get(m) or {}).get("min_faithfulness"))
        vectors[m]["meta"] = {k: res.meta.get(k) for k in ("metric", "tau", "reverse", "steps")}
        graph = res.graph.to_json()
    threshold = next((c.get("threshold") for c in circuits.values() if c.get("threshold")), 0.85)
    return assemble(vectors, graph, threshold=threshold, max_edges=max_edges,
                    sparsify=results.get("sparsify"))


def assemble(vectors: dict[str, dict], graph: dict, *, threshold: float = 0.85,
             max_edges: int = MAX_EDGES, sparsify: dict | None = None) -> dict[str, Any]:
    """The explorer data from per-vector views (:func:`vector_view`) on one graph."""
    return {"version": EXPLORER_VERSION, "methods": list(vectors), "graph": graph,
            "threshold": threshold, "max_edges": max_edges, "vectors": vectors,
            "sparsify": sparsify}


def results_explorer_data(results: dict, *, svv: dict | None = None, threshold: float = 0.85,
                          max_edges: int = MAX_EDGES) -> dict[str, Any]:
    """The explorer data of in-memory :class:`PatchingResult` objects (``{name: result}``,
    one model and steering layer) and optional svv reports (``{name: report JSON}``), e.g. to
    show a circuit in a notebook with :func:`steerscope.report.explorer.explorer_section`."""
    if not results:
        raise SteerscopeError("no patching result to explore", "pass {name: PatchingResult}")
    vectors = {m: vector_view(r, svv=(svv or {}).get(m), max_edges=max_edges)
               for m, r in results.items()}
    for m, r in results.items():
        vectors[m]["meta"] = {k: r.meta.get(k) for k in ("metric", "tau", "reverse", "steps")}
    graph = next(iter(results.values())).graph.to_json()
    return assemble(vectors, graph, threshold=threshold, max_edges=max_edges)
