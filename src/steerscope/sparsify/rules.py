"""Sparsification rules: which dimensions of a steering vector to keep (paper section 7).

Conventions used throughout :mod:`steerscope.sparsify`:

- ``s`` [d] is the steering vector; ``ie`` [d] its dimension-level indirect effect at the
  steering node, **IE = s ⊙ g** with ``g`` the (signed, position-summed, dataset-averaged)
  integrated gradient of the patching metric w.r.t. the steering input, multiplied by the
  steering coefficient's sign (see :mod:`steerscope.sparsify.scores`). The rules only use
  ``|IE|`` and ``|IE| / |s|``, so an overall sign flip of ``ie`` changes nothing.
- ``k`` = number of dimensions **kept**; sparsity = fraction of dimensions set to zero,
  ``1 − k/d``. ``fraction`` arguments are sparsities (``fraction=0.9`` keeps 10%).
- Rules (every one keeps a set of exactly ``k`` indices; ties broken by index, lower first):

  ==============  ===========================================================================
  ``gradient``    with ``tau``: both ``ie`` and ``s`` unit-normalised, drop ``i`` when
                  ``|ie_i| < tau·|s_i|`` (the kept count follows from τ). With ``k`` /
                  ``fraction``: keep the top-k by the ratio ``|ie_i| / |s_i|`` (= ``|g_i|``
                  up to a constant), i.e. the τ rule at the τ giving that k.
  ``ie``          keep the top-k by ``|ie_i|`` (drop the bottom by patching effect)
  ``magnitude``   keep the top-k by ``|s_i|`` (baseline: drop the bottom-k by magnitude)
  ``random``      keep a seeded random set of k (baseline: dropout; nested across k for one
                  seed)
  ==============  ===========================================================================

- The sparse vector is rescaled to the original norm ‖s‖.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from steerscope.errors import ShapeError, SteerscopeError
from steerscope.vectors.vector import SteeringVector

RULES = ("gradient", "ie", "magnitude", "random")
# older names (the pipeline config's before the names were unified), accepted as aliases
RULE_ALIASES = {"grad": "gradient", "bottomk": "magnitude", "dropout": "random"}
PATCHING_RULES = ("gradient", "ie")  # rules that need the IE vector
DEFAULT_TAUS = (0.0, 0.1, 0.3, 0.5, 1.0, 1.5, 2.0, 2.5)


# ---------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------
def _as_tensor(vector: SteeringVector | torch.Tensor, what: str = "vector") -> torch.Tensor:
    t = vector.vector if isinstance(vector, SteeringVector) else vector
    if not isinstance(t, torch.Tensor) or t.ndim != 1 or t.numel() == 0:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ShapeError(f"{what} must be a non-empty 1-D tensor, got {shape}")
    if not torch.isfinite(t).all():
        raise SteerscopeError(f"{what} contains NaN or infinite values", "recompute it")
    return t.detach().double().cpu()


def check_ie(ie: torch.Tensor | None, d: int, rule: str) -> torch.Tensor:
    """The IE vector as float64 [d]; a one-line error when missing or misshaped."""
    if ie is None:
        raise SteerscopeError(f"rule '{rule}' needs the dimension-level IE vector",
                              "pass ie= (from sparsify.dimension_scores or the patching run)")
    t = _as_tensor(ie, "IE vector")
    if t.shape != (d,):
        raise ShapeError(f"IE vector has shape {tuple(t.shape)} but the steering vector has "
                         f"{d} dimensions", "use the IE computed for this vector")
    if float(t.abs().max()) == 0.0:
        raise SteerscopeError("IE vector is all zeros", "recompute it on prompts where "
                              "steering changes the output")
    return t


def canonical_rule(rule: str) -> str:
    """The rule name of ``rule``: itself for a name of :data:`RULES`, the rule an alias of
    :data:`RULE_ALIASES` stands for (``grad`` → ``gradient``); a one-line error otherwise."""
    name = RULE_ALIASES.get(rule, rule)
    if name not in RULES:
        raise SteerscopeError(f"unknown sparsification rule '{rule}'",
                              f"use one of {', '.join(RULES)} (or the aliases "
                              f"{', '.join(RULE_ALIASES)})")
    return name


def _check_rule(rule: str) -> str:
    if rule not in RULES:
        raise SteerscopeError(f"unknown sparsification rule '{rule}'",
                              f"use one of {', '.join(RULES)}")
    return rule


def resolve_k(d: int, *, k: int | None = None, fraction: float | None = None) -> int:
    """Kept count from ``k`` (kept dimensions) or ``fraction`` (sparsity, 0 ≤ f < 1).

    ``fraction`` maps to ``k = round((1 − fraction)·d)``, at least 1.
    """
    if (k is None) == (fraction is None):
        raise SteerscopeError("give exactly one of k (dimensions kept) and fraction (sparsity)")
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d:
            raise SteerscopeError(f"k = {k!r} kept dimensions is out of range",
                                  f"use an integer from 1 to {d}")
        return k
    try:
        f = float(fraction)
    except (TypeError, ValueError) as exc:
        raise SteerscopeError(f"fraction must be a number, got {fraction!r}") from exc
    if not (math.isfinite(f) and 0.0 <= f < 1.0):
        raise SteerscopeError(f"sparsity fraction {fraction!r} is out of range",
                              "use 0 <= fraction < 1 (0.9 keeps 10% of the dimensions)")
    return max(1, int(round((1.0 - f) * d)))


# ---------------------------------------------------------------------------------------
# scores and masks
# ---------------------------------------------------------------------------------------
def _unit(t: torch.Tensor) -> torch.Tensor:
    n = t.norm()
    return t / n if float(n) > 0 else t


def gradient_ratio(s: torch.Tensor, ie: torch.Tensor) -> torch.Tensor:
    """``|ie_i| / |s_i|`` of the unit-normalised vectors (float64 [d]; 0 where ``s_i = 0``)."""
    s_hat, ie_hat = _unit(s.double()).abs(), _unit(ie.double()).abs()
    ratio = torch.zeros_like(s_hat)
    nz = s_hat > 0
    ratio[nz] = ie_hat[nz] / s_hat[nz]
    return ratio


def tau_mask(s: torch.Tensor, ie: torch.Tensor, tau: float) -> torch.Tensor:
    """The gradient rule: keep ``i`` unless ``|ie_i| < tau·|s_i|`` (unit-normalised; bool [d])."""
    try:
        tau = float(tau)
    except (TypeError, ValueError) as exc:
        raise SteerscopeError(f"tau must be a number, got {tau!r}") from exc
    if not (math.isfinite(tau) and tau >= 0):
        raise SteerscopeError(f"tau = {tau} is invalid", "use a finite tau >= 0")
    s_hat, ie_hat = _unit(s.double()), _unit(ie.double())
    return ~(ie_hat.abs() < tau * s_hat.abs())


def top_k_mask(score: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest scores (bool [d]); ties keep the lower index (stable sort)."""
    order = torch.sort(score.double(), descending=True, stable=True).indices  # [d]
    mask = torch.zeros(score.shape[0], dtype=torch.bool)
    mask[order[:k]] = True
    return mask


