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

Adding a stage is one function and one :func:`register_stage` call; registering a name that
already has a slot (``patching``, ``circuits``, ``freeze``, ``svv``, ``sparsify``) fills the
slot in place. A slot without a function is reported as "not available": its
``results.json`` sections are absent and the report says "not run".
"""

from __future__ import annotations

from collections.abc import Callable
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

    @property
    def available(self) -> bool:
        return self.fn is not None

    def config_of(self, cfg) -> Any:
        """The stage's config section (None when it has none)."""
        return None if self.section is None else getattr(cfg, self.section)

    def enabled(self, cfg) -> bool:
        return bool(getattr(self.config_of(cfg), "enabled", True))


# The pipeline's stages in order; slots without a function are filled by later issues.
STAGES: dict[str, Stage] = {}

_SLOTS = (
    Stage("model", section="model"),
    Stage("data", section="data"),
    Stage("vectors", deps=("model", "data"), section="vectors"),
    Stage("trained", deps=("model", "data", "vectors"), section="vectors"),
    Stage("evaluation", deps=("model", "data", "vectors", "trained"), section="evaluation"),
    Stage("patching", deps=("model", "data", "vectors", "trained", "evaluation"),
          section="patching"),
    Stage("circuits", deps=("model", "vectors", "trained", "patching"), section="circuits"),
    Stage("freeze", deps=("model", "data", "vectors", "evaluation"), section="freeze"),
    Stage("svv", deps=("model", "vectors", "trained", "patching"), section="svv"),
    Stage("sparsify", deps=("model", "data", "vectors", "trained", "patching"),
          section="sparsify"),
    Stage("report", optional=("*",), section="report"),
)
for _s in _SLOTS:
    STAGES[_s.name] = _s


def register_stage(name: str, *, deps: tuple[str, ...] | None = None,
                   optional: tuple[str, ...] | None = None, section: str | None = None,
                   results: ResultsFn | None = None, distributed: bool = False,
                   version: int = 1, before: str = "report",
                   options: tuple[str, ...] = ()):
    """Decorator: register ``fn`` as stage ``name``.

    An existing slot keeps its place (and its deps/section unless given); a new name is
    inserted before ``before`` (default: the report). ``options``: the keys the section's
    ``options`` mapping may hold (any other key is a config error before compute).
    """

    def add(fn: StageFn) -> StageFn:
        old = STAGES.get(name)
        if old is not None:
            STAGES[name] = replace(
                old, fn=fn, deps=old.deps if deps is None else tuple(deps),
                optional=old.optional if optional is None else tuple(optional),
                section=section if section is not None else old.section,
                results=results, distributed=distributed, version=version,
                options=tuple(options))
            return fn
        for d in deps or ():
            if d not in STAGES:
                raise SteerscopeError(f"stage '{name}' depends on unknown stage '{d}'",
                                      f"register '{d}' first")
        stage = Stage(name, fn, tuple(deps or ()), tuple(optional or ()), section, results,
                      distributed, version, tuple(options))
        items = list(STAGES.items())
        at = next((i for i, (k, _) in enumerate(items) if k == before), len(items))
        items.insert(at, (name, stage))
        STAGES.clear()
        STAGES.update(items)
        return fn

    return add


def stage_names() -> list[str]:
    """Every registered stage name, in pipeline order."""
    _ensure_builtin()
    return list(STAGES)


def get_stage(name: str) -> Stage:
    _ensure_builtin()
    if name not in STAGES:
        raise SteerscopeError(f"unknown stage '{name}'", f"use one of {', '.join(STAGES)}")
    return STAGES[name]


def _ensure_builtin() -> None:
    """Import the modules that register the built-in stage functions."""
    import steerscope.pipeline.stages  # noqa: F401
    import steerscope.pipeline.stages_mechanisms  # noqa: F401
    import steerscope.pipeline.stages_patching  # noqa: F401
