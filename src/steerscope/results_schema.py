"""The ``results.json`` contract (docs/results.md), below both the pipeline that writes the
file and the report that reads it.

Behaviour-neutral words throughout: the two prompt sides are ``present`` / ``absent``, the
rate is the ``behaviour_rate`` (:data:`SIDES`). Runs written before this vocabulary used
refusal's words (``harmful`` / ``harmless`` sets, ``asr`` = 1 − rate, ``refusal_rate``,
``mean_refusal_score`` ...); :func:`upgrade_results`, :func:`upgrade_row` and
:func:`upgrade_prompts` map them to today's keys (the one place that knows the old names), so
every reader (the report, ``steerscope compare``, the explorer, a reused stage's files) reads
old runs too.

:func:`check_results` checks the documented shape of every section present and raises one
:class:`~steerscope.errors.SteerscopeError` naming the first mismatch; :func:`relative_to_run`
and :func:`resolve_path` turn paths inside the run folder into relative ones and back.
:data:`SECTION_STAGE` names the pipeline stage that fills each section.
"""

from __future__ import annotations

import functools
import inspect
import os
from pathlib import Path
from typing import Any

from steerscope.errors import SteerscopeError

# 3: circuits.position_metrics / min_size_by_metric keyed present/absent; 2: present/absent
# sides and behaviour_rate (1: refusal's words)
FORMAT_VERSION = 3
SIDES = ("present", "absent")
USE_OF_SIDE = {"present": "remove", "absent": "induce"}  # the use that steers each side
# refusal's words of runs written before format 2 -> today's side names
LEGACY_SIDES = {"harmful": "present", "harmless": "absent"}
# the display words of a run that records no behaviour (a refusal run of an older version)
REFUSAL_LABELS = {"behaviour": "refusal", "present": "harmful", "absent": "harmless"}
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


def side_labels(res: dict) -> dict[str, str]:
    """The display words of the run's behaviour (``behaviour``, ``present``, ``absent``):
    results.json's ``behaviour.definition.labels``, else the behaviour's name and
    present/absent; refusal's words (harmful/harmless) when results.json records no
    behaviour (a refusal run of an older version)."""
    behaviour = res.get("behaviour")
    if not isinstance(behaviour, dict):
        return dict(REFUSAL_LABELS)
    definition = behaviour.get("definition")
    labels = definition.get("labels") if isinstance(definition, dict) else None
    labels = labels if isinstance(labels, dict) else {}
    name = behaviour.get("name")
    defaults = {"behaviour": name if isinstance(name, str) else "—",
                "present": "present", "absent": "absent"}
    return {k: str(labels.get(k) or v) for k, v in defaults.items()}


# --- names of earlier versions --------------------------------------------------------------
# names renamed beyond the side words (refusal's "harmless refusals" of the preference data)
LEGACY_NAMES = {"harmless_refuse": "absent_shown"}


def today_name(name: str) -> str:
    """A keyword, config key or CLI destination of an earlier version in today's words:
    :data:`LEGACY_NAMES`, else refusal's side words replaced part by part
    (``harmful_val`` -> ``present_val``); any other name comes back unchanged."""
    if name in LEGACY_NAMES:
        return LEGACY_NAMES[name]
    return "_".join(LEGACY_SIDES.get(part, part) for part in name.split("_"))


def old_names(name: str) -> list[str]:
    """The names of earlier versions that :func:`today_name` maps to ``name`` (for hidden
    aliases: ``present_val`` -> ``["harmful_val"]``)."""
    sided = "_".join({v: k for k, v in LEGACY_SIDES.items()}.get(p, p) for p in name.split("_"))
    olds = [old for old, new in LEGACY_NAMES.items() if new == name]
    return olds + ([sided] if sided != name else [])


def upgrade_dataset_name(name: str) -> str:
    """A patching dataset name in today's words (``harmful/steered`` -> ``present/steered``)."""
    side, sep, rest = name.partition("/")
    return f"{LEGACY_SIDES.get(side, side)}{sep}{rest}"


