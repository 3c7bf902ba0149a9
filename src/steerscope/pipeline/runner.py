"""Running the pipeline: validate everything, then run each stage not already finished.

:func:`run_pipeline` checks the config, the model's ``config.json`` and the prompt files
before any compute (one-line errors), opens the run folder ``<out>/<name>-<hash>`` (hash of
the normalised config and the input digests), and walks the registered stages in order:

- a stage whose folder ``<stage>-<key>`` is finished is skipped (``--force STAGE`` recomputes
  it; later stages then rerun only if its files changed, since their keys hash its digest);
- a stage without a function ("not available"), switched off (``enabled: false``) or
  missing a dependency is recorded as such and produces nothing;
- before the report, ``results.json`` is assembled from every finished stage
  (:mod:`steerscope.pipeline.results`); the report is then copied to the top of the run folder.

Killing the process at any point loses at most the stage being computed: its temporary folder
is removed by the next run, which recomputes that stage only.

Under torchrun every rank calls :func:`run_pipeline`; rank 0 decides and runs the ordinary
stages while the others wait, and every rank runs ``distributed`` stages (e.g. evaluation),
whose units are sharded by :mod:`steerscope.pipeline.distributed`.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

from steerscope.artifacts import atomic_write, atomic_write_json, child_path
from steerscope.environment import environment
from steerscope.errors import SteerscopeError
from steerscope.pipeline import distributed
from steerscope.pipeline.behaviour import run_behaviour
from steerscope.pipeline.config import PipelineConfig, dump_config
from steerscope.pipeline.inputs import Inputs, check_inputs
from steerscope.pipeline.preflight import check_code_consent, preflight
from steerscope.pipeline.registry import STAGES, Stage, StageOutput, stage_names
from steerscope.pipeline.run_files import (
    CONFIG_FILE,
    FIGURES,
    REPORT_FILE,
    RESULTS_FILE,
    RUN_FILE,
    check_run_files,
    is_report_file,
    write_run_json,
)
from steerscope.pipeline.store import KEY_CHARS, RunStore, hash_json
from steerscope.validation import check_output_folder

# Testing hook: SIGKILL this process inside stage NAME, after its files are written and
# before they are committed (the worst moment for an interruption).
KILL_ENV = "STEERSCOPE_PIPELINE_KILL_IN"


@dataclass
class StageRecord:
    """What happened to one stage in this run.

    ``status``: ``ran``, ``skipped`` (finished earlier), ``not available`` (no function
    registered yet), ``disabled`` (``enabled: false``), ``blocked`` (a dependency did not
    finish) or ``not run`` (after ``--until``).
    """

    name: str
    status: str
    key: str | None = None
    dir: str | None = None
    digest: str | None = None
    seconds: float | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class RunResult:
    run_dir: Path
    records: dict[str, StageRecord] = field(default_factory=dict)
    outputs: dict[str, StageOutput] = field(default_factory=dict)

    @property
    def ran(self) -> list[str]:
        return [n for n, r in self.records.items() if r.status == "ran"]

    @property
    def skipped(self) -> list[str]:
        return [n for n, r in self.records.items() if r.status == "skipped"]

    @property
    def results_path(self) -> Path:
        return self.run_dir / RESULTS_FILE

    @property
    def report_path(self) -> Path | None:
        p = self.run_dir / REPORT_FILE
        return p if p.is_file() else None


class _Models:
    """The model loaded once per process, on first use."""

    def __init__(self, cfg: PipelineConfig, dist: distributed.Dist):
        self.cfg, self.dist, self.loaded = cfg, dist, None

    def get(self):
        if self.loaded is None:
            from steerscope.models.chat import set_chat_template
            from steerscope.models.loading import load_model

            m = self.cfg.model
            self.loaded = load_model(m.source, dtype=m.dtype,
                                     device=distributed.device_for(m.device, self.dist),
                                     device_map=m.device_map, revision=m.revision,
                                     attn_implementation=m.attn_implementation,
                                     quantization=m.quantization)
            set_chat_template(self.loaded.tokenizer, m.chat_template)
        return self.loaded


@dataclass
class StageContext:
    """What a stage function sees (see :mod:`steerscope.pipeline.registry`)."""

    name: str
    config: PipelineConfig
    run_dir: Path
    out: Path  # write here (temporary; renamed to final_dir when the stage returns)
    final_dir: Path
    dist: distributed.Dist
    inputs_digest: Inputs
    progress: bool
    _models: _Models

    def model(self):
        """The :class:`~steerscope.models.loading.LoadedModel` (loaded on first call)."""
        return self._models.get()

    @cached_property
    def behaviour(self):
        """The run's :class:`~steerscope.behaviours.Behaviour` (the config's ``behaviour``,
        loaded once, with the run's consent ``allow_code``): its judge, fast-score tokens and
        display labels. The data stage records its definition, which is part of every later
        stage's key."""
        return run_behaviour(self.config)

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def log(self, message: str) -> None:
        if self.progress and self.is_main:
            print(f"[{self.name}] {message}", file=sys.stderr, flush=True)


