"""The paper's headline tables for several runs side by side (docs/families.md), read from each
run's ``results.json``.

    python benchmarks/families_table.py runs/demo-<hash>/results.json \
        runs/demo-gemma-<hash>/results.json [--names demo,demo-gemma] [--json]

Per run: the steering table (unsteered / each vector, harmful and harmless ASR, and the
fraction of repetition loops among those completions), the cosines
between the vectors, the minimum faithful circuit (edges and % of the graph), the overlap
between the methods' minimal circuits and the interchange matrix, the edge types of the top
edges, the freezing table's mean drops, the top svv heads and their tokens, and the highest
sparsity keeping at least 90% of the dense effect on both sets (per rule). Nothing is
recomputed: every figure is a key of results.json (docs/results.md). The cells are
:mod:`steerscope.report.compare`'s, as `steerscope compare RUN...` shows them (a column per run
folder, with an HTML page); this script names the columns by model id.
"""

from __future__ import annotations

import argparse
import json
import sys

from steerscope.errors import SteerscopeError
from steerscope.report.compare import markdown, read_run, summarise


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", help="results.json files (or their run folders)")
    ap.add_argument("--names", help="comma-separated column names (default: the model ids)")
    ap.add_argument("--json", action="store_true", help="print the cells as JSON")
    args = ap.parse_args(argv)
    try:
        runs = [read_run(p) for p in args.results]
    except SteerscopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    names = args.names.split(",") if args.names else [r.get("model", {}).get("id", str(p))
                                                      for p, r in runs]
    if len(names) != len(runs):
        print(f"error: {len(names)} names for {len(runs)} runs: give one name per run",
              file=sys.stderr)
        return 2
    summaries = {n: summarise(r) for n, (_, r) in zip(names, runs)}
    print(json.dumps(summaries, indent=1, ensure_ascii=False) if args.json
          else markdown(summaries))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
