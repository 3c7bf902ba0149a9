"""The pipeline configuration: a strict, nested dataclass schema read from YAML.

:class:`PipelineConfig` has the top-level ``name`` and ``seed`` and one field per config
section registered by the stages (:mod:`steerscope.pipeline.stages`, in pipeline order:
``model``, ``data``, ``vectors``, ``evaluation``, ``patching``, ``circuits``, ``freeze``,
``svv``, ``sparsify``, ``report``) and the top-level ``behaviour`` (a built-in name, default
``refusal``, or a behaviour YAML file; docs/behaviours.md) and ``allow_code`` (consent to run a
judge's code; not part of the run's hash or its ``config.yaml``); each section's dataclass lives with its stage, reads its
defaults from the library function it configures, and validates itself (``check(cfg)``).

``load_config(path_or_dict)`` builds a :class:`PipelineConfig`; any key that is not in the
schema, or a value of the wrong type, raises one :class:`~steerscope.errors.SteerscopeError`
naming the key path (``vectors.dim.kl_threshold``) and the valid keys. Value checks that need
no model or data (ranges, method names) run in :func:`check_values`; checks against the
model's ``config.json`` and the prompt files run in :mod:`steerscope.pipeline.inputs`. Both
run before any compute. Every key is documented in ``docs/pipeline.md``.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import field, make_dataclass
from pathlib import Path
from typing import Any, Union

import steerscope.pipeline.stages  # noqa: F401  (registers the stages and their sections)
from steerscope.behaviours import DEFAULT_BEHAVIOUR
from steerscope.errors import SteerscopeError
from steerscope.pipeline.behaviour import run_behaviour
from steerscope.pipeline.checks import fail
from steerscope.pipeline.registry import SECTIONS
from steerscope.pipeline.stages.circuits import CircuitsSection
from steerscope.pipeline.stages.data import DataSection
from steerscope.pipeline.stages.evaluation import EvaluationSection
from steerscope.pipeline.stages.freeze import FreezeSection
from steerscope.pipeline.stages.model import ModelSection
from steerscope.pipeline.stages.patching import PatchingSection
from steerscope.pipeline.stages.report import ReportSection
from steerscope.pipeline.stages.sparsify import SparsifySection
from steerscope.pipeline.stages.svv import SvvSection
from steerscope.pipeline.stages.vectors import (
    TRAINED_METHODS,
    DimSection,
    PreferenceSection,
    TrainSection,
    VectorsSection,
    known_methods,
)
from steerscope.validation import MAX_NAME_CHARS, check_number

__all__ = [
    "CircuitsSection", "DataSection", "DimSection", "EvaluationSection", "FreezeSection",
    "ModelSection", "PatchingSection", "PipelineConfig", "PreferenceSection", "ReportSection",
    "SparsifySection", "SvvSection", "TRAINED_METHODS", "TrainSection", "VectorsSection",
    "check_key_value", "check_numbers", "check_values", "config_from_dict", "dump_config",
    "known_methods", "load_config", "read_config_data",
]


# --- the whole config, assembled from the registered sections --------------------------------
class _PipelineBase:
    """Methods of :class:`PipelineConfig`."""

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-able data (every key, defaults included, except
        ``allow_code``: consent changes no result, so it is not part of the run's hash)."""
        data = dataclasses.asdict(self)
        data.pop("allow_code", None)
        return data

    @property
    def data_seed(self) -> int:
        """The sampling seed: ``data.seed``, else the top-level seed."""
        return self.seed if self.data.seed is None else self.data.seed


def _assemble() -> type:
    """The :class:`PipelineConfig` dataclass: ``name``, ``seed`` and one field per registered
    section, in registration (pipeline) order."""
    fields: list[tuple] = [("name", str, field(default="run")),  # run folder prefix
                           ("seed", int, field(default=42)),
                           # a built-in behaviour's name or a behaviour YAML file
                           ("behaviour", str, field(default=DEFAULT_BEHAVIOUR)),
                           # consent to run a judge's code (a callable judge, a judge model's
                           # own code); a behaviour file cannot give it (docs/behaviours.md)
                           ("allow_code", bool, field(default=False))]
    fields += [(name, cls, field(default_factory=cls)) for name, cls in SECTIONS.items()]
    return make_dataclass("PipelineConfig", fields, bases=(_PipelineBase,), namespace={
        "__module__": __name__,
        "__doc__": "The whole run. ``name`` prefixes the run folder ``<out>/<name>-<hash>``; "
                   "one field per registered config section."})


PipelineConfig = _assemble()


# --- strict construction from dicts ---------------------------------------------------------
def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class _Mismatch(Exception):
    pass


