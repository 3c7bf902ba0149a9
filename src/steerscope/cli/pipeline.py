"""``steerscope run CONFIG.yaml`` (the resumable pipeline) and ``steerscope report RUN_DIR``."""

from __future__ import annotations

import argparse


def cmd_run(args) -> None:
    from steerscope.pipeline import run_pipeline

    res = run_pipeline(args.config, args.out, force=args.force or None, until=args.until,
                       progress=not args.quiet)
    print_run(res)


def print_run(res) -> bool:
    """Print each stage's status and the results/report paths (main rank only); False on
    the other ranks."""
    if not res.run_dir.exists():  # pragma: no cover - only non-main ranks could get here
        return False
    from steerscope.pipeline import distributed

    if not distributed.current().is_main:
        return False
    width = max(len(n) for n in res.records)
    for name, rec in res.records.items():
        extra = f" ({rec.reason})" if rec.reason else ""
        took = f" in {rec.seconds:.1f} s" if rec.seconds is not None else ""
        print(f"{name:{width}s}  {rec.status}{took}{extra}")
    print(f"results: {res.results_path}")
    if res.report_path is not None:
        print(f"report:  {res.report_path}")
    return True


def cmd_report(args) -> None:
    from steerscope.report.explorer import build_run_report

    path = build_run_report(args.run_dir, args.out, title=args.title,
                            explorer=not args.no_explorer, model=not args.no_model)
    print(f"report: {path}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run (or resume) the whole pipeline from a YAML config")
    p.add_argument("config", help="the pipeline config (YAML; see docs/pipeline.md)")
    p.add_argument("--out", default="runs", help="parent folder of run folders (default: runs)")
    p.add_argument("--force", action="append", metavar="STAGE",
                   help="recompute this stage even if finished (repeatable)")
    p.add_argument("--until", metavar="STAGE", help="stop after this stage")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="(re)build the HTML report of a run folder")
    p.add_argument("run_dir", help="a run folder holding results.json")
    p.add_argument("--out", help="write report.html and figures/ here (default: the run folder)")
    p.add_argument("--title")
    p.add_argument("--no-explorer", action="store_true",
                   help="leave out the interactive circuit explorer")
    p.add_argument("--no-model", action="store_true",
                   help="do not load the model (the explorer then has no example view)")
    p.set_defaults(func=cmd_report)
