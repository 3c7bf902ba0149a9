"""Steered evaluation: the paper's Table 2 on any model and any behaviour.

For every vector (and ``none``, the unsteered model): greedy completions of the behaviour's
**present** test prompts steered with ``bypass_alpha`` (default −1: the *remove* use) and of
its **absent** test prompts steered with ``induce_alpha`` (default +1: the *induce* use), then
per (method, side) one :class:`SteeringRow`:

- ``behaviour_rate``: the fraction of completions in which the behaviour's judge finds the
  behaviour (refusal, the default: the paper's substring matcher; refusal's ASR, attack
  success rate, is ``1 − behaviour_rate`` on the present side, :attr:`SteeringRow.absence_rate`);
- with an evaluation ``judge`` (:mod:`steerscope.evaluate.judges`, e.g. a jailbreak judge),
  ``judge_rate``: the fraction of present-side completions it flags;
- ``score_rate`` / ``mean_score``: the fraction of prompts with fast score (log-odds of the
  behaviour's first tokens at the last prompt position) > 0 and its mean, under the same
  steering (no generation);

and the cosine-similarity matrix between the vectors. Refusal's words (its side names and
ASR) are display labels only (``Behaviour.labels``, :attr:`SteeringEval.labels`).

The work is cut into fixed units: each side's prompts sorted by token length (longest first,
as ``generate`` does) and cut into batches of ``batch_size``; a unit is one (side, batch) for
every method, the methods' generations packed into shared batches
(:func:`steerscope.evaluate.steered.packed_generate`: each completion is the one the method
gives alone). ``shard`` spreads the units over processes (the pipeline passes its
:class:`~steerscope.pipeline.distributed.Dist` under torchrun) and gathers them in order;
every unit is computed exactly as in one process, so the result is identical for any number
of processes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from steerscope.artifacts import atomic_write_json
from steerscope.errors import SteerscopeError
from steerscope.evaluate.presence import SubstringPresence
from steerscope.evaluate.refusal import refusal_scores, refusal_token_ids
from steerscope.evaluate.repetition import repetition_rate
from steerscope.evaluate.steered import packed_generate
from steerscope.generation import generate
from steerscope.generation_sizes import DEFAULT_BATCH_SIZE
from steerscope.models.chat import format_prompt
from steerscope.results_schema import (
    REFUSAL_LABELS,
    SIDES,
    USE_OF_SIDE,
    accepts_old_keywords,
)
from steerscope.runtime import Runtime
from steerscope.validation import check_positive_int

NONE = "none"
# batch_size "auto" on CUDA: prompts per side in one unit of the steering table (every
# method's rows of a unit are generated together, at the batch that fits the memory)
AUTO_UNIT_PROMPTS = 64


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


class Shard(Protocol):
    """How work units are spread over processes: :class:`~steerscope.pipeline.distributed.Dist`
    is one (``evaluate/`` sits below ``pipeline/``)."""

    is_main: bool

    def indices(self, n: int) -> list[int]:
        """The unit indices in ``range(n)`` this process computes."""

    def gather(self, local: dict[int, Any], n: int) -> list[Any]:
        """Every process's ``{unit index: result}`` merged into one list in unit order."""


class OneProcess:
    """The :class:`Shard` of a single process: every unit here."""

    is_main = True

    def indices(self, n: int) -> list[int]:
        return list(range(n))

    def gather(self, local: dict[int, Any], n: int) -> list[Any]:
        return [local[i] for i in range(n)]


@dataclass
class SteeringRow:
    """One (method, side) cell of the steering table; the rate is stored once
    (``behaviour_rate``), the rest derived."""

    method: str
    side: str  # "present" (steered to remove the behaviour) | "absent" (to induce it)
    alpha: float
    n: int
    behaviour_rate: float  # fraction of completions the behaviour's judge finds it in
    score_rate: float  # fraction of prompts with fast score > 0
    mean_score: float  # mean fast score
    judge_rate: float | None = None  # present side: fraction the evaluation judge flags
    repetition_rate: float | None = None  # fraction of repetition loops (evaluate.repetition)

    @property
    def use(self) -> str:
        """``remove`` (present side) or ``induce`` (absent side)."""
        return USE_OF_SIDE[self.side]

    @property
    def absence_rate(self) -> float:
        """1 − ``behaviour_rate`` (refusal: the ASR, attack success rate)."""
        return 1.0 - self.behaviour_rate


