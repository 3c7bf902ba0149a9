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
recomputed: every figure is a key of results.json (docs/results.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RETENTION = 0.9  # "keeps the effect": both sets' retention at least this


def _fmt(x, spec: str = ".2f") -> str:
    return "—" if x is None else format(x, spec)


def steering_cells(res: dict) -> dict[str, str]:
    """``{set: "none / dim / ntp / po"}`` ASR cells (harmful = steered with α < 0), and
    ``{set loops: ...}`` the fraction of repetition loops among the same completions (the
    matcher judges loops unreliably) when results.json has it."""
    st = res.get("steering", {})
    methods = list(st)
    cells = {side: " / ".join(_fmt(st[m][side].get("asr")) for m in methods)
             for side in ("harmful", "harmless")} | {"methods": " / ".join(methods)}
    for side in ("harmful", "harmless"):
        loops = [st[m][side].get("repetition_rate") for m in methods]
        if any(v is not None for v in loops):
            cells[f"{side} loops"] = " / ".join(_fmt(v) for v in loops)
    return cells


def cosine_cells(res: dict) -> dict[str, str]:
    cos = res.get("cosine")
    if not cos:
        return {}
    ms, mat = cos["methods"], cos["matrix"]
    return {f"{a}–{b}": _fmt(mat[i][j]) for i, a in enumerate(ms) for j, b in enumerate(ms)
            if i < j}


def circuit_cells(res: dict) -> dict[str, str]:
    out = {}
    for m, c in res.get("circuits", {}).items():
        n, total = c.get("min_faithful_size"), c.get("total_edges")
        out[m] = (f"{n:,} of {total:,} ({100 * n / total:.1f}%)" if n and total
                  else f"none ≥ {c.get('threshold')} of {total}")
    return out


def matrix_cell(block: dict | None, key: str = "matrix") -> str:
    if not block:
        return "—"
    ms, mat = block["methods"], block[key]
    return "; ".join(f"{a}: " + " ".join(_fmt(v) for v in row) for a, row in zip(ms, mat))


def overlap_cell(overlap: dict | None) -> str:
    """The overlap matrix at the first size (each method's minimal circuit by default)."""
    if not overlap or not overlap.get("by_size"):
        return "—"
    return matrix_cell({"methods": overlap["methods"],
                        "matrix": overlap["by_size"][0]["matrix"]})


def edge_type_cells(res: dict) -> dict[str, str]:
    return {m: f"top-{e['top_n']}: " + " / ".join(
        f"{100 * e['fractions'].get(k, 0.0):.0f}" for k in ("q", "k", "v", "mlp", "logits"))
        for m, e in res.get("edge_types", {}).items()}


def freeze_cells(res: dict) -> dict[str, str]:
    """``{mode: mean drop}`` (with each set's loop rate when results.json has it)."""
    out = {}
    for mode, v in res.get("freeze", {}).items():
        if mode == "none":
            continue
        cell = _fmt(v.get("mean_drop"), ".1f")
        loops = (v.get("harmful_repetition_rate"), v.get("harmless_repetition_rate"))
        if any(x is not None for x in loops):
            cell += f" (loops {_fmt(loops[0])} / {_fmt(loops[1])})"
        out[mode] = cell
    return out


def svv_cells(res: dict, n_heads: int = 2, n_tokens: int = 6) -> dict[str, str]:
    return {m: "; ".join(f"{h['head']}: {', '.join(h['tokens'][:n_tokens])}"
                         for h in heads[:n_heads])
            for m, heads in res.get("svv", {}).items()}


def sparsity_at_retention(points: list[dict], level: float = RETENTION) -> float | None:
    """The highest sparsity whose harmful and harmless retention are both ≥ ``level``."""
    ok = [p["sparsity"] for p in points
          if (p.get("harmful_retention") or 0) >= level
          and (p.get("harmless_retention") or 0) >= level]
    return max(ok) if ok else None


def sparsity_cells(res: dict) -> dict[str, str]:
    out = {}
    for m, rules in res.get("sparsify", {}).items():
        if m == "iou":
            continue
        out[m] = ", ".join(f"{rule} {_fmt(sparsity_at_retention(pts), '.0%')}"
                           for rule, pts in rules.items())
    return out


def summarise(res: dict) -> dict:
    """Every cell of docs/families.md that one run's results.json fills."""
    model = res.get("model", {})
    return {
        "model": model.get("id"), "steering_layer": model.get("steering_layer"),
        "steering": steering_cells(res), "cosine": cosine_cells(res),
        "circuits": circuit_cells(res),
        "overlap": overlap_cell(res.get("overlap")),
        "interchange": matrix_cell(res.get("interchange")),
        "edge_types (q/k/v/mlp/logits %)": edge_type_cells(res),
        "freeze mean drop": freeze_cells(res), "svv": svv_cells(res),
        f"sparsity at {RETENTION:.0%} retention": sparsity_cells(res),
    }


def markdown(summaries: dict[str, dict]) -> str:
    """One row per cell, one column per run."""
    names = list(summaries)
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    keys = list(next(iter(summaries.values())))
    for key in keys:
        subkeys = sorted({k for s in summaries.values() if isinstance(s.get(key), dict)
                          for k in s[key]})
        if not subkeys:
            lines.append(f"| {key} | " + " | ".join(
                "—" if s.get(key) in (None, {}) else str(s[key]) for s in summaries.values())
                + " |")
        for sub in subkeys:
            lines.append(f"| {key}: {sub} | " + " | ".join(
                str((s.get(key) or {}).get(sub, "—")) for s in summaries.values()) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", help="results.json files (or their run folders)")
    ap.add_argument("--names", help="comma-separated column names (default: the model ids)")
    ap.add_argument("--json", action="store_true", help="print the cells as JSON")
    args = ap.parse_args(argv)
    paths = [Path(p) / "results.json" if Path(p).is_dir() else Path(p) for p in args.results]
    for p in paths:
        if not p.is_file():
            print(f"error: no results.json at {p}: pass a run folder of `steerscope run`",
                  file=sys.stderr)
            return 2
    runs = [json.loads(p.read_text()) for p in paths]
    names = args.names.split(",") if args.names else [r.get("model", {}).get("id", str(p))
                                                      for r, p in zip(runs, paths)]
    if len(names) != len(runs):
        print(f"error: {len(names)} names for {len(runs)} runs: give one name per run",
              file=sys.stderr)
        return 2
    summaries = {n: summarise(r) for n, r in zip(names, runs)}
    print(json.dumps(summaries, indent=1, ensure_ascii=False) if args.json
          else markdown(summaries))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