def run_hash(cfg: PipelineConfig, inputs: Inputs) -> str:
    """The run folder's hash: the normalised config and the input digests."""
    return hash_json({"config": cfg.to_dict(), "inputs": inputs.digest()})


def run_dir_for(cfg: PipelineConfig, inputs: Inputs, out: str | os.PathLike) -> Path:
    """``<out>/<name>-<hash>`` (a one-line error when it is a link leading outside ``out``)."""
    return child_path(Path(out).expanduser().absolute(),
                      f"{cfg.name}-{run_hash(cfg, inputs)[:12]}", what="run folder")


def stage_key(stage: Stage, cfg: PipelineConfig, inputs: Inputs,
              upstream: dict[str, str]) -> str:
    """Hash of the stage's name, version, config section, upstream digests and its
    ``key_extra`` (the model and data stages: the input digests; vectors, trained: the seed)."""
    extra: dict[str, Any] = {} if stage.key_extra is None else stage.key_extra(cfg, inputs)
    return hash_json({
        "stage": stage.name, "version": stage.version,
        "config": _section_json(stage, cfg),
        "upstream": upstream, "extra": extra,
    })


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _maybe_kill(name: str) -> None:
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def prepare(config, out: str | os.PathLike = "runs", *, sets: Sequence[str] = (),
            until: str | None = None) -> tuple[PipelineConfig, Inputs, Path]:
    """Check the config (with the ``--set`` values ``sets``, :mod:`~steerscope.pipeline.
    overrides`; each must configure a stage that runs up to ``until``) and the inputs (no
    compute); returns them and the run folder."""
    from steerscope.pipeline.overrides import check_sets_run, load_config_with_sets

    cfg = load_config_with_sets(config, sets)
    check_sets_run(cfg, sets, until)
    check_output_folder(out)
    inputs = check_inputs(cfg)
    preflight(cfg)
    return cfg, inputs, run_dir_for(cfg, inputs, out)


def _resolve_names(names: Sequence[str] | str | None, what: str) -> list[str]:
    if names is None:
        return []
    names = [names] if isinstance(names, str) else list(names)
    valid = stage_names()
    for n in names:
        if n not in valid:
            raise SteerscopeError(f"{what} names unknown stage '{n}'",
                                  f"use one of {', '.join(valid)}")
    return names


