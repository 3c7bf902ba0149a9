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
    first,
    load_vectors,
    read_json,
    read_prompts,
    row_loop_rate,
    score_ids,
    single_layer_only,
)
from steerscope.pipeline.stages.vectors import TRAINED_METHODS
from steerscope.pipeline.strength import add_coherence, method_alphas, reference_ce
from steerscope.results_schema import USE_OF_SIDE

FREEZE_FILE = "freeze.json"
FREEZE_MODES = tuple(m for m in MODES if m != "none")  # "none" (plain steering) always runs


@dataclass
class FreezeSection:
    """Table 1 of one extracted vector on the first ``n_prompts`` test prompts per set."""

    enabled: bool = True
    """Run this stage (false: skip it; results.json marks it not run)."""
    method: str = "dim"
    """The vector ablated: dim or an extraction method (not a trained one)."""
    modes: list[str] = field(
        default_factory=lambda: list(library_default(freeze_evaluation, "modes")))
    """Ablations: qk (unsteered attention patterns), ov (unsteered value activations), svv
    (the steering term removed from the value input), mlp (the steering term removed from
    every MLP input)."""
    n_prompts: int | None = None
    """First N test prompts per side (None: all)."""
    max_new_tokens: int = library_default(freeze_evaluation, "max_new_tokens")
    """Tokens generated per completion (greedy)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Extra keyword options its stage declares (register_stage(options=...))."""

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
    p = read_prompts(inputs["data"])
    ev = ctx.config.evaluation
    remove_alpha, induce_alpha = method_alphas(ctx.config, inputs, [section.method])[
        section.method]
    res = freeze_evaluation(
        lm.model, lm.tokenizer, vectors[section.method],
        first(p["present_test"], section.n_prompts), first(p["absent_test"], section.n_prompts),
        modes=section.modes, bypass_alpha=remove_alpha, induce_alpha=induce_alpha,
        max_new_tokens=section.max_new_tokens, batch_size=ev.batch_size, arch=lm.arch,
        vector_name=section.method,
        behaviour=ctx.behaviour,
        score_ids=score_ids(inputs))  # the vectors stage's (score_tokens: auto needs them)
    res.save(ctx.out)
    freeze_coherence(lm, ctx.out / FREEZE_FILE, vectors[section.method], ctx.behaviour,
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
    add_coherence(
        lm, table["rows"],
        completions_of=lambda r: table["completions"][r["mode"]][r["side"]],
        formatted_of=lambda r: [format_prompt(lm.tokenizer, q)
                                for q in table["prompts"][r["side"]]],
        verdicts_of=lambda r: [bool(v) for v in judge.judge(
            table["prompts"][r["side"]], table["completions"][r["mode"]][r["side"]])],
        use_of=lambda r: USE_OF_SIDE[r["side"]],
        steering_of=lambda r: (vector, r["alpha"], "freeze") if r["mode"] == "none" else None,
        reference=reference, threshold=ev.fluency_threshold, batch_size=ev.batch_size)
    atomic_write_json(path, table)


def freeze_section(table: dict) -> dict[str, dict[str, Any]]:
    """The ``freeze`` results section from a ``freeze.json`` object: per mode (``none`` =
    plain steering first) ``mean_drop`` (absolute points, 0 for plain steering, the
    reference) and per side (``present`` / ``absent``) the ``behaviour_rate``, ``drop``,
    ``alpha``, ``repetition_rate`` (from the row, or from the stored completions for tables
    written before rows carried it), ``n`` and ``coherence`` (the row's coherence columns,
    :data:`~steerscope.evaluate.coherence.COHERENCE_KEYS`)."""
    out: dict[str, dict[str, Any]] = {}
    for r in table["rows"]:
        mode, side = r["mode"], r["side"]
        none = mode == "none"
        entry = out.setdefault(mode, {"mean_drop": 0.0 if none else
                                      table["mean_drop"].get(mode)})
        entry[side] = {"behaviour_rate": r["behaviour_rate"], "drop": 0.0 if none else r["drop"],
                       "alpha": r["alpha"],
                       "repetition_rate": row_loop_rate(r, table["completions"][mode][side]),
                       "n": r["n"],
                       "coherence": {k: r[k] for k in COHERENCE_KEYS if k in r}}
    return out


def freeze_results(out: StageOutput, so_far: dict) -> dict[str, Any]:
    """``freeze``: per mode, both sides' behaviour rates and the drops."""
    return {"freeze": freeze_section(read_json(out, FREEZE_FILE))}


register_stage("freeze", deps=("model", "data", "vectors", "strength", "evaluation"),
               section="freeze", config=FreezeSection, results=freeze_results, order=80)(freeze_stage)
