"""The steering strength a run uses, per vector and use (``evaluation.alpha``).

``evaluation.alpha``: null (the default) = ``evaluation.bypass_alpha`` / ``induce_alpha`` (the
paper's −1 / +1) for every vector; a positive number m = −m (remove) / +m (induce) for every
vector; ``auto`` = the α the ``strength`` stage's sweep chose per vector and use on the val
prompts (:func:`steerscope.evaluate.alpha_sweep.choose_alphas`). The steering table,
patching, freezing and sparsity all read it through :func:`method_alphas`.
"""

from __future__ import annotations

import math
from typing import Any

from steerscope.errors import SteerscopeError
from steerscope.evaluate.alpha_sweep import check_alpha_grid, check_auto_share
from steerscope.evaluate.coherence import check_fluency_threshold
from steerscope.pipeline.checks import fail
from steerscope.validation import MAX_ALPHA

AUTO = "auto"
STRENGTH_FILE = "strength.json"  # the strength stage's file (reference text, curve, choice)


def check_strength(section) -> None:
    """One-line config errors for ``evaluation.alpha``, ``alpha_grid``, ``auto_share`` and
    ``fluency_threshold`` (no model, no data)."""
    a = section.alpha
    if isinstance(a, str) and a != AUTO:
        fail("evaluation.alpha", f"is '{a}', neither auto nor a number",
             "set evaluation.alpha to auto, a positive number (|α|) or null (bypass_alpha / "
             "induce_alpha)")
    if a is not None and not isinstance(a, str) and (
            not math.isfinite(a) or not 0 < a <= MAX_ALPHA):
        fail("evaluation.alpha", f"must be a finite positive |α| (at most {MAX_ALPHA:g}), got {a!r}",
             "set evaluation.alpha to e.g. 1 (remove steers with -1, induce with +1) or auto")
    for key, check in (("alpha_grid", check_alpha_grid), ("auto_share", check_auto_share),
                       ("fluency_threshold", check_fluency_threshold)):
        try:
            check(getattr(section, key), f"'evaluation.{key}'")
        except SteerscopeError as exc:
            raise SteerscopeError(f"config key {exc}") from None


def fixed_alphas(section) -> dict[str, float]:
    """use → α without a sweep: a number m gives −m / +m; otherwise bypass_alpha /
    induce_alpha."""
    if section.alpha is not None and not isinstance(section.alpha, str):
        return {"remove": -float(section.alpha), "induce": float(section.alpha)}
    return {"remove": float(section.bypass_alpha), "induce": float(section.induce_alpha)}


def method_alphas(cfg, inputs: dict, methods) -> dict[str, tuple[float, float]]:
    """method → (remove α, induce α) of the run: the strength stage's choice under ``auto``,
    else :func:`fixed_alphas` (module doc)."""
    fixed = fixed_alphas(cfg.evaluation)
    chosen: dict[str, Any] = {}
    if cfg.evaluation.alpha == AUTO:
        if "strength" not in inputs:
            raise SteerscopeError("evaluation.alpha is auto but the strength stage did not run",
                                  "run the whole pipeline (or set evaluation.alpha to a number)")
        chosen = inputs["strength"].outputs.get("chosen", {})
    return {m: (float(chosen.get(m, {}).get("remove", {}).get("alpha", fixed["remove"])),
                float(chosen.get(m, {}).get("induce", {}).get("alpha", fixed["induce"])))
            for m in methods}


def reference_ce(lm, inputs: dict, batch_size: int):
    """The run's ce_reference baseline (:class:`~steerscope.evaluate.coherence.ReferenceCE`)
    from the strength stage's reference completions; None when that stage did not run."""
    import json

    from steerscope.evaluate.coherence import ReferenceCE

    if "strength" not in inputs:
        return None
    ref = json.loads(inputs["strength"].path(STRENGTH_FILE).read_text(encoding="utf-8"))
    ref = ref["reference"]
    return ReferenceCE(lm.model, lm.tokenizer, ref["formatted"], ref["completions"],
                       arch=lm.arch, batch_size=batch_size)


def add_coherence(lm, rows: list[dict], *, completions_of, formatted_of, verdicts_of,
                  steering_of, use_of, reference, threshold: float, batch_size: int) -> None:
    """Add the coherence columns (:data:`~steerscope.evaluate.coherence.COHERENCE_KEYS`) to
    every stored table row in place. Per row: ``completions_of(row)``, ``formatted_of(row)``
    (the chat-formatted prompts), ``verdicts_of(row)`` (True = behaviour present),
    ``use_of(row)`` (remove / induce) and ``steering_of(row)`` → (steerer, α, cache key) for
    ``ce_reference``, or None when the row's steering is not a plain vector addition (its
    ``ce_reference`` is then None)."""
    from steerscope.evaluate.coherence import row_coherence

    for r in rows:
        steer = steering_of(r)
        cols = row_coherence(lm.model, lm.tokenizer, formatted_of(r), completions_of(r),
                             verdicts_of(r), use=use_of(r),
                             steerer=None if steer is None else steer[0],
                             alpha=0.0 if steer is None else steer[1],
                             key=None if steer is None else steer[2],
                             reference=None if steer is None else reference,
                             fluency_threshold=threshold, arch=lm.arch,
                             batch_size=batch_size)
        r.update(cols)
