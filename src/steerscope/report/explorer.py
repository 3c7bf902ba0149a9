"""The interactive circuit explorer: one self-contained HTML section of report.html.

:func:`run_explorer_data` gathers the data of a run (:mod:`explorer_data`, from the files on
disk; with a model also :mod:`explorer_views`, the per-position metric and the attention
patterns of one example); :func:`explorer_section` renders it as HTML with the vendored D3
(version :data:`D3_VERSION`, ISC licence, ``static/LICENSE.d3``), the explorer's script and
style and the data inlined, so the page needs no network.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from steerscope.report.explorer_data import MAX_EDGES, explorer_data, stage_dirs_of_run

D3_VERSION = "7.9.2"
SECTION_TITLE = "Circuit explorer"


def _static(name: str) -> str:
    return resources.files("steerscope.report").joinpath("static", name).read_text(
        encoding="utf-8")


def _script_json(data: dict) -> str:
    """JSON safe inside a ``<script>`` element (every ``<`` escaped as ``\\u003c``)."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c")


def explorer_section(data: dict[str, Any]) -> str:
    """The explorer's HTML (heading, container, inlined D3, data, script and style)."""
    return (
        f'<a id="circuit-explorer"></a><h2>{SECTION_TITLE}</h2>'
        '<p class="meta">Interactive: the circuit of each patched vector along its '
        "faithfulness curve, node details, one example's per-position metric, the vectors "
        f"compared, and the curves. Drawn with D3 {D3_VERSION} (ISC licence), inlined.</p>"
        f"<style>{_static('explorer.css')}</style>"
        '<div id="explorer"></div>'
        f'<script type="application/json" id="explorer-data">{_script_json(data)}</script>'
        f"<script>/* D3 {D3_VERSION}, https://d3js.org, ISC licence (c) Mike Bostock */\n"
        f"{_static('d3.min.js')}</script>"
        f"<script>{_static('explorer.js')}</script>"
    )


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
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise SteerscopeError(f"{path} is not valid JSON ({exc})") from None


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