def _convert(value: Any, tp, path: str) -> Any:
    """``value`` checked against the annotation ``tp`` (int → float widening allowed)."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _convert(value, arg, path)
            except _Mismatch:
                continue
        raise _Mismatch
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _Mismatch
        return _build(tp, value, path)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        (item,) = typing.get_args(tp)
        out = []
        for i, v in enumerate(value):
            try:
                out.append(_convert(v, item, f"{path}[{i}]"))
            except _Mismatch:
                raise SteerscopeError(
                    f"config key '{path}[{i}]' must be {_type_name(item)}, got {v!r}",
                    f"fix {path} in the config") from None
        return out
    if origin is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        _, val_tp = typing.get_args(tp)
        return {str(k): _convert(v, val_tp, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT.match(value.strip()):
            return float(value)  # PyYAML reads 1e9 / 1.0e9 (no exponent sign) as a string
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    raise _Mismatch  # pragma: no cover - an annotation this loader does not know


def _build(cls, data: dict, path: str):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        key = str(key)
        where = f"{path}.{key}" if path else key
        if key not in names:
            raise SteerscopeError(f"unknown config key '{where}'",
                                  f"valid keys{' of ' + path if path else ''}: {', '.join(names)}")
        try:
            kwargs[key] = _convert(value, hints[key], where)
        except _Mismatch:
            raise SteerscopeError(
                f"config key '{where}' must be {_type_name(hints[key])}, got {value!r}",
                f"fix {where} in the config") from None
    return cls(**kwargs)


def config_from_dict(data: dict | None) -> PipelineConfig:
    """A :class:`PipelineConfig` from a nested dict (strict: unknown keys and wrong types
    raise), then :func:`check_values`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SteerscopeError(f"a pipeline config must be a mapping, got {type(data).__name__}",
                              "write 'key: value' pairs at the top level")
    cfg = _build(PipelineConfig, data, "")
    check_values(cfg)
    return cfg


def read_config_data(source: str | Path | dict | PipelineConfig | None) -> Any:
    """The raw config data of ``source``: a YAML file's (UTF-8, size, alias and nesting
    limits; relative paths made absolute next to it), a dict as given, or a config's
    :meth:`~PipelineConfig.to_dict` with its ``allow_code``."""
    if isinstance(source, PipelineConfig):
        return {**source.to_dict(), "allow_code": source.allow_code}
    if source is None or isinstance(source, dict):
        return source
    from steerscope.safe_files import read_yaml_file

    path = Path(source).expanduser()
    if not path.exists():
        raise SteerscopeError(f"config file {path} does not exist", "pass a YAML file")
    data = read_yaml_file(path, "config file")  # UTF-8, size, alias and nesting limits
    if isinstance(data, dict):  # relative paths mean files next to the config
        from steerscope.pipeline.config_paths import anchor_paths

        data = anchor_paths(data, path.parent)
    return data


def load_config(source: str | Path | dict | PipelineConfig | None) -> PipelineConfig:
    """Read a YAML file (or take a dict / a config) into a checked :class:`PipelineConfig`."""
    if isinstance(source, PipelineConfig):
        check_values(source)
        return source
    return config_from_dict(read_config_data(source))


def check_key_value(key: str, value: Any, fix: str) -> None:
    """``value`` has the type of config key ``key`` (a dotted path; below a mapping field
    such as ``patching.options``, any key); one-line errors naming an unknown key (and the
    valid ones) or a wrong type (and ``fix``)."""
    cls, parts = PipelineConfig, key.split(".")
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(cls)]
        where = ".".join(parts[:i])
        if part not in names:
            raise SteerscopeError(f"unknown config key '{key}'",
                                  f"valid keys{' of ' + where if where else ''}: "
                                  f"{', '.join(names)}")
        tp = typing.get_type_hints(cls)[part]
        if i == len(parts) - 1:
            try:
                _convert(value, tp, key)
            except _Mismatch:
                raise SteerscopeError(f"config key '{key}' must be {_type_name(tp)}, got "
                                      f"{value!r}", fix) from None
            return
        if not dataclasses.is_dataclass(tp):
            if typing.get_origin(tp) is dict or dict in typing.get_args(tp) or any(
                    typing.get_origin(a) is dict for a in typing.get_args(tp)):
                return  # a key below a mapping field: checked with the whole config
            raise SteerscopeError(f"unknown config key '{key}' ({'.'.join(parts[:i + 1])} "
                                  f"is {_type_name(tp)}, not a section)",
                                  f"set {'.'.join(parts[:i + 1])} itself")
        cls = tp


def dump_config(cfg: PipelineConfig) -> str:
    """The config as YAML text (every key, in schema order)."""
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


# --- value checks (no model, no files) ------------------------------------------------------
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_values(cfg: PipelineConfig) -> None:
    """Range and name checks that need neither the model nor the data (one-line errors): the
    run name and seed, the behaviour (loaded, its prompt files not read yet), then each
    section's own ``check(cfg)`` in pipeline order."""
    if not _NAME.match(cfg.name) or len(cfg.name) > MAX_NAME_CHARS:
        shown = cfg.name if len(cfg.name) <= 40 else cfg.name[:40] + "..."
        fail("name", f"'{shown}' is not a valid run name",
             f"use letters, digits, '.', '_' and '-' only, at most {MAX_NAME_CHARS} characters")
    if cfg.seed < 0:
        fail("seed", f"must be non-negative, got {cfg.seed}", "pass e.g. 42")
    run_behaviour(cfg)  # a built-in name or a readable, valid behaviour file
    for name in SECTIONS:
        getattr(cfg, name).check(cfg)
    check_numbers(cfg.to_dict())


def check_numbers(data: Any, path: str = "", name: str = "") -> None:
    """Every number of the config (``data``: its :meth:`to_dict`; nested ``options`` and list
    items included) in the range :func:`steerscope.validation.number_range` gives its key's
    last part ``name``; numbers of other keys finite and within 64 bits."""
    if isinstance(data, dict):
        for key, value in data.items():
            check_numbers(value, f"{path}.{key}" if path else str(key), str(key))
    elif isinstance(data, (list, tuple)):
        for i, value in enumerate(data):
            check_numbers(value, f"{path}[{i}]", name)
    elif isinstance(data, (int, float)) and not isinstance(data, bool):
        check_number(data, f"config key '{path}'", name, f"fix {path} in the config")
