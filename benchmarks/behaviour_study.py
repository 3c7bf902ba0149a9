"""Issue 13's mechanism study compared across behaviours: one markdown table from the
results.json of finished pipeline runs (docs/behaviour_study.md).

    steerscope run configs/study-lists.yaml --out runs     # and study-code, study-refusal
    python benchmarks/behaviour_study.py runs/study-*/ [--method dim] [--heads 3] [--tokens 5]

Per run (one behaviour): the steering table (behaviour rate unsteered -> steered, per use),
the freezing table (``freeze.<mode>.harmful_drop`` / ``harmless_drop`` / ``mean_drop``, points
of the steering effect lost, for qk, ov, svv, mlp), the minimum faithful circuit as a fraction
of the edges (``circuits.<method>.min_faithful_size / total_edges``), the edge-type shares of
the top edges (``edge_types.<method>.fractions``), the top svv tokens of the top heads by
|node score| (``svv.<method>``), and the sparsity reached at 90 % retention: per sparsify rule,
the largest ``sparsity`` among the sweep's points whose retention is >= 0.9 on each side
where the dense vector has an effect ("<" the smallest swept sparsity when none is). Reads only results.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from steerscope.results_schema import upgrade_results

RETENTION = 0.9
MODES = ("qk", "ov", "svv", "mlp")
EDGE_TYPES = ("q", "k", "v", "mlp", "logits")


def sparsity_at_retention(points: list[dict], level: float = RETENTION) -> str:
    """The largest swept sparsity whose retention is >= level on every side where the dense
    vector has an effect (retention not null), as a percentage, with the side(s) used;
    '< x %' (x the smallest swept sparsity) when no point retains it."""
    sides = [s for s in ("present", "absent")
             if any(p.get(f"{s}_retention") is not None for p in points)]
    if not sides:
        return "n/a (no dense effect)"
    ok = [p["sparsity"] for p in points
          if all(p.get(f"{s}_retention") is not None and p[f"{s}_retention"] >= level
                 for s in sides)]
    note = "" if len(sides) == 2 else f" ({'remove' if sides == ['present'] else 'induce'} only)"
    if ok:
        return f"{100 * max(ok):.1f} %{note}"
    return f"< {100 * min(p['sparsity'] for p in points):.1f} %{note}"


def summarize(results: dict, method: str = "dim", heads: int = 3, tokens: int = 5) -> dict:
    """One behaviour's row of the comparison (strings ready for markdown)."""
    beh = results.get("behaviour", {}).get("name", "refusal")
    row: dict = {"behaviour": beh, "model": results["model"].get("id", "?")}
    sel = results.get("dim_selection", {})
    row["layer"] = sel.get("layer")
    st = results.get("steering", {})
    if "none" in st and method in st:
        n, s = st["none"], st[method]
        row["remove"] = (f"{n['present']['behaviour_rate']:.2f} -> "
                         f"{s['present']['behaviour_rate']:.2f}")
        row["induce"] = (f"{n['absent']['behaviour_rate']:.2f} -> "
                         f"{s['absent']['behaviour_rate']:.2f}")
    fr = results.get("freeze", {})
    row["freeze"] = {m: (fr[m].get("present", {}).get("drop"), fr[m].get("absent", {}).get("drop"),
                         fr[m].get("mean_drop")) for m in MODES if m in fr}
    none = fr.get("none", {})
    row["n_freeze"] = (none.get("present", {}).get("n"), none.get("absent", {}).get("n"))
    c = results.get("circuits", {}).get(method, {})
    if c:
        size, total = c.get("min_faithful_size"), c.get("total_edges")
        row["circuit"] = (f"{size} / {total} = {100 * size / total:.1f} %" if size is not None
                          else f"none faithful (max {max(f for _, f in c['faithfulness_curve']):.2f})")
        row["complement"] = c.get("complement_faithfulness")
        row["random"] = c.get("random_faithfulness")
    et = results.get("edge_types", {}).get(method, {})
    if et:
        row["edge_types"] = {k: et["fractions"].get(k, 0.0) for k in EDGE_TYPES}
        row["top_n"] = et.get("top_n")
    row["svv"] = [(h["head"], h["score"], h["tokens"][:tokens])
                  for h in results.get("svv", {}).get(method, [])[:heads]]
    sp = results.get("sparsify", {}).get(method, {})
    row["sparsity90"] = {rule: sparsity_at_retention(pts) for rule, pts in sp.items()}
    return row


def _f(x, fmt="{:+.0f}"):
    return "-" if x is None else fmt.format(x)


def markdown(rows: list[dict]) -> str:
    """The comparison tables (markdown)."""
    out = ["| behaviour | model | DIM layer | remove: present rate | induce: absent rate | "
           + " | ".join(f"{m.upper()} drop (rm / ind / mean)" for m in MODES) + " |",
           "|---" * (5 + len(MODES)) + "|"]
    for r in rows:
        cells = [r["behaviour"], r["model"], str(r["layer"]), r.get("remove", "-"),
                 r.get("induce", "-")]
        for m in MODES:
            h, b, mean = r["freeze"].get(m, (None, None, None))
            cells.append(f"{_f(h)} / {_f(b)} / **{_f(mean)}**")
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "| behaviour | min faithful circuit (edges) | complement / random faithfulness "
            "| top-edge shares q / k / v / mlp / logits | sparsity at 90 % retention |",
            "|---|---|---|---|---|"]
    for r in rows:
        et = r.get("edge_types")
        shares = (" / ".join(f"{et[k]:.2f}" for k in EDGE_TYPES) + f" (top {r['top_n']})"
                  if et else "-")
        sp = ", ".join(f"{k} {v}" for k, v in r["sparsity90"].items()) or "-"
        out.append(f"| {r['behaviour']} | {r.get('circuit', '-')} | "
                   f"{_f(r.get('complement'), '{:.2f}')} / {_f(r.get('random'), '{:.2f}')} | "
                   f"{shares} | {sp} |")
    out += ["", "| behaviour | top heads (node score): top svv tokens |", "|---|---|"]
    for r in rows:
        heads = "; ".join(f"{h} ({s:+.3g}): " + ", ".join(repr(t) for t in toks)
                          for h, s, toks in r["svv"])
        out.append(f"| {r['behaviour']} | {heads or '-'} |")
    return "\n".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders (each with results.json)")
    ap.add_argument("--method", default="dim")
    ap.add_argument("--heads", type=int, default=3, help="top heads shown per behaviour")
    ap.add_argument("--tokens", type=int, default=5, help="svv tokens shown per head")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    rows = [summarize(upgrade_results(json.loads((Path(r) / "results.json").read_text(
                          encoding="utf-8"))),
                      args.method, args.heads, args.tokens) for r in args.runs]
    print(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, ensure_ascii=False),
                                   encoding="utf-8")


if __name__ == "__main__":
    main()
