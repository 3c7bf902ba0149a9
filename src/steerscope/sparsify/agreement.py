"""Agreement between methods: IoU of the kept-dimension sets, with a hypergeometric test.

For two kept sets A, B ⊆ {0..d−1}: IoU = |A ∩ B| / |A ∪ B|. Under the null hypothesis that B
is a uniformly random |B|-subset (independent of A), the overlap X = |A ∩ B| is
hypergeometric (population d, |A| successes, |B| draws); the p-value is P(X ≥ observed)
= ``scipy.stats.hypergeom.sf(overlap − 1, d, |A|, |B|)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import combinations

import torch

from steerscope.errors import ShapeError, SteerscopeError
from steerscope.vectors.vector import SteeringVector


def _as_set(x: SteeringVector | torch.Tensor) -> torch.Tensor:
    """A bool [d] kept set: a bool mask as is, a vector's non-zero dimensions otherwise."""
    t = x.vector if isinstance(x, SteeringVector) else x
    if not isinstance(t, torch.Tensor) or t.ndim != 1:
        raise ShapeError("kept sets must be 1-D masks or vectors")
    return t.cpu() if t.dtype == torch.bool else (t.cpu() != 0)


def hypergeom_pvalue(overlap: int, d: int, size_a: int, size_b: int) -> float:
    """P(X ≥ overlap) for X ~ Hypergeometric(population d, size_a successes, size_b draws)."""
    from scipy.stats import hypergeom

    for name, v in (("overlap", overlap), ("d", d), ("size_a", size_a), ("size_b", size_b)):
        if isinstance(v, bool) or int(v) != v or v < 0:
            raise SteerscopeError(f"{name} must be a non-negative integer, got {v!r}")
    if size_a > d or size_b > d or overlap > min(size_a, size_b):
        raise SteerscopeError(f"impossible overlap {overlap} of sets of sizes {size_a}, "
                              f"{size_b} in {d} dimensions")
    return float(hypergeom.sf(int(overlap) - 1, int(d), int(size_a), int(size_b)))


def set_agreement(a: SteeringVector | torch.Tensor, b: SteeringVector | torch.Tensor) -> dict:
    """``{"d", "size_a", "size_b", "overlap", "union", "iou", "expected_overlap", "p_value"}``."""
    ma, mb = _as_set(a), _as_set(b)
    if ma.shape != mb.shape:
        raise ShapeError(f"sets over {ma.shape[0]} and {mb.shape[0]} dimensions",
                         "compare vectors of one model")
    d = int(ma.shape[0])
    na, nb = int(ma.sum()), int(mb.sum())
    overlap, union = int((ma & mb).sum()), int((ma | mb).sum())
    return {"d": d, "size_a": na, "size_b": nb, "overlap": overlap, "union": union,
            "iou": overlap / union if union else float("nan"),
            "expected_overlap": na * nb / d,
            "p_value": hypergeom_pvalue(overlap, d, na, nb)}


def agreement(vectors_by_level: Mapping[str, Mapping[str, SteeringVector | torch.Tensor]]
              ) -> list[dict]:
    """Pairwise agreement between methods at each level.

    ``vectors_by_level``: level label → {method → sparse vector (or bool kept mask)}. Returns
    one row per level and unordered method pair: ``{"level", "a", "b", ...set_agreement}``.
    """
    if not vectors_by_level:
        raise SteerscopeError("no sparse vectors to compare", "pass at least one level")
    rows = []
    for level, by_method in vectors_by_level.items():
        for a, b in combinations(list(by_method), 2):
            rows.append({"level": level, "a": a, "b": b,
                         **set_agreement(by_method[a], by_method[b])})
    return rows


def agreement_table(rows: list[dict]) -> str:
    """Plain-text table of :func:`agreement` rows."""
    head = f"{'level':16s} {'rule':10s} {'pair':16s} {'|A|':>6s} {'|B|':>6s} {'overlap':>8s} " \
           f"{'IoU':>6s} {'p-value':>10s}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{str(r['level']):16s} {r.get('rule', '-'):10s} "
                     f"{r['a'] + '/' + r['b']:16s} {r['size_a']:6d} "
                     f"{r['size_b']:6d} {r['overlap']:8d} {r['iou']:6.3f} {r['p_value']:10.2e}")
    return "\n".join(lines)
