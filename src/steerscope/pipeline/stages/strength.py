"""Stage ``strength``: the reference text of ``ce_reference`` and, under
``evaluation.alpha: auto``, the strength sweep on the val prompts (``strength.json``).

Always: the unsteered model's greedy completions of the first ``evaluation.n_reference``
absent-side val prompts (the fixed reference completions every row's ``ce_reference`` is
measured on). Under ``auto``: :func:`steerscope.evaluate.alpha_sweep.alpha_curve` of every
vector over ``evaluation.alpha_grid`` on the present (remove) and absent (induce) val prompts,
and the α :func:`~steerscope.evaluate.alpha_sweep.choose_alphas` picks per vector and use,
which the evaluation, patching, freezing and sparsity stages then use
(:func:`steerscope.pipeline.strength.method_alphas`). Its key hashes the evaluation keys it
reads (``alpha``, ``alpha_grid``, ``auto_share``, ``fluency_threshold``, ``n_reference``,
``max_new_tokens``, ``batch_size``, the fixed alphas), so a changed grid recomputes it.
results.json: ``alpha_curve`` (the entries), ``alpha_chosen`` (method → use → choice).
"""

from __future__ import annotations

from typing import Any

from steerscope.artifacts import atomic_write_json
from steerscope.errors import SteerscopeError
from steerscope.pipeline.registry import StageOutput, register_stage
from steerscope.pipeline.stages.common import (
    first,
    load_vectors,
    read_json,
    read_prompts,
)
from steerscope.pipeline.strength import (
    AUTO,
    STRENGTH_FILE,
    fixed_alphas,
)

KEYS = ("alpha", "alpha_grid", "auto_share", "fluency_threshold", "n_reference",
        "max_new_tokens", "batch_size", "bypass_alpha", "induce_alpha")


def strength_key(cfg, inputs) -> dict[str, Any]:
    """The evaluation keys the stage reads (module doc)."""
    return {k: getattr(cfg.evaluation, k) for k in KEYS}


def strength_stage(ctx, section, inputs) -> dict[str, Any]:
    """Reference completions, then (``auto``) the sweep and the chosen α per vector and use."""
    from steerscope.evaluate.alpha_sweep import (
        alpha_curve,
        choose_alphas,
        curve_table,
        reference_completions,
    )
    from steerscope.evaluate.coherence import ReferenceCE

    ev = ctx.config.evaluation
    lm = ctx.model()
    p = read_prompts(inputs["data"])
    present, absent = p.get("present_val", []), p.get("absent_val", [])
    if not absent or (ev.alpha == AUTO and not present):
        raise SteerscopeError("the strength stage needs present- and absent-side val prompts "
                              "(evaluation.alpha: auto sweeps on them)",
                              "set data.n_val to 1 or more, or evaluation.alpha to a number")
    formatted, outs = reference_completions(
        lm.model, lm.tokenizer, first(absent, ev.n_reference), max_new_tokens=ev.max_new_tokens,
        batch_size=ev.batch_size, progress=ctx.progress)
    data: dict[str, Any] = {"reference": {"prompts": first(absent, ev.n_reference),
                                          "formatted": formatted, "completions": outs},
                            "mode": "auto" if ev.alpha == AUTO else "fixed",
                            "fixed": fixed_alphas(ev), "alpha_curve": [], "chosen": {}}
    if ev.alpha == AUTO:
        ref = ReferenceCE(lm.model, lm.tokenizer, formatted, outs, arch=lm.arch,
                          batch_size=ev.batch_size)
        vectors = load_vectors(ctx.config, inputs, lm.arch)
        entries, completions = alpha_curve(
            lm.model, lm.tokenizer, vectors, present, absent, grid=ev.alpha_grid,
            judge=ctx.behaviour.make_judge(), reference=ref,
            fluency_threshold=ev.fluency_threshold, max_new_tokens=ev.max_new_tokens,
            batch_size=ev.batch_size, arch=lm.arch, progress=ctx.progress)
        chosen = choose_alphas(entries, share=ev.auto_share, fallback=fixed_alphas(ev))
        data.update(grid=list(ev.alpha_grid), share=ev.auto_share, alpha_curve=entries,
                    chosen=chosen, completions=[
                        {"method": m, "use": u, "alpha": a, "completions": c}
                        for (m, u, a), c in completions.items()])
        for line in curve_table(entries, chosen).splitlines():
            ctx.log(line)
    atomic_write_json(ctx.out / STRENGTH_FILE, data)
    return {"file": STRENGTH_FILE, "mode": data["mode"], "chosen": data["chosen"]}


def strength_results(out: StageOutput, so_far: dict) -> dict[str, Any]:
    """``alpha_curve`` (one entry per method, use and α) and ``alpha_chosen`` (method → use →
    the chosen α and its rule); absent without ``auto``."""
    data = read_json(out, STRENGTH_FILE)
    if data["mode"] != "auto":
        return {}
    return {"alpha_curve": data["alpha_curve"], "alpha_chosen": data["chosen"]}


register_stage("strength", deps=("model", "data", "vectors", "trained"),
               results=strength_results, key_extra=strength_key, order=45)(strength_stage)
