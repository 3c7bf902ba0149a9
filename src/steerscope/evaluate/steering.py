"""Steered evaluation: the paper's Table 2 on any model and any behaviour.

For every vector (and ``none``, the unsteered model): greedy completions of the harmful
(present) test prompts steered with ``bypass_alpha`` (default −1: the *remove* use, toward
compliance) and of the harmless (absent) test prompts steered with ``induce_alpha`` (default
+1: the *induce* use, toward refusal), all cells packed
into shared batches (:func:`steerscope.evaluate.steered.packed_outcomes`: each completion is
the one the cell's setting gives alone), then

- ASR (attack success rate) = fraction of completions that did NOT refuse, by the paper's
  substring matcher, on both sets (harmless sets: lower is better under +s; harmful sets:
  higher is better under −s);
- with a judge (:mod:`steerscope.evaluate.judges`), the judge's ASR on the harmful set;
- the fraction of prompts with refusal score > 0 and the mean refusal score under the same
  steering (no generation);

and the cosine-similarity matrix between the vectors.

With ``behaviour=`` (a :class:`~steerscope.behaviours.Behaviour`; default refusal) the
behaviour's judge decides presence and its score tokens give the score; ``refusal_rate`` is
then the behaviour rate (also in ``behaviour_rate``), ``asr`` its complement. Rows name their
set ``harmful`` / ``harmless`` for refusal (the keys results.json has always had) and
``present`` / ``absent`` for other behaviours; ``side`` and ``use`` name them generically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from steerscope.artifacts import atomic_write_json
from steerscope.errors import SteerscopeError
from steerscope.evaluate.presence import SubstringPresence
from steerscope.evaluate.refusal import refusal_token_ids
from steerscope.evaluate.repetition import repetition_rate
from steerscope.evaluate.steered import Setting, packed_outcomes
from steerscope.models.chat import format_prompt

NONE = "none"


class Steerer(Protocol):
    """What the steered evaluation needs of a vector: a
    :class:`~steerscope.vectors.SteeringVector` is one (``evaluate/`` sits below ``vectors/``,
    so it names the methods it calls rather than the class)."""

    def check_fits(self, arch: Any) -> None:
        """Raise when the vector does not fit the model ``arch``."""

    def intervention(self, alpha: float = 1.0) -> Any:
        """The runtime intervention that adds ``alpha`` times the vector (a multi-layer
        vector: a list of them, one per layer, which a runtime expands)."""

    def cosine(self, other: Any) -> float:
        """Cosine similarity with another vector."""


@dataclass
class SteeringRow:
    """One (method, prompt set) cell of the steering table."""

    method: str
    prompt_set: str  # "harmful" | "harmless" (refusal), else "present" | "absent"
    alpha: float
    n: int
    asr: float  # fraction of completions without the behaviour (refusal: not refused)
    refusal_rate: float  # fraction with the behaviour (refusal: by substring)
    score_refusal_rate: float  # fraction with fast score > 0
    mean_refusal_score: float
    judge_asr: float | None = None
    side: str = ""  # "present" | "absent"
    use: str = ""  # "remove" (present set) | "induce" (absent set)
    behaviour_rate: float | None = None  # = refusal_rate
    repetition_rate: float | None = None  # fraction of repetition loops (evaluate.repetition)

    def __post_init__(self) -> None:
        # rows built without the generic fields (refusal callers) get them from the set name
        if not self.side:
            self.side = {"harmful": "present", "harmless": "absent"}.get(self.prompt_set,
                                                                          self.prompt_set)
        if not self.use:
            self.use = {"present": "remove", "absent": "induce"}.get(self.side, "")
        if self.behaviour_rate is None:
            self.behaviour_rate = self.refusal_rate


def set_names(behaviour=None) -> dict[str, str]:
    """side -> the prompt-set name of table rows: refusal keeps harmful / harmless."""
    if behaviour is None or behaviour.name == "refusal":
        return {"present": "harmful", "absent": "harmless"}
    return {"present": "present", "absent": "absent"}


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
                f"{'loops':>6s} {'harmless ASR':>13s} {'score>0':>8s} {'loops':>6s}")
        lines = [head, "-" * len(head)]
        for m in methods:
            h, b = (r for r in self.rows if r.method == m)
            judge = f"{h.judge_asr:.3f}" if h.judge_asr is not None else "-"
            lines.append(f"{m:10s} {h.asr:12.3f} {judge:>8s} {h.score_refusal_rate:8.3f} "
                         f"{_fmt_rate(h.repetition_rate):>6s} {b.asr:13.3f} "
                         f"{b.score_refusal_rate:8.3f} {_fmt_rate(b.repetition_rate):>6s}")
        lines.append("(loops: fraction of completions that are repetition loops, "
                     "which the matcher judges unreliably)")
        return "\n".join(lines)


def _fmt_rate(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


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
    behaviour=None,
    score_ids=None,
) -> SteeringEval:
    """Generate and score every vector on the harmful (bypass) and harmless (induce) prompts.

    ``harmful`` / ``harmless`` are raw instructions (for another ``behaviour``: its present
    and absent test prompts); they are formatted with the model's chat template. ``judge``:
    an optional jailbreak judge reported as ``judge_asr`` on the harmful set. ``score_ids``:
    the fast score's token ids (default: the behaviour's, which needs them when its
    ``score_tokens`` is ``auto``; refusal: ``refusal_token_ids``).
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
    names = set_names(behaviour)
    sets = {names["present"]: (list(harmful), bypass_alpha),
            names["absent"]: (list(harmless), induce_alpha)}
    sides = {names[k]: k for k in names}
    formatted = {k: [format_prompt(tokenizer, p) for p in v[0]] for k, v in sets.items()}
    if score_ids is None:
        score_ids = (refusal_token_ids(tokenizer) if behaviour is None
                     else behaviour.score_token_ids(tokenizer))
    presence = SubstringPresence() if behaviour is None else behaviour.make_judge()
    methods: dict[str, Steerer | None] = {}
    if include_unsteered:
        methods[NONE] = None
    methods.update(vectors)
    rows: list[SteeringRow] = []
    completions: dict[str, dict[str, list[str]]] = {}
    cells = [(name, sv, set_name) for name, sv in methods.items() for set_name in sets]
    outcomes = packed_outcomes(
        model, tokenizer, [Setting(formatted[set_name], sets[set_name][0], sv,
                                   sets[set_name][1]) for _, sv, set_name in cells],
        judge=presence, score_ids=score_ids, max_new_tokens=max_new_tokens,
        batch_size=batch_size, arch=arch, desc="steering table")
    for (name, sv, set_name), got in zip(cells, outcomes):
        instructions, alpha = sets[set_name]
        completions.setdefault(name, {})
        outs = got.completions
        judge_asr = None
        if judge is not None and sides[set_name] == "present":
            verdicts = judge.judge(instructions, outs)
            judge_asr = sum(bool(v) for v in verdicts) / len(verdicts)
        side = sides[set_name]
        rows.append(SteeringRow(
            method=name, prompt_set=set_name, alpha=0.0 if sv is None else alpha,
            n=got.n, asr=1 - got.rate, refusal_rate=got.rate,
            score_refusal_rate=got.score_rate, mean_refusal_score=got.mean_score,
            judge_asr=judge_asr, side=side,
            use="remove" if side == "present" else "induce", behaviour_rate=got.rate,
            repetition_rate=repetition_rate(outs)))
        completions[name][set_name] = outs
    prompts = {k: v[0] for k, v in sets.items()}
    return SteeringEval(rows, cosine_matrix(vectors), completions, prompts)
