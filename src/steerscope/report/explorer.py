"""The interactive circuit explorer: one self-contained HTML section of report.html.

:func:`run_explorer_data` gathers the data of a run (:mod:`explorer_data`, from the files on
disk; with a model also :mod:`explorer_views`, the per-position metric and the attention
patterns of one example); :func:`explorer_section`
(:mod:`steerscope.report.explorer_html`) renders it as self-contained HTML;
:func:`build_run_report` rebuilds a run folder's report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from steerscope.report.explorer_data import MAX_EDGES, explorer_data, stage_dirs_of_run
from steerscope.report.explorer_html import D3_VERSION, SECTION_TITLE, explorer_section
from steerscope.results_schema import upgrade_results
from steerscope.safe_files import read_json_file

__all__ = ["D3_VERSION", "MAX_EDGES", "SECTION_TITLE", "build_run_report", "explorer_section",
           "load_run_model", "read_results", "run_explorer_data"]


def run_explorer_data(results: dict, stage_dirs: dict[str, Path] | None = None, *,
                      run_dir: str | Path | None = None, lm=None,
                      max_edges: int = MAX_EDGES) -> dict[str, Any] | None:
    """The explorer data of a run (None without patching results). ``stage_dirs`` (stage →
    folder) or ``run_dir`` (read from its run.json) locate the artifacts; with a loaded model
    ``lm`` each vector also gets its example view."""
    if stage_dirs is None:
        stage_dirs = stage_dirs_of_run(run_dir)
    data = explorer_data(results, stage_dirs, max_edges=max_edges)
    if data is not None and lm is not None:
        from steerscope.report.explorer_views import add_example_views

        add_example_views(data, stage_dirs, lm, results)
    return data


def load_run_model(results: dict):
    """The run's model (``model.path`` of results.json), for the example views."""
    from steerscope.models import load_model

    path = (results.get("model") or {}).get("path")
    if not path:
        return None
    return load_model(path)



def read_results(run_dir: str | Path) -> dict:
    """A run folder's results.json (one-line errors when missing or malformed)."""
    from steerscope.errors import SteerscopeError

    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise SteerscopeError(f"{path} does not exist",
                              "pass a run folder written by 'steerscope run'")
    # deep, huge, FIFO: one line; an older run is read under today's keys
    results = upgrade_results(read_json_file(path, "results file"))
    if not isinstance(results, dict):
        raise SteerscopeError(f"{path} holds a JSON {type(results).__name__}, not the results "
                              "object", "rerun 'steerscope run' with the run's config: it "
                                        "rewrites it")
    return results


def build_run_report(run_dir: str | Path, out: str | Path | None = None, *,
                     title: str | None = None, explorer: bool = True, model: bool = True,
                     max_edges: int = MAX_EDGES) -> Path:
    """(Re)build ``report.html`` of a run folder (into ``out``, default the run folder), with
    the circuit explorer when the run has patching results and a run.json (``model``: load
    the run's model for the example views)."""
    from steerscope.report.html import build_report

    run_dir = Path(run_dir)
    results = read_results(run_dir)
    data = None
    if explorer and (run_dir / "run.json").is_file():
        dirs = stage_dirs_of_run(run_dir)
        if "patching" in dirs or "circuits" in dirs:
            lm = load_run_model(results) if model else None
            data = run_explorer_data(results, dirs, lm=lm, max_edges=max_edges)
    return build_report(results, Path(out) if out else run_dir, title=title, explorer=data)
