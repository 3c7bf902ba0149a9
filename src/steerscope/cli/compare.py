"""``steerscope compare RUN [RUN ...]``: the headline cells of several runs side by side
(:mod:`steerscope.report.compare`), as a markdown table on stdout, JSON (``--json``) or a
self-contained HTML page (``--html FILE``)."""

from __future__ import annotations

import argparse

from steerscope.cli import common


def cmd_compare(args) -> dict:
    from steerscope.report.compare import compare_runs, markdown, write_compare_html

    names = args.names.split(",") if args.names else None
    summaries = compare_runs(args.runs, names)
    page = write_compare_html(summaries, args.html) if args.html else None
    if not args.json:
        print(markdown(summaries))
    if page is not None:
        print(f"comparison page: {page}")  # on stderr with --json
    return {"columns": list(summaries), "runs": summaries}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="the headline cells of several runs side by side "
                                       "(behaviours, models): a table, JSON or an HTML page")
    p.add_argument("runs", nargs="*", metavar="RUN",
                   help="run folders of 'steerscope run' / 'steerscope demo' (or their "
                        "results.json files)")
    p.add_argument("--names", help="comma-separated column names, one per run (default: the "
                                   "run folders' names)")
    p.add_argument("--html", metavar="FILE",
                   help="also write the table as a self-contained HTML page to FILE")
    common.add_json_arg(p, "the cells of each run")
    p.set_defaults(func=cmd_compare)
