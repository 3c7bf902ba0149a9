"""Several runs side by side: the headline cells of each run's ``results.json``.

:func:`summarise` turns one results dict into its cells (strings, "—" where a figure is
missing): the steering table per side (behaviour rate of the unsteered model and of each
vector, the present side steered to remove the behaviour, the absent side to induce it, and
the fraction of repetition loops among those completions), the cosines between the vectors,
the minimum faithful circuit (edges and % of the graph), the overlap between the methods'
minimal circuits and the interchange matrix, the edge types of the top edges, the freezing
table's mean drops, the top svv heads and their tokens, and the highest sparsity keeping at
least 90% of the dense effect on both sides (per rule). Nothing is recomputed: every figure is
a key of results.json (docs/results.md). Sections a run lacks (an older run, a stage not run)
give no cells; a section in an older or unexpected shape gives "—".

:func:`read_run` reads a run folder's (or a results.json file's) results; :func:`compare_runs`
gathers several; :func:`markdown` and :func:`compare_html` render them (one row per cell, one
column per run). ``steerscope compare`` and ``benchmarks/families_table.py`` use them.
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from steerscope.errors import SteerscopeError
from steerscope.results_schema import side_labels, upgrade_results

RETENTION = 0.9  # "keeps the effect": both sides' retention at least this
MISSING = "—"
RESULT_SECTIONS = ("model", "steering", "cosine", "circuits", "overlap", "interchange",
                   "edge_types", "freeze", "svv", "sparsify")
# a section in a shape these cells cannot read (an older format) gives MISSING, not a crash
SHAPE_ERRORS = (AttributeError, IndexError, KeyError, TypeError, ValueError,
                ZeroDivisionError)


def _fmt(x, spec: str = ".2f") -> str:
    return MISSING if x is None else format(x, spec)


def steering_cells(res: dict) -> dict[str, str]:
    """``{side label: "none / dim / ntp / po"}`` behaviour-rate cells (results.json's
    ``behaviour_rate``: the present side steered with α < 0 to remove the behaviour, the
    absent side with α > 0 to induce it), ``methods`` naming the
    rows, and ``{side label + " loops": ...}`` the fraction of repetition loops among the same
    completions when results.json has it; likewise ``coherent rate`` (the behaviour rate among
    coherent completions), ``fluency``, ``ce_reference`` and, under ``evaluation.alpha: auto``,
    the chosen ``α``."""
    st = res.get("steering")
    if not st:
        return {}
    methods = list(st)
    labels = side_labels(res)
    sides = {"present": labels["present"], "absent": labels["absent"]}  # results.json keys
    cells = {label: " / ".join(_fmt(st[m][side].get("behaviour_rate")) for m in methods)
             for side, label in sides.items()} | {"methods": " / ".join(methods)}
    for side, label in sides.items():
        loops = [st[m][side].get("repetition_rate") for m in methods]
        if any(v is not None for v in loops):
            cells[f"{label} loops"] = " / ".join(_fmt(v) for v in loops)
        # the coherence columns (docs/results.md), when results.json has them
        for key, name in (("alpha", "α"), ("coherent_behaviour_rate", "coherent rate"),
                          ("fluency", "fluency"), ("ce_reference", "ce_reference")):
            vals = [st[m][side].get(key) for m in methods]
            if key == "alpha" and not res.get("alpha_chosen"):
                continue  # a fixed α: the same in every run of a config
            if any(v is not None for v in vals):
                cells[f"{label} {name}"] = " / ".join(_fmt(v) for v in vals)
    return cells


def cosine_cells(res: dict) -> dict[str, str]:
    """``{"a–b": cosine}`` for each pair of vectors."""
    cos = res.get("cosine")
    if not cos:
        return {}
    ms, mat = cos["methods"], cos["matrix"]
    return {f"{a}–{b}": _fmt(mat[i][j]) for i, a in enumerate(ms) for j, b in enumerate(ms)
            if i < j}


def circuit_cells(res: dict) -> dict[str, str]:
    """``{method: "edges of total (percent)"}``: each vector's minimum faithful circuit."""
    out = {}
    for m, c in res.get("circuits", {}).items():
        n, total = c.get("min_faithful_size"), c.get("total_edges")
        out[m] = (f"{n:,} of {total:,} ({100 * n / total:.1f}%)" if n and total
                  else f"none ≥ {c.get('threshold', MISSING)} of {total}")
    return out


