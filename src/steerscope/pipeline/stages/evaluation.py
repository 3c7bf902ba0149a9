"""Stage ``evaluation``: the steering table on the test prompts (the behaviour judged by the
run's behaviour, scored with its fast-score tokens) (``evaluation.json``: rows,
cosine, prompts, completions, per-prompt fast scores), sharded over ranks under torchrun
(:func:`steerscope.evaluate.steering.evaluate_steering` with the run's ``Dist`` as its shard).

Config section ``evaluation`` (:class:`EvaluationSection`; defaults read from
:func:`steerscope.evaluate.steering.evaluate_steering`), whose alphas and batch size the
later stages reuse (each vector at the α :func:`steerscope.pipeline.strength.method_alphas`
gives: ``evaluation.alpha``, the ``strength`` stage's choice under ``auto``); every row also
gets the coherence columns (:mod:`steerscope.evaluate.coherence`: fluency, ce_reference on
the ``strength`` stage's reference text, coherent rates); results.json sections ``steering``
and ``cosine``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from steerscope.artifacts import atomic_write_json
from steerscope.evaluate.alpha_sweep import DEFAULT_ALPHA_GRID, DEFAULT_AUTO_SHARE
from steerscope.evaluate.coherence import COHERENCE_KEYS, DEFAULT_FLUENCY_THRESHOLD
from steerscope.evaluate.steering import evaluate_steering
from steerscope.pipeline.checks import fail, finite, library_default, positive_int
from steerscope.pipeline.registry import StageOutput, register_stage
from steerscope.pipeline.stages.common import (
    load_vectors,
    read_json,
    read_prompts,
    row_loop_rate,
    score_ids,
)
from steerscope.pipeline.strength import (
    add_coherence,
    check_strength,
    method_alphas,
    reference_ce,
)
from steerscope.results_schema import USE_OF_SIDE

EVAL_FILE = "evaluation.json"


def _lib(name: str):
    return library_default(evaluate_steering, name)


@dataclass
class EvaluationSection:
    """Steered evaluation (the steering table)."""

    max_new_tokens: int = _lib("max_new_tokens")
    """Tokens generated per completion (greedy)."""
    batch_size: int | str = _lib("batch_size")
    """Prompts per generation batch; auto = on CUDA the batch that fits the free memory (the
    steering table in units of 64 prompts per side, the sparsity sweep and the strength sweep
    at that batch; scoring, cross-entropy and lockstep freezing at 16), elsewhere 16."""
    bypass_alpha: float = _lib("bypass_alpha")
    """Steering coefficient on the present side (remove the behaviour)."""
    induce_alpha: float = _lib("induce_alpha")
    """Steering coefficient on the absent side (induce the behaviour)."""
    judge: str | None = _lib("judge")
    """An extra judge of the present side's steered completions, reported as judge_asr: a
    get_judge spec such as 'llamaguard', 'classifier:ID' or 'chat:ID' (None: none; the
    behaviour's own judge gives the rates)."""
    alpha: float | str | None = None
    """The steering strength of the steering table, patching, freezing and sparsity: null =
    bypass_alpha / induce_alpha (the paper's -1 / +1, the default); a positive NUMBER = |α|
    for both uses (remove -NUMBER, induce +NUMBER); auto = chosen per vector and use by the
    strength sweep on the val prompts (docs/pipeline.md)."""
    alpha_grid: list[float] = field(default_factory=lambda: list(DEFAULT_ALPHA_GRID))
    """|α| magnitudes the strength sweep tries (× the vector as stored), strictly
    increasing."""
    auto_share: float = DEFAULT_AUTO_SHARE
    """auto: the smallest |α| whose coherent success reaches this share of the curve's best."""
    fluency_threshold: float = DEFAULT_FLUENCY_THRESHOLD
    """Nats per token: a completion whose mean CE under the unsteered model is above this is
    not coherent (nor is a repetition loop)."""
    n_reference: int = 16
    """Absent-side val prompts whose unsteered completions are ce_reference's reference
    text."""

    def check(self, cfg) -> None:
        """Positive sizes, finite alphas, a valid strength sweep (grid, share, threshold)."""
        positive_int("evaluation.max_new_tokens", self.max_new_tokens)
        if self.batch_size != "auto":
            if isinstance(self.batch_size, str):
                fail("evaluation.batch_size", f"is '{self.batch_size}', neither auto nor a "
                     "number", "set evaluation.batch_size to a positive integer or auto")
            positive_int("evaluation.batch_size", self.batch_size)
        finite("evaluation.bypass_alpha", self.bypass_alpha)
        finite("evaluation.induce_alpha", self.induce_alpha)
        positive_int("evaluation.n_reference", self.n_reference)
        check_strength(self)


def evaluation_stage(ctx, section, inputs) -> dict[str, Any]:
    """The steering table on the test prompts (sharded over ranks under torchrun)."""
    lm = ctx.model()
    vectors = load_vectors(ctx.config, inputs, lm.arch)
    p = read_prompts(inputs["data"])
    judge = None
    if section.judge is not None and ctx.is_main:
        from steerscope.evaluate import get_judge

        judge = get_judge(section.judge, trust_remote_code=ctx.config.allow_code)
    table = evaluate_steering(
        lm.model, lm.tokenizer, vectors, p["present_test"], p["absent_test"], arch=lm.arch,
        bypass_alpha=section.bypass_alpha, induce_alpha=section.induce_alpha,
        max_new_tokens=section.max_new_tokens, batch_size=section.batch_size, judge=judge,
        shard=ctx.dist, progress=ctx.progress, score_ids=score_ids(inputs),
        behaviour=ctx.behaviour, method_alphas=method_alphas(ctx.config, inputs, vectors))
    data = table.to_json()
    if ctx.is_main:
        steering_table_coherence(lm, data, vectors, reference_ce(lm, inputs, section.batch_size),
                                 section)
        atomic_write_json(ctx.out / EVAL_FILE, data)
    labels = ctx.behaviour.labels
    for r in data["rows"]:
        coh = "" if r.get("coherent_share") is None else (
            f" coherent {r['coherent_share']:.3f} fluency {r['fluency'] or float('nan'):.2f}")
        ctx.log(f"{r['method']:6s} {labels[r['side']]:8s} α {r['alpha']:+.2f} "
                f"behaviour rate {r['behaviour_rate']:.3f} mean score {r['mean_score']:+.3f} "
                f"loops {r['repetition_rate']:.3f}{coh}")
    return {"file": EVAL_FILE}


def steering_table_coherence(lm, table: dict, vectors: dict, reference, section) -> None:
    """The coherence columns of every steering-table row (in place; module doc of
    :mod:`steerscope.evaluate.coherence`)."""
    from steerscope.models.chat import format_prompt

    formatted = {s: [format_prompt(lm.tokenizer, p) for p in ps]
                 for s, ps in table["prompts"].items()}
    add_coherence(
        lm, table["rows"], completions_of=lambda r: table["completions"][r["method"]][r["side"]],
        formatted_of=lambda r: formatted[r["side"]],
        verdicts_of=lambda r: table["verdicts"][r["method"]][r["side"]],
        use_of=lambda r: USE_OF_SIDE[r["side"]],
        steering_of=lambda r: (vectors.get(r["method"]), r["alpha"], r["method"]),
        reference=reference, threshold=section.fluency_threshold, batch_size=section.batch_size)


def evaluation_results(out: StageOutput, so_far: dict) -> dict[str, Any]:
    """``steering`` (per method and side) and ``cosine`` (the vectors' matrix).
    ``repetition_rate``: :func:`~steerscope.pipeline.stages.common.row_loop_rate`."""
    table = read_json(out, EVAL_FILE)
    completions = table["completions"]
    steering: dict[str, dict[str, Any]] = {}
    for r in table["rows"]:
        method, side = r["method"], r["side"]
        steering.setdefault(method, {})[side] = {
            "behaviour_rate": r["behaviour_rate"], "mean_score": r["mean_score"],
            "judge_rate": r["judge_rate"], "score_rate": r["score_rate"],
            "repetition_rate": row_loop_rate(r, completions[method][side]),
            "alpha": r["alpha"], "n": r["n"],
            **{k: r[k] for k in COHERENCE_KEYS if k in r}}
    names = list(table["cosine"])
    matrix = [[table["cosine"][a][b] for b in names] for a in names]
    return {"steering": steering, "cosine": {"methods": names, "matrix": matrix}}


register_stage("evaluation", deps=("model", "data", "vectors", "trained", "strength"),
               section="evaluation", config=EvaluationSection, results=evaluation_results,
               distributed=True, order=50)(evaluation_stage)
