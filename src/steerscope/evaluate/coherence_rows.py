"""The coherence columns of a :class:`~steerscope.evaluate.steering.SteeringEval` (the
``steerscope evaluate`` table), where there are no val prompts: the reference text of
``ce_reference`` is the unsteered model's own completions of the first ``n_reference``
absent-side prompts of the table (its ``none`` row)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from steerscope.evaluate.coherence import DEFAULT_FLUENCY_THRESHOLD, ReferenceCE, row_coherence
from steerscope.evaluate.presence import SubstringPresence
from steerscope.evaluate.steering import NONE, SteeringEval
from steerscope.models.chat import format_prompt


def steering_coherence(model, tokenizer, res: SteeringEval, vectors: Mapping[str, Any], *,
                       judge=None, fluency_threshold: float = DEFAULT_FLUENCY_THRESHOLD,
                       n_reference: int = 16, arch=None, batch_size: int = 16
                       ) -> dict[str, dict[str, dict]]:
    """method → side → the coherence columns of that row (verdicts by ``judge``; None: the
    table's own behaviour verdicts, else the paper's refusal substrings; needs the table's
    unsteered rows)."""
    absent = "absent"
    formatted = {s: [format_prompt(tokenizer, p) for p in ps] for s, ps in res.prompts.items()}
    reference = ReferenceCE(model, tokenizer, formatted[absent][:n_reference],
                            res.completions[NONE][absent][:n_reference], arch=arch,
                            batch_size=batch_size)
    out: dict[str, dict[str, dict]] = {}
    for r in res.rows:
        outs = res.completions[r.method][r.side]
        if judge is None and r.side in res.verdicts.get(r.method, {}):
            verdicts = res.verdicts[r.method][r.side]
        else:
            verdicts = [bool(v) for v in (judge or SubstringPresence()).judge(
                res.prompts[r.side], outs)]
        out.setdefault(r.method, {})[r.side] = row_coherence(
            model, tokenizer, formatted[r.side], outs, verdicts, use=r.use,
            steerer=vectors.get(r.method), alpha=r.alpha, reference=reference, key=r.method,
            fluency_threshold=fluency_threshold, arch=arch, batch_size=batch_size)
    return out


def coherence_table(coherence: Mapping[str, Mapping[str, dict]]) -> str:
    """Plain text: one line per (method, side)."""
    head = (f"{'vector':10s} {'side':9s} {'coherent':>8s} {'behav|coh':>9s} {'fluency':>7s} "
            f"{'ce_ref':>7s}")
    lines = [head, "-" * len(head)]

    def fmt(x, w, p):
        return f"{'-':>{w}s}" if x is None else f"{x:{w}.{p}f}"

    for m, sets in coherence.items():
        for s, c in sets.items():
            lines.append(f"{m:10s} {s:9s} {c['coherent_share']:8.3f} "
                         f"{fmt(c['coherent_behaviour_rate'], 9, 3)} {fmt(c['fluency'], 7, 2)} "
                         f"{fmt(c['ce_reference'], 7, 3)}")
    threshold = next((c["fluency_threshold"] for sets in coherence.values()
                      for c in sets.values()), DEFAULT_FLUENCY_THRESHOLD)
    lines.append(f"(coherent: not a loop and fluency <= {threshold:g} nats/token under the "
                 "unsteered model; behav|coh: behaviour rate among coherent completions)")
    return "\n".join(lines)


__all__ = ["coherence_table", "steering_coherence"]