def matrix_cell(block: dict | None, key: str = "matrix") -> str:
    """A square matrix as ``"a: x y; b: x y"`` (one row per method)."""
    if not block:
        return MISSING
    ms, mat = block["methods"], block[key]
    return "; ".join(f"{a}: " + " ".join(_fmt(v) for v in row) for a, row in zip(ms, mat))


def overlap_cell(overlap: dict | None) -> str:
    """The overlap matrix at the first size (each method's minimal circuit by default)."""
    if not overlap or not overlap.get("by_size"):
        return MISSING
    return matrix_cell({"methods": overlap["methods"],
                        "matrix": overlap["by_size"][0]["matrix"]})


def edge_type_cells(res: dict) -> dict[str, str]:
    """``{method: "top-N: q / k / v / mlp / logits"}`` percentages of the top edges."""
    return {m: f"top-{e['top_n']}: " + " / ".join(
        f"{100 * e['fractions'].get(k, 0.0):.0f}" for k in ("q", "k", "v", "mlp", "logits"))
        for m, e in res.get("edge_types", {}).items()}


def freeze_cells(res: dict) -> dict[str, str]:
    """``{mode: mean drop}`` (with each side's loop rate when results.json has it)."""
    out = {}
    for mode, v in res.get("freeze", {}).items():
        if mode == "none":
            continue
        cell = _fmt(v.get("mean_drop"), ".1f")
        loops = tuple((v.get(side) or {}).get("repetition_rate") for side in ("present", "absent"))
        if any(x is not None for x in loops):
            cell += f" (loops {_fmt(loops[0])} / {_fmt(loops[1])})"
        out[mode] = cell
    return out


def svv_cells(res: dict, n_heads: int = 2, n_tokens: int = 6) -> dict[str, str]:
    """``{method: "head: tokens; head: tokens"}``: the top svv heads and their top tokens."""
    return {m: "; ".join(f"{h['head']}: {', '.join(h['tokens'][:n_tokens])}"
                         for h in heads[:n_heads])
            for m, heads in res.get("svv", {}).items()}


def sparsity_at_retention(points: list[dict], level: float = RETENTION) -> float | None:
    """The highest sparsity whose present and absent retention are both ≥ ``level``."""
    ok = [p["sparsity"] for p in points
          if (p.get("present_retention") or 0) >= level
          and (p.get("absent_retention") or 0) >= level]
    return max(ok) if ok else None


def sparsity_cells(res: dict) -> dict[str, str]:
    """``{method: "rule sparsity, ..."}``: :func:`sparsity_at_retention` per rule."""
    out = {}
    for m, rules in res.get("sparsify", {}).items():
        if m == "iou":
            continue
        out[m] = ", ".join(f"{rule} {_fmt(sparsity_at_retention(pts), '.0%')}"
                           for rule, pts in rules.items())
    return out


def _tolerant(cells: Callable[[], Any], empty: Any) -> Any:
    """``cells()``, or ``empty`` when the section has a shape the cells cannot read."""
    try:
        return cells()
    except SHAPE_ERRORS:
        return empty


def summarise(res: dict) -> dict:
    """Every headline cell that one run's results.json fills (docs/report.md); a results
    file of an earlier format is read under today's keys
    (:func:`~steerscope.results_schema.upgrade_results`)."""
    res = upgrade_results(res)
    model = res.get("model") if isinstance(res.get("model"), dict) else {}
    return {
        "model": model.get("id"), "steering_layer": model.get("steering_layer"),
        "steering": _tolerant(lambda: steering_cells(res), {}),
        "cosine": _tolerant(lambda: cosine_cells(res), {}),
        "circuits": _tolerant(lambda: circuit_cells(res), {}),
        "overlap": _tolerant(lambda: overlap_cell(res.get("overlap")), MISSING),
        "interchange": _tolerant(lambda: matrix_cell(res.get("interchange")), MISSING),
        "edge_types (q/k/v/mlp/logits %)": _tolerant(lambda: edge_type_cells(res), {}),
        "freeze mean drop": _tolerant(lambda: freeze_cells(res), {}),
        "svv": _tolerant(lambda: svv_cells(res), {}),
        f"sparsity at {RETENTION:.0%} retention": _tolerant(lambda: sparsity_cells(res), {}),
    }


