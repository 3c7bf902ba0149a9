"""Value checks shared by the config sections (no model, no files; each failure is one
:class:`~steerscope.errors.SteerscopeError` naming the config key and the fix), and
:func:`library_default`, through which sections read their defaults from the library."""

from __future__ import annotations

import math
from collections.abc import Sequence

from steerscope.errors import SteerscopeError


def fail(key: str, problem: str, fix: str) -> None:
    """Raise ``config key '<key>' <problem>`` with ``fix``."""
    raise SteerscopeError(f"config key '{key}' {problem}", fix)


def positive_int(key: str, value: int | None, *, allow_none: bool = False) -> None:
    """``value`` is an int >= 1 (or None when ``allow_none``)."""
    if value is None and allow_none:
        return
    if value is None or value < 1:
        fail(key, f"must be a positive integer, got {value!r}", f"set {key} to 1 or more")


def finite(key: str, value: float) -> None:
    """``value`` is a finite number."""
    if not math.isfinite(value):
        fail(key, f"must be a finite number, got {value!r}", f"fix {key}")


def known(key: str, values: Sequence[str], valid: Sequence[str]) -> None:
    """Every value is one of ``valid``, each listed once."""
    for v in values:
        if v not in valid:
            fail(key, f"has unknown value '{v}'", f"use one of {', '.join(valid)}")
    if len(set(values)) != len(values):
        fail(key, "lists a value twice", "list each value once")


def size_list(key: str, sizes: list[int] | None) -> None:
    """``sizes`` is None or a non-empty list of positive ints."""
    if sizes is not None and not sizes:
        fail(key, "is empty", "list at least one size or drop the key")
    for x in sizes or []:
        positive_int(key, x)


def not_empty(key: str, value: str, fix: str) -> None:
    """``value`` is a non-blank string."""
    if not value.strip():
        fail(key, "is empty", fix)


def library_default(fn, name: str):
    """The default of parameter ``name`` in ``fn``'s signature: config sections read their
    defaults from the library function they configure, so each default is defined once."""
    import inspect

    default = inspect.signature(fn).parameters[name].default
    if default is inspect.Parameter.empty:  # pragma: no cover - a programming error
        raise TypeError(f"{fn.__qualname__}() has no default for '{name}'")
    return default