def run_pipeline(config, out: str | os.PathLike = "runs", *,
                 force: Sequence[str] | str | None = None, until: str | None = None,
                 progress: bool | None = None, prune: bool = True,
                 allow_code: bool = False, sets: Sequence[str] = ()) -> RunResult:
    """Run (or resume) the pipeline for ``config`` (a YAML path, dict or PipelineConfig)
    under ``out``; returns what each stage did. ``force``: stage names to recompute;
    ``until``: stop after this stage; ``allow_code``: consent to run a judge's code, as the
    config's ``allow_code: true`` (``--allow-code``); ``sets``: ``--set KEY=VALUE`` config
    values (:mod:`steerscope.pipeline.overrides`, recorded in ``run.json``). Every check runs
    before any compute."""
    force_names = set(_resolve_names(force, "--force"))
    until_name = (_resolve_names(until, "--until") or [None])[0]
    cfg, inputs, run_dir = prepare(config, out, sets=sets, until=until_name)
    if allow_code and not cfg.allow_code:
        cfg = dataclasses.replace(cfg, allow_code=True)
    check_code_consent(cfg)
    dist = distributed.init_from_env()
    if progress is None:
        progress = sys.stderr.isatty()
    store = RunStore(run_dir)
    result = RunResult(run_dir)
    models = _Models(cfg, dist)

    def say(msg: str) -> None:
        if progress and dist.is_main:
            print(msg, file=sys.stderr, flush=True)

    with store.lock() if dist.is_main else _nullcontext():
        damaged_files: list[str] = []
        if dist.is_main:
            gone = store.sweep()
            if gone:
                say(f"removed {len(gone)} unfinished stage folder(s) of an interrupted run")
            damaged_files = _damaged_run_files(run_dir)
            atomic_write(run_dir / CONFIG_FILE,
                         lambda tmp: Path(tmp).write_text(dump_config(cfg), encoding="utf-8"))
        distributed.barrier(dist)
        say(f"run folder {run_dir}")
        stopped = False
        for name in stage_names():
            stage = STAGES[name]
            if stopped:
                result.records[name] = StageRecord(name, "not run", reason=f"--until {until_name}")
                continue
            rec = _run_one(stage, cfg, inputs, store, result, force_names, dist, models, progress,
                           say)
            result.records[name] = rec
            if name == until_name:
                stopped = True
        if dist.is_main:
            _write_results(cfg, run_dir, result)
            if "report" not in result.outputs:  # not rewritten: a damaged copy goes
                for rel in damaged_files:
                    if is_report_file(rel):
                        (run_dir / rel).unlink(missing_ok=True)
            _write_run_json(run_dir, cfg, result, sets)
            if prune:
                store.prune({n: o.dir for n, o in result.outputs.items()})
        distributed.barrier(dist)
    return result


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _run_one(stage: Stage, cfg, inputs, store: RunStore, result: RunResult, force, dist,
             models, progress, say) -> StageRecord:
    name = stage.name
    if not stage.available:
        return StageRecord(name, "not available", reason="no stage function registered yet")
    if not stage.enabled(cfg):
        return StageRecord(name, "disabled", reason=f"{stage.section}.enabled is false")
    missing = [d for d in stage.deps if d not in result.outputs]
    if missing:
        return StageRecord(name, "blocked", reason=f"needs {', '.join(missing)}")
    optional = [n for n in result.outputs if n != name] if "*" in stage.optional else \
        [d for d in stage.optional if d in result.outputs]
    dep_names = list(dict.fromkeys([*stage.deps, *optional]))
    upstream = {d: result.outputs[d].digest for d in dep_names}
    if name == "report":
        # the report is built from results.json: assemble it first (all ranks see the file)
        if dist.is_main:
            _write_results(cfg, store.run_dir, result)
        distributed.barrier(dist)
        upstream["results.json"] = hash_json(_read_json(store.run_dir / RESULTS_FILE))
    key = stage_key(stage, cfg, inputs, upstream)
    done, damaged = store.check(name, key) if dist.is_main else (None, None)
    if damaged is not None:
        # always said (not only with progress): a damaged folder is never reused silently
        print(f"warning: stage '{name}': {store.stage_dir(name, key).name} is damaged "
              f"({damaged}); recomputing it", file=sys.stderr, flush=True)
    if done is not None and name in force:
        done = None
    done_key = distributed.broadcast(None if done is None else key, dist)
    if done_key is not None:
        out = done if done is not None else store.load(name, key)
        result.outputs[name] = out
        say(f"{name:10s} done earlier ({out.dir.name}), skipped")
        if name == "report" and dist.is_main:
            _publish_report(out, store.run_dir)
        return StageRecord(name, "skipped", key[:KEY_CHARS], out.dir.name, out.digest)

    inputs_map = {d: result.outputs[d] for d in dep_names}
    runs_here = dist.is_main or stage.distributed
    say(f"{name:10s} running")
    t0 = time.perf_counter()
    started = _now()
    if runs_here:
        tmp = store.begin(name, key) if dist.is_main else store.begin(f"{name}.rank{dist.rank}",
                                                                       key)
        ctx = StageContext(name, cfg, store.run_dir, tmp, store.stage_dir(name, key), dist,
                           inputs, progress, models)
        try:
            outputs = stage.fn(ctx, stage.config_of(cfg), inputs_map) or {}
            if dist.is_main:
                _maybe_kill(name)
                seconds = time.perf_counter() - t0
                record = {"outputs": outputs, "config": _section_json(stage, cfg),
                          "upstream": upstream, "started": started, "finished": _now(),
                          "seconds": round(seconds, 3), "world_size": dist.world_size}
                out = store.commit(tmp, name, key, record)
            else:
                store.abort(tmp)
        except BaseException:
            store.abort(tmp)
            raise
    distributed.barrier(dist)
    if not dist.is_main:
        out = store.load(name, key)
        if out is None:
            raise SteerscopeError(f"stage '{name}' finished on rank 0 but its folder is not "
                                  "visible on this rank", "run all ranks on a shared filesystem")
    result.outputs[name] = out
    seconds = time.perf_counter() - t0
    say(f"{name:10s} finished in {seconds:.1f} s ({out.dir.name})")
    if name == "report" and dist.is_main:
        _publish_report(out, store.run_dir)
    return StageRecord(name, "ran", key[:KEY_CHARS], out.dir.name, out.digest, round(seconds, 3),
                       None if damaged is None else f"recomputed: the earlier folder was damaged, "
                                                    f"{damaged}")