def upgrade_keys(mapping: dict, rename=None) -> dict:
    """``mapping`` with each key renamed by ``rename`` (default: refusal's side words as
    present/absent)."""
    rename = rename or (lambda k: LEGACY_SIDES.get(k, k))
    return {rename(k): v for k, v in mapping.items()}


def accepts_old_keywords(func):
    """Decorator: ``func`` also takes its keyword arguments under their names of earlier
    versions (:func:`today_name`: ``harmful=`` for ``present=``, ``harmless_refuse=`` for
    ``absent_shown=``), the one shared alias of the library's public functions; a one-line
    error when a value is given under both names."""
    params = list(inspect.signature(func).parameters)

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        for key in [k for k in kwargs if k not in params]:
            new = today_name(key)
            if new == key or new not in params:
                continue  # not an old name: the function's own TypeError
            if new in kwargs or params.index(new) < len(args):
                raise SteerscopeError(f"{func.__name__}: '{key}' is the old name of '{new}', "
                                      "given twice", f"pass only {new}=")
            kwargs[new] = kwargs.pop(key)
        return func(*args, **kwargs)

    return wrapper


# --- runs written before format 2 ------------------------------------------------------------
def _flip(x):
    """1 − x (an ASR to a behaviour rate), None kept."""
    return None if x is None else 1.0 - x


def upgrade_prompts(prompts: dict) -> dict:
    """A ``prompts.json`` object with today's split keys (``present_train`` ...): files
    written before format 2 named the sides ``harmful_*`` / ``harmless_*``."""
    out = {}
    for key, value in prompts.items():
        side, _, split = key.partition("_")
        out[f"{LEGACY_SIDES.get(side, side)}_{split}" if split else key] = value
    return out


def upgrade_row(row: dict) -> dict:
    """A stored table row (steering or freezing table) in today's keys: ``side`` (from
    ``prompt_set``), ``behaviour_rate`` (from ``refusal_rate`` or 1 − ``asr``),
    ``score_rate``, ``mean_score``, ``judge_rate``; a row of today's format comes back
    unchanged."""
    if "side" in row and "behaviour_rate" in row and "prompt_set" not in row:
        return row
    old = dict(row)
    side = old.pop("side", None) or LEGACY_SIDES.get(old.get("prompt_set"),
                                                      old.get("prompt_set"))
    old.pop("prompt_set", None)
    old.pop("use", None)
    rate = old.pop("behaviour_rate", None)
    rate = old.pop("refusal_rate", rate)
    asr = old.pop("asr", None)
    out = {"side": side, "behaviour_rate": _flip(asr) if rate is None else rate}
    renames = {"score_refusal_rate": "score_rate", "mean_refusal_score": "mean_score",
               "judge_asr": "judge_rate"}
    for k, v in old.items():
        out[renames.get(k, k)] = v
    return out


def _by_side(cells: dict) -> dict:
    return {LEGACY_SIDES.get(k, k): v for k, v in cells.items()}


def _upgrade_steering(steering: dict) -> dict:
    out = {}
    for method, cells in steering.items():
        out[method] = {}
        for side, cell in _by_side(cells).items():
            if not isinstance(cell, dict) or "behaviour_rate" in cell:
                out[method][side] = cell
                continue
            row = upgrade_row({"prompt_set": side, **cell})
            row.pop("side")
            out[method][side] = row
    return out


def _upgrade_freeze(freeze: dict) -> dict:
    out = {}
    for mode, e in freeze.items():
        if not isinstance(e, dict) or any(side in e for side in SIDES):
            out[mode] = e
            continue
        out[mode] = {"mean_drop": e.get("mean_drop")}
        for old, side in LEGACY_SIDES.items():
            out[mode][side] = {"behaviour_rate": _flip(e.get(f"{old}_asr")),
                               "drop": e.get(f"{old}_drop"), "alpha": e.get(f"{old}_alpha"),
                               "repetition_rate": e.get(f"{old}_repetition_rate"),
                               "n": e.get(f"n_{old}")}
    return out


