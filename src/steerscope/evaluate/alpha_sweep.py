"""The steering-strength sweep: behaviour and coherence as a function of α, and ``auto``.

On the **val** prompts, for every vector and use, the sweep steers with every magnitude of a
grid (:data:`DEFAULT_ALPHA_GRID`: multiples of the vector as stored, whose norm convention
makes α = 1 the paper's coefficient): the remove use steers the present-side prompts with
α = −m, the induce use the absent-side prompts with α = +m. Every setting (method, use, α)
is one row of shared packed batches (:func:`steerscope.evaluate.steered.packed_outcomes`:
per-row vectors and alphas; each completion is the one the setting alone gives). Each
setting gives one entry of the ``alpha_curve``: ``method``, ``use``, ``side``, ``alpha``,
``n``, ``behaviour_rate``, ``repetition_rate`` (loops), ``fluency``, ``ce_reference`` and the
coherence counts of :mod:`steerscope.evaluate.coherence` (``coherent_share``,
``coherent_behaviour_rate``, ``coherent_success``). The unsteered model appears once per use
as method ``none`` with α = 0.

``auto`` (:func:`choose_alphas`) picks, per method and use, the smallest |α| whose
``coherent_success`` (the share of ALL completions that are coherent and show the use's
intended outcome: remove = coherent and without the behaviour; induce = coherent and with it)
reaches ``share`` (default :data:`DEFAULT_AUTO_SHARE`) of the best ``coherent_success`` on
the curve. When no α gives any coherent success (best = 0), or the best is no better than
the unsteered model's own coherent success on the same prompts (steering adds nothing: e.g.
a model that already complies with every present-side prompt), the fallback α (the
configured fixed one, the paper's ±1 by default) is kept and the choice says so (``rule:
fallback``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from steerscope.errors import SteerscopeError
from steerscope.evaluate.coherence import (
    DEFAULT_FLUENCY_THRESHOLD,
    ReferenceCE,
    coherence_of,
    completion_ce,
)
from steerscope.evaluate.repetition import repetition_rate
from steerscope.evaluate.steered import Setting, packed_outcomes
from steerscope.generation_sizes import fixed_batch_size
from steerscope.models.chat import format_prompt

# |α| magnitudes swept (× the vector as stored; 1 = the paper's coefficient)
DEFAULT_ALPHA_GRID = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
# auto: the smallest |α| reaching this share of the curve's best coherent success
DEFAULT_AUTO_SHARE = 0.9
USE_SIDES = {"remove": "present", "induce": "absent"}


def check_alpha_grid(grid, key: str = "alpha_grid") -> list[float]:
    """The grid as floats; a one-line error naming ``key`` unless it is a non-empty, strictly
    increasing list of finite positive magnitudes."""
    from steerscope.validation import MAX_ALPHA

    if not isinstance(grid, (list, tuple)) or not grid:
        raise SteerscopeError(f"{key} is empty", f"list |α| magnitudes in {key}, e.g. "
                              f"{' '.join(f'{x:g}' for x in DEFAULT_ALPHA_GRID)}")
    out = []
    for x in grid:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) \
                or not 0 < x <= MAX_ALPHA:
            raise SteerscopeError(f"{key} has {x!r}, not a finite magnitude in (0, {MAX_ALPHA:g}]",
                                  f"list positive |α| values in {key} (the sign comes from the use)")
        out.append(float(x))
    if any(b <= a for a, b in zip(out, out[1:])):
        raise SteerscopeError(f"{key} {out} is not strictly increasing",
                              f"list the magnitudes of {key} in increasing order, each once")
    return out


def check_auto_share(value, key: str = "auto_share") -> float:
    """``value`` as a float in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise SteerscopeError(f"{key} must be in (0, 1], got {value!r}",
                              f"set {key} to e.g. {DEFAULT_AUTO_SHARE}")
    return float(value)


def alpha_curve(model, tokenizer, vectors: Mapping[str, Any], present: Sequence[str],
                absent: Sequence[str], *, grid: Sequence[float] = DEFAULT_ALPHA_GRID,
                judge=None, reference: ReferenceCE | None = None,
                fluency_threshold: float = DEFAULT_FLUENCY_THRESHOLD,
                max_new_tokens: int = 64, batch_size: int | str = 16, arch=None,
                progress: bool | None = None, uses: Sequence[str] = ("remove", "induce"),
                ) -> tuple[list[dict], dict[tuple[str, str, float], list[str]]]:
    """The sweep's entries (module doc) and every setting's completions, keyed (method, use,
    α). ``present`` / ``absent``: raw val prompts (chat-formatted here); ``judge``:
    ``.judge(prompts, responses) -> list[bool]`` (True = behaviour present; default the
    paper's refusal substrings); ``reference``: the ce_reference baseline (None: no
    ce_reference)."""
    grid = check_alpha_grid(list(grid))
    for u in uses:
        if u not in USE_SIDES:
            raise SteerscopeError(f"unknown use '{u}'", "use remove or induce")
    raw = {"present": list(present), "absent": list(absent)}
    for u in uses:
        if not raw[USE_SIDES[u]]:
            raise SteerscopeError(f"the strength sweep needs {USE_SIDES[u]}-side val prompts "
                                  f"for the {u} use", "pass val prompts (data.n_val, --val)")
    formatted = {s: [format_prompt(tokenizer, p) for p in v] for s, v in raw.items()}
    cells: list[tuple[str, str, float, Any]] = [("none", u, 0.0, None) for u in uses]
    for name, sv in vectors.items():
        if arch is not None:
            sv.check_fits(arch)
        for u in uses:
            sign = -1.0 if u == "remove" else 1.0
            cells += [(name, u, sign * m, sv) for m in grid]
    settings = [Setting(formatted[USE_SIDES[u]], raw[USE_SIDES[u]], sv, a)
                for _, u, a, sv in cells]
    outcomes = packed_outcomes(model, tokenizer, settings, judge=judge,
                               max_new_tokens=max_new_tokens, batch_size=batch_size, arch=arch,
                               desc="strength sweep", progress=progress)
    # every completion's CE under the unsteered model, in one pass
    all_prompts = [p for st in settings for p in st.formatted]
    all_outs = [c for got in outcomes for c in got.completions]
    bs = fixed_batch_size(batch_size)
    sums, counts = completion_ce(model, tokenizer, all_prompts, all_outs, arch=arch,
                                 batch_size=bs)  # [total], [total]
    entries, completions, start = [], {}, 0
    for (name, u, a, sv), got in zip(cells, outcomes):
        stop = start + got.n
        coh = coherence_of(got.completions, got.present, sums[start:stop], counts[start:stop],
                           use=u, fluency_threshold=fluency_threshold)
        start = stop
        ce_ref = None if reference is None else reference.delta(
            sv, a, key=None if sv is None else (name, getattr(sv, "sha256", id(sv))))
        entries.append({"method": name, "use": u, "side": USE_SIDES[u], "alpha": a,
                        "n": got.n, "behaviour_rate": got.rate,
                        "repetition_rate": repetition_rate(got.completions),
                        "ce_reference": ce_ref, **coh.to_dict()})
        completions[name, u, a] = got.completions
    return entries, completions


