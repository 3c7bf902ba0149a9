"""The HTML report and its PNG figures, built from a run's results.json."""

from steerscope.report.html import build_report, render_report

__all__ = ["build_report", "render_report"]
