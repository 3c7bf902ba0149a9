"""``results.json``: the run's summary at the top of the run folder (schema: docs/results.md).

:func:`build_results` merges the ``results`` contributions of every finished stage (dicts are
deep-merged) under a fixed header (``format_version``, ``run``). A section whose stage did
not run is absent; ``run.stages`` says why. The contract itself (:func:`check_results`) lives
in :mod:`steerscope.results_schema`, below the pipeline and the report, and is re-exported
here.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

from steerscope.pipeline.registry import STAGES, StageOutput
from steerscope.results_schema import (
    FORMAT_VERSION,
    SECTION_STAGE,
    check_results,
    relative_to_run,
    resolve_path,
)

__all__ = ["FORMAT_VERSION", "SECTION_STAGE", "build_results", "check_results", "deep_merge",
           "relative_to_run", "resolve_path"]


def _version() -> str | None:
    try:
        return importlib.metadata.version("steerscope")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return None


def deep_merge(a: dict, b: dict) -> dict:
    """``b`` merged into a copy of ``a`` (nested dicts merged key by key, b wins otherwise)."""
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def build_results(cfg, run_dir: Path, outputs: dict[str, StageOutput],
                  statuses: dict[str, str]) -> dict[str, Any]:
    """The results.json object for the finished stages ``outputs`` (in pipeline order)."""
    results: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "steerscope_version": _version(),
        "run": {"name": cfg.name, "dir": ".", "config": "config.yaml",
                "stages": dict(statuses)},
    }
    for name, stage in STAGES.items():
        out = outputs.get(name)
        if out is None or stage.results is None:
            continue
        results = deep_merge(results, stage.results(out, results) or {})
    if "vectors" in results:  # config order
        order = [m for m in cfg.vectors.methods if m in results["vectors"]]
        results["vectors"] = {m: results["vectors"][m] for m in order}
    return relative_to_run(results, Path(run_dir))