def choose_alphas(entries: Sequence[dict], *, share: float = DEFAULT_AUTO_SHARE,
                  fallback: Mapping[str, float] | None = None) -> dict[str, dict[str, dict]]:
    """Per method (not ``none``) and use: the chosen α (module doc) with the rule that chose
    it: ``{"alpha", "coherent_success", "best_coherent_success", "share", "rule"}``, rule
    ``auto`` or ``fallback`` (no α gives a coherent success, or none does better than the
    unsteered model, method ``none``, on the same prompts). ``fallback``: use → α (default the
    paper's −1 / +1)."""
    check_auto_share(share)
    fallback = {"remove": -1.0, "induce": 1.0, **(fallback or {})}
    curves: dict[tuple[str, str], list[dict]] = {}
    unsteered: dict[str, float] = {}
    for e in entries:
        if e["method"] != "none":
            curves.setdefault((e["method"], e["use"]), []).append(e)
        else:
            unsteered[e["use"]] = e["coherent_success"]
    out: dict[str, dict[str, dict]] = {}
    for (method, use), pts in curves.items():
        pts = sorted(pts, key=lambda e: abs(e["alpha"]))
        best = max(e["coherent_success"] for e in pts)
        if best <= 0 or best <= unsteered.get(use, -1.0):
            pick = {"alpha": float(fallback[use]), "coherent_success": None, "rule": "fallback"}
        else:
            e = next(e for e in pts if e["coherent_success"] >= share * best - 1e-12)
            pick = {"alpha": e["alpha"], "coherent_success": e["coherent_success"],
                    "rule": "auto"}
        out.setdefault(method, {})[use] = {**pick, "best_coherent_success": best,
                                           "share": share}
    return out


def reference_completions(model, tokenizer, absent: Sequence[str], *, max_new_tokens: int = 64,
                          batch_size: int | str = 16, progress: bool | None = None
                          ) -> tuple[list[str], list[str]]:
    """(chat-formatted absent-side prompts, the unsteered model's greedy completions of them):
    the fixed reference text of ``ce_reference``."""
    from steerscope.evaluate.steered import packed_generate

    formatted = [format_prompt(tokenizer, p) for p in absent]
    (outs,) = packed_generate(model, tokenizer, [(formatted, None)],
                              max_new_tokens=max_new_tokens, batch_size=batch_size,
                              desc="reference completions", progress=progress)
    return formatted, list(outs)


def curve_table(entries: Sequence[dict], chosen: Mapping[str, Mapping[str, dict]] | None = None
                ) -> str:
    """The curve as plain text: one line per (method, use, α); ``*`` marks the chosen α."""
    head = (f"{'method':10s} {'use':7s} {'alpha':>7s} {'behav':>6s} {'coh.succ':>8s} "
            f"{'coherent':>8s} {'loops':>6s} {'fluency':>7s} {'ce_ref':>7s}")
    lines = [head, "-" * len(head)]

    def fmt(x, w, p=3):
        return f"{'-':>{w}s}" if x is None else f"{x:{w}.{p}f}"

    for e in entries:
        mark = ""
        if chosen and e["method"] in chosen and \
                chosen[e["method"]].get(e["use"], {}).get("alpha") == e["alpha"]:
            mark = " *"
        lines.append(f"{e['method']:10s} {e['use']:7s} {e['alpha']:7.2f} "
                     f"{e['behaviour_rate']:6.3f} {e['coherent_success']:8.3f} "
                     f"{e['coherent_share']:8.3f} {e['repetition_rate']:6.3f} "
                     f"{fmt(e['fluency'], 7, 2)} {fmt(e['ce_reference'], 7, 3)}{mark}")
    lines.append("(coh.succ: share of completions coherent with the use's intended outcome; "
                 "* = the chosen α)")
    return "\n".join(lines)


__all__ = ["DEFAULT_ALPHA_GRID", "DEFAULT_AUTO_SHARE", "USE_SIDES", "alpha_curve",
           "check_alpha_grid", "check_auto_share", "choose_alphas", "curve_table",
           "reference_completions"]
