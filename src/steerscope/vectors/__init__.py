"""Steering vectors: the :class:`SteeringVector` type and file format, multi-layer
:class:`SteeringVectorSet`, and extraction methods."""

from steerscope.vectors.activations import collect_activations, mean_activations
from steerscope.vectors.dim import (
    DimResult,
    candidate_directions,
    post_instruction_positions,
    select_dim,
)
from steerscope.vectors.dim_scores import filter_by_refusal_score, next_token_kl
from steerscope.vectors.dim_selection import discard_reason, select_candidate, selection_score
from steerscope.vectors.gguf import export_control_vector, import_control_vector
from steerscope.vectors.methods import (
    METHODS,
    VECTOR_METHODS,
    VectorMethod,
    extract,
    extract_vector,
    register_method,
    register_vector_method,
    vector_method,
)
from steerscope.vectors.vector import SteeringVector
from steerscope.vectors.vector_set import SteeringVectorSet, load_vector_file

__all__ = [
    "SteeringVector",
    "SteeringVectorSet",
    "load_vector_file",
    "mean_activations",
    "collect_activations",
    "METHODS",
    "VECTOR_METHODS",
    "VectorMethod",
    "register_method",
    "register_vector_method",
    "vector_method",
    "extract",
    "extract_vector",
    "DimResult",
    "select_dim",
    "select_candidate",
    "discard_reason",
    "selection_score",
    "candidate_directions",
    "filter_by_refusal_score",
    "next_token_kl",
    "post_instruction_positions",
    "export_control_vector",
    "import_control_vector",
]
