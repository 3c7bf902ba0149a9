"""The explorer's per-example views, computed with the model from one saved patching example.

For one teacher-forced example (prompt then response tokens, steering coefficient α) it runs
the model twice, unsteered and steered (``h^ℓ ← h^ℓ + α·s``), and gives:

- per response position p (whose logits predict token p+1): the steered (clean) and
  unsteered (corrupt) greedy tokens, the patching metric's per-position term in both runs and
  whether the metric masks the position out (docs/patching.md):

  * ``logit_diff``: ``m_p(run) = logit_p(y_p) − logit_p(y*_p)`` with ``y`` the steered and
    ``y*`` the unsteered greedy token; masked where ``y = y*``;
  * ``kl``: ``m_p(run) = KL(P_base,p ‖ P_run,p) − KL(P_steer,p ‖ P_run,p)``; masked where
    ``KL(P_steer,p ‖ P_base,p) < τ`` (``≤ 0`` when τ = 0);

  in the forward roles (clean = steered), so ``effect_p = m_p(steered) − m_p(base)`` is what
  patching toward the steered run restores; the reverse roles negate the metric and swap
  the runs, which leaves ``effect`` unchanged;
- the attention pattern of chosen heads in the steered run: rows = the response positions
  (at most ``max_rows``), columns = every key position, quantised to bytes
  (``round(255·p)``, base64).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import torch

MAX_ROWS = 64  # response positions shown in an attention pattern
PATTERN_BUDGET = 400_000  # bytes of attention patterns per vector (before base64)


def token_texts(tokenizer, ids: list[int]) -> list[str]:
    """Each token id decoded on its own."""
    return [tokenizer.decode([int(i)]) for i in ids]


def per_position_metric(steered: torch.Tensor, base: torch.Tensor, *, metric: str = "logit_diff",
                        tau: float = 0.0) -> dict[str, torch.Tensor]:
    """Per-position metric terms from the steered and unsteered logits [N, V] at the
    response positions: ``y`` / ``y_star`` [N] greedy tokens, ``m_steered`` / ``m_base`` [N]
    float64, ``masked`` [N] bool (see the module doc)."""
    s, b = steered.double(), base.double()  # [N, V]
    y, y_star = s.argmax(-1), b.argmax(-1)  # [N]
    if metric == "logit_diff":
        idx = torch.arange(s.shape[0])
        m_s = s[idx, y] - s[idx, y_star]
        m_b = b[idx, y] - b[idx, y_star]
        masked = y == y_star
    else:
        ls, lb = torch.log_softmax(s, -1), torch.log_softmax(b, -1)
        kl_sb = (ls.exp() * (ls - lb)).sum(-1)  # KL(P_steer ‖ P_base)
        kl_bs = (lb.exp() * (lb - ls)).sum(-1)  # KL(P_base ‖ P_steer)
        m_s, m_b = kl_bs, -kl_sb
        masked = kl_sb < tau if tau > 0 else kl_sb <= 0
    return {"y": y, "y_star": y_star, "m_steered": m_s, "m_base": m_b, "masked": masked}


def _run(model, ids: torch.Tensor, vector: torch.Tensor, layer: int | list[int], alpha: float,
         pattern_layers: list[int]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Logits [S, V] (float32) and the captured patterns {layer: [H, S, S]} of one run
    (``layer`` a list: ``vector`` [K, d], row k steering ``layer[k]``)."""
    from steerscope.runtime import Capture, Runtime, steer

    caps = {L: Capture("pattern", L) for L in pattern_layers}
    layers = layer if isinstance(layer, list) else [layer]
    rows = vector if vector.ndim == 2 else vector[None]  # [K, d]
    steering = [steer(v, layer=L, alpha=alpha) for v, L in zip(rows, layers)] if alpha else []
    ops = steering + list(caps.values())
    device = next(model.parameters()).device
    with torch.no_grad(), Runtime(model, ops):
        logits = model(input_ids=ids[None].to(device)).logits[0].float().cpu()
    return logits, {L: c.value[0].float().cpu() for L, c in caps.items()}


