"""Sparsifying steering vectors and agreement between methods (paper section 7).

- :mod:`~steerscope.sparsify.scores`: dimension-level IE = s ⊙ g at the steering node, the
  patching package's EAP-IG steering-node scores (or any IE with the same convention);
- :mod:`~steerscope.sparsify.rules`: gradient-ratio (τ), top-k by |IE|, bottom-k by |s| and
  random dropout at equal sparsity, rescaled to ‖s‖;
- :mod:`~steerscope.sparsify.agreement`: IoU of kept sets with a hypergeometric p-value;
- :mod:`~steerscope.sparsify.sweep`: steered evaluation of every sparse vector, retention
  curves, the highest sparsity keeping a given share of the dense effect.
"""

from steerscope.sparsify.agreement import (
    agreement,
    agreement_table,
    hypergeom_pvalue,
    set_agreement,
)
from steerscope.sparsify.rules import (
    DEFAULT_TAUS,
    RULE_ALIASES,
    RULES,
    apply_mask,
    canonical_rule,
    equal_sparsity_family,
    gradient_ratio,
    kept,
    resolve_k,
    rule_mask,
    sparsify,
    tau_levels,
)
from steerscope.sparsify.scores import (
    DimensionScores,
    dimension_scores,
    ig_scores_from_examples,
    load_ie,
)
from steerscope.sparsify.sweep import (
    SweepResult,
    highest_retained_sparsity,
    sparse_agreement,
    sparsity_sweep,
)

__all__ = [
    "DEFAULT_TAUS", "RULE_ALIASES", "RULES", "DimensionScores", "canonical_rule", "agreement", "agreement_table", "apply_mask",
    "dimension_scores", "equal_sparsity_family", "gradient_ratio", "hypergeom_pvalue",
    "ig_scores_from_examples", "kept", "load_ie", "resolve_k", "rule_mask",
    "set_agreement", "sparsify", "tau_levels", "SweepResult", "highest_retained_sparsity",
    "sparse_agreement", "sparsity_sweep",
]