def random_mask(d: int, k: int, seed: int = 42) -> torch.Tensor:
    """A seeded random set of ``k`` of ``d`` indices (bool [d]); nested in ``k`` for one seed."""
    g = torch.Generator().manual_seed(int(seed))
    mask = torch.zeros(d, dtype=torch.bool)
    mask[torch.randperm(d, generator=g)[:k]] = True
    return mask


def rule_mask(rule: str, s: torch.Tensor, *, ie: torch.Tensor | None = None,
              tau: float | None = None, k: int | None = None, fraction: float | None = None,
              seed: int = 42) -> torch.Tensor:
    """The kept-dimension mask (bool [d]) of ``rule`` at ``tau`` or at ``k`` / ``fraction``."""
    _check_rule(rule)
    s = _as_tensor(s, "steering vector")
    d = s.shape[0]
    if rule in PATCHING_RULES:
        ie = check_ie(ie, d, rule)
    if tau is not None:
        if rule != "gradient":
            raise SteerscopeError(f"tau applies to the gradient rule, not '{rule}'",
                                  "pass k= or fraction= (or use equal_sparsity_family)")
        if k is not None or fraction is not None:
            raise SteerscopeError("give tau or k/fraction, not both")
        return tau_mask(s, ie, tau)
    k = resolve_k(d, k=k, fraction=fraction)
    if rule == "gradient":
        return top_k_mask(gradient_ratio(s, ie), k)
    if rule == "ie":
        return top_k_mask(ie.abs(), k)
    if rule == "magnitude":
        return top_k_mask(s.abs(), k)
    return random_mask(d, k, seed)


