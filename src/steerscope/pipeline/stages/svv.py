"""Stage ``svv``: for each patched method (the ``patching`` stage's ``methods``), the
steering value vectors of its heads through the logit lens, ranked by the patching run's head
node scores (:func:`steerscope.mechanisms.svv_report`); files ``<method>.json`` and
``<method>.png``.

Config section ``svv`` (:class:`SvvSection`); results.json section ``svv``, with head names
``a{L}.h{H}`` written ``L{L}H{H}`` (``" (−)"`` appended for sign-flipped heads).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from steerscope.mechanisms import svv_report
from steerscope.pipeline.checks import library_default, positive_int
from steerscope.pipeline.registry import StageOutput, register_stage
from steerscope.pipeline.stages.common import (
    patched_vectors,
    patching_result,
    read_json,
    single_layer_only,
)

FLIPPED_SUFFIX = " (\u2212)"


@dataclass
class SvvSection:
    """Steering value vectors of the patched methods' heads."""

    enabled: bool = True
    """Run this stage (false: skip it; results.json marks it not run)."""
    top_tokens: int = library_default(svv_report, "top_k")
    """Logit-lens tokens kept per head."""
    n_heads: int = 10
    """Heads listed in results.json and the table (every head is in <method>.json)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Extra keyword options its stage declares (register_stage(options=...))."""

    def check(self, cfg) -> None:
        """Positive counts; a single-layer vector (no ``vectors.layers`` list)."""
        single_layer_only(cfg, "svv", self.enabled)
        positive_int("svv.top_tokens", self.top_tokens)
        positive_int("svv.n_heads", self.n_heads)


def svv_stage(ctx, section, inputs) -> dict[str, Any]:
    """For each patched method: :func:`~steerscope.mechanisms.svv_report` of its vector
    (every head of blocks ℓ..L−1, top ``svv.top_tokens`` logit-lens tokens), heads ranked by
    the patching run's head node scores."""
    lm = ctx.model()
    vectors = patched_vectors(ctx, inputs, lm.arch)
    files = {}
    for m, sv in vectors.items():
        scores = patching_result(inputs["patching"], m).tables.get("head_scores") or None
        rep = svv_report(lm.model, lm.tokenizer, sv.vector, sv.layer, head_scores=scores,
                         top_k=section.top_tokens, arch=lm.arch, vector_name=m)
        rep.save(ctx.out / f"{m}.json")
        rep.figure(ctx.out / f"{m}.png", n_heads=section.n_heads)
        files[m] = f"{m}.json"
        ctx.log(rep.table(n_heads=min(section.n_heads, 5), n_tokens=8))
    return {"methods": files, "n_heads": section.n_heads}


def results_head_name(node: str, flipped: bool) -> str:
    """``"a16.h1"`` → ``"L16H1"`` (``"L16H1 (−)"`` when sign-flipped), as docs/results.md."""
    layer, head = node[1:].split(".h")
    return f"L{int(layer)}H{int(head)}" + (FLIPPED_SUFFIX if flipped else "")


def svv_section(report: dict, n_heads: int) -> list[dict[str, Any]]:
    """The first ``n_heads`` scored heads of an :class:`SVVReport` JSON as results.json rows:
    ``{head, score, tokens}`` plus the node name, layer, index, flip flag and token logits."""
    rows = []
    for h in report["heads"]:
        if len(rows) >= n_heads:
            break
        if h["score"] is None:  # unscored heads come last in the ranking
            continue
        rows.append({"head": results_head_name(h["head"], h["flipped"]), "score": h["score"],
                     "tokens": [t for t, _ in h["tokens"]], "node": h["head"],
                     "layer": h["layer"], "index": h["index"], "flipped": h["flipped"],
                     "logits": [v for _, v in h["tokens"]], "svv_norm": h["norm"]})
    return rows


def svv_results(out: StageOutput, so_far: dict) -> dict[str, Any]:
    """``svv``: per patched method, its top ``svv.n_heads`` scored heads."""
    n = out.outputs.get("n_heads", 10)
    return {"svv": {m: svv_section(read_json(out, f), n)
                    for m, f in out.outputs.get("methods", {}).items()}}


register_stage("svv", deps=("model", "vectors", "trained", "patching"), section="svv",
               config=SvvSection, results=svv_results, order=90)(svv_stage)