def _quantised(pattern: torch.Tensor) -> str:
    """[R, K] probabilities → base64 of the row-major bytes round(255·p)."""
    q = (pattern.clamp(0, 1) * 255).round().to(torch.uint8).contiguous()
    return base64.b64encode(q.numpy().tobytes()).decode("ascii")


def example_view(model, tokenizer, vector: torch.Tensor, layer: int | list[int], example, *,
                 heads: list[str] = (), metric: str = "logit_diff", tau: float = 0.0,
                 max_rows: int = MAX_ROWS, budget: int = PATTERN_BUDGET) -> dict[str, Any]:
    """The per-position and attention views of one :class:`PatchingExample` (``layer`` a
    list for a multi-layer ``vector`` [K, d]; ``heads``:
    ``"a{L}.h{H}"`` names in order of preference; patterns are kept while they fit in
    ``budget`` bytes)."""
    ids = example.input_ids  # [S]
    positions = example.response_positions  # [N]
    rows = positions[:max_rows]
    n_keys = int(rows[-1]) + 1
    per_row = len(rows) * n_keys
    keep = [h for i, h in enumerate(heads) if (i + 1) * per_row <= budget]
    layers = sorted({int(h[1:].split(".h")[0]) for h in keep})
    base, _ = _run(model, ids, vector, layer, 0.0, [])
    steered, patterns = _run(model, ids, vector, layer, float(example.alpha), layers)
    pm = per_position_metric(steered[positions], base[positions], metric=metric, tau=tau)
    attention = {}
    for h in keep:
        L, H = (int(x) for x in h[1:].split(".h"))
        attention[h] = _quantised(patterns[L][H][rows][:, :n_keys])  # [R, K]
    ids_list = ids.tolist()
    return {
        "dataset": example.dataset, "alpha": float(example.alpha), "metric": metric, "tau": tau,
        "tokens": token_texts(tokenizer, ids_list), "prompt_len": int(example.prompt_len),
        "positions": positions.tolist(),
        "steered_tokens": token_texts(tokenizer, pm["y"].tolist()),
        "base_tokens": token_texts(tokenizer, pm["y_star"].tolist()),
        "m_steered": [float(x) for x in pm["m_steered"]],
        "m_base": [float(x) for x in pm["m_base"]],
        "masked": [bool(x) for x in pm["masked"]],
        "attention": {"rows": rows.tolist(), "keys": n_keys, "heads": attention},
    }


def first_example(examples: dict[str, list]):
    """The first saved example, datasets in file order (None if there is none)."""
    for xs in examples.values():
        if xs:
            return xs[0]
    return None


def add_example_views(data: dict, stage_dirs: dict, lm, results: dict) -> dict:
    """Add ``example`` (per-position metric and attention patterns of the heads shown) to
    each vector of the explorer data, from the patching stage's saved examples."""
    from steerscope.patching.example_files import EXAMPLES_FILE, load_examples
    from steerscope.patching.run import steered_layers
    from steerscope.vectors import load_vector_file

    patched = stage_dirs.get("patching")
    if patched is None:
        return data
    for m, view in data["vectors"].items():
        folder = patched / m
        entry = results.get("vectors", {}).get(m)
        if not (folder / EXAMPLES_FILE).is_file() or entry is None:
            continue
        ex = first_example(load_examples(folder))
        if ex is None:
            continue
        vector_path = Path(entry["path"])
        if not vector_path.is_absolute():  # results.json paths are relative to the run folder
            vector_path = patched.parent / vector_path
        sv = load_vector_file(vector_path, lm.arch)
        heads = sorted((n for n in view["nodes"] if n["kind"] == "attn"),
                       key=lambda n: (n["entry"], -abs(n["score"] or 0.0)))
        meta = view.get("meta", {})
        view["example"] = example_view(
            lm.model, lm.tokenizer, sv.vector, steered_layers(sv), ex,
            heads=[n["id"] for n in heads],
            metric=meta.get("metric") or "logit_diff", tau=float(meta.get("tau") or 0.0))
    return data
