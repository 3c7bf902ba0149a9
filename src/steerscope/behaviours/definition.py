"""The :class:`Behaviour` type: two prompt sides, a judge, a fast score and two uses.

A behaviour is what a steering study is about. **present** prompts are those on which the
model shows it (refusal: harmful requests), **absent** prompts those on which it does not
(refusal: harmless requests); each side has ``train`` / ``val`` / ``test`` sources (a file
path, a named dataset, ``builtin:NAME`` or an in-memory list). The **judge** (a spec dict, see
:mod:`steerscope.behaviours.judges`) decides per completion whether the behaviour is present;
the **fast score** is the log-odds of a first-token set at the last prompt position
(``score_tokens``: strings, or ``"auto"``, see :mod:`steerscope.behaviours.score`). The two
**uses** are fixed: *remove* steers present prompts with α < 0, *induce* steers absent prompts
with α > 0 (:data:`USES`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from steerscope.behaviours.score import AUTO
from steerscope.errors import SteerscopeError

SIDES = ("present", "absent")
SPLITS = ("train", "val", "test")
# use -> (the side it steers, the sign of alpha)
USES: Mapping[str, tuple[str, int]] = MappingProxyType(
    {"remove": ("present", -1), "induce": ("absent", +1)})
LABEL_KEYS = ("behaviour", "present", "absent", "remove", "induce")
KEYS = ("name", "description", "labels", "present", "absent", "judge", "score_tokens")
REQUIRED_KEYS = ("name", "present", "absent", "judge")

@dataclass(frozen=True)
class Splits:
    """The ``train`` / ``val`` / ``test`` prompt sources of one side."""

    train: str | tuple[str, ...]
    val: str | tuple[str, ...]
    test: str | tuple[str, ...]

    def source(self, split: str) -> str | tuple[str, ...]:
        """The source of ``split`` (one of :data:`SPLITS`)."""
        if split not in SPLITS:
            raise SteerscopeError(f"unknown split '{split}'", f"use one of {', '.join(SPLITS)}")
        return getattr(self, split)

    def to_dict(self) -> dict[str, Any]:
        return {s: (list(v) if isinstance(v, tuple) else v)
                for s, v in ((s, getattr(self, s)) for s in SPLITS)}


def default_labels(name: str) -> dict[str, str]:
    """Display words when a behaviour gives none: its name, the side and use names."""
    return {"behaviour": name, "present": "present", "absent": "absent",
            "remove": "remove", "induce": "induce"}


@dataclass(frozen=True, eq=True)
class Behaviour:
    """A behaviour definition (see the module docstring); build with :func:`behaviour_from_dict`
    or :func:`steerscope.behaviours.load_behaviour` to get every check."""

    name: str
    present: Splits
    absent: Splits
    judge: Mapping[str, Any]
    score_tokens: str | tuple[str, ...] = AUTO
    labels: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    # consent to run the judge's code (a callable judge, a model's own code); given by the
    # person running (load_behaviour(..., allow_code=True), --allow-code), never by a file
    allow_code: bool = field(default=False, compare=False)

    __hash__ = None  # type: ignore[assignment]  # judge/labels are dicts

    def __post_init__(self) -> None:
        # every label filled in: the defaults, overridden by the given words
        object.__setattr__(self, "labels", dict(default_labels(self.name), **dict(self.labels)))

    def side(self, side: str) -> Splits:
        """The :class:`Splits` of ``"present"`` or ``"absent"``."""
        if side not in SIDES:
            raise SteerscopeError(f"unknown side '{side}'", "use 'present' or 'absent'")
        return getattr(self, side)

    def source(self, side: str, split: str) -> str | tuple[str, ...]:
        """The prompt source of one side and split."""
        return self.side(side).source(split)

    def label(self, key: str) -> str:
        """Display word for ``key`` (one of :data:`LABEL_KEYS`), falling back to the default."""
        if key not in LABEL_KEYS:
            raise SteerscopeError(f"unknown label '{key}'", f"use one of {', '.join(LABEL_KEYS)}")
        return self.labels[key]

    def make_judge(self, **kwargs):
        """The judge object of this behaviour (``judge(prompts, responses) -> list[bool]``,
        True = behaviour present); ``kwargs`` (e.g. ``device``) go to model judges. A judge
        that runs code needs :attr:`allow_code` (or ``allow_code=True`` here)."""
        from steerscope.behaviours.judges import make_judge

        kwargs.setdefault("allow_code", self.allow_code)
        return make_judge(self.judge, **kwargs)

    def score_token_ids(self, tokenizer, **kwargs) -> list[int]:
        """The fast score's token ids (see :func:`steerscope.behaviours.score.score_token_ids`)."""
        from steerscope.behaviours.score import score_token_ids

        return score_token_ids(self, tokenizer, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The definition as JSON-able data (the YAML contract's keys), e.g. for results.json;
        consent (:attr:`allow_code`) is not part of a definition."""
        return {
            "name": self.name,
            "description": self.description,
            "labels": dict(self.labels),
            "present": self.present.to_dict(),
            "absent": self.absent.to_dict(),
            "judge": _plain(self.judge),
            "score_tokens": self.score_tokens if isinstance(self.score_tokens, str)
            else list(self.score_tokens),
        }


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


__all__ = ["AUTO", "KEYS", "LABEL_KEYS", "SIDES", "SPLITS", "USES", "Behaviour", "Splits",
           "default_labels"]
