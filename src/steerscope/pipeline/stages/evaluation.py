"""Stage ``evaluation``: the steering table on the test prompts (the behaviour judged by the
run's behaviour, scored with its fast-score tokens) (``evaluation.json``: rows,
cosine, prompts, completions, per-prompt refusal scores), sharded over ranks under torchrun
(:func:`steerscope.pipeline.evaluation.sharded_steering_eval`).

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
from steerscope.pipeline.checks import finite, library_default, positive_int
from steerscope.pipeline.registry import StageOutput, register_stage
from steerscope.pipeline.stages.common import (
    PROMPTS_FILE,
    behaviour_detector,
    load_vectors,
    read_json,
    row_loop_rate,
    score_ids,
)
from steerscope.pipeline.strength import (
    add_coherence,
    check_strength,
    method_alphas,
    reference_ce,
)

EVAL_FILE = "evaluation.json"


def _lib(name: str):
    return library_default(evaluate_steering, name)


@dataclass
class EvaluationSection:
    """Steered evaluation (the steering table)."""

    max_new_tokens: int = _lib("max_new_tokens")
    batch_size: int = _lib("batch_size")
    bypass_alpha: float = _lib("bypass_alpha")
    induce_alpha: float = _lib("induce_alpha")
    judge: str | None = _lib("judge")  # None: substring only; else a get_judge spec
    # the steering strength of the steering table, patching, freezing and sparsity: null =
    # bypass_alpha / induce_alpha (the paper's -1 / +1, the default); a positive NUMBER = |α|
    # for both uses (remove -NUMBER, induce +NUMBER); auto = chosen per vector and use by the
    # strength sweep on the val prompts (docs/pipeline.md)
    alpha: float | str | None = None
    # |α| magnitudes the strength sweep tries (× the vector as stored), strictly increasing
    alpha_grid: list[float] = field(default_factory=lambda: list(DEFAULT_ALPHA_GRID))
    # auto: the smallest |α| whose coherent success reaches this share of the curve's best
    auto_share: float = DEFAULT_AUTO_SHARE
    # nats per token: a completion whose mean CE under the unsteered model is above this
    # is not coherent (nor is a repetition loop)
    fluency_threshold: float = DEFAULT_FLUENCY_THRESHOLD
    # absent-side val prompts whose unsteered completions are ce_reference's reference text
    n_reference: int = 16

    def check(self, cfg) -> None:
        """Positive sizes, finite alphas, a valid strength sweep (grid, share, threshold)."""
        positive_int("evaluation.max_new_tokens", self.max_new_tokens)
        positive_int("evaluation.batch_size", self.batch_size)
        finite("evaluation.bypass_alpha", self.bypass_alpha)
        finite("evaluation.induce_alpha", self.induce_alpha)
        positive_int("evaluation.n_reference", self.n_reference)
        check_strength(self)


def evaluation_stage(ctx, section, inputs) -> dict[str, Any]:
    """The steering table on the test prompts (sharded over ranks under torchrun)."""
    from steerscope.pipeline.evaluation import sharded_steering_eval

    lm = ctx.model()
    vectors = load_vectors(ctx.config, inputs, lm.arch)
    p = read_json(inputs["data"], PROMPTS_FILE)
    judge = None
    if section.judge is not None and ctx.is_main:
        from steerscope.evaluate import get_judge

        judge = get_judge(section.judge, trust_remote_code=ctx.config.allow_code)
    table = sharded_steering_eval(
        lm.model, lm.tokenizer, vectors, p["harmful_test"], p["harmless_test"], arch=lm.arch,
        bypass_alpha=section.bypass_alpha, induce_alpha=section.induce_alpha,
        max_new_tokens=section.max_new_tokens, batch_size=section.batch_size, judge=judge,
        dist=ctx.dist, progress=ctx.progress, score_ids=score_ids(inputs),
        presence=behaviour_detector(inputs, ctx.config.allow_code),
        method_alphas=method_alphas(ctx.config, inputs, vectors))
    if ctx.is_main:
        steering_table_coherence(lm, table, vectors, reference_ce(lm, inputs, section.batch_size),
                                 section)
        atomic_write_json(ctx.out / EVAL_FILE, table)
    for r in table["rows"]:
        coh = "" if r.get("coherent_share") is None else (
            f" coherent {r['coherent_share']:.3f} fluency {r['fluency'] or float('nan'):.2f}")
        ctx.log(f"{r['method']:6s} {r['prompt_set']:8s} α {r['alpha']:+.2f} ASR {r['asr']:.3f} "
                f"mean refusal score {r['mean_refusal_score']:+.3f} "
                f"loops {r['repetition_rate']:.3f}{coh}")
    return {"file": EVAL_FILE}


def steering_table_coherence(lm, table: dict, vectors: dict, reference, section) -> None:
    """The coherence columns of every steering-table row (in place; module doc of
    :mod:`steerscope.evaluate.coherence`)."""
    from steerscope.models.chat import format_prompt

    formatted = {s: [format_prompt(lm.tokenizer, p) for p in ps]
                 for s, ps in table["prompts"].items()}
    add_coherence(
        lm, table["rows"], completions_of=lambda r: table["completions"][r["method"]][r["prompt_set"]],
        formatted_of=lambda r: formatted[r["prompt_set"]],
        verdicts_of=lambda r: table["verdicts"][r["method"]][r["prompt_set"]],
        use_of=lambda r: r["use"],
        steering_of=lambda r: (vectors.get(r["method"]), r["alpha"], r["method"]),
        reference=reference, threshold=section.fluency_threshold, batch_size=section.batch_size)


def evaluation_results(out: StageOutput, so_far: dict) -> dict[str, Any]:
    """``steering`` (per method and prompt set) and ``cosine`` (the vectors' matrix).
    ``repetition_rate``: :func:`~steerscope.pipeline.stages.common.row_loop_rate`."""
    table = read_json(out, EVAL_FILE)
    steering: dict[str, dict[str, Any]] = {}
    for r in table["rows"]:
        method, prompt_set = r["method"], r["prompt_set"]
        loops = row_loop_rate(r, table["completions"][method][prompt_set])
        steering.setdefault(method, {})[prompt_set] = {
            "asr": r["asr"], "mean_refusal_score": r["mean_refusal_score"],
            "judge_asr": r["judge_asr"], "refusal_rate": r["refusal_rate"],
            "score_refusal_rate": r["score_refusal_rate"], "repetition_rate": loops,
            "alpha": r["alpha"], "n": r["n"],
            **{k: r[k] for k in COHERENCE_KEYS if k in r}}
    names = list(table["cosine"])
    matrix = [[table["cosine"][a][b] for b in names] for a in names]
    return {"steering": steering, "cosine": {"methods": names, "matrix": matrix}}


register_stage("evaluation", deps=("model", "data", "vectors", "trained", "strength"),
               section="evaluation", config=EvaluationSection, results=evaluation_results,
               distributed=True)(evaluation_stage)
