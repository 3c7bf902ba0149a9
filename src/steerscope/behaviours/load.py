"""Build a :class:`Behaviour` from a YAML file, a dict or a built-in name, checking it all.

Checks (each one line naming the key and the fix, before any compute): unknown or missing
top-level keys, a missing side or split, a source that is not a file / dataset / builtin or is
an empty prompt file, the judge spec (:func:`~steerscope.behaviours.judges.check_judge_spec`),
``score_tokens`` that is neither ``auto`` nor a list of strings. Whether the tokenizer can
encode the score tokens is checked by :func:`check_behaviour` when a tokenizer is given.
Relative file paths in a YAML file resolve against the file's folder.

Loading never imports or runs a judge's code; ``allow_code=True`` (the person running's
consent, never a key of the file) lets :meth:`Behaviour.make_judge` run it later.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from steerscope.behaviours.builtins import BUILTIN_BEHAVIOURS
from steerscope.behaviours.definition import (
    AUTO,
    KEYS,
    LABEL_KEYS,
    REQUIRED_KEYS,
    SIDES,
    SPLITS,
    Behaviour,
    Splits,
)
from steerscope.behaviours.judges import check_judge_spec
from steerscope.behaviours.sources import BUILTIN_PREFIX, check_source
from steerscope.errors import SteerscopeError

DEFAULT_BEHAVIOUR = "refusal"


def list_behaviours() -> list[Behaviour]:
    """The built-in behaviours, in registry order (refusal first)."""
    return list(BUILTIN_BEHAVIOURS.values())


def _resolve(source: Any, base_dir: Path | None) -> Any:
    """A relative path that exists under ``base_dir`` becomes absolute; other strings (dataset
    names, builtin:NAME, absolute paths) and inline lists stay as they are."""
    if isinstance(source, list):
        return tuple(source)
    if not isinstance(source, str) or base_dir is None or source.startswith(BUILTIN_PREFIX):
        return source
    path = Path(source).expanduser()
    if not path.is_absolute() and (base_dir / path).exists():
        return str((base_dir / path).resolve())
    return source


def _side(data: Mapping, side: str, base_dir: Path | None) -> Splits:
    value = data.get(side)
    if not isinstance(value, Mapping):
        raise SteerscopeError(f"behaviour side '{side}' is missing or not a mapping",
                              f"write {side}: {{train: FILE, val: FILE, test: FILE}}")
    unknown = sorted(set(value) - set(SPLITS))
    if unknown:
        raise SteerscopeError(f"{side}.{unknown[0]} is not a split",
                              f"use only {', '.join(SPLITS)}")
    for split in SPLITS:
        if value.get(split) in (None, ""):
            raise SteerscopeError(f"{side}.{split} is missing", f"add {split}: FILE under {side}")
    return Splits(*(_resolve(value[s], base_dir) for s in SPLITS))


def _score_tokens(value: Any) -> str | tuple[str, ...]:
    if value is None or value == AUTO:
        return AUTO
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value):
        return tuple(value)
    raise SteerscopeError(f"score_tokens {value!r} is neither 'auto' nor a list of strings",
                          "write score_tokens: auto or score_tokens: [\"I\"]")


def behaviour_from_dict(data: Any, *, base_dir: str | os.PathLike | None = None,
                        data_dir: str | os.PathLike | None = None,
                        check_sources: bool = True, allow_code: bool = False) -> Behaviour:
    """A checked :class:`Behaviour` from the YAML contract's keys (see the module docstring).
    ``base_dir`` anchors relative file paths; ``check_sources`` reads each file source once
    to reject missing or empty files; ``allow_code``: consent to run the judge's code."""
    if not isinstance(data, Mapping):
        raise SteerscopeError("a behaviour must be a mapping of keys",
                              "see docs/behaviours.md for the format")
    if "allow_code" in data:
        raise SteerscopeError("behaviour key 'allow_code' is not honoured in a behaviour: "
                              "consent to run its judge's code is given by whoever runs it",
                              "remove the key; pass --allow-code to 'steerscope run' (or set "
                              "allow_code: true in the run config) if you trust the file")
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise SteerscopeError(f"behaviour key '{unknown[0]}' is unknown",
                              f"use only {', '.join(KEYS)}")
    for key in REQUIRED_KEYS:
        if key not in data:
            raise SteerscopeError(f"behaviour key '{key}' is missing", f"add {key}:")
    name = data["name"]
    if not isinstance(name, str) or not name.strip():
        raise SteerscopeError("behaviour name must be a non-empty string", "write name: my-behaviour")
    labels = data.get("labels") or {}
    if not isinstance(labels, Mapping) or set(labels) - set(LABEL_KEYS) or not all(
            isinstance(v, str) for v in labels.values()):
        raise SteerscopeError("labels must map some of "
                              f"{', '.join(LABEL_KEYS)} to display words",
                              "write e.g. labels: {present: harmful, absent: harmless}")
    base = None if base_dir is None else Path(base_dir)
    present, absent = (_side(data, s, base) for s in SIDES)
    judge = check_judge_spec(data["judge"])
    b = Behaviour(name=name.strip(), present=present, absent=absent, judge=judge,
                  score_tokens=_score_tokens(data.get("score_tokens", AUTO)),
                  labels=dict(labels), description=str(data.get("description") or ""),
                  allow_code=bool(allow_code))
    if check_sources:
        for side in SIDES:
            for split in SPLITS:
                check_source(b.source(side, split), f"{side}.{split}", data_dir)
    return b


