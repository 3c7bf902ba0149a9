"""What a result was computed with: the steerscope, Python, torch and transformers versions,
the platform and the device. Recorded in a run folder's ``run.json`` and printed by
``steerscope --version``."""

from __future__ import annotations

import platform
from typing import Any

PACKAGE = "steerscope"


def steerscope_version() -> str:
    """The installed steerscope version (package metadata), ``0+unknown`` when steerscope runs
    from a source tree that was never installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return "0+unknown"


def device_description(device: Any = None) -> dict[str, Any]:
    """``{"device": "cpu" | "cuda:N" | "mps", "device_name": ...}`` for ``device`` (a name such
    as ``"auto"`` or ``"cuda"``, or a ``torch.device``; None: ``"cpu"``). ``device_name`` is the
    GPU's name for CUDA and the processor (or machine) name otherwise."""
    import torch

    from steerscope.models import resolve_device

    dev = resolve_device("cpu" if device is None else device)
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        return {"device": f"cuda:{index}", "device_name": torch.cuda.get_device_name(index)}
    return {"device": dev.type, "device_name": platform.processor() or platform.machine()}


def environment(device: Any = None) -> dict[str, Any]:
    """The software and hardware a run used: versions of steerscope, Python, torch (with its
    CUDA build, None on a CPU wheel) and transformers, the platform, and
    :func:`device_description` of ``device``."""
    import torch
    import transformers

    return {
        "steerscope": steerscope_version(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        **device_description(device),
    }
