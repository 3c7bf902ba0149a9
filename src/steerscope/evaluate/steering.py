"""Steered evaluation: the paper's Table 2 on any model.

For every vector (and ``none``, the unsteered model): greedy completions of the harmful test
prompts steered with ``bypass_alpha`` (default −1: toward compliance) and of the harmless
test prompts steered with ``induce_alpha`` (default +1: toward refusal), then

- ASR (attack success rate) = fraction of completions that did NOT refuse, by the paper's
  substring matcher, on both sets (harmless sets: lower is better under +s; harmful sets:
  higher is better under −s);
- with a judge (:mod:`steerscope.evaluate.judges`), the judge's ASR on the harmful set;
- the fraction of prompts with refusal score > 0 and the mean refusal score under the same
  steering (no generation);

and the cosine-similarity matrix between the vectors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from steerscope.artifacts import atomic_write_json
from steerscope.errors import SteerscopeError
from steerscope.evaluate.matchers import is_refusal_substring
from steerscope.evaluate.refusal import refusal_scores, refusal_token_ids
from steerscope.generation import generate
from steerscope.models.chat import format_prompt
from steerscope.runtime import Runtime

NONE = "none"


class Steerer(Protocol):
    """What the steered evaluation needs of a vector: a
    :class:`~steerscope.vectors.SteeringVector` is one (``evaluate/`` sits below ``vectors/``,
    so it names the methods it calls rather than the class)."""

    def check_fits(self, arch: Any) -> None:
        """Raise when the vector does not fit the model ``arch``."""

    def intervention(self, alpha: float = 1.0) -> Any:
        """The runtime intervention that adds ``alpha`` times the vector."""

    def cosine(self, other: Any) -> float:
        """Cosine similarity with another vector."""


@dataclass
class SteeringRow:
    """One (method, prompt set) cell of the steering table."""

    method: str
    prompt_set: str  # "harmful" | "harmless"
    alpha: float
    n: int
    asr: float  # by substring: fraction not refused
    refusal_rate: float  # by substring
    score_refusal_rate: float  # fraction with refusal score > 0
    mean_refusal_score: float
    judge_asr: float | None = None


@dataclass
class SteeringEval:
    rows: list[SteeringRow]
    cosine: dict[str, dict[str, float]]
    completions: dict[str, dict[str, list[str]]] = field(repr=False)
    prompts: dict[str, list[str]] = field(repr=False)

    def row(self, method: str, prompt_set: str) -> SteeringRow:
        for r in self.rows:
            if r.method == method and r.prompt_set == prompt_set:
                return r
        raise KeyError((method, prompt_set))

    def to_json(self) -> dict:
        return {
            "rows": [asdict(r) for r in self.rows],
            "cosine": self.cosine,
            "prompts": self.prompts,
            "completions": self.completions,
        }

    def save(self, path: str | Path) -> Path:
        """Write the table, the cosine matrix and every completion as one JSON file."""
        return atomic_write_json(path, self.to_json())

    def table(self) -> str:
        """A plain-text table: one line per method."""
        methods = list(dict.fromkeys(r.method for r in self.rows))
        head = (f"{'vector':10s} {'harmful ASR':>12s} {'(judge)':>8s} {'score>0':>8s} "
                f"{'harmless ASR':>13s} {'score>0':>8s}")
        lines = [head, "-" * len(head)]
        for m in methods:
            h, b = self.row(m, "harmful"), self.row(m, "harmless")
            judge = f"{h.judge_asr:.3f}" if h.judge_asr is not None else "-"
            lines.append(f"{m:10s} {h.asr:12.3f} {judge:>8s} {h.score_refusal_rate:8.3f} "
                         f"{b.asr:13.3f} {b.score_refusal_rate:8.3f}")
        return "\n".join(lines)


def cosine_matrix(vectors: Mapping[str, Steerer]) -> dict[str, dict[str, float]]:
    """Pairwise cosine similarity between vectors (computed in float64)."""
    return {a: {b: va.cosine(vb) for b, vb in vectors.items()} for a, va in vectors.items()}


def evaluate_steering(
    model,
    tokenizer,
    vectors: Mapping[str, Steerer],
    harmful: Sequence[str],
    harmless: Sequence[str],
    *,
    arch=None,
    bypass_alpha: float = -1.0,
    induce_alpha: float = 1.0,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    judge=None,
    include_unsteered: bool = True,
) -> SteeringEval:
    """Generate and score every vector on the harmful (bypass) and harmless (induce) prompts.

    ``harmful`` / ``harmless`` are raw instructions; they are formatted with the model's
    chat template.
    """
    if not harmful or not harmless:
        raise SteerscopeError("steered evaluation needs harmful and harmless test prompts",
                              "pass non-empty prompt lists")
    if NONE in vectors:
        raise SteerscopeError(f"'{NONE}' is reserved for the unsteered model", "rename the vector")
    if arch is None:
        from steerscope.models.archs import validate_model

        arch = validate_model(model)
    for sv in vectors.values():
        sv.check_fits(arch)
    sets = {"harmful": (list(harmful), bypass_alpha), "harmless": (list(harmless), induce_alpha)}
    formatted = {k: [format_prompt(tokenizer, p) for p in v[0]] for k, v in sets.items()}
    ids = refusal_token_ids(tokenizer)
    methods: dict[str, Steerer | None] = {}
    if include_unsteered:
        methods[NONE] = None
    methods.update(vectors)
    rows: list[SteeringRow] = []
    completions: dict[str, dict[str, list[str]]] = {}
    for name, sv in methods.items():
        completions[name] = {}
        for set_name, (instructions, alpha) in sets.items():
            ops = [] if sv is None else [sv.intervention(alpha)]
            texts = formatted[set_name]
            outs = generate(model, tokenizer, texts, interventions=ops,
                            max_new_tokens=max_new_tokens, batch_size=batch_size,
                            desc=f"{name} on {set_name}")
            with Runtime(model, ops, arch=arch), torch.no_grad():
                scores = refusal_scores(model, tokenizer, texts, refusal_ids=ids,
                                        batch_size=batch_size)
            refused = [is_refusal_substring(o) for o in outs]
            judge_asr = None
            if judge is not None and set_name == "harmful":
                verdicts = judge.judge(instructions, outs)
                judge_asr = sum(bool(v) for v in verdicts) / len(verdicts)
            n = len(outs)
            rows.append(SteeringRow(
                method=name, prompt_set=set_name, alpha=0.0 if sv is None else alpha, n=n,
                asr=1 - sum(refused) / n, refusal_rate=sum(refused) / n,
                score_refusal_rate=float((scores > 0).double().mean()),
                mean_refusal_score=float(scores.mean()), judge_asr=judge_asr))
            completions[name][set_name] = outs
    prompts = {k: v[0] for k, v in sets.items()}
    return SteeringEval(rows, cosine_matrix(vectors), completions, prompts)
