"""``steerscope explore RUN_DIR``: build the run's report with the interactive circuit
explorer (if it lacks one) and open it in the default browser."""

from __future__ import annotations

import argparse
from pathlib import Path

from steerscope.cli import common
from steerscope.errors import SteerscopeError

EXPLORER_MARK = 'id="explorer-data"'


def cmd_explore(args) -> dict:
    from steerscope.pipeline.run_files import record_rebuilt_report
    from steerscope.report.explorer import build_run_report

    run_dir = Path(args.run_dir)
    out = Path(args.out) if args.out else run_dir
    report = out / "report.html"
    fresh = report.is_file() and EXPLORER_MARK in report.read_text(encoding="utf-8")
    if args.rebuild or not fresh:
        report = build_run_report(run_dir, out, model=not args.no_model,
                                  max_edges=args.max_edges)
        record_rebuilt_report(report, run_dir)  # run.json's record of report.html
        if EXPLORER_MARK not in report.read_text(encoding="utf-8"):
            raise SteerscopeError(f"{run_dir} has no patching results to explore",
                                  "run the pipeline with the patching stage enabled")
    print(f"report: {report}")
    opened = False
    if not args.no_open:
        import webbrowser

        opened = bool(webbrowser.open(report.resolve().as_uri()))
        if not opened:
            print(f"open {report.resolve().as_uri()} in a browser")
    return {"report": str(report), "opened": opened}


def register(sub: argparse._SubParsersAction) -> None:
    from steerscope.report.explorer_data import MAX_EDGES

    p = sub.add_parser("explore", help="open the interactive circuit explorer of a run folder")
    common.add_run_folder_args(
        p, out="write report.html here (default: the run folder)",
        no_model="do not load the model (no per-position or attention views)")
    p.add_argument("--rebuild", action="store_true",
                   help="rebuild report.html even if it already has the explorer")
    p.add_argument("--max-edges", type=int, default=MAX_EDGES,
                   help=f"largest circuit shown, in edges (default {MAX_EDGES})")
    p.add_argument("--no-open", action="store_true", help="only build, do not open a browser")
    common.add_json_arg(p, "the report's path")
    p.set_defaults(func=cmd_explore)
