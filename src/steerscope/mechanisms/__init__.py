"""Mechanisms of steering: freezing ablations during generation and steering value vectors."""

from steerscope.mechanisms.freeze import (
    LOCKSTEP_MODES,
    MODE_NAMES,
    MODES,
    FrozenGeneration,
    NormScaleRecorder,
    freeze_interventions,
    frozen_generate,
    frozen_generate_ids,
    frozen_generate_reference,
)

__all__ = [
    "LOCKSTEP_MODES",
    "MODES",
    "MODE_NAMES",
    "FrozenGeneration",
    "NormScaleRecorder",
    "freeze_interventions",
    "frozen_generate",
    "frozen_generate_ids",
    "frozen_generate_reference",
]
