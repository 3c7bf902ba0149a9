"""Pipeline stages ``freeze``, ``svv`` and ``sparsify`` (paper sections 5–7).

- ``freeze``: the freezing-ablation table (Table 1) of one vector (``freeze.method``, DIM by
  default) on the test prompts, :func:`steerscope.mechanisms.freeze_evaluation`; files
  ``freeze.json`` (rows, mean drops, prompts, completions) and ``freeze.png``.
- ``svv``: for each patched method (the ``patching`` stage's ``methods``), the steering value
  vectors of its heads through the logit lens, ranked by the patching run's head node scores
  (:func:`steerscope.mechanisms.svv_report`); files ``<method>.json`` and ``<method>.png``.
- ``sparsify``: the sparsity sweep of the patched methods
  (:func:`steerscope.sparsify.sweep.sparsity_sweep`) with the dimension-level IE taken from
  the patching run's EAP-IG steering-node scores (no IG recomputed), and the IoU /
  hypergeometric agreement of the kept sets at each τ; files ``sweep.json``,
  ``agreement.json``, ``retention.png`` (+ ``agreement.png``), ``ie_<method>.safetensors``.

Steering coefficients and the generation batch size come from the ``evaluation`` section
(``bypass_alpha`` on harmful prompts, ``induce_alpha`` on harmless ones, ``batch_size``).
The ``results.json`` sections follow docs/results.md: config rule names ``grad``, ``ie``,
``dropout``, ``bottomk`` are the library's ``gradient``, ``ie``, ``random``, ``magnitude``;
head names ``a{L}.h{H}`` become ``L{L}H{H}`` (``" (−)"`` appended for sign-flipped heads).
"""

from __future__ import annotations

from typing import Any

from steerscope.errors import SteerscopeError
from steerscope.pipeline.registry import StageOutput, register_stage
from steerscope.pipeline.stages import PROMPTS_FILE, _read, load_vectors

FREEZE_FILE = "freeze.json"
SWEEP_FILE = "sweep.json"
AGREEMENT_FILE = "agreement.json"
# config rule name (docs/results.md) -> steerscope.sparsify rule name
RULE_NAMES = {"grad": "gradient", "ie": "ie", "dropout": "random", "bottomk": "magnitude"}
FLIPPED_SUFFIX = " (\u2212)"


def _first(items: list[str], n: int | None) -> list[str]:
    return list(items) if n is None else list(items)[:n]


# --- freeze --------------------------------------------------------------------------------------
def freeze_stage(ctx, section, inputs) -> dict[str, Any]:
    """Table 1 for ``freeze.method`` on the first ``freeze.n_prompts`` test prompts of each
    set: plain steering (``none``) and every mode of ``freeze.modes``."""
    from steerscope.mechanisms import freeze_evaluation

    lm = ctx.model()
    vectors = load_vectors(ctx.config, inputs, lm.arch)
    if section.method not in vectors:
        raise SteerscopeError(f"freeze.method '{section.method}' is not a vector of the vectors "
                              "stage", "use dim or an extraction method listed in vectors.methods")
    p = _read(inputs["data"], PROMPTS_FILE)
    ev = ctx.config.evaluation
    res = freeze_evaluation(
        lm.model, lm.tokenizer, vectors[section.method],
        _first(p["harmful_test"], section.n_prompts), _first(p["harmless_test"], section.n_prompts),
        modes=section.modes, bypass_alpha=ev.bypass_alpha, induce_alpha=ev.induce_alpha,
        max_new_tokens=section.max_new_tokens, batch_size=ev.batch_size, arch=lm.arch,
        vector_name=section.method)
    res.save(ctx.out)
    for line in res.table().splitlines():
        ctx.log(line)
    return {"file": FREEZE_FILE, "figure": "freeze.png", "method": section.method,
            "modes": res.modes}


