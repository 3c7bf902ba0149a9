"""Stage ``report``: the HTML report and PNG figures built from ``results.json``, plus the
interactive circuit explorer from the patching, circuits and svv folders and the model
(docs/report.md). It depends on every earlier finished stage; the runner assembles
``results.json`` before it runs and copies its ``report.html`` and figures to the top of the
run folder.

Config section ``report`` (:class:`ReportSection`); no results.json section.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerscope.pipeline.registry import register_stage


@dataclass
class ReportSection:
    """The HTML report."""

    enabled: bool = True
    """Run this stage (false: skip it; results.json marks it not run)."""
    title: str | None = None
    """The report's title (None: from the run's name)."""

    def check(self, cfg) -> None:
        """Nothing to check."""


def report_stage(ctx, section, inputs) -> dict[str, Any]:
    """The HTML report and PNG figures, built from ``results.json``; with patching results
    also the circuit explorer (from the patching, circuits and svv folders and the model)."""
    from steerscope.report import build_report
    from steerscope.report.explorer import run_explorer_data

    results = json.loads(Path(ctx.run_dir, "results.json").read_text(encoding="utf-8"))
    dirs = {name: out.dir for name, out in inputs.items()}
    explorer = None
    if "patching" in dirs:
        explorer = run_explorer_data(results, dirs, lm=ctx.model())
    html = build_report(results, ctx.out, title=section.title, explorer=explorer)
    return {"file": html.name, "figures": sorted(p.name for p in (ctx.out / "figures").glob("*.png"))}


register_stage("report", optional=("*",), section="report", config=ReportSection,
               order=1000)(report_stage)
