"""``--set section.key=VALUE``: config values given on the command line.

Each ``--set`` (repeatable, applied in order) replaces one key of the config file's data
before the config is built, so it is validated exactly as the file is
(:func:`~steerscope.pipeline.config.load_config`: types, then
:func:`~steerscope.pipeline.config.check_values`), hashed into the run folder and into the
keys of the stages whose section it changes (a changed value recomputes what it affects and
nothing else), written into the run's ``config.yaml`` and recorded in ``run.json``
(``overrides``). ``VALUE`` is read as YAML (``8``, ``0.5``, ``true``, ``null``, ``[1, 2]``,
``{a: 1}``; anything else is a string); a relative path that exists from the working folder
is made absolute, as a config file's paths are made absolute next to the file.

Bad input (one line naming the ``--set`` and the fix, before any compute, nothing written):
no ``=``, malformed YAML, an unknown key, a value of the wrong type, or a key of a stage that
does not run in this run (its section's ``enabled: false``, a stage after ``--until``, or a
trained objective's subsection whose objective ``vectors.methods`` does not list).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from steerscope.errors import SteerscopeError
from steerscope.pipeline.config import (
    TRAINED_METHODS,
    PipelineConfig,
    check_key_value,
    config_from_dict,
    read_config_data,
)
from steerscope.pipeline.registry import STAGES, stage_names

__all__ = ["apply_sets", "check_sets_run", "load_config_with_sets", "parse_set"]

EXAMPLE = "write e.g. --set evaluation.batch_size=8"


def parse_set(text: str) -> tuple[str, Any]:
    """``"section.key=VALUE"`` → ``("section.key", VALUE read as YAML)``; one-line errors for
    a missing ``=``, an empty key or malformed YAML."""
    from steerscope.safe_files import parse_yaml

    key, sep, raw = str(text).partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise SteerscopeError(f"--set '{text}' is not KEY=VALUE", EXAMPLE)
    try:
        value = parse_yaml(raw, "--set value", key)
    except SteerscopeError:
        raise SteerscopeError(f"--set {key}: the value {raw!r} is not valid YAML",
                              f"quote it, e.g. --set '{key}=\"...\"', or fix its brackets "
                              "and colons") from None
    return key, value


def _anchored(key: str, value: Any) -> Any:
    """A path value of a path key (model.source, data.*, evaluation.judge, behaviour) made
    absolute when it exists relative to the working folder."""
    from steerscope.pipeline.config_paths import anchor_paths

    parts = key.split(".")
    if len(parts) > 2:
        return value
    nested: dict[str, Any] = {parts[0]: value} if len(parts) == 1 else {
        parts[0]: {parts[1]: value}}
    out = anchor_paths(nested, Path.cwd())
    return out[parts[0]] if len(parts) == 1 else out[parts[0]][parts[1]]


def apply_sets(data: dict | None, sets: Sequence[str]) -> tuple[dict, dict[str, Any]]:
    """``data`` (raw config data, not changed) with each ``--set`` applied in order, and the
    ``{key: value}`` given. Every key must be a config key and every value of its type (the
    whole config is checked later, as a file is)."""
    out = copy.deepcopy(data) if data is not None else {}
    if not isinstance(out, dict):
        return out, {}  # config_from_dict names the problem
    given: dict[str, Any] = {}
    for text in sets:
        key, value = parse_set(text)
        try:
            check_key_value(key, value, f"pass a value of that type, e.g. --set {key}="
                                        f"{_example(key)}")
        except SteerscopeError as exc:
            raise SteerscopeError(f"--set {key}: {str(exc).rstrip('.')}") from None
        value = _anchored(key, value)
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
        given[key] = value
    return out, given


def _example(key: str) -> str:
    """The default value of config ``key`` as YAML text (for a fix)."""
    import json

    value: Any = PipelineConfig()
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else getattr(value, part, None)
    if dataclasses.is_dataclass(value):
        return "'{KEY: VALUE, ...}'"
    return json.dumps(value) if value is not None else "VALUE"


def load_config_with_sets(source, sets: Sequence[str] = ()) -> PipelineConfig:
    """The config of ``source`` (a YAML file, dict or config) with ``sets`` applied, checked
    as a file is (:func:`~steerscope.pipeline.config.load_config`)."""
    from steerscope.pipeline.config import load_config

    if not sets:
        return load_config(source)
    data, _ = apply_sets(read_config_data(source), sets)
    return config_from_dict(data)


def check_sets_run(cfg: PipelineConfig, sets: Sequence[str], until: str | None = None) -> None:
    """Each ``--set`` key configures something this run computes: its section's stage is
    enabled, available and not after ``until``; ``vectors.<objective>.*`` needs the objective
    in ``vectors.methods`` and ``vectors.preference.*`` a trained one. A section's ``enabled``
    key itself may always be set."""
    names = stage_names()
    last = names.index(until) if until is not None else len(names) - 1
    for text in sets:
        key = parse_set(text)[0]
        parts = key.split(".")
        section = parts[0]
        stages = [STAGES[n] for n in names if STAGES[n].section == section]
        if not stages or parts[1:] == ["enabled"]:
            continue  # a top-level key (name, seed, behaviour) or the switch itself
        if not any(s.available and s.enabled(cfg) for s in stages):
            raise SteerscopeError(f"--set {key}: stage {stages[0].name} does not run "
                                  f"({section}.enabled is false)",
                                  f"drop the --set, or add --set {section}.enabled=true")
        if all(names.index(s.name) > last for s in stages):
            raise SteerscopeError(f"--set {key}: stage {stages[0].name} does not run (it "
                                  f"comes after --until {until})",
                                  "drop the --set or the --until")
        if section == "vectors" and len(parts) > 1:
            _check_trained_key(cfg, key, parts[1])


def _check_trained_key(cfg: PipelineConfig, key: str, sub: str) -> None:
    """``vectors.<objective>.*`` needs that objective in ``vectors.methods``;
    ``vectors.preference.*`` one trained objective."""
    methods = cfg.vectors.methods
    if sub in TRAINED_METHODS and sub not in methods:
        raise SteerscopeError(f"--set {key}: the {sub} vector is not made in this run "
                              f"(vectors.methods is {methods})",
                              f"drop the --set, or add {sub} to vectors.methods")
    if sub == "preference" and not any(m in TRAINED_METHODS for m in methods):
        raise SteerscopeError(f"--set {key}: no trained vector ({', '.join(TRAINED_METHODS)}) "
                              f"is made in this run (vectors.methods is {methods})",
                              "drop the --set, or add a trained method to vectors.methods")
