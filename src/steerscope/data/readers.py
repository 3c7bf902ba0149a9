"""Named datasets (a local data folder or the Hugging Face Hub) and :func:`load_prompts`, which
reads a file (:mod:`steerscope.data.formats`), a named dataset or an in-memory list."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerscope.data.formats import read_prompt_file, require_text
from steerscope.data.prompts import Prompt, PromptSet
from steerscope.errors import DataError, SteerscopeError

DATA_DIR_ENV = "STEERSCOPE_DATA_DIR"


@dataclass(frozen=True)
class _Dataset:
    local: tuple[str, ...]  # files relative to the data directory, concatenated in order
    hub: tuple[str, str] | None = None  # (dataset repo id, filename) on the Hugging Face Hub


_SPLITS = ("train", "val", "test")
DATASETS: dict[str, _Dataset] = {
    "advbench": _Dataset(
        ("raw/advbench.csv",), ("walledai/AdvBench", "data/train-00000-of-00001.parquet")
    ),
    # all 200 "standard" text behaviours (HarmBench val + test), as in walledai/HarmBench
    "harmbench": _Dataset(
        ("raw/harmbench_val.csv", "raw/harmbench_test.csv"),
        ("walledai/HarmBench", "standard/train-00000-of-00001.parquet"),
    ),
    "harmbench_val": _Dataset(("raw/harmbench_val.csv",)),
    "harmbench_test": _Dataset(("raw/harmbench_test.csv",)),
    "jailbreakbench": _Dataset(
        ("raw/jailbreakbench.csv",), ("JailbreakBench/JBB-Behaviors", "data/harmful-behaviors.csv")
    ),
    "strongreject": _Dataset(
        ("raw/strongreject.csv",), ("walledai/StrongREJECT", "data/train-00000-of-00001.parquet")
    ),
    # Alpaca instructions with an empty input (locally: the union of the harmless splits)
    "alpaca": _Dataset(
        tuple(f"splits/harmless_{s}.json" for s in _SPLITS),
        ("tatsu-lab/alpaca", "alpaca_data.json"),
    ),
    **{f"harmful_{s}": _Dataset((f"splits/harmful_{s}.json",)) for s in _SPLITS},
    **{f"harmless_{s}": _Dataset((f"splits/harmless_{s}.json",)) for s in _SPLITS},
    **{f"alpaca_{s}": _Dataset((f"splits/harmless_{s}.json",)) for s in _SPLITS},
}


# refusal's prompt sets by prompts.json key: the Arditi et al. splits (``harmful_train`` ...,
# the ``SPLIT_SETS``) with JailbreakBench as the present side's test set (the paper's)
SPLIT_SETS = {f"{side}_{s}": f"{old}_{s}" for s in _SPLITS
              for side, old in (("present", "harmful"), ("absent", "harmless"))}
REFUSAL_SETS = {**SPLIT_SETS, "present_test": "jailbreakbench"}


def available_datasets() -> list[str]:
    """The names ``load_prompts`` resolves as datasets, sorted."""
    return sorted(DATASETS)


def load_prompts(
    source: str | os.PathLike | PromptSet | Iterable[str | Prompt],
    *,
    format: str | None = None,
    split: str | None = None,
    name: str | None = None,
    data_dir: str | os.PathLike | None = None,
    harmbench_functional: str | None = "standard",
    alpaca_input: str = "drop",
) -> PromptSet:
    """Load prompts from a file, a named dataset, or an in-memory list into a PromptSet.

    A string that is not an existing path but is a dataset name (``available_datasets()``;
    with ``split``, the name ``f"{source}_{split}"``) is read from ``data_dir`` or
    ``$STEERSCOPE_DATA_DIR`` (a folder laid out as ``raw/*.csv`` + ``splits/*.json``) when
    either is set, else downloaded from the Hugging Face Hub. ``name`` names the result
    (default: the dataset name or file stem). See :func:`read_prompt_file` for the options.
    """
    if isinstance(source, PromptSet):
        return source if name is None else PromptSet(source, name=name)
    if not isinstance(source, (str, os.PathLike)):
        return PromptSet(
            (
                p if isinstance(p, Prompt) else Prompt(require_text(p, "an in-memory list"))
                for p in source
            ),
            name=name or "prompts",
        )
    path = Path(source).expanduser()
    if isinstance(source, str) and not path.exists():
        key = source.strip().lower() + (f"_{split.strip().lower()}" if split else "")
        if key in DATASETS:
            return _load_named(key, data_dir, name, format, harmbench_functional, alpaca_input)
        if split is not None or (path.suffix == "" and os.sep not in source and "/" not in source):
            raise DataError(
                f"'{key}' is neither an existing file nor a known dataset",
                f"pass a file path or one of {', '.join(available_datasets())}",
            )
    if split is not None:
        raise SteerscopeError(
            f"split={split!r} only applies to named datasets, not to the file {path}",
            "drop split= or pass a dataset name",
        )
    return read_prompt_file(
        path,
        format=format,
        name=name,
        harmbench_functional=harmbench_functional,
        alpaca_input=alpaca_input,
    )


def _load_named(
    key: str,
    data_dir: Any,
    name: str | None,
    format: str | None,
    functional: str | None,
    alpaca_input: str,
) -> PromptSet:
    """A named dataset, from the local data directory if one is set, else from the Hub."""
    ds = DATASETS[key]
    opts = {
        "name": name or key,
        "label": key,
        "harmbench_functional": functional,
        "alpaca_input": alpaca_input,
    }
    root = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None
    if root is not None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DataError(
                f"data directory {root} does not exist", f"fix data_dir= or ${DATA_DIR_ENV}"
            )
        parts = []
        for rel in ds.local:
            if not (root / rel).exists():
                raise DataError(
                    f"dataset '{key}' needs {root / rel}, which does not exist",
                    f"put the file there, or unset data_dir=/${DATA_DIR_ENV} to download it",
                )
            parts.append(read_prompt_file(root / rel, format=format, **opts))
        return PromptSet((p for part in parts for p in part), name=name or key)
    if ds.hub is None:
        raise SteerscopeError(
            f"dataset '{key}' is only available from a local data directory",
            f"set ${DATA_DIR_ENV} or pass data_dir= (a folder with raw/ and splits/)",
        )
    repo, filename = ds.hub
    try:
        from huggingface_hub import hf_hub_download

        local = hf_hub_download(repo_id=repo, filename=filename, repo_type="dataset")
    except Exception as e:  # offline, missing repo, auth, network: all the same to the user
        raise SteerscopeError(
            f"cannot download dataset '{key}' from the Hugging Face Hub ({repo}, {filename}; "
            f"{type(e).__name__}) - offline or unreachable",
            f"pass a local path or set {DATA_DIR_ENV}",
        ) from e
    return read_prompt_file(local, format=format, **opts)
