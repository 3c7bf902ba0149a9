"""``steerscope run CONFIG.yaml`` (the resumable pipeline) and ``steerscope report RUN_DIR``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from steerscope.errors import SteerscopeError


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
    from steerscope.report import build_report

    run_dir = Path(args.run_dir)
    results = run_dir / "results.json"
    if not results.is_file():
        raise SteerscopeError(f"{results} does not exist",
                              "pass a run folder written by 'steerscope run'")
    try:
        data = json.loads(results.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise SteerscopeError(f"{results} is not valid JSON ({exc})") from None
    out = Path(args.out) if args.out else run_dir
    path = build_report(data, out, title=args.title)
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
    p.set_defaults(func=cmd_report)
