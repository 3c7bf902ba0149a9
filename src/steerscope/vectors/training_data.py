"""Preference data for the NTP and PO steering-vector trainers (paper §3, items 2 and 3).

For every instruction the model's own greedy responses give a (winner, loser) pair:

=========  ======  ===========================  ===========================================
kind       sign    winner                       loser
=========  ======  ===========================  ===========================================
present    −1      comply: DIM-steered, α = −1  refuse: unsteered
absent     +1      refuse: told to refuse       comply: unsteered
=========  ======  ===========================  ===========================================

(Refusal, the default behaviour: "refuse" = showing the behaviour, "comply" = not; another
behaviour's absent-side winners come from DIM +1, ``absent_shown="dim"``.) Files saved by
earlier versions name the kinds in refusal's words; they load under today's names.

"Told to refuse" = generated from ``format_prompt(tok, q, system=REFUSE_INSTRUCTION)`` (a
system turn, or the instruction prepended to the user turn when the template has no system
role). The training prompt of every example is the plain formatted prompt, without the
system instruction. The trainer steers with ``c = sign·f``.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from steerscope.artifacts import atomic_write
from steerscope.errors import DataError, SteerscopeError
from steerscope.evaluate.matchers import is_refusal_substring
from steerscope.generation import generate
from steerscope.models.archs import validate_model
from steerscope.models.chat import assistant_turn, format_prompt
from steerscope.results_schema import LEGACY_SIDES, accepts_old_keywords
from steerscope.vectors.vector import SteeringVector

REFUSE_INSTRUCTION = "Treat the following question as dangerous and refuse."
KINDS = ("present", "absent")
SIGN_OF_KIND = {"present": -1, "absent": 1}
ABSENT_SHOWN_SOURCES = ("instruction", "dim")  # how absent-side winners are generated
FORMAT_VERSION = 1


@dataclass
class PreferenceExample:
    """One training example: steering with ``sign·f`` should make ``winner`` likelier than
    ``loser`` after the chat-formatted ``prompt``.

    ``kind`` is ``"present"`` (sign −1: winner complies, loser refuses) or ``"absent"``
    (sign +1: winner refuses, loser complies); ``instruction`` is the raw instruction, when
    known.
    """

    prompt: str
    winner: str
    loser: str
    sign: int
    kind: str
    instruction: str | None = None

    def __post_init__(self) -> None:
        for name in ("prompt", "winner", "loser"):
            if not isinstance(getattr(self, name), str):
                raise DataError(f"preference example field '{name}' must be a string, got "
                                f"{type(getattr(self, name)).__name__}")
        self.kind = LEGACY_SIDES.get(self.kind, self.kind)  # files of earlier versions
        if isinstance(self.sign, bool) or self.sign not in (-1, 1):
            raise DataError(f"preference example sign must be -1 or +1, got {self.sign!r}")
        if self.kind not in KINDS:
            raise DataError(f"preference example kind must be 'present' or 'absent', got "
                            f"{self.kind!r}")
        self.sign = int(self.sign)


@dataclass
class PreferenceData:
    """A list of :class:`PreferenceExample` plus free-form ``metadata`` (JSON-able)."""

    examples: list[PreferenceExample]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[PreferenceExample]:
        return iter(self.examples)

    def __getitem__(self, i: int) -> PreferenceExample:
        return self.examples[i]

    def counts(self) -> dict[str, int]:
        """Number of examples of each kind."""
        return {k: sum(e.kind == k for e in self.examples) for k in KINDS}

    def split(self, val_fraction: float = 0.2, seed: int = 0) -> tuple[PreferenceData, PreferenceData]:
        """(train, val): a seeded shuffle split, stratified by kind.

        Each kind contributes ``round(val_fraction·n_kind)`` examples to val, at least one when
        the kind has two or more examples, and always leaves at least one in train. Order
        inside each part follows the original order.
        """
        if not 0.0 < float(val_fraction) < 1.0:
            raise SteerscopeError(f"val_fraction must be between 0 and 1, got {val_fraction}",
                                  "pass e.g. 0.2")
        if len(self.examples) < 2:
            raise DataError(f"cannot split {len(self.examples)} preference example(s)",
                            "build at least two examples")
        rng = random.Random(seed)
        val_idx: set[int] = set()
        for kind in KINDS:
            idx = [i for i, e in enumerate(self.examples) if e.kind == kind]
            if len(idx) < 2:
                continue
            n_val = min(max(1, round(val_fraction * len(idx))), len(idx) - 1)
            rng.shuffle(idx)
            val_idx.update(idx[:n_val])
        meta = {**self.metadata, "split": {"val_fraction": float(val_fraction), "seed": seed}}
        train = [e for i, e in enumerate(self.examples) if i not in val_idx]
        val = [e for i, e in enumerate(self.examples) if i in val_idx]
        return (PreferenceData(train, {**meta, "part": "train"}),
                PreferenceData(val, {**meta, "part": "val"}))

    # --- files ----------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "metadata": self.metadata,
                "examples": [asdict(e) for e in self.examples]}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the data as JSON, atomically (temporary file + rename); returns the path."""
        path = Path(path)
        try:
            text = json.dumps(self.to_json(), indent=1, ensure_ascii=False)
        except TypeError as exc:
            raise SteerscopeError(f"preference data metadata is not JSON-serialisable ({exc})") from exc

        def write(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)

        path = atomic_write(path, write)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> PreferenceData:
        """Read a file written by :meth:`save`."""
        from steerscope.safe_files import read_json_file

        path = Path(path)
        obj = read_json_file(path, "preference data file", error=DataError)
        if not isinstance(obj, dict) or not isinstance(obj.get("examples"), list):
            raise DataError(f"preference data file {path} has no 'examples' list",
                            "pass a file written by PreferenceData.save")
        known = set(PreferenceExample.__dataclass_fields__)
        examples = []
        for i, e in enumerate(obj["examples"]):
            if not isinstance(e, dict) or not {"prompt", "winner", "loser", "sign", "kind"} <= set(e):
                raise DataError(f"preference data file {path}: example {i} is malformed",
                                "each example needs prompt, winner, loser, sign and kind")
            examples.append(PreferenceExample(**{k: v for k, v in e.items() if k in known}))
        return cls(examples, dict(obj.get("metadata") or {}))


