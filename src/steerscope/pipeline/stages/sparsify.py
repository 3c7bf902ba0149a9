"""Stage ``sparsify``: the sparsity sweep of the patched methods
(:func:`steerscope.sparsify.sweep.sparsity_sweep`) with the dimension-level IE taken from
the patching run's EAP-IG steering-node scores (no IG recomputed), and the IoU /
hypergeometric agreement of the kept sets at each τ; files ``sweep.json``,
``agreement.json``, ``retention.png`` (+ ``agreement.png``), ``ie_<method>.safetensors``.

Config section ``sparsify`` (:class:`SparsifySection`; rules, taus and seed default to
:func:`~steerscope.sparsify.sweep.sparsity_sweep`'s). Rule names are the library's
(:data:`steerscope.sparsify.RULES`: ``gradient``, ``ie``, ``magnitude``, ``random``); the
older config names ``grad``, ``bottomk``, ``dropout`` are accepted as aliases
(:data:`~steerscope.sparsify.RULE_ALIASES`), and results.json keys each rule by the name the
config lists. Steering coefficients and the batch size come from the ``evaluation`` section.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from steerscope.errors import SteerscopeError
from steerscope.pipeline.checks import fail, known, library_default, positive_int
from steerscope.pipeline.registry import StageOutput, register_stage
from steerscope.pipeline.stages.common import (
    first,
    patched_vectors,
    patching_result,
    read_json,
    read_prompts,
    single_layer_only,
)
from steerscope.pipeline.strength import method_alphas, reference_ce
from steerscope.sparsify.rules import RULE_ALIASES, RULES, canonical_rule
from steerscope.sparsify.sweep import sparsity_sweep

SWEEP_FILE = "sweep.json"
AGREEMENT_FILE = "agreement.json"
# every accepted config rule name -> the library's rule name
RULE_NAMES = {**{r: r for r in RULES}, **RULE_ALIASES}


def _lib(name: str):
    return library_default(sparsity_sweep, name)


@dataclass
class SparsifySection:
    """The sparsity sweep of the patched methods at each τ (every rule at that k)."""

    enabled: bool = True
    """Run this stage (false: skip it; results.json marks it not run)."""
    rules: list[str] = field(default_factory=lambda: list(_lib("rules")))
    """Sparsification rules compared: gradient | ie | magnitude | random."""
    taus: list[float] = field(default_factory=lambda: list(_lib("taus")))
    """Gradient-rule thresholds tau; every rule is compared at the number of dimensions each
    tau keeps."""
    n_prompts: int | None = None
    """First N test prompts per side (None: all)."""
    max_new_tokens: int | None = None
    """Tokens per steered generation (None: evaluation.max_new_tokens)."""
    seed: int = _lib("seed")
    """Seed of the random rule's dimension sets."""
    options: dict[str, Any] = field(default_factory=dict)
    """Extra keyword options its stage declares (register_stage(options=...))."""

    def check(self, cfg) -> None:
        """Known rules (aliases too, each rule once), non-negative finite taus, positive
        sizes, non-empty lists; a single-layer vector (no ``vectors.layers`` list)."""
        single_layer_only(cfg, "sparsify", self.enabled)
        known("sparsify.rules", self.rules, list(RULE_NAMES))
        if len({canonical_rule(r) for r in self.rules}) != len(self.rules):
            fail("sparsify.rules", "lists a rule twice (under its name and an alias)",
                 "list each rule once")
        for t in self.taus:
            if not (math.isfinite(t) and t >= 0):
                fail("sparsify.taus", f"has a negative or non-finite threshold {t}",
                     "use values >= 0")
        positive_int("sparsify.n_prompts", self.n_prompts, allow_none=True)
        positive_int("sparsify.max_new_tokens", self.max_new_tokens, allow_none=True)
        if not self.taus:
            fail("sparsify.taus", "is empty", "list at least one threshold, e.g. [0, 1]")
        if not self.rules:
            fail("sparsify.rules", "is empty", "list at least one rule, e.g. [gradient, ie]")


def patching_ie(patching: StageOutput, method: str):
    """The dimension-level IE [d] of ``method`` from the patching run's EAP-IG scores
    (:func:`steerscope.patching.steer_dimension_scores`)."""
    from steerscope.patching.scores import steer_dimension_scores

    res = patching_result(patching, method)
    if "eap_ig" not in res.scores:
        raise SteerscopeError(f"the patching result of '{method}' has no EAP-IG scores",
                              "rerun the patching stage")
    _, ie = steer_dimension_scores(res.scores["eap_ig"])
    return ie


