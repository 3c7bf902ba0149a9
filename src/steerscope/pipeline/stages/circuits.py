"""Stage ``circuits`` (deps model, vectors, trained, patching): reads the patching stage's
folders and, per method, adds the faithfulness curve over ``circuits.sizes`` (or the grid ``circuits.grid_step`` up
to ``circuits.grid_max``; with ``circuits.position_metrics`` also the released code's
per-position metrics at each size), the minimum faithful circuit (``circuits.threshold``),
its complement and ``circuits.n_random`` random circuits of twice its size
(``circuits.random``: ``pruned`` or ``unpruned``; faithfulness measured with
``circuits.metric``, recorded as ``circuits.<m>.metric`` and ``interchange.metric``;
:func:`~steerscope.patching.run.add_circuits`), saved as ``m/`` (the scores again,
``circuits.safetensors``, curves and summary in ``result.json``); with several methods
:func:`~steerscope.patching.run.compare_vectors` gives ``comparison.json`` (overlap, Jaccard,
interchange), and ``circuits.json`` holds the three results.json sections. Because the
circuits have their own stage and config section, changing ``circuits.*`` never recomputes
the EAP-IG scores.

Config section ``circuits`` (:class:`CircuitsSection`; defaults read from
:func:`steerscope.patching.run.add_circuits`); results.json sections ``circuits``,
``overlap`` and ``interchange``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from steerscope.artifacts import atomic_write_json
from steerscope.patching.circuits import RANDOM_KINDS
from steerscope.patching.example_files import load_examples
from steerscope.patching.run import add_circuits
from steerscope.patching_conventions import FAITHFULNESS_METRICS
from steerscope.pipeline.checks import fail, known, library_default, positive_int, size_list
from steerscope.pipeline.registry import StageOutput, register_stage
from steerscope.pipeline.stages.common import load_vectors, read_json

CIRCUITS_FILE = "circuits.json"
COMPARISON_FILE = "comparison.json"


def _lib(name: str):
    return library_default(add_circuits, name)


@dataclass
class CircuitsSection:
    """Circuits from the patching scores: faithfulness, minimum circuit, comparisons."""

    enabled: bool = True
    """Run this stage (false: skip it; results.json marks it not run)."""
    sizes: list[int] | None = _lib("sizes")
    """Circuit sizes in edges for the faithfulness curve (None: 0.5% to 100% of the edges in
    11 steps)."""
    grid_step: float | None = _lib("grid_step")
    """Instead of sizes: every grid_step fraction of the edges (the paper's figure:
    0.0341)."""
    grid_max: float = _lib("grid_max")
    """Largest fraction of the edges on the grid_step grid."""
    threshold: float = _lib("threshold")
    """Faithfulness a circuit must reach to be the minimum faithful circuit."""
    n_random: int = _lib("n_random")
    """Random circuits of twice the minimum size (the random control)."""
    random: str = _lib("random_kind")
    """Random-circuit control: pruned (to steer->logits paths and refilled to size like a
    real circuit, the paper's) | unpruned."""
    position_metrics: bool = _lib("position_metrics")
    """Also the released code's per-position faithfulness (KL ratio, directional KL, token
    match, log-prob) on the steered responses."""
    metric: str = _lib("faithfulness_metric")
    """What the minimum circuit, complement, random control and interchange are measured
    with: logit_diff (the ratio over the 4 datasets) | kl_ratio | dir_kl | token_match |
    logprob (the paper's curves)."""
    refine_steps: int = _lib("refine_steps")
    """Bisection steps refining the minimum circuit size."""
    overlap_sizes: list[int] | None = None
    """Matched sizes of the circuit overlap (None: each minimum circuit's size)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Extra keyword options its stage declares (register_stage(options=...))."""

    def check(self, cfg) -> None:
        """Threshold and fractions in range, one of sizes / grid_step, known random kind."""
        c = self
        if not 0 < c.threshold <= 1:
            fail("circuits.threshold", f"must be in (0, 1], got {c.threshold}", "use e.g. 0.85")
        size_list("circuits.sizes", c.sizes)
        if c.grid_step is not None:
            if c.sizes is not None:
                fail("circuits.grid_step", "and circuits.sizes are both set",
                     "keep one: a size grid or a list of sizes")
            if not 0 < c.grid_step <= 1:
                fail("circuits.grid_step", f"must be a fraction in (0, 1], got {c.grid_step}",
                     "use e.g. 0.0341 (the paper's grid)")
        if not 0 < c.grid_max <= 1:
            fail("circuits.grid_max", f"must be a fraction in (0, 1], got {c.grid_max}",
                 "use e.g. 1.0")
        known("circuits.random", [c.random], RANDOM_KINDS)
        known("circuits.metric", [c.metric], FAITHFULNESS_METRICS)
        positive_int("circuits.n_random", c.n_random)
        if c.refine_steps < 0:
            fail("circuits.refine_steps", f"must be >= 0, got {c.refine_steps}", "use e.g. 4")
        size_list("circuits.overlap_sizes", c.overlap_sizes)


def _finite(x) -> float | None:
    return float(x) if x is not None and x == x and abs(x) != float("inf") else None


def circuit_entry(result, threshold: float) -> dict[str, Any]:
    """The ``circuits.<method>`` entry of results.json from a result with circuits."""
    s = result.tables["summary"]
    curve = result.curves["eap_ig"]
    rnd = [f for f in s["random_2x_faithfulness"] if f == f]
    entry = {
        "total_edges": int(s["n_edges"]),
        "faithfulness_curve": [[int(n), float(f)] for n, f in
                               zip(curve.actual, curve.faithfulness) if f == f],
        "min_faithful_size": int(s["min_faithful_size"]) if s["faithful"] else None,
        "complement_faithfulness": _finite(s["complement_faithfulness"]),
        "random_faithfulness": _finite(sum(rnd) / len(rnd)) if rnd else None,
        "min_faithfulness": _finite(s["min_faithfulness"]),
        "threshold": threshold,
        "m_full": _finite(s["m_full"]), "m_empty": _finite(s["m_empty"]),
        "graph": "coarse" if result.graph.coarse else "fine",
        "reverse": bool(s.get("reverse", result.meta.get("reverse", False))),
        "random_kind": s.get("random_kind", "unpruned"),
        "metric": s.get("faithfulness_metric", "logit_diff"),
    }
    if curve.positions is not None:
        entry["position_metrics"] = [
            {"size": int(n), **{k: _position_entry(v) for k, v in per.items()}}
            for n, per in zip(curve.actual, curve.positions)]
        entry["min_size_by_metric"] = s["min_size_by_metric"]
    return entry


def _position_entry(summary: dict) -> dict[str, Any]:
    """One set's position metrics for results.json (``overall``/``differ``/``same`` means;
    ``logprob`` overall only)."""
    from steerscope.patching.faithfulness import POSITION_METRICS

    out: dict[str, Any] = {"n_positions": summary.get("n_positions", 0),
                           "base_match": _finite(summary.get("base_match"))}
    for k in POSITION_METRICS:
        if k in summary:
            out[k] = {part: _finite(v) for part, v in summary[k].items()}
    return out


def overlap_sizes(section, results: dict) -> list[int]:
    """The matched sizes of the overlap matrices: ``circuits.overlap_sizes``, else the size
    of each method's minimum circuit (sorted, distinct)."""
    if section.overlap_sizes is not None:
        return sorted(set(section.overlap_sizes))
    return sorted({int(r.circuits["eap_ig.min"].sum()) for r in results.values()})


def overlap_by_size(results: dict, sizes: list[int]) -> list[dict[str, Any]]:
    """For each size n: ``|C_i ∩ C_j| / min(|C_i|, |C_j|)`` of the methods' top-n circuits."""
    from steerscope.patching.circuits import build_circuit, overlap

    names = list(results)
    graph = results[names[0]].graph
    rows = []
    for n in sizes:
        cs = [build_circuit(graph, results[m].scores["eap_ig"].edges, int(n)) for m in names]
        rows.append({"size": int(n), "matrix": [[_finite(overlap(a, b)) for b in cs]
                                                for a in cs],
                     "actual": [int(c.sum()) for c in cs]})
    return rows


def circuits_stage(ctx, section, inputs) -> dict[str, Any]:
    """Faithfulness curves, minimum faithful circuits and controls per patched method; the
    overlap at matched sizes and the interchange matrix across methods."""
    from steerscope.patching import PatchingResult
    from steerscope.patching.run import compare_vectors

    lm = ctx.model()
    vectors = load_vectors(ctx.config, inputs, lm.arch)
    patched = inputs["patching"]
    results, data, entries = {}, {}, {}
    for m in patched.outputs.get("methods", {}):
        folder = patched.path(patched.outputs["methods"][m]["dir"])
        res = PatchingResult.load(folder)
        examples = load_examples(folder)
        add_circuits(lm.model, vectors[m], examples, res, arch=lm.arch, sizes=section.sizes,
                     grid_step=section.grid_step, grid_max=section.grid_max,
                     threshold=section.threshold, refine_steps=section.refine_steps,
                     n_random=section.n_random, random_kind=section.random,
                     position_metrics=section.position_metrics,
                     faithfulness_metric=section.metric, progress=ctx.progress)
        res.save(ctx.out / m)
        results[m], data[m] = res, (examples, vectors[m])
        entries[m] = circuit_entry(res, section.threshold)
        e = entries[m]
        ctx.log(f"{m}: minimum faithful circuit ({e['metric']}) {e['min_faithful_size']} of "
                f"{e['total_edges']} edges (faithfulness {e['min_faithfulness']}), complement "
                f"{e['complement_faithfulness']}, random 2x ({e['random_kind']}) "
                f"{e['random_faithfulness']}")
    out: dict[str, Any] = {"circuits": entries}
    if len(results) > 1:
        names = list(results)
        sizes = overlap_sizes(section, results)
        cmp = compare_vectors(lm.model, results, data, sizes=sizes,
                              faithfulness_metric=section.metric)
        atomic_write_json(ctx.out / COMPARISON_FILE, cmp)
        out["overlap"] = {"methods": names, "by_size": overlap_by_size(results, sizes),
                          "min_circuits": [[_finite(cmp["overlap"][a][b]) for b in names]
                                           for a in names]}
        out["interchange"] = {"methods": names, "metric": section.metric,
                              "matrix": [[_finite(cmp["interchange"][a][b]) for b in names]
                                         for a in names]}
    atomic_write_json(ctx.out / CIRCUITS_FILE, out)
    return {"methods": {m: {"dir": m} for m in results}, "file": CIRCUITS_FILE}


def circuits_results(out: StageOutput, so_far: dict) -> dict[str, Any]:
    """``circuits`` per method, and ``overlap``/``interchange`` with several methods."""
    return read_json(out, CIRCUITS_FILE)


register_stage("circuits", deps=("model", "vectors", "trained", "patching"),
               section="circuits", config=CircuitsSection,
               results=circuits_results, order=70)(circuits_stage)
