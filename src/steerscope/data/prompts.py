"""The :class:`Prompt` and :class:`PromptSet` types."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import overload

from steerscope.errors import DataError, SteerscopeError


@dataclass(frozen=True)
class Prompt:
    """One instruction, with its category and source (dataset or upstream origin) if known."""

    instruction: str
    category: str | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.instruction, str) or not self.instruction.strip():
            raise DataError(
                f"a prompt instruction must be a non-empty string, got {self.instruction!r}",
                "drop or fill the empty prompt",
            )


class PromptSet(Sequence[Prompt]):
    """An ordered, immutable, named list of :class:`Prompt` (duplicates are kept as given)."""

    def __init__(self, prompts: Iterable[Prompt | str], name: str = "prompts"):
        items = tuple(p if isinstance(p, Prompt) else Prompt(p) for p in prompts)
        self._prompts: tuple[Prompt, ...] = items
        self.name = name

    @classmethod
    def from_strings(cls, instructions: Iterable[str], name: str = "prompts") -> PromptSet:
        """A PromptSet of bare instructions (no category, no source)."""
        return cls((Prompt(s) for s in instructions), name=name)

    @property
    def instructions(self) -> list[str]:
        """The instruction strings, in order."""
        return [p.instruction for p in self._prompts]

    @property
    def categories(self) -> list[str | None]:
        """The category of each prompt, in order (None where unknown)."""
        return [p.category for p in self._prompts]

    def __len__(self) -> int:
        return len(self._prompts)

    def __iter__(self) -> Iterator[Prompt]:
        return iter(self._prompts)

    @overload
    def __getitem__(self, index: int) -> Prompt: ...
    @overload
    def __getitem__(self, index: slice) -> PromptSet: ...
    def __getitem__(self, index):
        if isinstance(index, slice):
            return PromptSet(self._prompts[index], name=self.name)
        return self._prompts[index]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PromptSet):
            return NotImplemented
        return self.name == other.name and self._prompts == other._prompts

    __hash__ = None  # type: ignore[assignment]

    def __add__(self, other: PromptSet) -> PromptSet:
        """The concatenation of two sets (order kept, duplicates kept)."""
        if not isinstance(other, PromptSet):
            return NotImplemented
        return PromptSet(self._prompts + other._prompts, name=f"{self.name}+{other.name}")

    def __repr__(self) -> str:
        return f"PromptSet(name={self.name!r}, n={len(self)})"

    def sample(self, n: int, seed: int = 42, *, allow_fewer: bool = False) -> PromptSet:
        """``n`` prompts drawn without replacement by ``random.Random(seed).sample``.

        If ``n`` exceeds the set size this raises, unless ``allow_fewer=True``, in which case
        all prompts are returned in a seeded shuffled order.
        """
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise SteerscopeError(f"sample size must be a non-negative int, got {n!r}")
        if n > len(self):
            if not allow_fewer:
                raise SteerscopeError(
                    f"cannot sample {n} prompts from '{self.name}', which has {len(self)}",
                    f"ask for at most {len(self)} or pass allow_fewer=True",
                )
            n = len(self)
        idx = random.Random(seed).sample(range(len(self)), n)
        return PromptSet((self._prompts[i] for i in idx), name=self.name)

    def split(self, fractions: Sequence[float], seed: int = 42) -> tuple[PromptSet, ...]:
        """Disjoint parts of a seeded shuffle, sized by ``fractions`` of the set.

        Part ``i`` ends at ``round(sum(fractions[:i+1]) * len(self))``; if the fractions sum to
        1 every prompt lands in exactly one part. Parts are named ``"<name>[i]"``.
        """
        fr = [float(f) for f in fractions]
        if not fr or any(f <= 0 for f in fr) or sum(fr) > 1 + 1e-9:
            raise SteerscopeError(
                f"split fractions must be positive and sum to at most 1, got {list(fractions)!r}",
                "pass e.g. (0.8, 0.2)",
            )
        order = list(range(len(self)))
        random.Random(seed).shuffle(order)
        parts, start, cum = [], 0, 0.0
        for i, f in enumerate(fr):
            cum += f
            end = len(self) if abs(cum - 1) < 1e-9 else min(len(self), round(cum * len(self)))
            parts.append(
                PromptSet((self._prompts[j] for j in order[start:end]), f"{self.name}[{i}]")
            )
            start = end
        return tuple(parts)

    def filter(self, fn: Callable[[Prompt], bool]) -> PromptSet:
        """The prompts for which ``fn(prompt)`` is true, in order."""
        return PromptSet((p for p in self._prompts if fn(p)), name=self.name)
