"""The stage registry: the pipeline is the ordered list of registered stages.

A stage is a function ``fn(ctx, section, inputs) -> outputs``:

- ``ctx`` (:class:`~steerscope.pipeline.runner.StageContext`): ``ctx.out`` is the folder to
  write files into (a temporary folder, renamed into place atomically when ``fn`` returns),
  ``ctx.model()`` the loaded model (loaded once per process), ``ctx.config`` the whole config,
  ``ctx.dist`` the torch.distributed rank/world size;
- ``section``: the stage's config section (e.g. ``cfg.patching``);
- ``inputs``: ``{dep name: StageOutput}`` for every dependency (``.dir`` its folder,
  ``.outputs`` the dict it returned, ``.digest`` the hash of its files);
- it returns a small JSON-able dict (file names, summaries), kept in its ``stage.json``.

``results(output, so_far) -> {section: value}`` (optional) contributes sections to
``results.json``; dicts are deep-merged, so two stages may fill the same section.

``config`` (optional) registers the dataclass of the stage's config section under
``section``: :class:`~steerscope.pipeline.config.PipelineConfig` has one field per registered
section, in registration order, and each section validates itself (its ``check(cfg)``).

The built-in stages are one module each in :mod:`steerscope.pipeline.stages`; that package
imports every module it holds (no list to edit), and each stage's place in the pipeline is its
``order`` (a number; a stage registered without one goes just before ``before``, the report
by default). Adding a stage is one module with its function, its config section and its
results part (or a :func:`register_stage` call from anywhere); registering a name that already
exists replaces that stage in place. A stage without a function is reported as "not
available": its ``results.json`` sections are absent and the report says "not run".

This module is pure mechanism: it imports no stage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from steerscope.errors import SteerscopeError


@dataclass(frozen=True)
class StageOutput:
    """A finished stage: its folder, the dict its function returned, and its digest."""

    name: str
    key: str
    dir: Path
    outputs: dict[str, Any]
    digest: str

    def path(self, name: str) -> Path:
        """A file of this stage's folder."""
        return self.dir / name