def freeze_section(table: dict) -> dict[str, dict[str, Any]]:
    """The ``freeze`` results section from a ``freeze.json`` object: per mode (``none`` =
    plain steering first) the ASR on both sets and the mean drop in absolute ASR points (0
    for plain steering, the reference)."""
    rows: dict[str, dict[str, dict]] = {}
    for r in table["rows"]:
        rows.setdefault(r["mode"], {})[r["prompt_set"]] = r
    out: dict[str, dict[str, Any]] = {}
    for mode, by_set in rows.items():
        h, b = by_set["harmful"], by_set["harmless"]
        none = mode == "none"
        out[mode] = {"harmful_asr": h["asr"], "harmless_asr": b["asr"],
                     "mean_drop": 0.0 if none else table["mean_drop"].get(mode),
                     "harmful_drop": 0.0 if none else h["drop"],
                     "harmless_drop": 0.0 if none else b["drop"],
                     "harmful_alpha": h["alpha"], "harmless_alpha": b["alpha"],
                     "n_harmful": h["n"], "n_harmless": b["n"]}
    return out


def freeze_results(out: StageOutput, so_far: dict) -> dict[str, Any]:
    return {"freeze": freeze_section(_read(out, FREEZE_FILE))}


# --- patched methods -----------------------------------------------------------------------------
def patched_methods(patching: StageOutput) -> list[str]:
    """The methods the patching stage analysed (its outputs' ``methods``, in order)."""
    return [m for m in patching.outputs.get("methods", {})
            if (patching.dir / m / "result.json").is_file()]


def _patching_result(patching: StageOutput, method: str):
    from steerscope.patching.result import PatchingResult

    return PatchingResult.load(patching.path(method))


def _patched_vectors(ctx, inputs, arch) -> dict:
    """method -> SteeringVector for every patched method."""
    vectors = load_vectors(ctx.config, inputs, arch)
    methods = patched_methods(inputs["patching"])
    missing = [m for m in methods if m not in vectors]
    if missing:
        raise SteerscopeError(f"patched method '{missing[0]}' has no vector in this run",
                              "list it in vectors.methods")
    return {m: vectors[m] for m in methods}


# --- svv -----------------------------------------------------------------------------------------
def svv_stage(ctx, section, inputs) -> dict[str, Any]:
    """For each patched method: :func:`~steerscope.mechanisms.svv_report` of its vector
    (every head of blocks ℓ..L−1, top ``svv.top_tokens`` logit-lens tokens), heads ranked by
    the patching run's head node scores."""
    from steerscope.mechanisms import svv_report

    lm = ctx.model()
    vectors = _patched_vectors(ctx, inputs, lm.arch)
    files = {}
    for m, sv in vectors.items():
        scores = _patching_result(inputs["patching"], m).tables.get("head_scores") or None
        rep = svv_report(lm.model, lm.tokenizer, sv.vector, sv.layer, head_scores=scores,
                         top_k=section.top_tokens, arch=lm.arch, vector_name=m)
        rep.save(ctx.out / f"{m}.json")
        rep.figure(ctx.out / f"{m}.png", n_heads=section.n_heads)
        files[m] = f"{m}.json"
        ctx.log(rep.table(n_heads=min(section.n_heads, 5), n_tokens=8))
    return {"methods": files, "n_heads": section.n_heads}


def results_head_name(node: str, flipped: bool) -> str:
    """``"a16.h1"`` → ``"L16H1"`` (``"L16H1 (−)"`` when sign-flipped), as docs/results.md."""
    layer, head = node[1:].split(".h")
    return f"L{int(layer)}H{int(head)}" + (FLIPPED_SUFFIX if flipped else "")


def svv_section(report: dict, n_heads: int) -> list[dict[str, Any]]:
    """The first ``n_heads`` scored heads of an :class:`SVVReport` JSON as results.json rows:
    ``{head, score, tokens}`` plus the node name, layer, index, flip flag and token logits."""
    rows = []
    for h in report["heads"]:
        if len(rows) >= n_heads:
            break
        if h["score"] is None:  # unscored heads come last in the ranking
            continue
        rows.append({"head": results_head_name(h["head"], h["flipped"]), "score": h["score"],
                     "tokens": [t for t, _ in h["tokens"]], "node": h["head"],
                     "layer": h["layer"], "index": h["index"], "flipped": h["flipped"],
                     "logits": [v for _, v in h["tokens"]], "svv_norm": h["norm"]})
    return rows


