"""Presence judges: ``judge(prompts, responses) -> list[bool]``, True = the behaviour is
present in the response. Offline and deterministic; :mod:`steerscope.behaviours.judges`
builds them from a behaviour's judge spec."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from typing import Any

from steerscope.errors import SteerscopeError
from steerscope.evaluate.matchers import REFUSAL_SUBSTRINGS, is_refusal_substring


def _check_pairs(prompts: Sequence[str], responses: Sequence[str]) -> list[str]:
    if isinstance(responses, str) or isinstance(prompts, str):
        raise SteerscopeError("prompts and responses must be lists of strings",
                              "wrap single strings in a list")
    if len(prompts) != len(responses):
        raise SteerscopeError(f"{len(prompts)} prompts but {len(responses)} responses",
                              "pass one response per prompt")
    return [str(r) for r in responses]


class SubstringPresence:
    """Present when any of ``substrings`` occurs in the response (case-insensitive, quotes
    normalised); the default substrings are the paper's refusal list (present = refused)."""

    def __init__(self, substrings: Sequence[str] = REFUSAL_SUBSTRINGS):
        self.substrings = tuple(substrings)

    def judge(self, prompts: Sequence[str], responses: Sequence[str]) -> list[bool]:
        return [is_refusal_substring(r, self.substrings) for r in _check_pairs(prompts, responses)]


class RegexPresence:
    """Present when the summed non-overlapping matches of ``patterns`` reach ``min_matches``."""

    def __init__(self, patterns: Sequence[str], min_matches: int = 1, ignore_case: bool = True):
        flags = re.IGNORECASE if ignore_case else 0
        self.patterns = tuple(patterns)
        self.compiled = [re.compile(p, flags) for p in self.patterns]
        self.min_matches = int(min_matches)

    def matches(self, text: str) -> int:
        """Number of non-overlapping matches of all patterns in ``text``."""
        return sum(len(c.findall(text)) for c in self.compiled)

    def judge(self, prompts: Sequence[str], responses: Sequence[str]) -> list[bool]:
        return [self.matches(r) >= self.min_matches for r in _check_pairs(prompts, responses)]


class CallablePresence:
    """Present when ``function(response)`` is truthy; ``function`` is a callable or its name
    ``"module:function"``."""

    def __init__(self, function: str | Callable[[str], Any]):
        self.function = function
        self.fn = function if callable(function) else import_callable(function)

    def judge(self, prompts: Sequence[str], responses: Sequence[str]) -> list[bool]:
        return [bool(self.fn(r)) for r in _check_pairs(prompts, responses)]


def import_callable(spec: str, where: str = "judge.function") -> Callable[[str], Any]:
    """The function named ``"module:function"`` (dotted attribute paths allowed)."""
    module, sep, attr = str(spec).partition(":")
    if not sep or not module or not attr:
        raise SteerscopeError(f"{where} '{spec}' is not 'module:function'",
                              "write it as package.module:function")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise SteerscopeError(f"{where} '{spec}' cannot be imported ({type(exc).__name__})",
                              "make the module importable (PYTHONPATH) and check the name") from exc
    if not callable(obj):
        raise SteerscopeError(f"{where} '{spec}' is not callable", "name a function text -> bool")
    return obj


__all__ = ["CallablePresence", "RegexPresence", "SubstringPresence", "import_callable"]
