"""Stage ``data``: seeded, disjoint samples of the six prompt splits (``prompts.json``).

Config section ``data`` (:class:`DataSection`: the prompt sources and sample sizes; sources
are resolved, checked and fingerprinted by :mod:`steerscope.pipeline.inputs` before any
compute); results.json section ``data`` (the sample counts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from steerscope.artifacts import atomic_write_json
from steerscope.pipeline.checks import fail, not_empty, positive_int
from steerscope.pipeline.registry import StageOutput, register_stage
from steerscope.pipeline.stages.common import PROMPTS_FILE


@dataclass
class DataSection:
    """Prompt sources and sample sizes (per class). A source is a file, a named dataset
    (resolved in ``data_dir`` / ``$STEERSCOPE_DATA_DIR`` or on the Hub) or ``builtin:NAME``."""

    data_dir: str | None = None
    harmful_train: str = "harmful_train"
    harmless_train: str = "harmless_train"
    harmful_val: str = "harmful_val"
    harmless_val: str = "harmless_val"
    harmful_test: str = "jailbreakbench"
    harmless_test: str = "harmless_test"
    n_train: int = 128
    n_val: int = 32
    n_test: int = 100
    seed: int | None = None  # None: the top-level seed

    def check(self, cfg) -> None:
        """Positive sizes, a non-negative seed, no blank source."""
        from steerscope.pipeline.inputs import SPLIT_KEYS

        for key in ("n_train", "n_val", "n_test"):
            positive_int(f"data.{key}", getattr(self, key))
        if self.seed is not None and self.seed < 0:
            fail("data.seed", f"must be non-negative, got {self.seed}", "pass e.g. 42")
        for key in SPLIT_KEYS:
            not_empty(f"data.{key}", getattr(self, key), "name a prompt file or dataset")


def data_stage(ctx, section, inputs) -> dict[str, Any]:
    """Seeded, disjoint samples of the six prompt splits (raw instructions)."""
    from steerscope.pipeline.inputs import data_plan, load_source, sample_splits

    loaded = {src: load_source(src, section.data_dir) for src in data_plan(ctx.config)}
    splits = sample_splits(ctx.config, loaded)
    atomic_write_json(ctx.out / PROMPTS_FILE, splits)
    ctx.log(", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    return {"file": PROMPTS_FILE, "counts": {k: len(v) for k, v in splits.items()}}


def data_results(out: StageOutput, so_far: dict) -> dict[str, Any]:
    """``data``: the number of prompts of each split."""
    return {"data": {"counts": out.outputs.get("counts", {})}}


def data_key(cfg, inputs) -> dict[str, Any]:
    """The prompt sources' digests and the sampling seed key this stage."""
    return {"data": inputs.data, "seed": cfg.data_seed}


register_stage("data", section="data", config=DataSection, results=data_results,
               key_extra=data_key)(data_stage)
