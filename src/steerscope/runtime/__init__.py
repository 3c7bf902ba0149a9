"""One runtime for every intervention: steering, ablation, capture, replacement, patching."""

from steerscope.runtime.core import RowFrame, Runtime, attached_runtimes, batch_rows
from steerscope.runtime.interventions import (
    HEAD_POINTS,
    POINTS,
    RESIDUAL_POINTS,
    Ablate,
    Add,
    Capture,
    Edit,
    Intervention,
    Replace,
    ablate_direction,
    check_row_count,
    steer,
)
from steerscope.runtime.scope import StepContext

__all__ = [
    "Runtime", "attached_runtimes", "Intervention", "Add", "Ablate", "Replace", "Edit",
    "Capture", "steer", "ablate_direction", "StepContext", "POINTS", "RESIDUAL_POINTS",
    "HEAD_POINTS", "RowFrame", "batch_rows", "check_row_count",
]
