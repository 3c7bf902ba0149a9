"""Stage ``evaluation``: the steering table on the test prompts (the behaviour judged by the
run's behaviour, scored with its fast-score tokens) (``evaluation.json``: rows,
cosine, prompts, completions, per-prompt fast scores), sharded over ranks under torchrun
(:func:`steerscope.evaluate.steering.evaluate_steering` with the run's ``Dist`` as its shard).

Config section ``evaluation`` (:class:`EvaluationSection`; defaults read from
:func:`steerscope.evaluate.steering.evaluate_steering`), whose alphas and batch size the
later stages reuse; results.json sections ``steering`` and ``cosine``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from steerscope.evaluate.steering import evaluate_steering
from steerscope.pipeline.checks import finite, library_default, positive_int
from steerscope.pipeline.registry import StageOutput, register_stage
from steerscope.pipeline.stages.common import (
    load_vectors,
    read_json,
    read_prompts,
    row_loop_rate,
    score_ids,
)

EVAL_FILE = "evaluation.json"


def _lib(name: str):
    return library_default(evaluate_steering, name)


@dataclass
class EvaluationSection:
    """Steered evaluation (the steering table)."""

    max_new_tokens: int = _lib("max_new_tokens")
    """Tokens generated per completion (greedy)."""
    batch_size: int = _lib("batch_size")
    """Prompts per generation batch."""
    bypass_alpha: float = _lib("bypass_alpha")
    """Steering coefficient on the present side (remove the behaviour)."""
    induce_alpha: float = _lib("induce_alpha")
    """Steering coefficient on the absent side (induce the behaviour)."""
    judge: str | None = _lib("judge")
    """An extra judge of the present side's steered completions, reported as judge_asr: a
    get_judge spec such as 'llamaguard', 'classifier:ID' or 'chat:ID' (None: none; the
    behaviour's own judge gives the rates)."""

    def check(self, cfg) -> None:
        """Positive sizes, finite alphas."""
        positive_int("evaluation.max_new_tokens", self.max_new_tokens)
        positive_int("evaluation.batch_size", self.batch_size)
        finite("evaluation.bypass_alpha", self.bypass_alpha)
        finite("evaluation.induce_alpha", self.induce_alpha)


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
        behaviour=ctx.behaviour)
    if ctx.is_main:
        table.save(ctx.out / EVAL_FILE)
    labels = ctx.behaviour.labels
    for r in table.rows:
        ctx.log(f"{r.method:6s} {labels[r.side]:8s} behaviour rate {r.behaviour_rate:.3f} "
                f"mean score {r.mean_score:+.3f}")
    return {"file": EVAL_FILE}


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
            "alpha": r["alpha"], "n": r["n"]}
    names = list(table["cosine"])
    matrix = [[table["cosine"][a][b] for b in names] for a in names]
    return {"steering": steering, "cosine": {"methods": names, "matrix": matrix}}


register_stage("evaluation", deps=("model", "data", "vectors", "trained"),
               section="evaluation", config=EvaluationSection, results=evaluation_results,
               distributed=True, order=50)(evaluation_stage)
