"""Multi-token activation patching of steering vectors (paper section 4).

- :mod:`~steerscope.patching.graph`: the graph (upstream nodes ``steer``, ``a{L}.h{H}``,
  ``m{L}``; downstream inputs ``a{L}.h{H}.q``, ``a{L}.g{G}.k``, ``a{L}.g{G}.v``, ``m{L}.in``,
  ``logits``; edges ``"{up}->{down}"``);
- :mod:`~steerscope.patching.forward`: the graph forward pass with reverted edges;
- :mod:`~steerscope.patching.data`: patching datasets from flipped rollouts;
- :mod:`~steerscope.patching.scores`: EAP-IG, exact patching, per-dimension scores;
- :mod:`~steerscope.patching.methods`: the attribution methods as records (EAP-IG, exact);
- :mod:`~steerscope.patching.circuits`: circuits, faithfulness, overlaps, interchange;
- :mod:`~steerscope.patching.faithfulness`: the released code's per-position faithfulness
  metrics and the paper's size grid;
- :mod:`~steerscope.patching.result` / :mod:`~steerscope.patching.run`: artifacts and the
  stage end to end.
"""

from steerscope.patching.circuits import (
    FAITHFUL,
    build_circuit,
    complement,
    edge_type_shares,
    evaluate_circuits,
    faithfulness,
    faithfulness_curve,
    interchange_matrix,
    jaccard,
    matched_size_overlap,
    minimal_faithful_circuit,
    overlap,
    overlap_matrix,
    prune,
    random_circuit,
)
from steerscope.patching.data import (
    DATASETS,
    PatchingExample,
    build_patching_datasets,
    datasets_from_rollouts,
    rollouts,
)
from steerscope.patching.faithfulness import evaluate_position_metrics, grid_sizes
from steerscope.patching.forward import GraphModel
from steerscope.patching.graph import Graph, edge_count_formula
from steerscope.patching.methods import (
    ATTRIBUTION_METHODS,
    AttributionMethod,
    attribution_method,
    register_attribution_method,
)
from steerscope.patching.result import PatchingResult
from steerscope.patching.run import (
    add_circuits,
    circuit_summary,
    compare_vectors,
    patch_vector,
    score_vector,
    spearman,
)
from steerscope.patching.scores import (
    Scores,
    coarsen,
    eap_ig,
    exact_patching,
    head_node_scores,
    steer_dimension_scores,
)

__all__ = [
    "ATTRIBUTION_METHODS", "AttributionMethod", "attribution_method",
    "register_attribution_method", "DATASETS", "FAITHFUL", "Graph", "GraphModel", "PatchingExample", "PatchingResult",
    "Scores", "build_circuit", "build_patching_datasets", "circuit_summary", "coarsen",
    "compare_vectors", "complement", "datasets_from_rollouts", "eap_ig", "edge_count_formula",
    "edge_type_shares", "evaluate_circuits", "evaluate_position_metrics", "exact_patching",
    "faithfulness",
    "faithfulness_curve", "grid_sizes", "head_node_scores", "interchange_matrix", "jaccard",
    "matched_size_overlap", "minimal_faithful_circuit", "overlap", "overlap_matrix",
    "add_circuits", "patch_vector", "prune", "random_circuit", "rollouts", "score_vector",
    "spearman",
    "steer_dimension_scores",
]
