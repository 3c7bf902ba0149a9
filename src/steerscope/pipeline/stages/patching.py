"""Stage ``patching``: EAP-IG scores of each patched vector on its flipped test prompts,
paper section 4.

``patching`` (deps model, data, vectors, trained, evaluation), for each patched method ``m``
(``patching.methods``; None: those of dim/ntp/po in ``vectors.methods``):

1. greedy base and steered rollouts of the test prompts (present with
   ``evaluation.bypass_alpha``, absent with ``evaluation.induce_alpha``), in fixed batches
   of ``patching.batch_size``;
2. the flipped prompts (``patching.flip``: ``refusal`` = the refusal outcome flipped, the
   paper's rule, with present outcomes from the ``patching.judge`` jailbreak judge when set
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

Config section ``patching`` (:class:`PatchingSection`; the EAP-IG defaults are read from
:func:`steerscope.patching.run.score_vector`); results.json section ``edge_types``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from steerscope.artifacts import atomic_write_json
from steerscope.errors import SteerscopeError
from steerscope.patching.data import datasets_from_rollouts, rollouts
from steerscope.patching.example_files import save_examples
from steerscope.patching.run import score_vector
from steerscope.patching_conventions import GRAD_AT, LOGITS_AT, POOLING
from steerscope.pipeline import distributed
from steerscope.pipeline.checks import fail, known, library_default, positive_int
from steerscope.pipeline.registry import StageOutput, register_stage
from steerscope.pipeline.stages.common import (
    load_vectors,
    read_json,
    read_prompts,
)
from steerscope.pipeline.stages.vectors import TRAINED_METHODS
from steerscope.pipeline.strength import method_alphas

PATCHED_DEFAULT = ("dim", *TRAINED_METHODS)
PATCHING_FILE = "patching.json"
EDGE_TYPES = ("q", "k", "v", "mlp", "logits")
PATCHING_FLIPS = ("refusal", "tokens")
PATCHING_METRICS = ("logit_diff", "kl")
PATCHING_GRAPHS = ("fine", "coarse")


def _ig(name: str):
    return library_default(score_vector, name)


@dataclass
class PatchingSection:
    """EAP-IG patching of each patched vector on flipped test prompts (paper section 4)."""

    enabled: bool = True
    """Run this stage (false: skip it; results.json marks it not run)."""
    methods: list[str] | None = None
    """Patched vectors (None: dim and the trained ones in vectors.methods)."""
    n_prompts: int = library_default(datasets_from_rollouts, "max_per_dataset")
    """Most flipped prompts kept per patching dataset (present/absent x steered/base)."""
    ig_steps: int = _ig("steps")
    """EAP-IG integration steps T."""
    max_new_tokens: int = library_default(rollouts, "max_new_tokens")
    """Tokens per rollout (greedy)."""
    batch_size: int = 16
    """Rollout batch (the sharding unit)."""
    flip: str = PATCHING_FLIPS[0]
    """refusal: the behaviour outcome flipped (the paper) | tokens: the steered tokens
    differ from the base ones (models that never show the behaviour)."""
    judge: str | None = None
    """With flip: refusal, the judge of the present side's outcomes (a get_judge spec; the
    paper: llamaguard, steered unsafe and base safe; None: the behaviour's judge, offline).
    The absent side: the behaviour's judge."""
    metric: str = _ig("metric")
    """Patching metric: logit_diff (logit difference of the steered vs unsteered greedy
    tokens where they differ) | kl (KL of steered to unsteered next-token distributions)."""
    tau: float = _ig("tau")
    """With metric: kl, only positions whose steered-vs-unsteered KL is at least tau count
    (0: every position with KL > 0)."""
    reverse: bool = _ig("reverse")
    """Reverse roles: clean = unsteered, corrupt = steered."""
    graph: str = PATCHING_GRAPHS[0]
    """fine: per-head q/k/v inputs | coarse: q/k/v grouped per layer."""
    grad_at: str = _ig("grad_at")
    """EAP-IG gradient at each downstream node's pre-norm residual (pre_norm) or its
    post-norm input, norm Jacobian ignored (post_norm, the paper)."""
    logits_at: str = _ig("logits_at")
    """Models with a final-logit soft-cap (Gemma-2): the metric reads the logits after the
    cap (post_cap) or before it (pre_cap, the released code)."""
    pooling: str = _ig("pooling")
    """Combine examples by the mean over datasets (dataset_mean) or pooled by unmasked
    positions (positions, the released code)."""
    top_n: int = _ig("top_k")
    """Top edges (by |score|) counted in the edge-type shares."""
    options: dict[str, Any] = field(default_factory=dict)
    """Extra keyword options its stage declares (register_stage(options=...))."""

    def check(self, cfg) -> None:
        """Patched methods among vectors.methods, positive sizes, known conventions, a
        judge only with flip: refusal, tau only with metric: kl."""
        pa = self
        if pa.methods is not None:
            if not pa.methods:
                fail("patching.methods", "is empty", "list at least one method or drop the key")
            known("patching.methods", pa.methods, cfg.vectors.methods)
        positive_int("patching.n_prompts", pa.n_prompts)
        positive_int("patching.ig_steps", pa.ig_steps)
        positive_int("patching.max_new_tokens", pa.max_new_tokens)
        positive_int("patching.batch_size", pa.batch_size)
        positive_int("patching.top_n", pa.top_n)
        known("patching.flip", [pa.flip], PATCHING_FLIPS)
        if pa.judge is not None:
            if not pa.judge.strip():
                fail("patching.judge", "is empty", "name a judge (e.g. llamaguard) or drop the key")
            if pa.flip != "refusal":
                fail("patching.judge", f"applies to patching.flip: refusal, not '{pa.flip}'",
                     "drop patching.judge or set patching.flip: refusal")
        known("patching.metric", [pa.metric], PATCHING_METRICS)
        known("patching.graph", [pa.graph], PATCHING_GRAPHS)
        known("patching.grad_at", [pa.grad_at], GRAD_AT)
        known("patching.logits_at", [pa.logits_at], LOGITS_AT)
        known("patching.pooling", [pa.pooling], POOLING)
        if not (math.isfinite(pa.tau) and pa.tau >= 0):
            fail("patching.tau", f"must be a finite number >= 0, got {pa.tau}", "use e.g. 0 or 1")
        if pa.tau and pa.metric != "kl":
            fail("patching.tau", "applies to metric kl only", "drop it or set patching.metric: kl")