def sparsify_stage(ctx, section, inputs) -> dict[str, Any]:
    """The sparsity sweep of every patched method at each τ of ``sparsify.taus`` (rules
    ``sparsify.rules`` at equal sparsity) on the first ``sparsify.n_prompts`` test prompts of
    each set, with the IE of the patching run; agreement of the methods' kept sets."""
    from safetensors.torch import save_file

    from steerscope.artifacts import atomic_write

    lm = ctx.model()
    vectors = patched_vectors(ctx, inputs, lm.arch)
    if not vectors:
        raise SteerscopeError("the patching stage analysed no method",
                              "check patching.methods and the patching stage's log")
    ies = {}
    for m in vectors:
        ie = patching_ie(inputs["patching"], m)
        ies[m] = ie
        atomic_write(ctx.out / f"ie_{m}.safetensors",
                     lambda tmp, t=ie: save_file({"ie": t.float().contiguous()}, tmp))
    p = read_prompts(inputs["data"])
    ev = ctx.config.evaluation
    max_new = section.max_new_tokens if section.max_new_tokens is not None else ev.max_new_tokens
    res = sparsity_sweep(
        lm.model, lm.tokenizer, vectors, ies, first(p["present_test"], section.n_prompts),
        first(p["absent_test"], section.n_prompts), taus=section.taus,
        rules=[canonical_rule(r) for r in section.rules], seed=section.seed,
        bypass_alpha=ev.bypass_alpha, induce_alpha=ev.induce_alpha, max_new_tokens=max_new,
        batch_size=ev.batch_size, arch=lm.arch, progress=ctx.progress and ctx.is_main,
        behaviour=ctx.behaviour, method_alphas=method_alphas(ctx.config, inputs, vectors))
    sweep_coherence(lm, res, vectors, reference_ce(lm, inputs, ev.batch_size), ev)
    res.save(ctx.out)
    for line in res.table().splitlines():
        ctx.log(line)
    ctx.log(f"{res.config['generations']} distinct steered generations")
    return {"file": SWEEP_FILE, "agreement": AGREEMENT_FILE, "methods": list(vectors),
            "rules": list(section.rules), "generations": res.config["generations"]}


def sweep_coherence(lm, res, dense: dict, reference, ev) -> None:
    """Add ``coherence`` (effect → the coherence columns of
    :mod:`steerscope.evaluate.coherence`) to every point of the sweep, in place; each
    distinct (vector, set, α) is measured once."""
    from steerscope.evaluate.coherence import row_coherence

    by_sha = {sv.sha256: sv for sv in [*dense.values(), *res.vectors.values()]}
    done: dict[tuple, dict] = {}
    for pt in res.points:
        cols = {}
        for e in res.formatted:
            key = (pt["vector_sha256"], e, pt[f"{e}_alpha"])
            if key not in done:
                got = res.outcomes[key]
                done[key] = row_coherence(
                    lm.model, lm.tokenizer, res.formatted[e], got.completions, got.present,
                    use="induce" if e == "induce" else "remove", steerer=by_sha.get(key[0]),
                    alpha=key[2], reference=reference if key[0] in by_sha else None,
                    key=key[0], arch=lm.arch,
                    fluency_threshold=ev.fluency_threshold, batch_size=ev.batch_size)
            cols[e] = done[key]
        pt["coherence"] = cols


def side_coherence(by_effect: dict | None) -> dict | None:
    """A sweep point's ``coherence`` (effect → columns) keyed by side (bypass → present,
    induce → absent)."""
    if by_effect is None:
        return None
    return {"present": by_effect.get("bypass"), "absent": by_effect.get("induce")}


def sparsify_section(sweep: dict, rules: list[str]) -> dict[str, Any]:
    """The ``sparsify`` results section from a ``sweep.json`` object.

    ``{method: {rule: [point]}}`` with the rule names as the config lists them (``rules``
    order; an alias such as ``grad`` stays ``grad``) and points
    ``{sparsity, present_behaviour_rate, absent_behaviour_rate, present_retention,
    absent_retention, tau, k, d}`` sorted by sparsity (present = the sweep's bypass set,
    absent = its induce set; behaviour rate = 1 − the sweep's ``_asr``), plus the α used
    per side (``present_alpha``, ``absent_alpha``) and ``coherence`` (side → the coherence
    columns; None for a sweep written without them); ``iou``: one row per τ level and method
    pair, ``level`` = τ.
    """
    back = {canonical_rule(r): r for r in rules}
    out: dict[str, Any] = {}
    for pt in sweep["points"]:
        rule = back.get(pt["rule"])
        if rule is None:
            continue
        by_rule = out.setdefault(pt["method"], {r: [] for r in rules})
        by_rule[rule].append({
            "sparsity": pt["sparsity"], "present_behaviour_rate": 1.0 - pt["bypass_asr"],
            "absent_behaviour_rate": 1.0 - pt["induce_asr"], "tau": pt["tau"], "k": pt["k"],
            "d": pt["d"], "present_retention": pt["bypass_retention"],
            "absent_retention": pt["induce_retention"],
            "present_alpha": pt.get("bypass_alpha"), "absent_alpha": pt.get("induce_alpha"),
            "coherence": side_coherence(pt.get("coherence"))})
    for by_rule in out.values():
        for pts in by_rule.values():
            pts.sort(key=lambda q: (q["sparsity"], q["tau"] if q["tau"] is not None else 0.0))
    iou = []
    for r in sweep["agreement"]:
        if not str(r["level"]).startswith("tau="):
            continue
        iou.append({"level": float(r["level"].split("=", 1)[1]), "pair": [r["a"], r["b"]],
                    "iou": r["iou"], "p_value": r["p_value"], "rule": r["rule"],
                    "size_a": r["size_a"], "size_b": r["size_b"], "overlap": r["overlap"],
                    "d": r["d"], "sparsity_a": r["sparsity_a"], "sparsity_b": r["sparsity_b"]})
    out["iou"] = iou
    return out


def sparsify_results(out: StageOutput, so_far: dict) -> dict[str, Any]:
    """``sparsify``: per method and rule the retention points, and the ``iou`` rows."""
    sweep = read_json(out, SWEEP_FILE)
    return {"sparsify": sparsify_section(sweep, out.outputs.get("rules", list(RULES)))}


register_stage("sparsify", deps=("model", "data", "vectors", "trained", "strength",
                               "patching"),
               section="sparsify", config=SparsifySection,
               results=sparsify_results, order=100)(sparsify_stage)
