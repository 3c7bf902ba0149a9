"""Small facts about a loaded model needed to call it: where its inputs go, and which keyword
arguments its ``forward`` takes."""

from __future__ import annotations

import inspect

import torch


def model_device(model) -> torch.device:
    """The device inputs go to: ``model.device`` when it is a device, else the device of the
    first parameter."""
    dev = getattr(model, "device", None)
    if isinstance(dev, torch.device):
        return dev
    return next(model.parameters()).device


def forward_accepts(model, name: str) -> bool:
    """Whether ``model.forward`` takes a keyword argument ``name`` (e.g. ``logits_to_keep``)."""
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