def patched_methods(cfg) -> list[str]:
    """The methods the patching stage analyses: ``patching.methods``, or those of dim, ntp,
    po that are in ``vectors.methods`` (in that order)."""
    if cfg.patching.methods is not None:
        return list(cfg.patching.methods)
    return [m for m in PATCHED_DEFAULT if m in cfg.vectors.methods]


def token_flips(rolls: list, present: bool) -> list:
    """Rollouts relabelled for ``patching.flip: tokens``: a prompt counts as flipped when its
    steered greedy tokens differ from the base ones (present side: the base shows the
    behaviour, the steered does not; absent side: the reverse), so
    :func:`datasets_from_rollouts` keeps exactly those."""
    out = []
    for r in rolls:
        changed = r.steered_ids != r.base_ids
        base = present if changed else False
        steered = (not present) if changed else False
        out.append(dataclasses.replace(r, base_refused=base, steered_refused=steered))
    return out


def _units(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def patching_datasets(lm, vector, present: list[str], absent: list[str], *, section,
                      bypass_alpha: float, induce_alpha: float, dist=None,
                      judge=None, presence=None) -> tuple[dict, dict]:
    """The four patching datasets of one vector from the test prompts, with rollouts cut in
    fixed batches (units sharded over ``dist``'s ranks). ``judge`` (used on rank 0 only, with
    ``flip: refusal``): present outcomes from this jailbreak judge. Returns
    ``(datasets, counts)``, ``counts`` = prompts rolled out and flipped per prompt set.
    ``presence``: the behaviour judge (``.judge(prompts, responses)``, called once per
    rollout batch with the raw test prompts; None: the paper's refusal substrings)."""
    from steerscope.patching.data import judge_present_rollouts

    dist = dist or distributed.Dist()
    units = [("present", c) for c in _units(present, section.batch_size)] + \
        [("absent", c) for c in _units(absent, section.batch_size)]

    def run(unit):
        kind, chunk = unit
        alpha = bypass_alpha if kind == "present" else induce_alpha
        return rollouts(lm.model, lm.tokenizer, chunk, vector, alpha,
                        max_new_tokens=section.max_new_tokens, batch_size=section.batch_size,
                        presence=presence)

    done = distributed.map_units(run, units, dist)
    rolls = {"present": [], "absent": []}
    for (kind, _), rs in zip(units, done):
        rolls[kind].extend(rs)
    if section.flip == "tokens":
        rolls = {k: token_flips(v, k == "present") for k, v in rolls.items()}
    elif section.judge is not None:
        judged = None
        if dist.is_main:
            if judge is None:
                from steerscope.evaluate import get_judge

                judge = get_judge(section.judge)
            judged = judge_present_rollouts(rolls["present"], judge)
        rolls["present"] = distributed.broadcast(judged, dist)
    flipped = {
        "present": sum(r.base_refused and not r.steered_refused for r in rolls["present"]),
        "absent": sum(r.steered_refused and not r.base_refused for r in rolls["absent"]),
    }
    datasets = datasets_from_rollouts(rolls["present"], rolls["absent"],
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
    lm = ctx.model()
    vectors = load_vectors(ctx.config, inputs, lm.arch)
    p = read_prompts(inputs["data"])
    judge = None
    if section.flip == "refusal" and section.judge is not None and ctx.is_main:
        from steerscope.evaluate import get_judge

        judge = get_judge(section.judge, trust_remote_code=ctx.config.allow_code)
    presence = ctx.behaviour.make_judge()
    methods, skipped, summary = {}, {}, {}
    alphas = method_alphas(ctx.config, inputs, vectors)  # method -> (remove α, induce α)
    for m in patched_methods(ctx.config):
        if m not in vectors:
            raise SteerscopeError(f"patching.methods names '{m}', which the run did not make",
                                  "list methods of vectors.methods")
        v = vectors[m]
        datasets, counts = patching_datasets(
            lm, v, p["present_test"], p["absent_test"], section=section,
            bypass_alpha=alphas[m][0], induce_alpha=alphas[m][1], dist=ctx.dist,
            judge=judge, presence=presence)
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
            save_examples(ctx.out / m, datasets)
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
    """``edge_types``: per patched method, the edge-type shares of its top edges."""
    info = read_json(out, PATCHING_FILE)
    return {"edge_types": {m: e["edge_types"] for m, e in info["methods"].items()}}


register_stage("patching", deps=("model", "data", "vectors", "trained", "strength",
                               "evaluation"),
               section="patching", config=PatchingSection, results=patching_results,
               distributed=True, order=60)(patching_stage)
