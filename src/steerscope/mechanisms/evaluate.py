"""The freezing-ablation table (the paper's Table 1) on any model.

For plain steering (``none``) and each freezing mode: greedy completions of the behaviour's
present test prompts steered with ``bypass_alpha`` (default −1: *remove*) and of its absent
ones with ``induce_alpha`` (default +1: *induce*), the ablation applied at every layer
``>= ℓ`` for the whole response (:mod:`steerscope.mechanisms.freeze`). Per (mode, side): the
behaviour rate (fraction of completions the behaviour's judge finds it in; default refusal
by the paper's substring matcher, whose ASR is 1 − rate), the fast score at the last prompt
position under the same ablation (fraction > 0, mean), and the **drop** versus plain
steering in absolute points: ``100 · (success_none − success_mode)`` with success = 1 − rate
on the present side (remove) and the rate on the absent side (induce). ``mean drop``
averages the two sides. Each cell is one :func:`steerscope.evaluate.steered.steered_outcome`
with frozen generation as its generator; the two sets of a mode are generated together, packed
into shared batches with per-row alphas (each row is its set's run alone).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from steerscope.artifacts import atomic_write, atomic_write_json
from steerscope.behaviours.builtins import REFUSAL
from steerscope.errors import SteerscopeError
from steerscope.evaluate.matchers import is_refusal_substring
from steerscope.evaluate.presence import CallablePresence
from steerscope.evaluate.refusal import refusal_token_ids
from steerscope.evaluate.repetition import repetition_rate
from steerscope.evaluate.steered import steered_outcome
from steerscope.generation import generate
from steerscope.generation_sizes import fixed_batch_size
from steerscope.mechanisms.freeze import MODE_NAMES, check_mode, frozen_generate
from steerscope.models.archs import validate_model
from steerscope.models.chat import format_prompt
from steerscope.results_schema import SIDES

UNSTEERED = "unsteered"
DEFAULT_MODES = ("qk", "ov", "svv", "mlp")


@dataclass
class FreezeRow:
    """One (mode, side) cell."""

    mode: str
    side: str  # "present" (remove) | "absent" (induce)
    alpha: float
    n: int
    behaviour_rate: float  # fraction of completions the behaviour's judge finds it in
    score_rate: float  # fraction of prompts with fast score > 0
    mean_score: float
    drop: float | None  # absolute points lost versus plain steering (None for "none")
    repetition_rate: float | None = None  # fraction of repetition loops (evaluate.repetition)

    @property
    def absence_rate(self) -> float:
        """1 − ``behaviour_rate`` (refusal: the ASR)."""
        return 1.0 - self.behaviour_rate


@dataclass
class FreezeEval:
    """The ablation table with every completion."""

    rows: list[FreezeRow]
    layer: int
    vector_name: str
    completions: dict[str, dict[str, list[str]]] = field(repr=False)
    prompts: dict[str, list[str]] = field(repr=False)

    labels: dict[str, str] = field(default_factory=lambda: {"present": "present",
                                                            "absent": "absent"})

    def row(self, mode: str, side: str) -> FreezeRow:
        for r in self.rows:
            if r.mode == mode and r.side == side:
                return r
        raise KeyError((mode, side))

    @property
    def modes(self) -> list[str]:
        return list(dict.fromkeys(r.mode for r in self.rows))

    def mean_drop(self, mode: str) -> float | None:
        drops = [self.row(mode, s).drop for s in SIDES]
        return None if any(d is None for d in drops) else sum(drops) / 2

    def shown_rate(self, row: FreezeRow) -> float:
        """The rate the table and figure show: refusal's ASR (1 − rate, as the paper), else
        the behaviour rate."""
        return row.absence_rate if self.refusal else row.behaviour_rate

    @property
    def refusal(self) -> bool:
        return self.labels.get("behaviour") == "refusal"

    def table(self) -> str:
        """Plain text, one line per mode (like the paper's Table 1)."""
        present, absent = self.labels["present"], self.labels["absent"]
        what = "ASR" if self.refusal else "rate"
        judged = "substring" if self.refusal else "the behaviour's judge"
        head = (f"{'ablation':20s} {present + ' ' + what:>11s} {'drop':>6s} "
                f"{absent + ' ' + what:>12s} {'drop':>6s} {'mean drop':>9s} {'loops':>11s}")
        lines = [f"{self.vector_name} at layer {self.layer}; {what} by {judged}; drop = points "
                 "of steering success lost vs plain steering; loops = repetition loops "
                 f"({present} / {absent}), which the matcher judges unreliably",
                 head, "-" * len(head)]

        def fmt(d):
            return "-" if d is None else f"{d:+.1f}"

        def fmt_loops(h, b):
            return " / ".join("-" if r.repetition_rate is None else f"{r.repetition_rate:.2f}"
                              for r in (h, b))

        for m in self.modes:
            h, b = (self.row(m, s) for s in SIDES)
            name = MODE_NAMES.get(m, m)
            lines.append(f"{name:20s} {self.shown_rate(h):11.3f} {fmt(h.drop):>6s} "
                         f"{self.shown_rate(b):12.3f} "
                         f"{fmt(b.drop):>6s} {fmt(self.mean_drop(m)):>9s} "
                         f"{fmt_loops(h, b):>11s}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"layer": self.layer, "vector": self.vector_name,
                "rows": [asdict(r) for r in self.rows], "labels": self.labels,
                "mean_drop": {m: self.mean_drop(m) for m in self.modes},
                "table": self.table(), "prompts": self.prompts,
                "completions": self.completions}

    def save(self, folder: str | Path, *, figure: bool = True) -> list[Path]:
        """Write ``freeze.json`` (table and completions) and, with matplotlib, ``freeze.png``."""
        folder = Path(folder)
        paths = [atomic_write_json(folder / "freeze.json", self.to_json())]
        if figure:
            paths.append(self.figure(folder / "freeze.png"))
        return paths

    def figure(self, path: str | Path) -> Path:
        """Grouped bars: the shown rate (:meth:`shown_rate`) per mode on both sides."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        modes = self.modes
        fig, ax = plt.subplots(figsize=(1.2 * len(modes) + 2, 3.2))
        xs = range(len(modes))
        for off, (s, color) in zip((-0.2, 0.2), zip(SIDES, ("tab:red", "tab:blue"))):
            ax.bar([x + off for x in xs], [self.shown_rate(self.row(m, s)) for m in modes],
                   width=0.4, color=color,
                   label=f"{self.labels[s]} (α = {self.row('none', s).alpha:+g})")
        ax.set_xticks(list(xs), [MODE_NAMES.get(m, m) for m in modes], fontsize=8, rotation=15)
        ax.set_ylabel("ASR (not refused)" if self.refusal
                      else f"{self.labels.get('behaviour', 'behaviour')} rate")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
        ax.set_title(f"{self.vector_name}, layer {self.layer}: freezing ablations", fontsize=9)
        fig.tight_layout()
        try:
            return atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=120))
        finally:
            plt.close(fig)


def _packed_frozen(model, tokenizer, formatted, sets, vector, layer, mode, *, max_new_tokens,
                   batch_size, arch) -> dict:
    """set name -> (completions, logits [n, V]) of every set under freezing ``mode``, the sets
    (each with its own alpha) packed into shared length-sorted batches by one
    :func:`frozen_generate` with per-prompt alphas: each row is its set's run alone."""
    names = list(sets)
    texts = [t for k in names for t in formatted[k]]
    alphas = [sets[k][1] for k in names for _ in formatted[k]]
    outs, logits = frozen_generate(model, tokenizer, texts, vector, layer, alphas, mode,
                                   max_new_tokens=max_new_tokens, batch_size=batch_size,
                                   arch=arch, desc=MODE_NAMES[mode])
    result, start = {}, 0
    for k in names:
        n = len(formatted[k])
        result[k] = (outs[start:start + n], logits[start:start + n])
        start += n
    return result


def freeze_evaluation(
    model,
    tokenizer,
    vector,
    present: Sequence[str],
    absent: Sequence[str],
    *,
    modes: Sequence[str] = DEFAULT_MODES,
    layer: int | None = None,
    bypass_alpha: float = -1.0,
    induce_alpha: float = 1.0,
    max_new_tokens: int = 64,
    batch_size: int | str = 16,
    include_unsteered: bool = False,
    arch=None,
    vector_name: str | None = None,
    behaviour=None,
    score_ids=None,
) -> FreezeEval:
    """Table 1 for one vector (a :class:`~steerscope.vectors.SteeringVector`, or a tensor
    with ``layer``). ``present`` / ``absent`` are the behaviour's raw test prompts
    (chat-formatted here; refusal, the default: requests it refuses / answers). ``include_unsteered`` adds the
    unsteered model as a reference row. ``score_ids``: the fast score's token ids (default:
    the behaviour's; refusal: ``refusal_token_ids``). ``batch_size`` ``"auto"``: the
    lockstep batches keep :data:`~steerscope.generation.DEFAULT_BATCH_SIZE`."""
    import torch

    from steerscope.vectors.vector import SteeringVector

    if not present or not absent:
        raise SteerscopeError("the freezing evaluation needs present and absent test prompts",
                              "pass non-empty prompt lists")
    arch = arch if arch is not None else validate_model(model)
    batch_size = fixed_batch_size(batch_size)
    if isinstance(vector, SteeringVector):
        vector.check_fits(arch)
        layer = vector.layer if layer is None else layer
        vector_name = vector_name or vector.method
        s = vector.vector
    elif isinstance(vector, torch.Tensor):
        if layer is None:
            raise SteerscopeError("a raw tensor vector needs its layer", "pass layer=")
        s = vector
    else:
        raise SteerscopeError(f"vector must be a SteeringVector or a tensor, got "
                              f"{type(vector).__name__}")
    arch.check_layer(layer)
    arch.check_vector(s)
    modes = list(dict.fromkeys(["none", *[check_mode(m) for m in modes]]))
    present_set = "present"
    sets = {"present": (list(present), float(bypass_alpha)),
            "absent": (list(absent), float(induce_alpha))}
    formatted = {k: [format_prompt(tokenizer, p) for p in v[0]] for k, v in sets.items()}
    if score_ids is None:
        score_ids = (refusal_token_ids(tokenizer) if behaviour is None
                     else behaviour.score_token_ids(tokenizer))
    # refusal: the paper's substring matcher, looked up when called
    presence = (CallablePresence(lambda text: is_refusal_substring(text)) if behaviour is None
                else behaviour.make_judge())
    rows: list[FreezeRow] = []
    completions: dict[str, dict[str, list[str]]] = {}
    success: dict[tuple[str, str], float] = {}
    for mode in ([UNSTEERED] if include_unsteered else []) + modes:
        completions[mode] = {}
        for set_name, (instructions, alpha) in sets.items():
            if mode == UNSTEERED:
                def gen(texts, set_name=set_name):
                    outs = generate(model, tokenizer, texts, max_new_tokens=max_new_tokens,
                                    batch_size=batch_size, desc=f"unsteered on {set_name}")
                    _, logits = frozen_generate(model, tokenizer, texts, s, layer, 0.0, "none",
                                                max_new_tokens=1, batch_size=batch_size,
                                                arch=arch)
                    return outs, logits
                alpha_used = 0.0
            else:
                if set_name == present_set:  # both sets of this mode in shared batches
                    packed = _packed_frozen(model, tokenizer, formatted, sets, s, layer, mode,
                                            max_new_tokens=max_new_tokens,
                                            batch_size=batch_size, arch=arch)

                def gen(texts, set_name=set_name, packed=packed):
                    return packed[set_name]
                alpha_used = alpha
            got = steered_outcome(model, tokenizer, formatted[set_name],
                                  instructions=instructions, judge=presence,
                                  score_ids=score_ids, generator=gen)
            outs = got.completions
            asr = 1 - got.rate
            success[mode, set_name] = asr if set_name == present_set else 1 - asr
            rows.append(FreezeRow(mode, set_name, alpha_used, got.n, got.rate, got.score_rate,
                                  got.mean_score, None, repetition_rate(outs)))
            completions[mode][set_name] = outs
    for r in rows:
        if r.mode != "none":
            r.drop = 100.0 * (success["none", r.side] - success[r.mode, r.side])
    prompts = {k: v[0] for k, v in sets.items()}
    labels = dict(REFUSAL.labels if behaviour is None else behaviour.labels)
    return FreezeEval(rows, layer, vector_name or "vector", completions, prompts, labels)