@dataclass
class SteeringEval:
    """The steering table: rows, cosine matrix, and per method and side the prompts,
    completions and per-prompt fast scores."""

    rows: list[SteeringRow]
    cosine: dict[str, dict[str, float]]
    completions: dict[str, dict[str, list[str]]] = field(repr=False)
    prompts: dict[str, list[str]] = field(repr=False)
    scores: dict[str, dict[str, list[float]]] = field(default_factory=dict, repr=False)
    batch_size: int | None = None
    max_new_tokens: int | None = None
    labels: dict[str, str] = field(default_factory=lambda: dict(REFUSAL_LABELS))
    verdicts: dict[str, dict[str, list[bool]]] = field(default_factory=dict, repr=False)
    """method → side → the behaviour judge's verdict per completion (True: present)."""

    def row(self, method: str, side: str) -> SteeringRow:
        """The row of ``method`` on ``side`` (``present`` / ``absent``)."""
        for r in self.rows:
            if r.method == method and r.side == side:
                return r
        raise KeyError((method, side))

    def to_json(self) -> dict:
        """``rows`` (each :class:`SteeringRow`'s fields), ``cosine``, ``prompts``,
        ``completions``, ``scores`` (per prompt), ``batch_size``, ``max_new_tokens``,
        ``labels``, ``verdicts`` (per completion)."""
        return {
            "rows": [asdict(r) for r in self.rows],
            "cosine": self.cosine,
            "prompts": self.prompts,
            "completions": self.completions,
            "scores": self.scores,
            "batch_size": self.batch_size,
            "max_new_tokens": self.max_new_tokens,
            "labels": self.labels,
            "verdicts": self.verdicts,
        }

    def save(self, path: str | Path) -> Path:
        """Write the table, the cosine matrix and every completion as one JSON file."""
        return atomic_write_json(path, self.to_json())

    def table(self) -> str:
        """A plain-text table: one line per method, in the behaviour's display words
        (:attr:`labels`, from ``Behaviour.labels``): refusal shows the ASR (1 − behaviour
        rate) as the paper does, other behaviours the behaviour rate."""
        labels = self.labels
        refusal = labels.get("behaviour") == "refusal"
        what = "ASR" if refusal else "rate"

        def rate(r: SteeringRow) -> float:
            return r.absence_rate if refusal else r.behaviour_rate

        def judged(r: SteeringRow) -> str:
            return "-" if r.judge_rate is None else f"{r.judge_rate:.3f}"

        pw, aw = (max(12, len(labels[k]) + len(what) + 1) for k in SIDES)
        methods = list(dict.fromkeys(r.method for r in self.rows))
        head = (f"{'vector':10s} {labels['present'] + ' ' + what:>{pw}s} {'(judge)':>8s} "
                f"{'score>0':>8s} {'loops':>6s} {labels['absent'] + ' ' + what:>{aw}s} "
                f"{'score>0':>8s} {'loops':>6s}")
        lines = [head, "-" * len(head)]
        for m in methods:
            h, b = self.row(m, "present"), self.row(m, "absent")
            lines.append(f"{m:10s} {rate(h):{pw}.3f} {judged(h):>8s} {h.score_rate:8.3f} "
                         f"{_fmt_rate(h.repetition_rate):>6s} {rate(b):{aw}.3f} "
                         f"{b.score_rate:8.3f} {_fmt_rate(b.repetition_rate):>6s}")
        lines.append("(loops: fraction of completions that are repetition loops, "
                     "which the matcher judges unreliably)")
        return "\n".join(lines)


