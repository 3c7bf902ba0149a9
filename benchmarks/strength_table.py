"""The steering strength tables of docs/families.md ("Steering strength (issue 25)"), read from
runs' ``results.json`` (docs/results.md); nothing is recomputed.

    python benchmarks/strength_table.py runs/demo-auto-<hash>/ [runs/demo-before-<hash>/ ...]

Per run: the steering table (test prompts) with each row's α, behaviour rate, coherent
share, behaviour rate among coherent completions, coherent success and loop rate; under
``evaluation.alpha: auto`` the chosen α per method and use and the val curve (per |α|:
behaviour rate / coherent success / loop rate); the freezing table (mean drop, per-set drops
and loops) with its α.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from steerscope.results_schema import upgrade_results


def _f(x, nd: int = 2) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def steering_lines(res: dict) -> list[str]:
    """The steering table: one line per method and side (present: remove, absent: induce)."""
    lines = ["| method | set | α | behaviour rate | coherent share | behaviour rate among "
             "coherent | coherent success | loops | fluency |", "|---" * 9 + "|"]
    for m, sides in res.get("steering", {}).items():
        for side, c in sides.items():
            lines.append(f"| {m} | {side} | {c['alpha']:+.2f} | {_f(c['behaviour_rate'])} | "
                         f"{_f(c.get('coherent_share'))} | "
                         f"{_f(c.get('coherent_behaviour_rate'))} | "
                         f"{_f(c.get('coherent_success'))} | {_f(c['repetition_rate'])} | "
                         f"{_f(c.get('fluency'))} |")
    return lines


def curve_lines(res: dict) -> list[str]:
    """The chosen α per method and use, then the val curve (behaviour / coherent success /
    loops per |α|)."""
    chosen, curve = res.get("alpha_chosen"), res.get("alpha_curve")
    if not curve:
        return ["(no alpha_curve: evaluation.alpha is not auto)"]
    lines = ["chosen: " + "; ".join(
        f"{m} {u} α {c['alpha']:+.2f} ({c['rule']}, coherent success "
        f"{_f(c.get('coherent_success'))} of best {_f(c.get('best_coherent_success'))})"
        for m, uses in chosen.items() for u, c in uses.items())]
    mags = sorted({abs(e["alpha"]) for e in curve if e["method"] != "none"})
    lines.append("| method | use | " + " | ".join(f"{a:g}" for a in mags) + " |")
    lines.append("|---|---" + "|---" * len(mags) + "|")
    for e in (e for e in curve if e["method"] == "none"):
        lines.append(f"| none | {e['use']} | " + " | ".join(
            f"{_f(e['behaviour_rate'])} / {_f(e['coherent_success'])} / "
            f"{_f(e['repetition_rate'])}" for _ in mags) + " |")
    keys = dict.fromkeys((e["method"], e["use"]) for e in curve if e["method"] != "none")
    for m, u in keys:
        by = {abs(e["alpha"]): e for e in curve if (e["method"], e["use"]) == (m, u)}
        lines.append(f"| {m} | {u} | " + " | ".join(
            f"{_f(by[a]['behaviour_rate'])} / {_f(by[a]['coherent_success'])} / "
            f"{_f(by[a]['repetition_rate'])}" if a in by else "–" for a in mags) + " |")
    lines.append("(cells: behaviour rate / coherent success / loop rate on the val prompts)")
    return lines


def freeze_lines(res: dict) -> list[str]:
    """The freezing table: mode, mean drop, per-set drops, loops, α."""
    fr = res.get("freeze")
    if not fr:
        return ["(no freeze section)"]
    lines = ["| mode | mean drop | present / absent drop | loops present / absent | "
             "α present / absent |", "|---" * 5 + "|"]
    for mode, r in fr.items():
        if not isinstance(r, dict) or "mean_drop" not in r:
            continue
        pr, ab = r.get("present", {}), r.get("absent", {})
        lines.append(f"| {mode} | {r['mean_drop']:.1f} | {pr.get('drop', 0):.1f} / "
                     f"{ab.get('drop', 0):.1f} | "
                     f"{_f(pr.get('repetition_rate'))} / {_f(ab.get('repetition_rate'))} | "
                     f"{_f(pr.get('alpha'))} / {_f(ab.get('alpha'))} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders or their results.json files")
    args = ap.parse_args(argv)
    for run in args.runs:
        path = Path(run)
        path = path / "results.json" if path.is_dir() else path
        res = upgrade_results(json.loads(path.read_text(encoding="utf-8")))
        print(f"## {path.parent.name}")
        for part in (steering_lines, curve_lines, freeze_lines):
            print("\n".join(part(res)))
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
