"""Pipeline stages ``patching`` (EAP-IG scores) and ``circuits`` (faithfulness, minimum
circuits, overlap, interchange), paper section 4.

``patching`` (deps model, data, vectors, trained, evaluation), for each patched method ``m``
(``patching.methods``; None: those of dim/ntp/po in ``vectors.methods``):

1. greedy base and steered rollouts of the test prompts (harmful with
   ``evaluation.bypass_alpha``, harmless with ``evaluation.induce_alpha``), in fixed batches
   of ``patching.batch_size``;
2. the flipped prompts (``patching.flip``: ``refusal`` = the refusal outcome flipped, the
   paper's rule, with harmful outcomes from the ``patching.judge`` jailbreak judge when set
   (the paper: LlamaGuard; steered unsafe and base safe; run on rank 0 and broadcast), else
   from the refusal substrings; ``tokens`` = the steered greedy tokens differ from the base
   ones, for models that never refuse) → the four patching datasets, at most
   ``patching.n_prompts`` each (:func:`~steerscope.patching.data.datasets_from_rollouts`);
3. EAP-IG with ``patching.ig_steps`` steps (:func:`~steerscope.patching.run.score_vector`).

It writes ``m/`` (:meth:`PatchingResult.save`: ``scores["eap_ig"]`` with the steering-node
``steer_grad``/``steer_ie``, ``tables["head_scores"]``) and ``m/examples.json``, plus
``patching.json`` (per method: example counts, edge types of the top ``patching.top_n``
edges). Rollout batches and EAP-IG examples are units spread over the ranks under torchrun
and gathered in order, so the files do not depend on the number of processes. A method with
no flipped prompt is skipped (``outputs["skipped"]``); none at all is an error.

``circuits`` (deps model, vectors, trained, patching) reads those folders and, per method,
adds the faithfulness curve over ``circuits.sizes`` (or the grid ``circuits.grid_step`` up
to ``circuits.grid_max``; with ``circuits.position_metrics`` also the released code's
per-position metrics at each size), the minimum faithful circuit (``circuits.threshold``),
its complement and ``circuits.n_random`` random circuits of twice its size
(``circuits.random``: ``pruned`` or ``unpruned``; :func:`~steerscope.patching.run.add_circuits`), saved as ``m/`` (the scores again,
``circuits.safetensors``, curves and summary in ``result.json``); with several methods
:func:`~steerscope.patching.run.compare_vectors` gives ``comparison.json`` (overlap, Jaccard,
interchange), and ``circuits.json`` holds the three results.json sections. Because the
circuits have their own stage and config section, changing ``circuits.*`` never recomputes
the EAP-IG scores.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from steerscope.artifacts import atomic_write_json
from steerscope.errors import SteerscopeError
from steerscope.pipeline import distributed
from steerscope.pipeline.registry import StageOutput, register_stage
from steerscope.pipeline.stages import PROMPTS_FILE, _read, load_vectors

PATCHED_DEFAULT = ("dim", "ntp", "po")
EXAMPLES_FILE = "examples.json"
PATCHING_FILE = "patching.json"
CIRCUITS_FILE = "circuits.json"
COMPARISON_FILE = "comparison.json"
EDGE_TYPES = ("q", "k", "v", "mlp", "logits")


def patched_methods(cfg) -> list[str]:
    """The methods the patching stage analyses: ``patching.methods``, or those of dim, ntp,
    po that are in ``vectors.methods`` (in that order)."""
    if cfg.patching.methods is not None:
        return list(cfg.patching.methods)
    return [m for m in PATCHED_DEFAULT if m in cfg.vectors.methods]


def token_flips(rolls: list, harmful: bool) -> list:
    """Rollouts relabelled for ``patching.flip: tokens``: a prompt counts as flipped when its
    steered greedy tokens differ from the base ones (harmful: base "refuses", steered does not;
    harmless: the reverse), so :func:`datasets_from_rollouts` keeps exactly those."""
    out = []
    for r in rolls:
        changed = r.steered_ids != r.base_ids
        base = harmful if changed else False
        steered = (not harmful) if changed else False
        out.append(dataclasses.replace(r, base_refused=base, steered_refused=steered))
    return out


def _units(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def patching_datasets(lm, vector, harmful: list[str], harmless: list[str], *, section,
                      bypass_alpha: float, induce_alpha: float, dist=None,
                      judge=None) -> tuple[dict, dict]:
    """The four patching datasets of one vector from the test prompts, with rollouts cut in
    fixed batches (units sharded over ``dist``'s ranks). ``judge`` (used on rank 0 only, with
    ``flip: refusal``): harmful outcomes from this jailbreak judge. Returns
    ``(datasets, counts)``, ``counts`` = prompts rolled out and flipped per prompt set."""
    from steerscope.patching.data import datasets_from_rollouts, judge_harmful_rollouts, rollouts

    dist = dist or distributed.Dist()
    units = [("harmful", c) for c in _units(harmful, section.batch_size)] + \
        [("harmless", c) for c in _units(harmless, section.batch_size)]

    def run(unit):
        kind, chunk = unit
        alpha = bypass_alpha if kind == "harmful" else induce_alpha
        return rollouts(lm.model, lm.tokenizer, chunk, vector, alpha,
                        max_new_tokens=section.max_new_tokens, batch_size=section.batch_size)

    done = distributed.map_units(run, units, dist)
    rolls = {"harmful": [], "harmless": []}
    for (kind, _), rs in zip(units, done):
        rolls[kind].extend(rs)
    if section.flip == "tokens":
        rolls = {k: token_flips(v, k == "harmful") for k, v in rolls.items()}
    elif section.judge is not None:
        judged = None
        if dist.is_main:
            if judge is None:
                from steerscope.evaluate import get_judge

                judge = get_judge(section.judge)
            judged = judge_harmful_rollouts(rolls["harmful"], judge)
        rolls["harmful"] = distributed.broadcast(judged, dist)
    flipped = {
        "harmful": sum(r.base_refused and not r.steered_refused for r in rolls["harmful"]),
        "harmless": sum(r.steered_refused and not r.base_refused for r in rolls["harmless"]),
    }
    datasets = datasets_from_rollouts(rolls["harmful"], rolls["harmless"],
                                      bypass_alpha=bypass_alpha, induce_alpha=induce_alpha,
                                      max_per_dataset=section.n_prompts)
    counts = {"prompts": {k: len(v) for k, v in rolls.items()}, "flipped": flipped}
    return datasets, counts


def _edge_type_entry(result, top_n: int) -> dict[str, Any]:
    shares = result.tables["edge_types"][f"top{top_n}"]
    return {"top_n": min(top_n, result.graph.n_edges),
            "fractions": {k: shares["incoming"][k] for k in EDGE_TYPES},
            "outgoing": shares["outgoing"]}


# --- patching ------------------------------------------------------------------------------
def patching_stage(ctx, section, inputs) -> dict[str, Any]:
    """Rollouts → flipped prompts → patching datasets → EAP-IG, per patched method."""
    from steerscope.patching.run import score_vector

    lm = ctx.model()
    vectors = load_vectors(ctx.config, inputs, lm.arch)
    p = _read(inputs["data"], PROMPTS_FILE)
    ev = ctx.config.evaluation
    judge = None
    if section.flip == "refusal" and section.judge is not None and ctx.is_main:
        from steerscope.evaluate import get_judge

        judge = get_judge(section.judge)
    methods, skipped, summary = {}, {}, {}
    for m in patched_methods(ctx.config):
        if m not in vectors:
            raise SteerscopeError(f"patching.methods names '{m}', which the run did not make",
                                  "list methods of vectors.methods")
        v = vectors[m]
        datasets, counts = patching_datasets(
            lm, v, p["harmful_test"], p["harmless_test"], section=section,
            bypass_alpha=ev.bypass_alpha, induce_alpha=ev.induce_alpha, dist=ctx.dist,
            judge=judge)
        n = {k: len(x) for k, x in datasets.items()}
        ctx.log(f"{m}: flipped {counts['flipped']} of {counts['prompts']} test prompts; "
                f"examples {n}")
        if not sum(n.values()):
            skipped[m] = counts
            continue
        res = score_vector(lm.model, v, datasets, arch=lm.arch, steps=section.ig_steps,
                           metric=section.metric, tau=section.tau, reverse=section.reverse,
                           coarse=section.graph == "coarse", top_k=section.top_n,
                           grad_at=section.grad_at, logits_at=section.logits_at,
                           pooling=section.pooling,
                           map_fn=lambda fn, xs: distributed.map_units(fn, xs, ctx.dist))
        res.meta.update({"model": lm.model_id, "flip": section.flip, "judge": section.judge,
                         "counts": counts})
        entry = {"dir": m, "examples": n, **counts,
                 "steer_score": float(res.scores["eap_ig"].nodes[0]),
                 "n_edges": res.graph.n_edges, "edge_types": _edge_type_entry(res, section.top_n)}
        if ctx.is_main:
            res.save(ctx.out / m)
            atomic_write_json(ctx.out / m / EXAMPLES_FILE,
                              {k: [e.to_json() for e in x] for k, x in datasets.items()})
        methods[m] = {"dir": m}
        summary[m] = entry
        ctx.log(f"{m}: EAP-IG over {res.graph.n_edges} edges, steering-node score "
                f"{entry['steer_score']:+.4f}")
    if not methods:
        what = "; ".join(f"{m}: {c['flipped']} of {c['prompts']}" for m, c in skipped.items())
        raise SteerscopeError(
            f"patching: no test prompt flipped under steering for any vector ({what})",
            "use more test prompts (data.n_test), longer rollouts (patching.max_new_tokens) or "
            "set patching.flip: tokens (keep prompts whose steered tokens differ)")
    if ctx.is_main:
        atomic_write_json(ctx.out / PATCHING_FILE, {"methods": summary, "skipped": skipped})
    return {"methods": methods, "skipped": sorted(skipped), "file": PATCHING_FILE}


def patching_results(out: StageOutput, so_far: dict) -> dict[str, Any]:
    info = _read(out, PATCHING_FILE)
    return {"edge_types": {m: e["edge_types"] for m, e in info["methods"].items()}}


# --- circuits ------------------------------------------------------------------------------
def load_examples(folder) -> dict[str, list]:
    """The patching examples a patching stage saved (``{dataset: [PatchingExample]}``)."""
    from steerscope.patching.data import PatchingExample

    raw = json.loads((folder / EXAMPLES_FILE).read_text(encoding="utf-8"))
    return {k: [PatchingExample.from_json(e) for e in v] for k, v in raw.items()}


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
    from steerscope.patching.run import add_circuits, compare_vectors

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
                     position_metrics=section.position_metrics, progress=ctx.progress)
        res.save(ctx.out / m)
        results[m], data[m] = res, (examples, vectors[m])
        entries[m] = circuit_entry(res, section.threshold)
        e = entries[m]
        ctx.log(f"{m}: minimum faithful circuit {e['min_faithful_size']} of "
                f"{e['total_edges']} edges (faithfulness {e['min_faithfulness']}), complement "
                f"{e['complement_faithfulness']}, random 2x ({e['random_kind']}) "
                f"{e['random_faithfulness']}")
    out: dict[str, Any] = {"circuits": entries}
    if len(results) > 1:
        names = list(results)
        sizes = overlap_sizes(section, results)
        cmp = compare_vectors(lm.model, results, data, sizes=sizes)
        atomic_write_json(ctx.out / COMPARISON_FILE, cmp)
        out["overlap"] = {"methods": names, "by_size": overlap_by_size(results, sizes),
                          "min_circuits": [[_finite(cmp["overlap"][a][b]) for b in names]
                                           for a in names]}
        out["interchange"] = {"methods": names,
                              "matrix": [[_finite(cmp["interchange"][a][b]) for b in names]
                                         for a in names]}
    atomic_write_json(ctx.out / CIRCUITS_FILE, out)
    return {"methods": {m: {"dir": m} for m in results}, "file": CIRCUITS_FILE}


def circuits_results(out: StageOutput, so_far: dict) -> dict[str, Any]:
    return _read(out, CIRCUITS_FILE)


register_stage("patching", results=patching_results, distributed=True)(patching_stage)
register_stage("circuits", results=circuits_results)(circuits_stage)
