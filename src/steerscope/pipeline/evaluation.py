"""Steered evaluation sharded over ranks, with the same numbers as one process.

:func:`sharded_steering_eval` computes what :func:`steerscope.evaluate.steering.evaluate_steering`
computes (per method and ``none``: greedy completions, substring ASR, refusal scores under
the same steering, optional judge ASR; the cosine matrix), but cuts the work into fixed
units: each prompt set is sorted by token length (longest first, as ``generate`` does) and cut
into batches of ``batch_size``; a unit is one (prompt set, batch) for every method, the
methods' generations packed into shared batches (per-row vectors: each completion is the
method's own). Units are spread
over the ranks and gathered in order, and every unit is computed exactly as in a one-process
run, so the merged result is byte-identical for any number of ranks. With one rank the
completions equal ``evaluate_steering``'s (same batches); refusal scores agree to float
precision (``evaluate_steering`` scores in input-order batches).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import torch

from steerscope.errors import SteerscopeError
from steerscope.evaluate.matchers import is_refusal_substring
from steerscope.evaluate.refusal import refusal_scores, refusal_token_ids
from steerscope.evaluate.repetition import repetition_rate
from steerscope.evaluate.steered import packed_generate
from steerscope.evaluate.steering import NONE, SteeringRow, cosine_matrix
from steerscope.generation import generate
from steerscope.models.chat import format_prompt
from steerscope.pipeline import distributed
from steerscope.runtime import Runtime
from steerscope.vectors.vector import SteeringVector


def length_batches(tokenizer, prompts: Sequence[str], batch_size: int) -> list[list[int]]:
    """Prompt indices sorted by token length (longest first, stable) cut into batches: the
    batches :func:`steerscope.generation.generate` forms."""
    lengths = [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def sharded_steering_eval(
    model,
    tokenizer,
    vectors: Mapping[str, SteeringVector],
    harmful: Sequence[str],
    harmless: Sequence[str],
    *,
    arch,
    bypass_alpha: float = -1.0,
    induce_alpha: float = 1.0,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    judge=None,
    dist: distributed.Dist | None = None,
    progress: bool = False,
    score_ids: Sequence[int] | None = None,
    present: Callable[[str], bool] | None = None,
    presence=None,
    method_alphas: Mapping[str, tuple[float, float]] | None = None,
) -> dict[str, Any]:
    """The steering table as a JSON-able dict (``rows``, ``cosine``, ``prompts``,
    ``completions``, ``refusal_scores``), identical on every rank (the judge runs on rank 0
    only; other ranks get ``judge_asr`` None). ``score_ids``: the behaviour's fast-score
    tokens (None: the refusal tokens); ``presence``: the behaviour judge,
    ``.judge(prompts, responses) -> list[bool]``, called once per method and prompt set with
    the raw prompts (the pipeline's); else ``present(text) -> bool`` on each completion
    (None: the paper's refusal substrings). The table keeps refusal's names:
    ``refusal_rate`` is the behaviour rate, ``asr`` one minus it, ``harmful`` / ``harmless``
    the present / absent side. ``method_alphas``: method → (remove α, induce α) replacing
    ``bypass_alpha`` / ``induce_alpha`` for that method (the strength sweep's choice). The
    dict also holds ``verdicts`` (method → set → the judge's verdict per completion)."""
    if not harmful or not harmless:
        raise SteerscopeError("steered evaluation needs harmful and harmless test prompts",
                              "pass non-empty prompt lists")
    if NONE in vectors:
        raise SteerscopeError(f"'{NONE}' is reserved for the unsteered model", "rename the vector")
    dist = dist or distributed.current()
    for sv in vectors.values():
        sv.check_fits(arch)
    sets = {"harmful": (list(harmful), bypass_alpha), "harmless": (list(harmless), induce_alpha)}
    formatted = {k: [format_prompt(tokenizer, p) for p in v[0]] for k, v in sets.items()}
    batches = {k: length_batches(tokenizer, formatted[k], batch_size) for k in sets}
    methods: dict[str, SteeringVector | None] = {NONE: None, **vectors}
    ids = list(score_ids) if score_ids is not None else refusal_token_ids(tokenizer)
    present = present or is_refusal_substring
    units = [(s, b) for s in sets for b in range(len(batches[s]))]

    def alpha_of(m: str, set_name: str) -> float:
        if method_alphas is None or m not in method_alphas:
            return sets[set_name][1]
        return method_alphas[m][0 if set_name == "harmful" else 1]

    def run(unit) -> dict[str, tuple[list[str], list[float]]]:
        """Every method on one batch of one set: the generations packed (per-row vectors)."""
        set_name, b = unit
        ops = {m: None if sv is None else sv.intervention(alpha_of(m, set_name))
               for m, sv in methods.items()}
        texts = [formatted[set_name][i] for i in batches[set_name][b]]
        packed = packed_generate(model, tokenizer, [(texts, op) for op in ops.values()],
                                 max_new_tokens=max_new_tokens, batch_size=len(texts),
                                 progress=False)
        out = {}
        for (m, op), outs in zip(ops.items(), packed):
            steer_ops = [] if op is None else list(op) if isinstance(op, list) else [op]
            if outs is None:  # not packable: alone
                outs = generate(model, tokenizer, texts, interventions=steer_ops,
                                max_new_tokens=max_new_tokens, batch_size=len(texts),
                                progress=False)
            with Runtime(model, steer_ops, arch=arch), torch.no_grad():
                scores = refusal_scores(model, tokenizer, texts, refusal_ids=ids,
                                        batch_size=len(texts), progress=False)  # [b] float64
            out[m] = (outs, scores.tolist())
        return out

    mine = distributed.shard_indices(len(units), dist)
    it = mine
    if progress and dist.is_main:
        from tqdm.auto import tqdm

        it = tqdm(mine, desc="steered evaluation", unit="batch")
    local = {i: run(units[i]) for i in it}
    done = distributed.gather_indexed(local, len(units), dist)

    completions: dict[str, dict[str, list[str]]] = {m: {} for m in methods}
    scores: dict[str, dict[str, list[float]]] = {m: {} for m in methods}
    for m in methods:
        for s in sets:
            n = len(formatted[s])
            outs: list[Any] = [None] * n
            vals: list[Any] = [None] * n
            for (us, b), by_method in zip(units, done):
                if us == s:
                    o, v = by_method[m]
                    for j, i in enumerate(batches[s][b]):
                        outs[i], vals[i] = o[j], v[j]
            completions[m][s], scores[m][s] = outs, vals

    rows: list[SteeringRow] = []
    behaviour_verdicts: dict[str, dict[str, list[bool]]] = {m: {} for m in methods}
    for m, sv in methods.items():
        for s, (instructions, _) in sets.items():
            alpha = alpha_of(m, s)
            outs = completions[m][s]
            sc = torch.tensor(scores[m][s], dtype=torch.float64)  # [n]
            refused = [bool(present(o)) for o in outs] if presence is None else \
                [bool(v) for v in presence.judge(instructions, outs)]
            behaviour_verdicts[m][s] = refused
            judge_asr = None
            if judge is not None and s == "harmful" and dist.is_main:
                verdicts = judge.judge(instructions, outs)
                judge_asr = sum(bool(v) for v in verdicts) / len(verdicts)
            n = len(outs)
            rows.append(SteeringRow(
                method=m, prompt_set=s, alpha=0.0 if sv is None else alpha, n=n,
                asr=1 - sum(refused) / n, refusal_rate=sum(refused) / n,
                score_refusal_rate=float((sc > 0).double().mean()),
                mean_refusal_score=float(sc.mean()), judge_asr=judge_asr,
                repetition_rate=repetition_rate(outs)))
    return {
        "rows": [asdict(r) for r in rows],
        "cosine": cosine_matrix(vectors),
        "prompts": {k: v[0] for k, v in sets.items()},
        "completions": completions,
        "refusal_scores": scores,
        "verdicts": behaviour_verdicts,
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
    }
