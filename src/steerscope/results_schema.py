"""The ``results.json`` contract (docs/results.md), below both the pipeline that writes the
file and the report that reads it.

:func:`check_results` checks the documented shape of every section present and raises one
:class:`~steerscope.errors.SteerscopeError` naming the first mismatch; :func:`relative_to_run`
and :func:`resolve_path` turn paths inside the run folder into relative ones and back.
:data:`SECTION_STAGE` names the pipeline stage that fills each section.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from steerscope.errors import SteerscopeError

FORMAT_VERSION = 1
# section -> the stage that fills it (for "not run" messages)
SECTION_STAGE = {
    "behaviour": "data", "data": "data", "model": "model", "vectors": "vectors", "steering": "evaluation", "cosine": "evaluation",
    "circuits": "circuits", "overlap": "circuits", "interchange": "circuits",
    "edge_types": "patching", "freeze": "freeze", "svv": "svv", "sparsify": "sparsify",
    "alpha_curve": "strength", "alpha_chosen": "strength",
}
# the strength sweep's numbers per alpha_curve entry (docs/results.md)
CURVE_NUMBERS = ("alpha", "behaviour_rate", "repetition_rate", "coherent_share",
                 "coherent_success")


def relative_to_run(obj: Any, run_dir: Path) -> Any:
    """``obj`` with every string that is an absolute path inside ``run_dir`` made relative
    to it (POSIX form), so a moved or copied run folder keeps a valid, identical results.json;
    paths outside the run folder (e.g. a local model source) stay absolute."""
    if isinstance(obj, dict):
        return {k: relative_to_run(v, run_dir) for k, v in obj.items()}
    if isinstance(obj, list):
        return [relative_to_run(v, run_dir) for v in obj]
    if isinstance(obj, str) and obj.startswith("/"):
        try:
            return Path(obj).relative_to(run_dir).as_posix()
        except ValueError:
            return obj
    return obj


def resolve_path(results_file: str | os.PathLike, path: str) -> Path:
    """A path read from results.json as a usable path: relative ones are relative to the
    folder holding results.json (the run folder)."""
    return Path(results_file).parent / path


# --- the contract ---------------------------------------------------------------------------
def _need(cond: bool, where: str, what: str) -> None:
    if not cond:
        raise SteerscopeError(f"results.json: {where} {what}", "see docs/results.md")


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _num_or_none(x) -> bool:
    return x is None or _num(x)


def _square(obj: dict, where: str) -> None:
    _need(isinstance(obj, dict) and isinstance(obj.get("methods"), list), where,
          "needs a 'methods' list")
    m = obj.get("matrix")
    n = len(obj["methods"])
    _need(isinstance(m, list) and len(m) == n and all(isinstance(r, list) and len(r) == n
                                                      for r in m), where,
          f"needs an {n}x{n} 'matrix'")
    _need(all(_num_or_none(x) for r in m for x in r), where, "matrix must hold numbers")


def check_results(results: dict) -> list[str]:
    """Check every section present against docs/results.md; returns the result sections
    present (the run metadata ``behaviour`` is checked, ``data`` not; neither is listed); raises
    a one-line error naming the first mismatch."""
    _need(isinstance(results, dict), "the file", "must hold a JSON object")
    present = []
    if "behaviour" in results:
        b = results["behaviour"]
        _need(isinstance(b, dict) and isinstance(b.get("name"), str)
              and isinstance(b.get("definition"), dict), "behaviour",
              "needs 'name' (string) and 'definition' (object)")  # run metadata, like 'data'
    if "model" in results:
        m = results["model"]
        for k in ("id", "revision", "architecture", "path", "steering_layer"):
            _need(k in m, "model", f"lacks '{k}'")
        present.append("model")
    if "vectors" in results:
        for name, v in results["vectors"].items():
            _need(isinstance(v.get("path"), str) and isinstance(v.get("layer"), int),
                  f"vectors.{name}", "needs 'path' (string) and 'layer' (int)")
        present.append("vectors")
    if "steering" in results:
        _need("none" in results["steering"], "steering", "lacks the unsteered row 'none'")
        for name, row in results["steering"].items():
            for s in ("harmful", "harmless"):
                cell = row.get(s)
                _need(isinstance(cell, dict) and _num(cell.get("asr"))
                      and _num(cell.get("mean_refusal_score")), f"steering.{name}.{s}",
                      "needs numbers 'asr' and 'mean_refusal_score'")
        present.append("steering")
    if "cosine" in results:
        _square(results["cosine"], "cosine")
        present.append("cosine")
    if "circuits" in results:
        for name, c in results["circuits"].items():
            w = f"circuits.{name}"
            _need(isinstance(c.get("total_edges"), int), w, "needs int 'total_edges'")
            curve = c.get("faithfulness_curve")
            _need(isinstance(curve, list) and all(isinstance(p, list) and len(p) == 2
                                                  and all(_num(x) for x in p) for p in curve),
                  w, "needs 'faithfulness_curve' as [size, faithfulness] pairs")
            _need(c.get("min_faithful_size") is None or isinstance(c["min_faithful_size"], int),
                  w, "needs 'min_faithful_size' (int or null)")
            for k in ("complement_faithfulness", "random_faithfulness"):
                _need(k in c and _num_or_none(c[k]), w, f"needs '{k}' (number or null)")
        present.append("circuits")
    if "overlap" in results:
        o = results["overlap"]
        _need(isinstance(o.get("by_size"), list) and isinstance(o.get("methods"), list),
              "overlap", "needs 'methods' and 'by_size'")
        for i, item in enumerate(o["by_size"]):
            _need(isinstance(item.get("size"), int), f"overlap.by_size[{i}]", "needs int 'size'")
            _square({"methods": o["methods"], "matrix": item.get("matrix")},
                    f"overlap.by_size[{i}]")
        present.append("overlap")
    if "interchange" in results:
        _square(results["interchange"], "interchange")
        present.append("interchange")
    if "edge_types" in results:
        for name, e in results["edge_types"].items():
            w = f"edge_types.{name}"
            _need(isinstance(e.get("top_n"), int), w, "needs int 'top_n'")
            _need(isinstance(e.get("fractions"), dict)
                  and all(_num(x) for x in e["fractions"].values()), w,
                  "needs 'fractions' {type: number}")
        present.append("edge_types")
    if "freeze" in results:
        for mode, f in results["freeze"].items():
            for k in ("harmful_asr", "harmless_asr", "mean_drop"):
                _need(_num_or_none(f.get(k)) and k in f, f"freeze.{mode}", f"needs '{k}'")
        present.append("freeze")
    if "svv" in results:
        for name, heads in results["svv"].items():
            _need(isinstance(heads, list), f"svv.{name}", "must be a list of heads")
            for i, h in enumerate(heads):
                _need(isinstance(h.get("head"), str) and _num(h.get("score"))
                      and isinstance(h.get("tokens"), list), f"svv.{name}[{i}]",
                      "needs 'head' (string), 'score' (number), 'tokens' (list)")
        present.append("svv")
    if "sparsify" in results:
        sp = results["sparsify"]
        for name, rules in sp.items():
            if name == "iou":
                continue
            for rule, points in rules.items():
                w = f"sparsify.{name}.{rule}"
                _need(isinstance(points, list) and all(
                    _num(p.get("sparsity")) and _num_or_none(p.get("harmful_asr"))
                    and _num_or_none(p.get("harmless_asr")) for p in points), w,
                    "needs points {sparsity, harmful_asr, harmless_asr}")
        for i, r in enumerate(sp.get("iou", [])):
            _need(isinstance(r.get("pair"), list) and len(r["pair"]) == 2 and _num(r.get("level"))
                  and _num(r.get("iou")) and _num_or_none(r.get("p_value")),
                  f"sparsify.iou[{i}]", "needs level, pair [a, b], iou, p_value")
        present.append("sparsify")
    if "alpha_curve" in results:
        curve = results["alpha_curve"]
        _need(isinstance(curve, list), "alpha_curve", "must be a list of entries")
        for i, e in enumerate(curve):
            _need(isinstance(e, dict) and isinstance(e.get("method"), str)
                  and e.get("use") in ("remove", "induce")
                  and all(_num(e.get(k)) for k in CURVE_NUMBERS)
                  and _num_or_none(e.get("fluency")) and _num_or_none(e.get("ce_reference")),
                  f"alpha_curve[{i}]", "needs method, use (remove | induce) and numbers "
                  + ", ".join(CURVE_NUMBERS) + " (fluency, ce_reference: number or null)")
        present.append("alpha_curve")
    if "alpha_chosen" in results:
        for name, uses in results["alpha_chosen"].items():
            for use, c in uses.items():
                _need(isinstance(c, dict) and _num(c.get("alpha")), f"alpha_chosen.{name}.{use}",
                      "needs a number 'alpha'")
        present.append("alpha_chosen")
    return present
