"""Prompt sources of a behaviour: files, named datasets, ``builtin:NAME`` and inline lists.

``builtin:NAME`` names one of the project's prompt sets
(:data:`steerscope.data.builtin.BUILTIN_SETS`: the demo sets and the built-in behaviours'
sets, e.g. ``builtin:lists_present_train``). Everything else goes to
:func:`steerscope.data.load_prompts` (a file path or a named dataset).
"""

from __future__ import annotations

import os
from pathlib import Path

from steerscope.behaviours import prompts_code, prompts_lists
from steerscope.data import PromptSet, load_prompts
from steerscope.data.builtin import builtin_prompts, known_builtin_sets, register_builtin_set
from steerscope.errors import SteerscopeError

BUILTIN_PREFIX = "builtin:"

# builtin:<behaviour>_<side>_<split>: the built-in behaviours' prompt sets
for _behaviour, _module in (("lists", prompts_lists), ("code", prompts_code)):
    for _side in ("present", "absent"):
        for _split in ("train", "val", "test"):
            register_builtin_set(f"{_behaviour}_{_side}_{_split}", _module.prompt_set,
                                 f"{_side}_{_split}")


def builtin_prompt_sets() -> list[str]:
    """Names accepted after ``builtin:``, sorted."""
    return sorted(known_builtin_sets())


def is_builtin_prompt_set(source) -> bool:
    """True for ``builtin:NAME`` with NAME one of :func:`builtin_prompt_sets`."""
    return (isinstance(source, str) and source.startswith(BUILTIN_PREFIX)
            and source[len(BUILTIN_PREFIX):] in known_builtin_sets())


def load_source(source, *, data_dir: str | os.PathLike | None = None,
                name: str | None = None) -> PromptSet:
    """The prompts of one source: an inline list/tuple of strings, ``builtin:NAME``, a file or
    a named dataset (``data_dir`` as for :func:`~steerscope.data.load_prompts`)."""
    if isinstance(source, (list, tuple)):
        return load_prompts(list(source), name=name or "inline")
    if isinstance(source, str) and source.startswith(BUILTIN_PREFIX):
        ps = builtin_prompts(source[len(BUILTIN_PREFIX):])
        return ps if name is None else PromptSet(ps, name=name)
    return load_prompts(source, data_dir=data_dir, name=name)


def check_source(source, where: str, data_dir: str | os.PathLike | None = None) -> None:
    """Check one source without downloading: inline lists non-empty, builtins known, files
    readable with at least one prompt; a named dataset name must be known. One line naming
    ``where`` (e.g. ``present.train``) otherwise."""
    from steerscope.data import available_datasets

    if isinstance(source, (list, tuple)):
        if not source or not all(isinstance(s, str) and s.strip() for s in source):
            raise SteerscopeError(f"{where} is an empty list or has an empty prompt",
                                  "list non-empty prompt strings")
        return
    if not isinstance(source, str) or not source.strip():
        raise SteerscopeError(f"{where} must be a file, a dataset name or builtin:NAME",
                              f"write {where.split('.')[-1]}: FILE")
    if source.startswith(BUILTIN_PREFIX):
        if not is_builtin_prompt_set(source):
            raise SteerscopeError(f"{where}: unknown built-in prompt set '{source}'",
                                  f"use one of {', '.join(builtin_prompt_sets())}")
        return
    path = Path(source).expanduser()
    if path.is_file():
        try:
            load_prompts(path)
        except SteerscopeError as exc:
            raise SteerscopeError(f"{where}: {exc}".rstrip("."),
                                  "fill the file with one prompt per line (or JSON/CSV)") from exc
        return
    if source.strip().lower() in available_datasets():
        return
    raise SteerscopeError(f"{where} '{source}' is neither an existing file nor a known dataset",
                          "fix the path (relative paths resolve against the behaviour file's "
                          "folder) or use a dataset name or builtin:NAME")


__all__ = ["BUILTIN_PREFIX", "builtin_prompt_sets", "check_source", "is_builtin_prompt_set",
           "load_source"]