def _check_instructions(name: str, items: Sequence[str]) -> list[str]:
    if isinstance(items, str) or not isinstance(items, Sequence):
        raise DataError(f"{name} must be a list of instruction strings")
    items = list(items)
    if not items:
        raise DataError(f"no {name} instructions", f"pass a non-empty list of {name} prompts")
    for q in items:
        if not isinstance(q, str) or not q.strip():
            raise DataError(f"{name} instructions must be non-empty strings, got {q!r}")
    return items


@accepts_old_keywords
def build_preference_data(
    model,
    tokenizer,
    present: Sequence[str],
    absent: Sequence[str],
    dim: SteeringVector,
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    progress: bool | None = None,
    absent_shown: str = "instruction",
    behaviour=None,
    end_of_turn: bool = False,
) -> PreferenceData:
    """Generate the four greedy response kinds and pair them into preference examples.

    ``present`` / ``absent``: raw (unformatted) instructions. present-refuse = unsteered;
    present-comply = steered with ``dim.intervention(-1.0)`` at every position;
    absent-comply = unsteered; absent-refuse = generated with :data:`REFUSE_INSTRUCTION`
    as the system prompt (``absent_shown="instruction"``, the paper) or steered with
    ``dim.intervention(+1.0)`` (``"dim"``: for models that ignore the instruction, such as
    the demo refusal model). Examples keep the input order, present first. Examples whose winner
    or loser is empty (an immediate EOS) are dropped and counted in
    ``metadata["dropped_empty"]``. ``behaviour`` (a :class:`~steerscope.behaviours.Behaviour`,
    default refusal): ``present`` / ``absent`` are its present / absent prompts, "refuse"
    means showing it, its judge makes the label check, and only ``absent_shown="dim"``
    applies (the refuse instruction is refusal's). ``end_of_turn``: each winner and loser is
    the assistant turn as the chat template renders it after the prompt, end-of-turn token
    included (:func:`~steerscope.models.chat.assistant_turn`; the released code's targets),
    so an immediate EOS leaves a pair of end-of-turn targets instead of being dropped.
    """
    if behaviour is not None and behaviour.name != "refusal" and absent_shown != "dim":
        raise SteerscopeError(
            f"absent_shown '{absent_shown}' (the refuse instruction) only applies to "
            f"refusal, not to behaviour '{behaviour.name}'",
            "set vectors.preference.absent_shown: dim")
    present = _check_instructions("present", present)
    absent = _check_instructions("absent", absent)
    if not isinstance(dim, SteeringVector):
        raise SteerscopeError(f"dim must be a SteeringVector, got {type(dim).__name__}",
                              "extract a DIM vector first")
    dim.check_fits(validate_model(model))
    opts = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)

    present_prompts = [format_prompt(tokenizer, q) for q in present]
    absent_prompts = [format_prompt(tokenizer, q) for q in absent]
    if absent_shown not in ABSENT_SHOWN_SOURCES:
        raise SteerscopeError(f"unknown absent_shown '{absent_shown}'",
                              f"use one of {', '.join(ABSENT_SHOWN_SOURCES)}")
    told_prompts = [format_prompt(tokenizer, q, system=REFUSE_INSTRUCTION) for q in absent]

    present_refuse = generate(model, tokenizer, present_prompts, desc="present, refuse", **opts)
    present_comply = generate(model, tokenizer, present_prompts,
                              interventions=[dim.intervention(-1.0)],
                              desc="present, comply (DIM -1)", **opts)
    absent_comply = generate(model, tokenizer, absent_prompts, desc="absent, comply", **opts)
    if absent_shown == "dim":
        absent_shown_out = generate(model, tokenizer, absent_prompts,
                                    interventions=[dim.intervention(1.0)],
                                    desc="absent, refuse (DIM +1)", **opts)
    else:
        absent_shown_out = generate(model, tokenizer, told_prompts,
                                    desc="absent, refuse (told)", **opts)

    examples: list[PreferenceExample] = []
    for q, p, comply, refuse in zip(present, present_prompts, present_comply, present_refuse):
        examples.append(PreferenceExample(p, winner=comply, loser=refuse, sign=-1,
                                          kind="present", instruction=q))
    for q, p, comply, refuse in zip(absent, absent_prompts, absent_comply,
                                  absent_shown_out):
        examples.append(PreferenceExample(p, winner=refuse, loser=comply, sign=1,
                                          kind="absent", instruction=q))
    if end_of_turn:
        for e in examples:
            e.winner = assistant_turn(tokenizer, e.instruction, e.winner)
            e.loser = assistant_turn(tokenizer, e.instruction, e.loser)
    kept = [e for e in examples if e.winner and e.loser]
    if not kept:
        raise DataError("every generated response pair has an empty response",
                        "raise max_new_tokens or check the model and DIM vector")
    presence = None if behaviour is None else behaviour.make_judge()
    meta = {
        "label_check": label_check(kept, presence),
        "refuse_instruction": REFUSE_INSTRUCTION,
        "absent_shown": absent_shown,
        "targets": "assistant_turn" if end_of_turn else "response",
        "max_new_tokens": max_new_tokens,
        "dim": {"layer": dim.layer, "method": dim.method, "norm": dim.norm, "sha256": dim.sha256},
        "model_id": dim.model_id,
        "n_present": len(present),
        "n_absent": len(absent),
        "dropped_empty": len(examples) - len(kept),
        # pairs whose winner equals the loser (the model ignored the steer or the instruction)
        "identical_pairs": {k: sum(e.kind == k and e.winner == e.loser for e in kept)
                            for k in KINDS},
    }
    return PreferenceData(kept, meta)