def svv_results(out: StageOutput, so_far: dict) -> dict[str, Any]:
    n = out.outputs.get("n_heads", 10)
    return {"svv": {m: svv_section(_read(out, f), n)
                    for m, f in out.outputs.get("methods", {}).items()}}


# --- sparsify ------------------------------------------------------------------------------------
def patching_ie(patching: StageOutput, method: str):
    """The dimension-level IE [d] of ``method`` from the patching run's EAP-IG scores
    (:func:`steerscope.patching.steer_dimension_scores`)."""
    from steerscope.patching.scores import steer_dimension_scores

    res = _patching_result(patching, method)
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
    from steerscope.sparsify.sweep import sparsity_sweep

    lm = ctx.model()
    vectors = _patched_vectors(ctx, inputs, lm.arch)
    if not vectors:
        raise SteerscopeError("the patching stage analysed no method",
                              "check patching.methods and the patching stage's log")
    ies = {}
    for m in vectors:
        ie = patching_ie(inputs["patching"], m)
        ies[m] = ie
        atomic_write(ctx.out / f"ie_{m}.safetensors",
                     lambda tmp, t=ie: save_file({"ie": t.float().contiguous()}, tmp))
    p = _read(inputs["data"], PROMPTS_FILE)
    ev = ctx.config.evaluation
    max_new = section.max_new_tokens if section.max_new_tokens is not None else ev.max_new_tokens
    res = sparsity_sweep(
        lm.model, lm.tokenizer, vectors, ies, _first(p["harmful_test"], section.n_prompts),
        _first(p["harmless_test"], section.n_prompts), taus=section.taus,
        rules=[RULE_NAMES[r] for r in section.rules], seed=section.seed,
        bypass_alpha=ev.bypass_alpha, induce_alpha=ev.induce_alpha, max_new_tokens=max_new,
        batch_size=ev.batch_size, arch=lm.arch, progress=ctx.progress and ctx.is_main)
    res.save(ctx.out)
    for line in res.table().splitlines():
        ctx.log(line)
    ctx.log(f"{res.config['generations']} distinct steered generations")
    return {"file": SWEEP_FILE, "agreement": AGREEMENT_FILE, "methods": list(vectors),
            "rules": list(section.rules), "generations": res.config["generations"]}


def sparsify_section(sweep: dict, rules: list[str]) -> dict[str, Any]:
    """The ``sparsify`` results section from a ``sweep.json`` object.

    ``{method: {rule: [point]}}`` with config rule names (``rules`` order) and points
    ``{sparsity, harmful_asr, harmless_asr, tau, k, ...}`` sorted by sparsity (harmful =
    the bypass set, harmless = the induce set); ``iou``: one row per τ level and method
    pair, ``level`` = τ.
    """
    back = {RULE_NAMES[r]: r for r in rules}
    out: dict[str, Any] = {}
    for pt in sweep["points"]:
        rule = back.get(pt["rule"])
        if rule is None:
            continue
        by_rule = out.setdefault(pt["method"], {r: [] for r in rules})
        by_rule[rule].append({
            "sparsity": pt["sparsity"], "harmful_asr": pt["bypass_asr"],
            "harmless_asr": pt["induce_asr"], "tau": pt["tau"], "k": pt["k"], "d": pt["d"],
            "harmful_retention": pt["bypass_retention"],
            "harmless_retention": pt["induce_retention"]})
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
    sweep = _read(out, SWEEP_FILE)
    return {"sparsify": sparsify_section(sweep, out.outputs.get("rules", list(RULE_NAMES)))}


register_stage("freeze", results=freeze_results)(freeze_stage)
register_stage("svv", results=svv_results)(svv_stage)
register_stage("sparsify", results=sparsify_results)(sparsify_stage)