def _upgrade_sparsify(sparsify: dict) -> dict:
    out = {}
    for method, rules in sparsify.items():
        if method == "iou" or not isinstance(rules, dict):
            out[method] = rules
            continue
        out[method] = {}
        for rule, points in rules.items():
            pts = []
            for p in points if isinstance(points, list) else []:
                q = dict(p)
                for old, side in LEGACY_SIDES.items():
                    if f"{old}_asr" in q:
                        q[f"{side}_behaviour_rate"] = _flip(q.pop(f"{old}_asr"))
                    if f"{old}_retention" in q:
                        q[f"{side}_retention"] = q.pop(f"{old}_retention")
                pts.append(q)
            out[method][rule] = pts if isinstance(points, list) else points
    return out


def _upgrade_circuits(circuits: dict) -> dict:
    """Format 2's ``position_metrics`` entries and ``min_size_by_metric`` keyed
    ``harmful`` / ``harmless`` -> ``present`` / ``absent``."""
    out = {}
    for name, entry in circuits.items():
        if isinstance(entry, dict):
            entry = dict(entry)
            if isinstance(entry.get("position_metrics"), list):
                entry["position_metrics"] = [upgrade_keys(p) if isinstance(p, dict) else p
                                             for p in entry["position_metrics"]]
            if isinstance(entry.get("min_size_by_metric"), dict):
                entry["min_size_by_metric"] = {
                    m: upgrade_keys(v) if isinstance(v, dict) else v
                    for m, v in entry["min_size_by_metric"].items()}
        out[name] = entry
    return out


def upgrade_results(results: Any) -> Any:
    """``results`` in today's keys (format 3): a results.json of format 1 (refusal's words:
    ``harmful`` / ``harmless`` cells with ``asr``, ``refusal_rate``, ``mean_refusal_score``,
    ``judge_asr``; ``freeze`` modes with ``harmful_asr`` ...; sparsity points with
    ``harmful_asr`` / ``harmless_asr`` / ``*_retention``) or of format 2 (``circuits``'
    ``position_metrics`` / ``min_size_by_metric`` keyed ``harmful`` / ``harmless``) mapped as
    docs/results.md lists; anything else comes back as it is (today's format unchanged)."""
    if not isinstance(results, dict) or results.get("format_version", 1) >= FORMAT_VERSION:
        return results
    out = dict(results)
    if isinstance(out.get("circuits"), dict):
        out["circuits"] = _upgrade_circuits(out["circuits"])
    if results.get("format_version", 1) >= 2:
        out["format_version"] = FORMAT_VERSION
        return out
    upgrades = {"steering": _upgrade_steering, "freeze": _upgrade_freeze,
                "sparsify": _upgrade_sparsify}
    for key, fn in upgrades.items():
        if isinstance(out.get(key), dict):
            out[key] = fn(out[key])
    data = out.get("data")
    if isinstance(data, dict) and isinstance(data.get("counts"), dict):
        out["data"] = {**data, "counts": upgrade_prompts(data["counts"])}
    out["format_version"] = FORMAT_VERSION
    return out


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
            for s in SIDES:
                cell = row.get(s)
                _need(isinstance(cell, dict) and _num(cell.get("behaviour_rate"))
                      and _num(cell.get("mean_score")), f"steering.{name}.{s}",
                      "needs numbers 'behaviour_rate' and 'mean_score'")
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
            _need(isinstance(f, dict) and "mean_drop" in f and _num_or_none(f["mean_drop"]),
                  f"freeze.{mode}", "needs 'mean_drop'")
            for s in SIDES:
                _need(isinstance(f.get(s), dict) and _num_or_none(f[s].get("behaviour_rate"))
                      and "behaviour_rate" in f[s], f"freeze.{mode}.{s}",
                      "needs 'behaviour_rate'")
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
                    _num(p.get("sparsity")) and _num_or_none(p.get("present_behaviour_rate"))
                    and _num_or_none(p.get("absent_behaviour_rate")) for p in points), w,
                    "needs points {sparsity, present_behaviour_rate, absent_behaviour_rate}")
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