# ---------------------------------------------------------------------------------------
# sparse vectors
# ---------------------------------------------------------------------------------------
def apply_mask(vector: SteeringVector, mask: torch.Tensor, *, rule: str = "custom",
               tau: float | None = None, seed: int | None = None) -> SteeringVector:
    """``vector`` with the dimensions outside ``mask`` zeroed, rescaled to the original norm.

    The result's method is ``"<method>+<rule>@<sparsity>"``; ``metadata["sparsify"]`` records
    the rule, τ, k, d, sparsity, seed and the source vector's method, norm and hash.
    """
    s = vector.vector.double()  # [d]
    mask = mask.to(torch.bool).cpu()
    if mask.shape != s.shape:
        raise ShapeError(f"mask has shape {tuple(mask.shape)} for a vector of {s.shape[0]} "
                         "dimensions")
    d, k = s.shape[0], int(mask.sum())
    if k == 0:
        raise SteerscopeError(f"rule '{rule}' keeps no dimension", "use a smaller tau / larger k")
    if k == d:
        out = vector.vector.clone()
    else:
        sparse = torch.where(mask, s, torch.zeros_like(s))
        n = float(sparse.norm())
        if n == 0.0:
            raise SteerscopeError(f"rule '{rule}' keeps only zero entries of the vector",
                                  "keep more dimensions")
        out = (sparse * (float(s.norm()) / n)).float()
    sparsity = 1.0 - k / d
    info = {"rule": rule, "tau": tau, "k": k, "d": d, "sparsity": sparsity, "seed": seed,
            "n_nonzero": int((out != 0).sum()), "source_method": vector.method,
            "source_norm": vector.norm, "source_sha256": vector.sha256}
    return vector.with_vector(out, method=f"{vector.method}+{rule}@{round(sparsity, 4):g}",
                              metadata={**vector.metadata, "sparsify": info})


def sparsify(vector: SteeringVector, rule: str, *, ie: torch.Tensor | None = None,
             tau: float | None = None, k: int | None = None, fraction: float | None = None,
             seed: int = 42) -> SteeringVector:
    """A sparse copy of ``vector`` by ``rule`` (see the module docstring), rescaled to ‖s‖.

    Give ``tau`` (gradient rule only), or ``k`` (dimensions kept), or ``fraction``
    (sparsity). ``ie`` [d] (IE = s ⊙ g) is needed by the ``gradient`` and ``ie`` rules;
    ``seed`` drives the ``random`` rule.
    """
    if not isinstance(vector, SteeringVector):
        raise SteerscopeError(f"expected a SteeringVector, got {type(vector).__name__}",
                              "wrap the tensor with SteeringVector(vector, layer)")
    mask = rule_mask(rule, vector.vector, ie=ie, tau=tau, k=k, fraction=fraction, seed=seed)
    return apply_mask(vector, mask, rule=rule, tau=None if tau is None else float(tau),
                      seed=seed if rule == "random" else None)


def kept(vector: SteeringVector | torch.Tensor) -> torch.Tensor:
    """The non-zero dimension set of a vector (bool [d])."""
    t = vector.vector if isinstance(vector, SteeringVector) else vector
    return t != 0


def tau_levels(vector: SteeringVector, ie: torch.Tensor,
               taus: Sequence[float] = DEFAULT_TAUS) -> list[dict]:
    """For each τ: ``{"tau", "k", "sparsity"}`` produced by the gradient rule on this vector."""
    s = _as_tensor(vector.vector, "steering vector")
    ie = check_ie(ie, s.shape[0], "gradient")
    out = []
    for tau in taus:
        k = int(tau_mask(s, ie, tau).sum())
        out.append({"tau": float(tau), "k": k, "sparsity": 1.0 - k / s.shape[0]})
    return out


def equal_sparsity_family(vector: SteeringVector, ie: torch.Tensor, *,
                          taus: Sequence[float] = DEFAULT_TAUS,
                          fractions: Sequence[float] = (), rules: Sequence[str] = RULES,
                          seed: int = 42) -> list[dict]:
    """Sparse vectors of every rule at equal sparsity.

    Levels: each τ (the gradient rule's kept count k sets the level; the other rules keep the
    same k) and each ``fraction`` (every rule at that sparsity; the gradient rule by ratio
    top-k). Levels that keep no dimension are skipped. Returns one dict per (level, rule):
    ``{"level", "tau", "fraction", "k", "sparsity", "rule", "vector"}``.
    """
    for r in rules:
        _check_rule(r)
    d = vector.d_model
    ie = check_ie(ie, d, "gradient")
    out = []
    for lv in tau_levels(vector, ie, taus):
        if lv["k"] == 0:
            continue
        for r in rules:
            if r == "gradient":
                sv = sparsify(vector, r, ie=ie, tau=lv["tau"])
            else:
                sv = sparsify(vector, r, ie=ie, k=lv["k"], seed=seed)
            out.append({"level": f"tau={lv['tau']:g}", "tau": lv["tau"], "fraction": None,
                        "k": lv["k"], "sparsity": lv["sparsity"], "rule": r, "vector": sv})
    for f in fractions:
        k = resolve_k(d, fraction=f)
        for r in rules:
            sv = sparsify(vector, r, ie=ie, k=k, seed=seed)
            out.append({"level": f"fraction={float(f):g}", "tau": None, "fraction": float(f),
                        "k": k, "sparsity": 1.0 - k / d, "rule": r, "vector": sv})
    return out
