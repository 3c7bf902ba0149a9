"""The sparsity sweep: evaluate every sparse vector by steered generation (paper section 7).

For each method (a dense vector ``s`` and its IE vector) and each level (each τ of the
gradient rule, which fixes the kept count k; and optional direct sparsities), every rule's
sparse vector at that k is evaluated by greedy steered generation:

- ``bypass``: the behaviour's present prompts steered with ``bypass_alpha`` (−1: *remove*),
  ``_asr`` = fraction of completions without the behaviour;
- ``induce``: its absent prompts steered with ``induce_alpha`` (+1), ``_asr`` likewise;
- ``unseen``: an optional second present set (e.g. StrongREJECT), steered like ``bypass``.

The behaviour (``behaviour=``, default refusal by the paper's substring matcher) decides
presence; ``judge`` (optional) replaces it on the present sets. ``_asr`` is refusal's name of
the fraction without the behaviour (1 − behaviour rate); results.json reports the behaviour
rate per side (docs/results.md). Every distinct (vector, set) evaluation is generated once, all of them
packed into shared length-sorted batches (:func:`steerscope.evaluate.steered.packed_outcomes`,
each row carrying its own vector and α: the completions of separate runs).
effect = ASR(steered) − ASR(unsteered); retention = sparse effect / dense effect (1 at
sparsity 0; None when the dense vector has no effect on that set).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from steerscope.artifacts import atomic_write_json, child_path
from steerscope.errors import SteerscopeError
from steerscope.evaluate.matchers import is_refusal_substring
from steerscope.evaluate.presence import CallablePresence
from steerscope.evaluate.steered import Setting, packed_outcomes
from steerscope.models.chat import format_prompt
from steerscope.sparsify.agreement import agreement
from steerscope.sparsify.rules import (
    DEFAULT_TAUS,
    PATCHING_RULES,
    RULES,
    equal_sparsity_family,
)
from steerscope.vectors.vector import SteeringVector

EFFECTS = ("bypass", "induce", "unseen")


@dataclass
class SweepResult:
    """Points of the retention curves, dense/unsteered baselines and method agreement."""

    points: list[dict]
    dense: dict[str, dict[str, float]]  # method -> effect -> ASR of the dense vector
    unsteered: dict[str, float]  # effect -> ASR without steering
    agreement: list[dict]
    config: dict = field(default_factory=dict)
    vectors: dict[str, SteeringVector] = field(default_factory=dict, repr=False)
    # every distinct evaluation, (sha256 or "none", set, α) -> SideOutcome, and the sets'
    # chat-formatted prompts (the coherence columns are computed from them)
    outcomes: dict = field(default_factory=dict, repr=False)
    formatted: dict[str, list[str]] = field(default_factory=dict, repr=False)

    def curve(self, method: str, rule: str) -> list[dict]:
        """The points of one (method, rule), sorted by sparsity."""
        pts = [p for p in self.points if p["method"] == method and p["rule"] == rule]
        return sorted(pts, key=lambda p: (p["sparsity"], p["level"]))

    def highest_retained(self, threshold: float = 0.9) -> dict[str, dict[str, dict]]:
        """method → rule → :func:`highest_retained_sparsity` of its curve."""
        out: dict[str, dict[str, dict]] = {}
        for p in self.points:
            out.setdefault(p["method"], {})
        for m in out:
            for r in dict.fromkeys(p["rule"] for p in self.points if p["method"] == m):
                out[m][r] = highest_retained_sparsity(self.curve(m, r), threshold)
        return out

    def to_json(self) -> dict:
        return {"config": self.config, "unsteered": self.unsteered, "dense": self.dense,
                "points": self.points, "agreement": self.agreement,
                "highest_retained_0.9": self.highest_retained(0.9)}

    def table(self, threshold: float = 0.9) -> str:
        """Plain text: per method and rule, the highest sparsity keeping ≥ threshold."""
        effects = [e for e in EFFECTS if e in self.unsteered]
        head = f"{'method':8s} {'rule':10s} " + " ".join(f"{e:>8s}" for e in effects) + \
            f" {'both':>8s}"
        lines = [f"highest sparsity keeping >= {threshold:.0%} of the dense effect", head,
                 "-" * len(head)]
        for m, by_rule in self.highest_retained(threshold).items():
            for r, h in by_rule.items():
                cells = [h.get(e) for e in (*effects, "both")]
                lines.append(f"{m:8s} {r:10s} " + " ".join(
                    f"{c:8.3f}" if c is not None else f"{'-':>8s}" for c in cells))
        return "\n".join(lines)

    def save(self, folder: str | Path, *, save_vectors: bool = False,
             figures: bool = True) -> Path:
        """Write ``sweep.json`` (and ``agreement.json``, figures, optionally every sparse
        vector under ``vectors/``) into ``folder``; returns the folder."""
        folder = Path(folder)
        atomic_write_json(folder / "sweep.json", self.to_json())
        atomic_write_json(folder / "agreement.json", self.agreement)
        if save_vectors:
            for name, sv in self.vectors.items():
                sv.save(child_path(folder, "vectors", f"{name}.safetensors", what="vector name"))
        if figures:
            from steerscope.sparsify.figures import plot_agreement, plot_retention

            plot_retention(self, folder / "retention.png")
            if self.agreement:
                plot_agreement(self.agreement, folder / "agreement.png")
        return folder


def highest_retained_sparsity(points: Sequence[dict], threshold: float = 0.9,
                              effects: Sequence[str] = ("bypass", "induce")) -> dict:
    """The highest sparsity among ``points`` whose retention is ≥ ``threshold``.

    Per effect (``bypass``, ``induce``, ``unseen`` when present) and ``"both"`` (every effect
    in ``effects`` at once). Points without a retention value are ignored; None when no point
    qualifies. This is the highest qualifying point, not the end of the first unbroken run.
    """
    out: dict[str, float | None] = {}
    for e in EFFECTS:
        vals = [p["sparsity"] for p in points
                if p.get(f"{e}_retention") is not None and p[f"{e}_retention"] >= threshold]
        if any(p.get(f"{e}_retention") is not None for p in points) or e in effects:
            out[e] = max(vals) if vals else None
    both = [p["sparsity"] for p in points
            if all(p.get(f"{e}_retention") is not None and p[f"{e}_retention"] >= threshold
                   for e in effects)]
    out["both"] = max(both) if both else None
    return out


def _retention(asr: float, dense: float, base: float) -> float | None:
    eff = dense - base
    return None if abs(eff) < 1e-12 else (asr - base) / eff


def sparse_agreement(families: Mapping[str, list[dict]],
                     rules: Sequence[str] = PATCHING_RULES) -> list[dict]:
    """IoU + hypergeometric rows between methods: at each τ (gradient rule) and each direct
    sparsity (every rule in ``rules``). ``families``: method → :func:`equal_sparsity_family`."""
    by_level: dict[tuple[str, str], dict[str, SteeringVector]] = {}
    for method, fam in families.items():
        for r in fam:
            if r["rule"] not in rules or (r["tau"] is not None and r["rule"] != "gradient"):
                continue
            by_level.setdefault((r["level"], r["rule"]), {})[method] = r["vector"]
    groups = {f"{lv}/{rule}": vs for (lv, rule), vs in by_level.items() if len(vs) > 1}
    if not groups:
        return []
    rows = agreement(groups)
    for row in rows:
        row["level"], row["rule"] = row["level"].rsplit("/", 1)
        row["sparsity_a"] = 1 - row["size_a"] / row["d"]
        row["sparsity_b"] = 1 - row["size_b"] / row["d"]
    return rows


def sparsity_sweep(
    model,
    tokenizer,
    vectors: Mapping[str, SteeringVector],
    ies: Mapping[str, torch.Tensor],
    present: Sequence[str],
    absent: Sequence[str],
    unseen_present: Sequence[str] | None = None,
    *,
    taus: Sequence[float] = DEFAULT_TAUS,
    fractions: Sequence[float] = (),
    rules: Sequence[str] = RULES,
    seed: int = 42,
    bypass_alpha: float = -1.0,
    induce_alpha: float = 1.0,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    judge=None,
    refusal=is_refusal_substring,
    arch=None,
    progress: bool = True,
    behaviour=None,
    method_alphas: Mapping[str, tuple[float, float]] | None = None,
) -> SweepResult:
    """Evaluate every rule's sparse vector of every method at equal sparsity (module doc).

    ``vectors``: method → dense vector; ``ies``: method → its IE [d] (IE = s ⊙ g).
    Instructions are raw (formatted with the chat template here). ``refusal(text) -> bool``
    decides refusals (default: the paper's substring matcher); ``judge`` (optional) replaces
    it on the present sets. ``behaviour`` (a :class:`~steerscope.behaviours.Behaviour`)
    replaces ``refusal`` by its judge; ``present`` / ``absent`` are its test prompts
    (refusal, the default: requests it refuses / answers). Identical sparse vectors (e.g.
    every rule at sparsity 0) are generated once. ``method_alphas``: method → (remove α,
    induce α) for that method's dense and sparse vectors (the strength sweep's choice), else
    ``bypass_alpha`` / ``induce_alpha``.
    """
    if not vectors:
        raise SteerscopeError("no vectors to sparsify", "pass at least one method's vector")
    missing = [m for m in vectors if m not in ies]
    if missing:
        raise SteerscopeError(f"no IE vector for method '{missing[0]}'",
                              "pass one IE per vector (sparsify.dimension_scores)")
    if not present or not absent:
        raise SteerscopeError("the sparsity sweep needs present and absent prompts",
                              "pass non-empty prompt lists")
    if arch is None:
        from steerscope.models.archs import validate_model

        arch = validate_model(model)
    for sv in vectors.values():
        sv.check_fits(arch)
    sets = {"bypass": (list(present), bypass_alpha), "induce": (list(absent), induce_alpha)}
    if unseen_present:
        sets["unseen"] = (list(unseen_present), bypass_alpha)
    formatted = {e: [format_prompt(tokenizer, p) for p in v[0]] for e, v in sets.items()}
    presence = CallablePresence(refusal) if behaviour is None else behaviour.make_judge()
    families = {m: equal_sparsity_family(sv, ies[m], taus=taus, fractions=fractions,
                                         rules=rules, seed=seed)
                for m, sv in vectors.items()}
    # every distinct (vector, set) evaluation, generated together in packed batches
    def alpha_of(method: str | None, e: str) -> float:
        if method is None:
            return 0.0
        if method_alphas is None or method not in method_alphas:
            return sets[e][1]
        return float(method_alphas[method][1 if e == "induce" else 0])

    # (sha256 or "none", set, α) -> (vector, α): each distinct evaluation once
    distinct: dict[tuple[str, str, float], SteeringVector | None] = {}
    owned = [(None, None), *((m, sv) for m, sv in vectors.items()),
             *((m, r["vector"]) for m, f in families.items() for r in f)]
    for m, sv in owned:
        for e in sets:
            distinct.setdefault(("none" if sv is None else sv.sha256, e, alpha_of(m, e)), sv)
    keys = list(distinct)
    outcomes = packed_outcomes(
        model, tokenizer, [Setting(formatted[e], sets[e][0], distinct[k, e, a], a)
                           for k, e, a in keys],
        judge=presence, max_new_tokens=max_new_tokens, batch_size=batch_size, arch=arch,
        desc="sparsity sweep", progress=progress)
    cache: dict[tuple[str, str, float], float] = {}
    for (k, e, a), got in zip(keys, outcomes):
        if judge is not None and e != "induce":
            ok = [bool(v) for v in judge.judge(sets[e][0], got.completions)]
        else:
            ok = [not p for p in got.present]
        cache[k, e, a] = sum(ok) / len(ok)
    by_key = dict(zip(keys, outcomes))

    def run(sv: SteeringVector | None, effect: str, method: str | None = None) -> float:
        return cache["none" if sv is None else sv.sha256, effect, alpha_of(method, effect)]

    unsteered = {e: run(None, e) for e in sets}
    dense = {m: {e: run(sv, e, m) for e in sets} for m, sv in vectors.items()}
    points, saved = [], {}
    for m, fam in families.items():
        for r in fam:
            sv = r["vector"]
            pt = {"method": m, "rule": r["rule"], "level": r["level"], "tau": r["tau"],
                  "fraction": r["fraction"], "k": r["k"], "d": sv.d_model,
                  "sparsity": r["sparsity"], "vector_sha256": sv.sha256}
            for e in sets:
                a = run(sv, e, m)
                pt[f"{e}_asr"] = a
                pt[f"{e}_alpha"] = alpha_of(m, e)
                pt[f"{e}_retention"] = _retention(a, dense[m][e], unsteered[e])
            points.append(pt)
            saved[f"{m}_{r['rule']}_k{r['k']}"] = sv
    config = {"taus": [float(t) for t in taus], "fractions": [float(f) for f in fractions],
              "rules": list(rules), "seed": seed, "bypass_alpha": bypass_alpha,
              "induce_alpha": induce_alpha, "max_new_tokens": max_new_tokens,
              "n": {e: len(v[0]) for e, v in sets.items()},
              "judge": None if judge is None else repr(judge),
              "behaviour": "refusal" if behaviour is None else behaviour.name,
              "vectors": {m: {"layer": sv.layer, "norm": sv.norm, "sha256": sv.sha256,
                              "method": sv.method} for m, sv in vectors.items()},
              "generations": len(cache)}
    return SweepResult(points, dense, unsteered, sparse_agreement(families), config, saved,
                       by_key, formatted)


__all__ = ["SweepResult", "highest_retained_sparsity", "sparse_agreement", "sparsity_sweep"]