StageFn = Callable[[Any, Any, dict[str, StageOutput]], "dict[str, Any] | None"]
ResultsFn = Callable[[StageOutput, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Stage:
    """One registered stage.

    ``deps``: stages that must have finished (their digests key this stage's folder);
    ``optional``: stages used when they finished ("*": every earlier stage, for the report);
    ``section``: the config section name (its ``enabled: false`` switches the stage off);
    ``results``: contributes ``results.json`` sections; ``distributed``: every rank runs the
    function (it shards its own work; rank 0's files are kept), otherwise rank 0 runs it and
    the other ranks wait; ``version``: bump to invalidate old artifacts of this stage.
    """

    name: str
    fn: StageFn | None = None
    deps: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    section: str | None = None
    results: ResultsFn | None = None
    distributed: bool = False
    version: int = 1
    options: tuple[str, ...] = ()  # keys its section's ``options`` mapping may hold
    # (cfg, inputs) -> extra data hashed into the stage's key (e.g. input digests, seeds)
    key_extra: Callable[[Any, Any], dict[str, Any]] | None = None
    order: float = 0.0  # its place in the pipeline (STAGES is sorted by it)

    @property
    def available(self) -> bool:
        return self.fn is not None

    def config_of(self, cfg) -> Any:
        """The stage's config section (None when it has none)."""
        return None if self.section is None else getattr(cfg, self.section)

    def enabled(self, cfg) -> bool:
        return bool(getattr(self.config_of(cfg), "enabled", True))


# The pipeline's stages in order, and the config sections (top-level key -> dataclass).
STAGES: dict[str, Stage] = {}
SECTIONS: dict[str, type] = {}


def register_section(name: str, cls: type) -> type:
    """Register ``cls`` (a dataclass with ``check(cfg)``) as the config section ``name``."""
    old = SECTIONS.get(name)
    if old is not None and old is not cls:
        raise SteerscopeError(f"config section '{name}' is already registered by "
                              f"{old.__module__}.{old.__qualname__}", "use another name")
    SECTIONS[name] = cls
    return cls


def register_stage(name: str, *, deps: tuple[str, ...] | None = None,
                   optional: tuple[str, ...] | None = None, section: str | None = None,
                   results: ResultsFn | None = None, distributed: bool = False,
                   version: int = 1, before: str = "report",
                   options: tuple[str, ...] = (), config: type | None = None,
                   key_extra: Callable[[Any, Any], dict[str, Any]] | None = None,
                   order: float | None = None):
    """Decorator: register ``fn`` as stage ``name``.

    An existing stage keeps its place (and its deps/section/key_extra unless given); a new
    name goes to ``order`` when given, else just before ``before`` (default: the report; at
    the end when there is none). Its ``deps`` must be registered (while
    :func:`discovering`, by the end of the discovery) and come earlier.
    ``options``: the keys the section's ``options`` mapping may hold (any other key is a
    config error before compute); ``config``: the section's dataclass
    (:func:`register_section`); ``key_extra(cfg, inputs)``: more data for the stage's key.
    """
    if config is not None:
        if section is None:
            raise SteerscopeError(f"stage '{name}' gives a config class but no section name",
                                  "pass section=")
        register_section(section, config)

    def add(fn: StageFn) -> StageFn:
        old = STAGES.get(name)
        if old is not None:
            STAGES[name] = replace(
                old, fn=fn, deps=old.deps if deps is None else tuple(deps),
                optional=old.optional if optional is None else tuple(optional),
                section=section if section is not None else old.section,
                results=results, distributed=distributed, version=version,
                options=tuple(options),
                key_extra=key_extra if key_extra is not None else old.key_extra)
            return fn
        # without an order: just before `before`, placed at the end of a discovery (when
        # every built-in stage is registered)
        place = order if order is not None else \
            float("inf") if _DEFERRED is not None else _place_before(before)
        stage = Stage(name, fn, tuple(deps or ()), tuple(optional or ()), section, results,
                      distributed, version, tuple(options), key_extra, float(place))
        STAGES[name] = stage
        _sort()
        if _DEFERRED is None:
            try:
                check_deps(name)
            except SteerscopeError:
                del STAGES[name]
                raise
        else:
            _DEFERRED.append((name, None if order is not None else before))
        return fn

    return add


# (stage, `before` when it has no order) registered during a discovery, placed and checked at
# its end
_DEFERRED: list[tuple[str, str | None]] | None = None


def _place_before(before: str) -> float:
    """The order just before stage ``before`` (after the stages already placed there), or
    after the last stage when there is no ``before``."""
    if before in STAGES:
        return STAGES[before].order - 0.5
    return max((st.order for st in STAGES.values() if st.order != float("inf")),
               default=0.0) + 1.0


def _sort() -> None:
    """Order :data:`STAGES` by ``order`` (ties: registration order) and :data:`SECTIONS` by
    the first stage that uses each section."""
    items = sorted(STAGES.items(), key=lambda kv: kv[1].order)
    STAGES.clear()
    STAGES.update(items)
    first = {}
    for st in STAGES.values():
        first.setdefault(st.section, st.order)
    sections = sorted(SECTIONS.items(), key=lambda kv: first.get(kv[0], float("inf")))
    SECTIONS.clear()
    SECTIONS.update(sections)


def check_deps(name: str) -> None:
    """A one-line error when a dependency of stage ``name`` is not registered or does not
    come before it."""
    stage = STAGES[name]
    names = list(STAGES)
    for d in stage.deps:
        if d not in STAGES:
            raise SteerscopeError(f"stage '{name}' depends on unknown stage '{d}'",
                                  f"register '{d}' first")
        if names.index(d) > names.index(name):
            raise SteerscopeError(f"stage '{name}' depends on stage '{d}', which runs after it",
                                  f"give '{name}' an order above {STAGES[d].order:g}")


@contextmanager
def discovering() -> Iterator[None]:
    """Register stages in any order inside the block; their dependencies are checked at its
    end (used by :mod:`steerscope.pipeline.stages` to import its modules by name)."""
    global _DEFERRED
    outer, _DEFERRED = _DEFERRED, []
    try:
        yield
        for name, before in _DEFERRED:
            if before is not None:
                STAGES[name] = replace(STAGES[name], order=_place_before(before))
        _sort()
        for name, _ in _DEFERRED:
            check_deps(name)
    finally:
        _DEFERRED = outer


def stage_names() -> list[str]:
    """Every registered stage name, in pipeline order."""
    return list(STAGES)


def get_stage(name: str) -> Stage:
    """The registered stage ``name`` (a one-line error naming the valid ones otherwise)."""
    if name not in STAGES:
        raise SteerscopeError(f"unknown stage '{name}'", f"use one of {', '.join(STAGES)}")
    return STAGES[name]
