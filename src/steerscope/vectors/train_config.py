"""Hyperparameters, conventions and presets of the NTP and PO trainers (paper §3).

Four conventions decide how a trained vector is chosen; each has the paper's (where the paper
is silent: the authors' released code's) value as the default and steerscope's earlier
choice as a named alternative:

===============  ===========================================  =================================
field            default (paper / released code)              alternative (steerscope ≤ v0)
===============  ===========================================  =================================
``lr_schedule``  ``"per_epoch"``: lr·(1 − e/E) in epoch e      ``"per_step"``: lr·(1 − s/S),
                 (``LinearLR(1 → 0, total_iters=E)`` stepped  S = all optimiser steps
                 once per epoch)
``validation``   ``"deployed"``: the vector rescaled to the    ``"mean_factor"``: the raw vector
                 DIM norm, α = ±1 (c = sign·‖dim‖/‖v‖)         at c = sign·mean(factors)
``keep``         ``"best_epoch"``: validate after every       ``"last_epoch"``: the vector
                 epoch, keep the best                         after the last epoch
``ranking``      ``"released"``: NTP by the sum of its loss   ``"loss_then_match"``: lowest
                 rank and token-match rank, PO by loss        loss (to 1e-4), then higher match
===============  ===========================================  =================================

``match_scope`` (which teacher-forced tokens the validation token-match rate counts):
``"loss_tokens"`` (default), the first ``max_response_tokens`` response tokens the loss sees;
``"response"`` (the released ``learn_sv.py`` ``eval``), every token of the response as
generated (up to the data's ``max_new_tokens``, and its end-of-turn token when the targets
have one). The paper configs set ``"response"``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from steerscope.errors import SteerscopeError

OBJECTIVES = ("ntp", "po")
PAPER_FACTORS = tuple(range(2, 21, 2))  # 2, 4, ..., 20
LR_SCHEDULES = ("per_epoch", "per_step")
VALIDATIONS = ("deployed", "mean_factor")
KEEPS = ("best_epoch", "last_epoch")
RANKINGS = ("released", "loss_then_match")
MATCH_SCOPES = ("loss_tokens", "response")
# steerscope's conventions before the paper's were matched (issue 12, point 4)
STEERSCOPE_CONVENTIONS = {"lr_schedule": "per_step", "validation": "mean_factor",
                          "keep": "last_epoch", "ranking": "loss_then_match"}
PAPER_CONVENTIONS = {"lr_schedule": "per_epoch", "validation": "deployed",
                     "keep": "best_epoch", "ranking": "released"}
# the grid's axes (sequences of values); phi is an axis only for the objectives whose loss
# uses it (the others train with the first value)
GRID_AXES = ("lr", "batch_size", "seed", "phi")
PHI_OBJECTIVES = ("po",)
# Training presets, defined once (the CLI's --grid and the pipeline's vectors.<obj>.preset):
# grid axes as tuples (seed None: the caller's seed), other TrainConfig fields as values.
PRESETS: dict[str, dict[str, Any]] = {
    # CPU-sized for small models (the demo model): 2 epochs, 32 response tokens
    "quick": {"lr": (0.01, 0.04), "batch_size": (6,), "seed": None, "phi": (2e-2,),
              "epochs": 2, "max_response_tokens": 32, **PAPER_CONVENTIONS},
    # the paper's: lr {0.01, 0.04} x batch {6, 12} x seed {42, 5} (x phi {2e-2, 1e-5} for PO)
    "paper": {"lr": (0.01, 0.04), "batch_size": (6, 12), "seed": (42, 5), "phi": (2e-2, 1e-5),
              "epochs": 10, "max_response_tokens": 64, **PAPER_CONVENTIONS},
}


@dataclass
class TrainConfig:
    """Hyperparameters of one training run (defaults: the paper's, first grid value, and the
    paper's conventions, see the module docstring).

    ``objective``: ``"ntp"`` or ``"po"``; ``phi``: PO's φ (ignored by NTP); ``factors``: the
    steering factors ``f`` sampled per example; ``val_factor``: the factor of
    ``validation="mean_factor"`` (``None``: the mean of ``factors``).
    """

    objective: str = "ntp"
    """ntp (next-token prediction) | po (preference optimisation)."""
    lr: float = 0.04
    """Learning rate (AdamW)."""
    epochs: int = 10
    """Training epochs."""
    batch_size: int = 6
    """Training pairs per optimiser step."""
    seed: int = 42
    """Training seed."""
    phi: float = 2e-2
    """PO's phi (ignored by NTP)."""
    factors: tuple[float, ...] = PAPER_FACTORS
    """Steering factors f sampled per example."""
    max_response_tokens: int = 64
    """Response tokens the loss sees."""
    grad_clip: float = 1.0
    """Gradient-norm clip."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    init_scale: float = 0.01
    """Standard deviation of the vector's random initialisation."""
    val_factor: float | None = None
    """The factor of validation: mean_factor (None: the mean of factors)."""
    lr_schedule: str = "per_epoch"
    """per_epoch: lr*(1 - e/E) in epoch e (the released code) | per_step: lr*(1 - s/S) over
    all optimiser steps."""
    validation: str = "deployed"
    """deployed: validate the vector rescaled to the DIM norm at alpha = +-1 | mean_factor:
    the raw vector at the mean factor."""
    keep: str = "best_epoch"
    """best_epoch: validate after every epoch, keep the best | last_epoch: the vector after
    the last epoch."""
    ranking: str = "released"
    """released: NTP by the sum of its loss rank and token-match rank, PO by loss |
    loss_then_match: lowest loss (to 1e-4), then higher match."""
    match_scope: str = "loss_tokens"
    """Validation token match over the loss tokens (loss_tokens) or the whole response
    (response, the released code's)."""

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise SteerscopeError(f"unknown training objective '{self.objective}'",
                                  "use 'ntp' or 'po'")
        for name, allowed in (("lr_schedule", LR_SCHEDULES), ("validation", VALIDATIONS),
                              ("keep", KEEPS), ("ranking", RANKINGS),
                              ("match_scope", MATCH_SCOPES)):
            if getattr(self, name) not in allowed:
                raise SteerscopeError(f"TrainConfig.{name}={getattr(self, name)!r} is unknown",
                                      f"use one of {', '.join(allowed)}")
        self.factors = tuple(float(f) for f in self.factors)
        checks = [
            ("lr", self.lr > 0 and math.isfinite(self.lr), "a positive number"),
            ("epochs", isinstance(self.epochs, int) and self.epochs >= 1, "an int >= 1"),
            ("batch_size", isinstance(self.batch_size, int) and self.batch_size >= 1,
             "an int >= 1"),
            ("phi", self.phi >= 0 and math.isfinite(self.phi), "a non-negative number"),
            ("factors", len(self.factors) > 0 and all(math.isfinite(f) for f in self.factors),
             "a non-empty list of numbers"),
            ("max_response_tokens",
             isinstance(self.max_response_tokens, int) and self.max_response_tokens >= 1,
             "an int >= 1"),
            ("grad_clip", self.grad_clip > 0, "a positive number"),
            ("weight_decay", self.weight_decay >= 0, "a non-negative number"),
            ("init_scale", self.init_scale >= 0 and math.isfinite(self.init_scale),
             "a non-negative number"),
        ]
        for name, ok, what in checks:
            if not ok:
                raise SteerscopeError(f"TrainConfig.{name}={getattr(self, name)!r} is invalid",
                                      f"use {what}")

    @property
    def validation_factor(self) -> float:
        """The factor ``f_val`` of ``validation="mean_factor"``."""
        if self.val_factor is not None:
            return float(self.val_factor)
        return sum(self.factors) / len(self.factors)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["factors"] = list(self.factors)
        return d


def lr_factors(config: TrainConfig, steps_per_epoch: int) -> list[float]:
    """The learning-rate multiplier of every optimiser step (``epochs·steps_per_epoch``).

    ``per_epoch`` (released code): ``1 − e/E`` during epoch ``e`` (0-based), so the last epoch
    trains at lr/E; ``per_step``: ``max(0, 1 − s/S)`` at step ``s`` of ``S``.
    """
    total = steps_per_epoch * config.epochs
    if config.lr_schedule == "per_epoch":
        return [1.0 - (s // steps_per_epoch) / config.epochs for s in range(total)]
    return [max(0.0, 1.0 - s / total) for s in range(total)]


def preset_grid(objective: str, preset: str = "quick", *,
                seed: int | Sequence[int] = 42, **overrides: Any) -> list[TrainConfig]:
    """The grid of :data:`PRESETS` ``[preset]`` for ``objective``: every combination of the
    :data:`GRID_AXES` values (lr, batch size, seed, phi; in that nesting order), the preset's
    other fields on every config. ``seed``: an int is the seed axis of a preset that leaves it
    open (``quick``; ``paper`` keeps its seeds 42 and 5); a list or tuple of ints is the seed
    axis, replacing any preset's. ``overrides``: a grid axis (a value or a sequence of values)
    or any other :class:`TrainConfig` field, replacing the preset's. Objectives outside
    :data:`PHI_OBJECTIVES` train with the first phi only."""
    if preset not in PRESETS:
        raise SteerscopeError(f"unknown training preset '{preset}'",
                              f"use one of {', '.join(PRESETS)}")
    values = dict(PRESETS[preset])
    if isinstance(seed, (list, tuple)):
        values["seed"] = tuple(seed)
    elif values["seed"] is None:
        values["seed"] = (seed,)
    for key, value in overrides.items():
        if key in GRID_AXES and not isinstance(value, (list, tuple)):
            value = (value,)
        values[key] = value
    axes = [tuple(values.pop(k)) for k in GRID_AXES]
    if objective not in PHI_OBJECTIVES:
        axes[-1] = axes[-1][:1]
    return [TrainConfig(objective=objective, lr=lr, batch_size=b, seed=s, phi=phi, **values)
            for lr, b, s, phi in itertools.product(*axes)]


def paper_grid(objective: str, **changes) -> list[TrainConfig]:
    """The paper's grid (preset ``paper``): lr {0.01, 0.04} × batch {6, 12} × seed {42, 5}
    (× φ {2e-2, 1e-5} for PO), 10 epochs, the paper's conventions; ``changes`` override
    fields of every config."""
    return preset_grid(objective, "paper", **changes)


def quick_grid(objective: str, **changes) -> list[TrainConfig]:
    """A CPU-sized grid for small models (preset ``quick``, the demo model): lr {0.01, 0.04},
    batch 6, seed 42, 2 epochs, 32 response tokens, the paper's conventions; ``changes``
    override fields of every config."""
    return preset_grid(objective, "quick", **changes)


__all__ = [
    "OBJECTIVES",
    "PAPER_FACTORS",
    "LR_SCHEDULES",
    "VALIDATIONS",
    "KEEPS",
    "MATCH_SCOPES",
    "RANKINGS",
    "GRID_AXES",
    "PAPER_CONVENTIONS",
    "PHI_OBJECTIVES",
    "PRESETS",
    "STEERSCOPE_CONVENTIONS",
    "TrainConfig",
    "lr_factors",
    "paper_grid",
    "preset_grid",
    "quick_grid",
]