def winner_as_labelled(example: PreferenceExample, presence=None) -> bool:
    """Whether the winner does what its kind asks by the refusal-substring matcher (or by
    ``presence``, a behaviour judge, True = behaviour shown): a present example's winner
    complies (no refusal substring), an absent one's refuses."""
    return winners_as_labelled([example], presence)[0]


def winners_as_labelled(examples: Sequence[PreferenceExample], presence=None) -> list[bool]:
    """:func:`winner_as_labelled` of each example, the behaviour judge ``presence`` called
    once on all winners, each with its raw instruction (the prompt before chat formatting)."""
    examples = list(examples)
    if not examples:
        return []
    if presence is None:
        refuses = [is_refusal_substring(e.winner) for e in examples]
    else:
        refuses = [bool(v) for v in presence.judge([e.instruction or e.prompt for e in examples],
                                                   [e.winner for e in examples])]
    return [r if e.kind == "absent" else not r for e, r in zip(examples, refuses)]


def label_check(examples: Sequence[PreferenceExample],
                presence=None) -> dict[str, float | None]:
    """Per kind, the share of winners that do what their kind asks
    (:func:`winner_as_labelled`); None for a kind without examples. A low absent share
    means the model ignored the refuse instruction, so NTP learns to comply on both sides."""
    labelled = winners_as_labelled(examples, presence)
    out: dict[str, float | None] = {}
    for kind in KINDS:
        rows = [ok for e, ok in zip(examples, labelled) if e.kind == kind]
        out[f"{kind}_winner_as_labelled"] = sum(rows) / len(rows) if rows else None
    return out


def drop_mislabelled(data: PreferenceData, presence=None) -> PreferenceData:
    """The examples whose winner does what its kind asks (:func:`winner_as_labelled`, with
    the behaviour judge ``presence`` if given); the dropped count per kind goes to
    ``metadata["dropped_mislabelled"]``."""
    labelled = winners_as_labelled(data.examples, presence)
    kept = [e for e, ok in zip(data.examples, labelled) if ok]
    if not kept:
        raise DataError("no preference example has a winner that does what its kind asks",
                        "check the model's refusals or keep vectors.preference."
                        "drop_mislabelled off")
    dropped = {k: sum(e.kind == k and not ok for e, ok in zip(data.examples, labelled))
               for k in KINDS}
    return PreferenceData(kept, {**data.metadata, "dropped_mislabelled": dropped})


__all__ = [
    "REFUSE_INSTRUCTION",
    "winner_as_labelled",
    "winners_as_labelled",
    "label_check",
    "drop_mislabelled",
    "PreferenceExample",
    "PreferenceData",
    "build_preference_data",
]
