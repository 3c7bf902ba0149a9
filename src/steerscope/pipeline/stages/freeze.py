"""Stage ``freeze``: the freezing-ablation table (paper Table 1) of one vector
(``freeze.method``, DIM by default) on the test prompts, judged by the run's behaviour,
:func:`steerscope.mechanisms.freeze_evaluation`; files ``freeze.json`` (rows, mean drops,
prompts, completions) and ``freeze.png``.

Config section ``freeze`` (:class:`FreezeSection`; modes and generation length default to
:func:`~steerscope.mechanisms.freeze_evaluation`'s); steering coefficients and the batch
size come from the ``evaluation`` section. results.json section ``freeze``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from steerscope.errors import SteerscopeError
from steerscope.evaluate.coherence import COHERENCE_KEYS
from steerscope.mechanisms import MODES, freeze_evaluation
from steerscope.pipeline.checks import fail, known, library_default, positive_int
from steerscope.pipeline.registry import StageOutput, register_stage
from steerscope.pipeline.stages.common import (
    PROMPTS_FILE,
    first,
    load_vectors,
    read_json,
    row_loop_rate,
    score_ids,
    single_layer_only,
    stage_behaviour,
)
from steerscope.pipeline.stages.vectors import TRAINED_METHODS
from steerscope.pipeline.strength import add_coherence, method_alphas, reference_ce

FREEZE_FILE = "freeze.json"
FREEZE_MODES = tuple(m for m in MODES if m != "none")  # "none" (plain steering) always runs


@dataclass
class FreezeSection:
    """Table 1 of one extracted vector on the first ``n_prompts`` test prompts per set."""

    enabled: bool = True
    method: str = "dim"  # the vector ablated: dim or an extraction method (not a trained one)
    modes: list[str] = field(
        default_factory=lambda: list(library_default(freeze_evaluation, "modes")))
    n_prompts: int | None = None  # first N test prompts per set (None: all)
    max_new_tokens: int = library_default(freeze_evaluation, "max_new_tokens")
    options: dict[str, Any] = field(default_factory=dict)

    def check(self, cfg) -> None:
        """Known modes; the method is an extracted vector of vectors.methods; a single-layer
        vector (no ``vectors.layers`` list)."""
        single_layer_only(cfg, "freeze", self.enabled)
        known("freeze.modes", self.modes, FREEZE_MODES)
        if self.enabled and (self.method not in cfg.vectors.methods
                             or self.method in TRAINED_METHODS):
            fail("freeze.method", f"'{self.method}' is not an extracted vector of "
                 "vectors.methods", "use dim or an extraction method listed in vectors.methods")
        positive_int("freeze.n_prompts", self.n_prompts, allow_none=True)
        positive_int("freeze.max_new_tokens", self.max_new_tokens)


def freeze_stage(ctx, section, inputs) -> dict[str, Any]:
    """Table 1 for ``freeze.method`` on the first ``freeze.n_prompts`` test prompts of each
    set: plain steering (``none``) and every mode of ``freeze.modes``."""
    lm = ctx.model()
    vectors = load_vectors(ctx.config, inputs, lm.arch)
    if section.method not in vectors:
        raise SteerscopeError(f"freeze.method '{section.method}' is not a vector of the vectors "
                              "stage", "use dim or an extraction method listed in vectors.methods")
    p = read_json(inputs["data"], PROMPTS_FILE)
    ev = ctx.config.evaluation
    remove_alpha, induce_alpha = method_alphas(ctx.config, inputs, [section.method])[
        section.method]
    behaviour = stage_behaviour(inputs["data"], ctx.config.allow_code)
    res = freeze_evaluation(
        lm.model, lm.tokenizer, vectors[section.method],
        first(p["harmful_test"], section.n_prompts), first(p["harmless_test"], section.n_prompts),
        modes=section.modes, bypass_alpha=remove_alpha, induce_alpha=induce_alpha,
        max_new_tokens=section.max_new_tokens, batch_size=ev.batch_size, arch=lm.arch,
        vector_name=section.method, behaviour=behaviour,
        score_ids=score_ids(inputs))  # the vectors stage's (score_tokens: auto needs them)
    res.save(ctx.out)
    freeze_coherence(lm, ctx.out / FREEZE_FILE, vectors[section.method], behaviour,
                     reference_ce(lm, inputs, ev.batch_size), ev)
    for line in res.table().splitlines():
        ctx.log(line)
    return {"file": FREEZE_FILE, "figure": "freeze.png", "method": section.method,
            "modes": res.modes}


def freeze_coherence(lm, path, vector, behaviour, reference, ev) -> None:
    """Add the coherence columns to every row of the written ``freeze.json`` (rewritten
    atomically): fluency and coherent rates from each row's completions (verdicts by the
    behaviour's judge); ``ce_reference`` for plain steering (``none``) only, the ablations
    acting on the steered generation rather than being a vector addition."""
    import json

    from steerscope.artifacts import atomic_write_json
    from steerscope.models.chat import format_prompt

    table = json.loads(path.read_text(encoding="utf-8"))
    judge = behaviour.make_judge()
    sides = {"harmful": "remove", "present": "remove"}
    add_coherence(
        lm, table["rows"],
        completions_of=lambda r: table["completions"][r["mode"]][r["prompt_set"]],
        formatted_of=lambda r: [format_prompt(lm.tokenizer, q)
                                for q in table["prompts"][r["prompt_set"]]],
        verdicts_of=lambda r: [bool(v) for v in judge.judge(
            table["prompts"][r["prompt_set"]],
            table["completions"][r["mode"]][r["prompt_set"]])],
        use_of=lambda r: sides.get(r["prompt_set"], "induce"),
        steering_of=lambda r: (vector, r["alpha"], "freeze") if r["mode"] == "none" else None,
        reference=reference, threshold=ev.fluency_threshold, batch_size=ev.batch_size)
    atomic_write_json(path, table)


def freeze_section(table: dict) -> dict[str, dict[str, Any]]:
    """The ``freeze`` results section from a ``freeze.json`` object: per mode (``none`` =
    plain steering first) the ASR on both sets, the mean drop in absolute ASR points (0
    for plain steering, the reference) and the fraction of repetition loops per set (from
    the row, or from the stored completions for tables written before rows carried it)."""
    rows: dict[str, dict[str, dict]] = {}
    for r in table["rows"]:
        rows.setdefault(r["mode"], {})[r["prompt_set"]] = r
    out: dict[str, dict[str, Any]] = {}
    for mode, by_set in rows.items():
        # refusal's set names (harmful / harmless), else the sides' (present / absent)
        h, b = (by_set["harmful"], by_set["harmless"]) if "harmful" in by_set else (
            by_set["present"], by_set["absent"])
        loops = [row_loop_rate(r, table["completions"][mode][r["prompt_set"]]) for r in (h, b)]
        none = mode == "none"
        out[mode] = {"harmful_asr": h["asr"], "harmless_asr": b["asr"],
                     "mean_drop": 0.0 if none else table["mean_drop"].get(mode),
                     "harmful_drop": 0.0 if none else h["drop"],
                     "harmless_drop": 0.0 if none else b["drop"],
                     "harmful_alpha": h["alpha"], "harmless_alpha": b["alpha"],
                     "harmful_repetition_rate": loops[0], "harmless_repetition_rate": loops[1],
                     "n_harmful": h["n"], "n_harmless": b["n"],
                     "coherence": {r["prompt_set"]: {k: r[k] for k in COHERENCE_KEYS if k in r}
                                   for r in (h, b)}}
    return out


def freeze_results(out: StageOutput, so_far: dict) -> dict[str, Any]:
    """``freeze``: per mode, both sets' ASR and the drops."""
    return {"freeze": freeze_section(read_json(out, FREEZE_FILE))}


register_stage("freeze", deps=("model", "data", "vectors", "strength", "evaluation"), section="freeze",
               config=FreezeSection, results=freeze_results)(freeze_stage)
