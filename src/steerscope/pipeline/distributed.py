"""Sharding work over ``torch.distributed`` ranks and merging it back deterministically.

Launch with ``torchrun --nproc_per_node N -m steerscope.cli run CONFIG.yaml`` (gloo on CPU,
NCCL on GPUs; each rank uses ``cuda:LOCAL_RANK``). Work is cut into *units* whose content
does not depend on the number of ranks (e.g. fixed prompt batches); unit ``i`` runs on rank
``i % world_size``; :func:`gather_indexed` collects every unit's result on every rank in
unit order. Because each unit is computed exactly as in a one-process run, the merged
artifact is byte-identical for any world size.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist

from steerscope.errors import SteerscopeError

TIMEOUT_ENV = "STEERSCOPE_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 6 * 3600  # rank 0 may run long single-process stages while others wait


@dataclass(frozen=True)
class Dist:
    """This process's place in the process group (rank 0 of 1 without torch.distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def indices(self, n: int) -> list[int]:
        """:func:`shard_indices` (the ``Shard`` protocol of
        :func:`steerscope.evaluate.steering.evaluate_steering`)."""
        return shard_indices(n, self)

    def gather(self, local: dict[int, Any], n: int) -> list[Any]:
        """:func:`gather_indexed` (the ``Shard`` protocol)."""
        return gather_indexed(local, n, self)


def current() -> Dist:
    """The current process group's rank and size (a single process when none is set up)."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", torch_dist.get_rank()))
        return Dist(torch_dist.get_rank(), torch_dist.get_world_size(), local)
    return Dist()


def init_from_env(backend: str | None = None) -> Dist:
    """Join the process group described by torchrun's environment (``WORLD_SIZE`` > 1) if not
    already joined; returns :func:`current`. Backend: NCCL with CUDA, else gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and torch_dist.is_available() and not torch_dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV,
                                                                  DEFAULT_TIMEOUT_S)))
        torch_dist.init_process_group(backend=backend, timeout=timeout)
    return current()


def device_for(device: str, dist: Dist) -> str:
    """``device`` for this rank: plain ``cuda``/``auto`` become ``cuda:LOCAL_RANK`` when
    several ranks share a machine with GPUs."""
    if dist.enabled and device in ("cuda", "auto") and torch.cuda.is_available():
        return f"cuda:{dist.local_rank % torch.cuda.device_count()}"
    return device


def barrier(dist: Dist) -> None:
    if dist.enabled:
        torch_dist.barrier()


def broadcast(obj: Any, dist: Dist, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (picklable Python objects)."""
    if not dist.enabled:
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=src)
    return box[0]


def shard_indices(n: int, dist: Dist) -> list[int]:
    """The unit indices ``i`` in ``range(n)`` this rank runs: ``i % world_size == rank``."""
    return list(range(dist.rank, n, dist.world_size))


def gather_indexed(local: dict[int, Any], n: int, dist: Dist) -> list[Any]:
    """Every rank's ``{unit index: result}`` merged into one list in unit order (on every
    rank); raises when a unit is missing or computed twice."""
    parts: Sequence[dict[int, Any]]
    if dist.enabled:
        gathered: list[Any] = [None] * dist.world_size
        torch_dist.all_gather_object(gathered, local)
        parts = gathered
    else:
        parts = [local]
    merged: dict[int, Any] = {}
    for part in parts:
        for i, value in part.items():
            if i in merged:
                raise SteerscopeError(f"work unit {i} was computed by two ranks",
                                      "report this: sharding must be disjoint")
            merged[i] = value
    missing = [i for i in range(n) if i not in merged]
    if missing:
        raise SteerscopeError(f"work units {missing[:5]} were computed by no rank",
                              "report this: sharding must cover every unit")
    return [merged[i] for i in range(n)]


def map_units(fn, units: Sequence[Any], dist: Dist) -> list[Any]:
    """``[fn(u) for u in units]``, with unit ``i`` computed on rank ``i % world_size`` and the
    results gathered in order on every rank."""
    local = {i: fn(units[i]) for i in shard_indices(len(units), dist)}
    return gather_indexed(local, len(units), dist)