def _fmt_rate(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def cosine_matrix(vectors: Mapping[str, Steerer]) -> dict[str, dict[str, float]]:
    """Pairwise cosine similarity between vectors (computed in float64)."""
    return {a: {b: va.cosine(vb) for b, vb in vectors.items()} for a, va in vectors.items()}


def unit_batches(model, batch_size: int | str) -> tuple[int, int | str | None]:
    """(prompts per unit of the steering table, generation batch size; None: the unit's
    size) for ``batch_size``: an int is both; ``"auto"`` is :data:`AUTO_UNIT_PROMPTS` and the
    batch that fits the memory on CUDA, the default 16 elsewhere."""
    if batch_size != "auto":
        return check_positive_int(batch_size, "batch_size"), None
    if next(model.parameters()).device.type == "cuda":
        return AUTO_UNIT_PROMPTS, "auto"
    return DEFAULT_BATCH_SIZE, None


def length_batches(tokenizer, prompts: Sequence[str], batch_size: int) -> list[list[int]]:
    """Prompt indices sorted by token length (longest first, stable) cut into batches: the
    batches :func:`steerscope.generation.generate` forms."""
    lengths = [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@accepts_old_keywords
def evaluate_steering(
    model,
    tokenizer,
    vectors: Mapping[str, Steerer],
    present: Sequence[str] | None = None,
    absent: Sequence[str] | None = None,
    *,
    arch=None,
    bypass_alpha: float = -1.0,
    induce_alpha: float = 1.0,
    max_new_tokens: int = 64,
    batch_size: int | str = 16,
    judge=None,
    include_unsteered: bool = True,
    behaviour=None,
    score_ids=None,
    shard: Shard | None = None,
    progress: bool | None = None,
    method_alphas: Mapping[str, tuple[float, float]] | None = None,
) -> SteeringEval:
    """Generate and score every vector on the present (remove) and absent (induce) prompts.

    ``present`` / ``absent`` are the behaviour's raw test prompts (refusal, the default: the
    requests it refuses and those it answers; refusal's old keyword names still work,
    :func:`~steerscope.results_schema.accepts_old_keywords`); they are formatted with the
    model's chat template. ``behaviour`` (a
    :class:`~steerscope.behaviours.Behaviour`; None: refusal by the paper's substrings)
    judges presence, shown each completion's raw prompt. ``judge``: an optional evaluation
    judge (e.g. jailbreak) reported as ``judge_rate`` on the present side (on the main
    process only). ``score_ids``: the fast score's token ids (default: the behaviour's,
    which needs them when its ``score_tokens`` is ``auto``; refusal: ``refusal_token_ids``).
    ``shard``: spreads the units over processes (module docstring; None: all here).
    ``method_alphas``: method → (remove α, induce α) replacing ``bypass_alpha`` /
    ``induce_alpha`` for that method (the pipeline's strength sweep's choice).
    ``batch_size``: prompts per side in one unit (each unit's methods are generated together,
    that many rows at a time); ``"auto"``: on CUDA units of :data:`AUTO_UNIT_PROMPTS` whose
    rows are generated at the batch that fits the memory, elsewhere the default 16.
    """
    if not present or not absent:
        raise SteerscopeError("steered evaluation needs present and absent test prompts",
                              "pass non-empty prompt lists")
    if NONE in vectors:
        raise SteerscopeError(f"'{NONE}' is reserved for the unsteered model", "rename the vector")
    if arch is None:
        from steerscope.models.archs import validate_model

        arch = validate_model(model)
    for sv in vectors.values():
        sv.check_fits(arch)
    shard = shard if shard is not None else OneProcess()
    unit_size, gen_batch = unit_batches(model, batch_size)
    sets = {"present": (list(present), bypass_alpha), "absent": (list(absent), induce_alpha)}
    formatted = {k: [format_prompt(tokenizer, p) for p in v[0]] for k, v in sets.items()}
    batches = {k: length_batches(tokenizer, formatted[k], unit_size) for k in sets}
    if score_ids is None:
        score_ids = (refusal_token_ids(tokenizer) if behaviour is None
                     else behaviour.score_token_ids(tokenizer))
    ids = list(score_ids)
    presence = SubstringPresence() if behaviour is None else behaviour.make_judge()
    methods: dict[str, Steerer | None] = {NONE: None} if include_unsteered else {}
    methods.update(vectors)
    units = [(s, b) for s in sets for b in range(len(batches[s]))]

    def alpha_of(m: str, side: str) -> float:
        if method_alphas is None or m not in method_alphas:
            return sets[side][1]
        return method_alphas[m][0 if side == "present" else 1]

    def run(unit) -> dict[str, tuple[list[str], list[float]]]:
        """Every method on one batch of one side: the generations packed (per-row vectors),
        the fast scores under each method's steering."""
        side, b = unit
        ops = {m: None if sv is None else sv.intervention(alpha_of(m, side))
               for m, sv in methods.items()}
        texts = [formatted[side][i] for i in batches[side][b]]
        packed = packed_generate(model, tokenizer, [(texts, op) for op in ops.values()],
                                 max_new_tokens=max_new_tokens,
                                 batch_size=gen_batch or len(texts), progress=False)
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

    mine = shard.indices(len(units))
    it = mine
    if progress and shard.is_main:
        from tqdm.auto import tqdm

        it = tqdm(mine, desc="steering table", unit="batch")
    done = shard.gather({i: run(units[i]) for i in it}, len(units))

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
    found_by: dict[str, dict[str, list[bool]]] = {m: {} for m in methods}
    for m, sv in methods.items():
        for s, (instructions, _) in sets.items():
            alpha = alpha_of(m, s)
            outs = completions[m][s]
            sc = torch.tensor(scores[m][s], dtype=torch.float64)  # [n]
            found = [bool(v) for v in presence.judge(instructions, outs)]
            found_by[m][s] = found
            judge_rate = None
            if judge is not None and s == "present" and shard.is_main:
                verdicts = judge.judge(instructions, outs)
                judge_rate = sum(bool(v) for v in verdicts) / len(verdicts)
            n = len(outs)
            rows.append(SteeringRow(
                method=m, side=s, alpha=0.0 if sv is None else alpha, n=n,
                behaviour_rate=sum(found) / n, score_rate=float((sc > 0).double().mean()),
                mean_score=float(sc.mean()), judge_rate=judge_rate,
                repetition_rate=repetition_rate(outs)))
    prompts = {k: v[0] for k, v in sets.items()}
    labels = dict(REFUSAL_LABELS) if behaviour is None else dict(behaviour.labels)
    return SteeringEval(rows, cosine_matrix(vectors), completions, prompts, scores,
                        batch_size, max_new_tokens, labels, found_by)
