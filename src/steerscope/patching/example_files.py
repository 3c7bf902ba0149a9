"""The patching examples of one vector as a file: ``examples.json`` next to its
:class:`~steerscope.patching.result.PatchingResult` (``{dataset: [example JSON]}``), written
by the pipeline's patching stage and read by its circuits stage and the report's explorer."""

from __future__ import annotations

import json
from pathlib import Path

from steerscope.artifacts import atomic_write_json
from steerscope.patching.data import PatchingExample
from steerscope.results_schema import upgrade_dataset_name

EXAMPLES_FILE = "examples.json"


def save_examples(folder: str | Path, datasets: dict[str, list[PatchingExample]]) -> Path:
    """Write ``datasets`` (``{dataset: [PatchingExample]}``) to ``folder/examples.json``
    atomically; returns the file's path."""
    return atomic_write_json(Path(folder) / EXAMPLES_FILE,
                             {k: [e.to_json() for e in x] for k, x in datasets.items()})


def load_examples(folder: str | Path) -> dict[str, list[PatchingExample]]:
    """The patching examples saved in ``folder`` (``{dataset: [PatchingExample]}``; dataset
    names of earlier versions in today's words)."""
    raw = json.loads((Path(folder) / EXAMPLES_FILE).read_text(encoding="utf-8"))
    return {upgrade_dataset_name(k): [PatchingExample.from_json(e) for e in v]
            for k, v in raw.items()}
