"""Stage ``data``: seeded, disjoint samples of the six prompt splits (``prompts.json``) of the
run's behaviour, and the behaviour's definition (``behaviour.json``).

The behaviour (top-level config key ``behaviour``: a built-in name, default ``refusal``, or a
YAML file, :func:`steerscope.behaviours.load_behaviour`) gives the prompt sources of its two
sides (present / absent × train / val / test); config section ``data``
(:class:`DataSection`) overrides any of them (``present_train`` ..., or refusal's names
``harmful_train`` ... for the same keys) and sets the sample sizes. Sources are resolved,
checked and fingerprinted by :mod:`steerscope.pipeline.inputs` before any compute.

``prompts.json`` keys are ``<side>_<split>`` (``present_train`` ... ``absent_test``,
:data:`~steerscope.pipeline.behaviour.SPLIT_KEYS`; files of earlier versions named the sides
``harmful_*`` / ``harmless_*``, read by :func:`~steerscope.pipeline.stages.common.read_prompts`).
Each prompt source is read once: the input checks' copy is reused. results.json sections
``data`` (the sample counts) and ``behaviour`` (``name`` and ``definition``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from steerscope.artifacts import atomic_write_json
from steerscope.pipeline.behaviour import SPLIT_SIDES, run_behaviour
from steerscope.pipeline.checks import fail, known, not_empty, positive_int
from steerscope.pipeline.registry import StageOutput, register_stage
from steerscope.pipeline.stages.common import BEHAVIOUR_FILE, PROMPTS_FILE, read_json


@dataclass
class DataSection:
    """Prompt sources (None: the behaviour's) and sample sizes (per side). A source is a
    file, a named dataset (resolved in ``data_dir`` / ``$STEERSCOPE_DATA_DIR`` or on the Hub)
    or ``builtin:NAME``. ``harmful_*`` / ``harmless_*`` are refusal's names for
    ``present_*`` / ``absent_*`` (the same keys; give one of the two)."""

    data_dir: str | None = None
    """Folder of named datasets (None: $STEERSCOPE_DATA_DIR)."""
    present_train: str | None = None
    """Present-side prompts of the train split: a file, dataset name or builtin:NAME (None:
    the behaviour's)."""
    absent_train: str | None = None
    """Absent-side prompts of the train split: a file, dataset name or builtin:NAME (None:
    the behaviour's)."""
    present_val: str | None = None
    """Present-side prompts of the val split: a file, dataset name or builtin:NAME (None:
    the behaviour's)."""
    absent_val: str | None = None
    """Absent-side prompts of the val split: a file, dataset name or builtin:NAME (None: the
    behaviour's)."""
    present_test: str | None = None
    """Present-side prompts of the test split: a file, dataset name or builtin:NAME (None:
    the behaviour's)."""
    absent_test: str | None = None
    """Absent-side prompts of the test split: a file, dataset name or builtin:NAME (None:
    the behaviour's)."""
    harmful_train: str | None = None
    """Refusal's name for present_train."""
    harmless_train: str | None = None
    """Refusal's name for absent_train."""
    harmful_val: str | None = None
    """Refusal's name for present_val."""
    harmless_val: str | None = None
    """Refusal's name for absent_val."""
    harmful_test: str | None = None
    """Refusal's name for present_test."""
    harmless_test: str | None = None
    """Refusal's name for absent_test."""
    n_train: int = 128
    """Train prompts per side (a seeded sample)."""
    n_val: int = 32
    """Validation prompts per side (a seeded sample)."""
    n_test: int = 100
    """Test prompts per side (a seeded sample)."""
    seed: int | None = None
    """The sampling seed (None: the top-level seed)."""
    sampling: str = "per_split"
    """per_split: each split sampled on its own seeded stream | released: the authors' one
    stream (present/absent train, present/absent val, then absent test)."""

    def check(self, cfg) -> None:
        """Positive sizes, a non-negative seed, a known sampling, no blank source, no key
        given twice."""
        from steerscope.pipeline.inputs import SAMPLINGS

        known("data.sampling", [self.sampling], SAMPLINGS)
        for key in ("n_train", "n_val", "n_test"):
            positive_int(f"data.{key}", getattr(self, key))
        if self.seed is not None and self.seed < 0:
            fail("data.seed", f"must be non-negative, got {self.seed}", "pass e.g. 42")
        for key, (side, split) in SPLIT_SIDES.items():
            generic = f"{side}_{split}"
            for k in (generic, key):
                if getattr(self, k) is not None:
                    not_empty(f"data.{k}", getattr(self, k), "name a prompt file or dataset")
            if getattr(self, generic) is not None and getattr(self, key) is not None:
                fail(f"data.{key}", f"and data.{generic} name the same split",
                     f"keep data.{generic} (data.{key} is refusal's name for it)")


def data_stage(ctx, section, inputs) -> dict[str, Any]:
    """Seeded, disjoint samples of the six prompt splits (raw instructions), and the
    behaviour's definition."""
    from steerscope.pipeline.inputs import data_plan, load_source, sample_splits

    read = ctx.inputs_digest.prompt_sets  # read by the input checks
    loaded = {src: read[src] if src in read else load_source(src, section.data_dir)
              for src in data_plan(ctx.config)}
    splits = sample_splits(ctx.config, loaded)
    atomic_write_json(ctx.out / PROMPTS_FILE, splits)
    b = ctx.behaviour
    atomic_write_json(ctx.out / BEHAVIOUR_FILE, {"name": b.name, "definition": b.to_dict()})
    ctx.log(", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    return {"file": PROMPTS_FILE, "behaviour": BEHAVIOUR_FILE,
            "counts": {k: len(v) for k, v in splits.items()}}


def data_results(out: StageOutput, so_far: dict) -> dict[str, Any]:
    """``data``: the number of prompts of each split; ``behaviour``: its name and
    definition."""
    return {"data": {"counts": out.outputs.get("counts", {})},
            "behaviour": read_json(out, BEHAVIOUR_FILE)}


def data_key(cfg, inputs) -> dict[str, Any]:
    """The prompt sources' digests, the sampling seed and the behaviour's definition key
    this stage (a changed judge or score changes ``behaviour.json``, so every later stage)."""
    return {"data": inputs.data, "seed": cfg.data_seed,
            "behaviour": run_behaviour(cfg).to_dict()}


register_stage("data", section="data", config=DataSection, results=data_results,
               key_extra=data_key, order=20)(data_stage)