def read_run(path: str | os.PathLike) -> tuple[Path, dict]:
    """``(results.json path, results)`` of a run folder or a results.json file; one-line
    errors for a missing file, malformed JSON, or JSON that is not a results object."""
    from steerscope.safe_files import read_json_file

    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        raise SteerscopeError(f"{path} is not a run folder (no results.json)",
                              "pass run folders written by 'steerscope run' or 'steerscope "
                              "demo', or their results.json files")
    res = upgrade_results(read_json_file(file, "results file"))  # an older run: today's keys
    if not isinstance(res, dict):
        raise SteerscopeError(f"{file} holds a JSON {type(res).__name__}, not a results "
                              "object", "pass a run's results.json (rerun 'steerscope run' "
                                        "with the run's config to rewrite it)")
    if not any(k in res for k in RESULT_SECTIONS):
        raise SteerscopeError(f"{file} has none of the results sections "
                              f"({', '.join(RESULT_SECTIONS)})",
                              "pass a run's results.json (docs/results.md)")
    return file, res


def compare_runs(paths: list, names: list[str] | None = None) -> dict[str, dict]:
    """``{column name: {"path", "behaviour", cells of summarise}}`` for run folders (or
    results.json files) ``paths``; column names default to the run folders' names (made
    unique). Every path is read before any cell is computed."""
    if not paths:
        raise SteerscopeError("no runs given", "pass one or more run folders")
    if names is not None and len(names) != len(paths):
        raise SteerscopeError(f"{len(names)} names for {len(paths)} runs",
                              "give one name per run")
    runs = [read_run(p) for p in paths]
    if names is None:
        names = []
        for file, _ in runs:
            base = file.parent.name or str(file.parent)
            name, i = base, 2
            while name in names:
                name, i = f"{base} ({i})", i + 1
            names.append(name)
    elif len(set(names)) != len(names):
        raise SteerscopeError("two runs have the same name", "give each run its own name")
    return {name: {"path": str(file), "behaviour": side_labels(res)["behaviour"],
                   **summarise(res)} for name, (file, res) in zip(names, runs)}


def table_rows(summaries: dict[str, dict]) -> list[tuple[str, list[str]]]:
    """``(row label, one cell per run)``: each scalar cell is a row, each cell dict a row per
    key (the union over the runs; "—" where a run lacks it). The ``path`` is not a row."""
    rows = []
    keys = [k for k in next(iter(summaries.values())) if k != "path"]
    for key in keys:
        subkeys = sorted({k for s in summaries.values() if isinstance(s.get(key), dict)
                          for k in s[key]})
        if not subkeys:
            rows.append((key, [MISSING if s.get(key) in (None, {}) else str(s[key])
                               for s in summaries.values()]))
        for sub in subkeys:
            rows.append((f"{key}: {sub}", [str((s.get(key) or {}).get(sub, MISSING))
                                           for s in summaries.values()]))
    return rows


def markdown(summaries: dict[str, dict]) -> str:
    """One row per cell, one column per run (a markdown table; ``|`` in a cell escaped)."""
    def cell(x: str) -> str:
        return x.replace("|", "\\|")

    names = list(summaries)
    lines = ["| | " + " | ".join(cell(n) for n in names) + " |",
             "|---|" + "---|" * len(names)]
    lines += [f"| {cell(label)} | " + " | ".join(cell(v) for v in values) + " |"
              for label, values in table_rows(summaries)]
    return "\n".join(lines)


def compare_html(summaries: dict[str, dict], title: str = "steerscope compare") -> str:
    """A self-contained HTML page (no external resources) of the table, every text
    escaped."""
    from steerscope.report.html import CSS

    e = html.escape
    head = "".join(f"<th>{e(n)}</th>" for n in summaries)
    paths = "".join(f"<td class=\"l\">{e(s['path'])}</td>" for s in summaries.values())
    body = "".join(f"<tr><th class=\"l\">{e(label)}</th>"
                   + "".join(f"<td class=\"l\">{e(v)}</td>" for v in values) + "</tr>"
                   for label, values in table_rows(summaries))
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{e(title)}'
            f"</title><style>{CSS}</style></head><body><h1>{e(title)}</h1>"
            f'<table><tr><th class="l"></th>{head}</tr>'
            f'<tr><th class="l">results file</th>{paths}</tr>{body}</table>'
            "<p class=\"meta\">Each cell is a key of the run's results.json (docs/results.md, "
            "docs/report.md); — marks a figure the run lacks.</p></body></html>\n")


def write_compare_html(summaries: dict[str, dict], path: str | os.PathLike) -> Path:
    """Write :func:`compare_html` to ``path`` atomically; returns the path."""
    from steerscope.artifacts import atomic_write

    text = compare_html(summaries)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
