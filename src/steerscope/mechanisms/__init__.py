"""Mechanisms of steering: freezing ablations during generation (:mod:`.freeze`, the table in
:mod:`.evaluate`) and steering value vectors through the logit lens (:mod:`.svv`)."""

from steerscope.mechanisms.evaluate import FreezeEval, FreezeRow, freeze_evaluation
from steerscope.mechanisms.freeze import (
    LOCKSTEP_MODES,
    MODE_NAMES,
    MODES,
    FrozenGeneration,
    NormScaleRecorder,
    freeze_interventions,
    frozen_generate,
    frozen_generate_ids,
)
from steerscope.mechanisms.freeze_reference import frozen_generate_reference
from steerscope.mechanisms.svv import (
    AttentionDecomposition,
    SVVReport,
    decompose_attention,
    head_name,
    logit_lens,
    steering_value_vectors,
    svv_report,
)

__all__ = [
    "LOCKSTEP_MODES",
    "MODES",
    "MODE_NAMES",
    "AttentionDecomposition",
    "FreezeEval",
    "FreezeRow",
    "FrozenGeneration",
    "NormScaleRecorder",
    "SVVReport",
    "decompose_attention",
    "freeze_evaluation",
    "freeze_interventions",
    "frozen_generate",
    "frozen_generate_ids",
    "frozen_generate_reference",
    "head_name",
    "logit_lens",
    "steering_value_vectors",
    "svv_report",
]