def load_behaviour(spec: str | os.PathLike | Behaviour | Mapping | None = None, *,
                   data_dir: str | os.PathLike | None = None,
                   check_sources: bool = True, allow_code: bool = False) -> Behaviour:
    """A behaviour from a built-in name (``list_behaviours()``), a YAML file, a dict or a
    :class:`Behaviour` (returned as is, or with consent added). None: the default,
    ``refusal``. ``allow_code``: consent to run the judge's code (a ``callable`` judge, a
    judge model's own code) when it judges; without it such a judge is a one-line error at
    :meth:`Behaviour.make_judge`. Nothing is imported here either way."""
    if spec is None:
        spec = DEFAULT_BEHAVIOUR
    if isinstance(spec, Behaviour):
        return dataclasses.replace(spec, allow_code=True) if allow_code else spec
    if isinstance(spec, Mapping):
        return behaviour_from_dict(spec, data_dir=data_dir, check_sources=check_sources,
                                   allow_code=allow_code)
    text = str(spec)
    if text in BUILTIN_BEHAVIOURS:
        return BUILTIN_BEHAVIOURS[text]
    path = Path(text).expanduser()
    if not path.exists():
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise SteerscopeError(f"behaviour '{shown}' is neither a built-in nor a YAML file",
                              f"use one of {', '.join(BUILTIN_BEHAVIOURS)} or a path to a .yaml file")
    from steerscope.safe_files import read_yaml_file

    data = read_yaml_file(path, "behaviour file")  # UTF-8, size, alias and nesting limits
    try:
        return behaviour_from_dict(data, base_dir=path.resolve().parent, data_dir=data_dir,
                                   check_sources=check_sources, allow_code=allow_code)
    except SteerscopeError as exc:
        raise SteerscopeError(f"{path.name}: {str(exc).rstrip('.')}") from exc


def check_behaviour(behaviour: Behaviour, tokenizer=None) -> None:
    """Checks that need the tokenizer: every score-token string encodes to a token."""
    if tokenizer is not None and behaviour.score_tokens != AUTO:
        from steerscope.behaviours.score import string_score_token_ids

        string_score_token_ids(tokenizer, behaviour.score_tokens)


__all__ = ["DEFAULT_BEHAVIOUR", "behaviour_from_dict", "check_behaviour", "list_behaviours",
           "load_behaviour"]