def _damaged_run_files(run_dir: Path) -> list[str]:
    """The top-level files of an earlier run in ``run_dir`` that no longer match its
    ``run.json`` (each said in one warning line; this run rewrites them)."""
    if not (run_dir / RUN_FILE).exists():
        return []
    bad = {rel: p for rel, p in check_run_files(run_dir).items() if p is not None}
    for rel, problem in sorted(bad.items()):
        print(f"warning: {rel} of the run folder is damaged ({problem}); this run rewrites it",
              file=sys.stderr, flush=True)
    return sorted(bad)


def _section_json(stage: Stage, cfg) -> Any:
    import dataclasses

    section = stage.config_of(cfg)
    return dataclasses.asdict(section) if dataclasses.is_dataclass(section) else section


def _read_json(path: Path) -> Any:
    import json

    return json.loads(path.read_text(encoding="utf-8"))


def _write_results(cfg, run_dir: Path, result: RunResult) -> Path:
    from steerscope.pipeline.results import build_results

    # "ran" and "skipped" both read "done" (results.json must not depend on resuming), and the
    # report's own status is left out (results.json is the report's input)
    statuses = {n: "done" if r.status in ("ran", "skipped") else r.status
                for n, r in result.records.items() if n != "report"}
    return atomic_write_json(run_dir / RESULTS_FILE,
                             build_results(cfg, run_dir, result.outputs, statuses))


def _publish_report(out: StageOutput, run_dir: Path) -> None:
    """Copy the report stage's HTML and figures to the top of the run folder."""
    src = out.dir / REPORT_FILE
    if not src.is_file():
        return
    atomic_write(child_path(run_dir, REPORT_FILE), lambda tmp: shutil.copyfile(src, tmp))
    figs = out.dir / FIGURES
    pngs = sorted(figs.glob("*.png")) if figs.is_dir() else []
    for png in pngs:
        atomic_write(child_path(run_dir, FIGURES, png.name, what="figure"),
                     lambda tmp, png=png: shutil.copyfile(png, tmp))
    published = run_dir / FIGURES
    if published.is_dir():  # a figure the report stage did not write is not the run's
        keep = {p.name for p in pngs}
        for stale in published.iterdir():
            if stale.name not in keep and (stale.is_file() or stale.is_symlink()):
                stale.unlink()


def _write_run_json(run_dir: Path, cfg: PipelineConfig, result: RunResult,
                    sets: Sequence[str] = ()) -> None:
    from steerscope.pipeline.overrides import apply_sets

    write_run_json(run_dir, {
        "name": cfg.name,
        "overrides": apply_sets({}, sets)[1],  # the --set values, as applied
        "run_dir": str(run_dir),
        "updated": _now(),
        "environment": environment(distributed.device_for(cfg.model.device,
                                                          distributed.current())),
        "stages": {n: r.to_json() for n, r in result.records.items()},
    })
