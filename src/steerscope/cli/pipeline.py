"""``steerscope run CONFIG.yaml`` (the resumable pipeline) and ``steerscope report RUN_DIR``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from steerscope.cli import common
from steerscope.errors import SteerscopeError


def cmd_run(args) -> dict | None:
    from steerscope.pipeline import run_pipeline

    if args.verify:
        return verify_run(args.config, args.out, args.set)
    res = run_pipeline(args.config, args.out, force=args.force or None, until=args.until,
                       progress=not args.quiet, allow_code=args.allow_code, sets=args.set)
    if not print_run(res):
        return None
    return {"run_dir": str(res.run_dir), "results": str(res.results_path),
            "report": str(res.report_path) if res.report_path is not None else None,
            "stages": {n: rec.to_json() for n, rec in res.records.items()}}


def verify_run(config: str, out: str, sets: list[str] | None = None) -> dict:
    """Check every stage folder of a run folder (CONFIG's, or CONFIG itself when it is a
    run folder; with the ``--set`` values ``sets``) against its ``stage.json`` (which must
    itself be unedited), and the top-level
    files (config.yaml, results.json, report.html, figures/) against ``run.json``; print one
    line per folder and file; a one-line error naming what is damaged or missing. Computes
    nothing. Returns ``{run_dir, folders: {name: "ok"}, files: {name: "ok"}}``."""
    from steerscope.pipeline import prepare
    from steerscope.pipeline.run_files import check_run_files
    from steerscope.pipeline.store import verify_folder

    run_dir = Path(config)
    if not run_dir.is_dir():
        run_dir = prepare(config, out, sets=sets or ())[2]
        if not run_dir.is_dir():
            raise SteerscopeError(f"{config} has no run folder under {out} ({run_dir.name})",
                                  "run it first, or pass --out with the folder it ran under")
    report = verify_folder(run_dir)
    recorded = run_dir / "run.json"
    if recorded.is_file():
        try:
            stages = json.loads(recorded.read_text(encoding="utf-8")).get("stages", {})
        except (ValueError, AttributeError, OSError):
            stages = {}
        for rec in stages.values() if isinstance(stages, dict) else []:
            folder = rec.get("dir") if isinstance(rec, dict) else None
            if isinstance(folder, str) and folder not in report:
                report[folder] = "the folder is missing"
    files = check_run_files(run_dir)
    width = max((len(n) for n in [*report, *files]), default=0)
    for name, problem in [*sorted(report.items()), *files.items()]:
        print(f"{name:{width}s}  {'ok' if problem is None else 'damaged: ' + problem}")
    bad = sorted(f for f, problem in report.items() if problem is not None)
    bad_files = [f for f, problem in files.items() if problem is not None]
    if bad or bad_files:
        what = [f"{n} {kind}" for n, kind in ((len(bad), "stage folder(s)"),
                                              (len(bad_files), "top-level file(s)")) if n]
        raise SteerscopeError(f"{' and '.join(what)} of {run_dir} are damaged "
                              f"({', '.join([*bad, *bad_files])})",
                              "rerun 'steerscope run' with the same config: it recomputes and "
                              "rewrites them")
    print(f"{run_dir}: {len(report)} stage folder(s), all match their stage.json; "
          f"{len(files)} top-level file(s) match run.json")
    return {"run_dir": str(run_dir), "folders": {f: "ok" for f in sorted(report)},
            "files": {f: "ok" for f in files}}


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


def cmd_report(args) -> dict:
    from steerscope.pipeline.run_files import record_rebuilt_report
    from steerscope.report.explorer import build_run_report

    path = build_run_report(args.run_dir, args.out, title=args.title,
                            explorer=not args.no_explorer, model=not args.no_model)
    record_rebuilt_report(path, Path(args.run_dir))  # run.json's record of report.html
    print(f"report: {path}")
    return {"report": str(path)}


def add_set_arg(p: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE`` (repeatable): a config value over the config's own."""
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="set config key KEY (e.g. evaluation.batch_size, a dotted path as in "
                        "the YAML file) to VALUE, read as YAML; repeatable, applied in order; "
                        "checked like the file, recorded in run.json, and only the stages it "
                        "configures are recomputed (docs/pipeline.md)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run (or resume) the whole pipeline from a YAML config")
    p.add_argument("config", help="the pipeline config (YAML; see docs/pipeline.md)")
    p.add_argument("--out", default="runs", help="parent folder of run folders (default: runs)")
    p.add_argument("--force", action="append", metavar="STAGE",
                   help="recompute this stage even if finished (repeatable)")
    p.add_argument("--until", metavar="STAGE", help="stop after this stage")
    add_set_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    common.add_allow_code_arg(p)
    p.add_argument("--verify", action="store_true",
                   help="compute nothing: check every finished stage folder of the run folder "
                        "(CONFIG's, or CONFIG itself if it is a run folder) against the sizes "
                        "and digest in its stage.json, and the top-level files (results.json, "
                        "report.html, figures, config.yaml) against run.json")
    common.add_json_arg(p, "the run folder, results/report paths and each stage's record")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="(re)build the HTML report of a run folder")
    common.add_run_folder_args(
        p, out="write report.html and figures/ here (default: the run folder)",
        no_model="do not load the model (the explorer then has no example view)")
    p.add_argument("--title", help="the report's title (default: from the run's name)")
    p.add_argument("--no-explorer", action="store_true",
                   help="leave out the interactive circuit explorer")
    common.add_json_arg(p, "the report's path")
    p.set_defaults(func=cmd_report)
