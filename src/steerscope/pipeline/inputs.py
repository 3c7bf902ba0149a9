"""The run's inputs, checked and fingerprinted before any compute.

:func:`check_inputs` resolves the model source (reading only its ``config.json`` or GGUF
metadata, never the weights) and every prompt source, checks layer indices against the
model's depth and sample sizes against the prompt files, and returns :class:`Inputs`: the
model's shape and a content digest of the model and of each prompt source. The digests go
into the run folder's hash, so a changed prompt file or model gives a new run folder.

Prompt sources (``data.*`` keys): a file path, a named dataset (``available_datasets()``,
read from ``data.data_dir`` / ``$STEERSCOPE_DATA_DIR``, else the Hub), or ``builtin:NAME``
with NAME one of :data:`~steerscope.data.builtin.BUILTIN_SETS`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steerscope.data import PromptSet
from steerscope.data.builtin import builtin_prompts, known_builtin_sets
from steerscope.data.sampling import RELEASED_ORDER, RELEASED_TEST_KEY
from steerscope.errors import SteerscopeError
from steerscope.pipeline.behaviour import SPLIT_KEYS, SPLIT_SIDES, split_sources

# ``cfg`` below is a steerscope.pipeline.config.PipelineConfig; not imported here, because the
# config imports the stages that import this module (no import cycle, not even for types).
PipelineConfig = Any

BUILTIN_PREFIX = "builtin:"
SAMPLINGS = ("per_split", "released")  # data.sampling
# the released sampler (data.sampling, refusal's split names) -> prompts.json keys
RELEASED_SPLIT = {old: f"{side}_{split}" for old, (side, split) in SPLIT_SIDES.items()}
RELEASED_KEYS = tuple(RELEASED_SPLIT[k] for k in RELEASED_ORDER)
RELEASED_TEST = RELEASED_SPLIT[RELEASED_TEST_KEY]
_LARGE = 64 << 20  # files above this are fingerprinted by size + head + tail


@dataclass
class ModelShape:
    """What the pipeline needs to know about the model before loading it."""

    n_layers: int
    model_type: str | None
    digest: str  # content fingerprint of the model files (or of the alias)


@dataclass
class Inputs:
    model: ModelShape
    data: dict[str, str] = field(default_factory=dict)  # split key -> digest of its source
    # source -> its prompts as read by check_inputs (the data stage reuses them: each prompt
    # file is read once); not part of the digest
    prompt_sets: dict[Any, PromptSet] = field(default_factory=dict, repr=False, compare=False)

    def digest(self) -> str:
        return _sha({"model": self.model.digest, "data": self.data})


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def file_fingerprint(path: Path) -> str:
    """sha256 of a file's content (files above 64 MiB: of its size, first and last 4 MiB)."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if size <= _LARGE:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
        else:
            h.update(f"size={size}".encode())
            h.update(fh.read(4 << 20))
            fh.seek(size - (4 << 20))
            h.update(fh.read(4 << 20))
    return h.hexdigest()


def folder_fingerprint(folder: Path) -> str:
    """Fingerprint of every regular file directly in ``folder`` (names and contents)."""
    parts = {p.name: file_fingerprint(p) for p in sorted(folder.iterdir()) if p.is_file()}
    return _sha(parts)


# --- model -------------------------------------------------------------------------------------
def model_shape(source: str, revision: str | None = None) -> ModelShape:
    """Depth, type and fingerprint of ``source`` without loading weights (one-line errors for
    a missing path or an unreachable Hub id)."""
    from steerscope.models.archs import spec_for_model_type
    from steerscope.models.gguf import gguf_depth
    from steerscope.models.sources import (
        config_depth,
        hub_offline,
        model_source,
        read_config_json,
        resolve_source,
    )

    named = model_source(source)
    if named is not None:
        n, mt = named.call("shape")
        return ModelShape(n, mt, _sha(named.call("fingerprint")))
    src = resolve_source(source)  # ModelNotFoundError for a missing local path
    if src.kind == "dir":
        folder = Path(src.location)
        n, mt = config_depth(read_config_json(str(folder / "config.json")),
                             str(folder / "config.json"))
        if mt:
            spec_for_model_type(str(mt))
        return ModelShape(n, mt, folder_fingerprint(folder))
    if src.kind == "gguf":
        n, mt = gguf_depth(Path(src.location))
        return ModelShape(n, mt, file_fingerprint(Path(src.location)))
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(src.location, revision=revision,
                                            local_files_only=hub_offline())
    except Exception as exc:  # offline, unknown repo, gated ...
        raise SteerscopeError(f"cannot read the config of model '{source}' ({type(exc).__name__})",
                              "check the id, or pass a local folder when offline") from exc
    n, mt = config_depth(config.to_dict(), f"the config of '{source}'")
    if mt:
        spec_for_model_type(str(mt))
    return ModelShape(n, mt, _sha({"hub": source, "revision": revision}))


# --- data --------------------------------------------------------------------------------------
def source_kind(source, data_dir: str | None) -> str:
    """``"inline"`` (a behaviour's list of prompts), ``"builtin"``, ``"file"``, ``"local"``
    (named dataset in a data folder) or ``"hub"``; a one-line error for a source that is none
    of them (e.g. a missing file)."""
    from steerscope.behaviours.sources import is_builtin_prompt_set
    from steerscope.data.readers import DATA_DIR_ENV, DATASETS

    if isinstance(source, tuple):
        return "inline"
    if is_builtin_prompt_set(source):
        return "behaviour"
    if source.startswith(BUILTIN_PREFIX):
        name = source[len(BUILTIN_PREFIX):]
        if name not in known_builtin_sets():
            raise SteerscopeError(f"unknown built-in prompt set '{source}'",
                                  f"use builtin: followed by one of "
                                  f"{', '.join(known_builtin_sets())}")
        return "builtin"
    if Path(source).expanduser().is_file():
        return "file"
    if source.strip().lower() in DATASETS:
        root = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None
        return "local" if root is not None else "hub"
    raise SteerscopeError(f"prompt source '{source}' is neither an existing file nor a known "
                          "dataset", "fix the path, or use a dataset name or builtin:NAME")


def load_source(source, data_dir: str | None) -> PromptSet:
    """The prompts of one source (see the module docstring; also a behaviour's inline list or
    built-in prompt set)."""
    from steerscope.data import load_prompts

    kind = source_kind(source, data_dir)
    if kind in ("inline", "behaviour"):
        from steerscope.behaviours import load_source as behaviour_source

        return behaviour_source(source, data_dir=data_dir)
    if kind == "builtin":
        return builtin_prompts(source[len(BUILTIN_PREFIX):])
    return load_prompts(source, data_dir=data_dir)


def data_plan(cfg: PipelineConfig) -> dict[str, list[tuple[str, int]]]:
    """Source -> the (split key, size) pairs drawn from it, in split order; splits sharing a
    source get disjoint prompts. Sources: the behaviour's, or the data section's overrides
    (:func:`steerscope.pipeline.behaviour.split_sources`)."""
    sources = split_sources(cfg)
    sizes = {"train": cfg.data.n_train, "val": cfg.data.n_val, "test": cfg.data.n_test}
    plan: dict[str, list[tuple[str, int]]] = {}
    for key in SPLIT_KEYS:
        plan.setdefault(sources[key][0], []).append((key, sizes[key.split("_")[1]]))
    return plan


def sample_splits(cfg: PipelineConfig, loaded: dict[str, PromptSet]) -> dict[str, list[str]]:
    """Seeded samples of each split (``data_seed``). ``data.sampling: per_split``: a source
    used once is sampled with ``PromptSet.sample(n, seed)``; a source shared by several
    splits is shuffled once and cut into consecutive disjoint parts. ``released``: the
    authors' one stream (:func:`steerscope.data.sampling.released_splits`), present test the
    first ``n_test`` prompts of its source in file order (the released code evaluates the
    whole benchmark)."""
    if cfg.data.sampling == "released":
        return released_sample(cfg, loaded)
    out: dict[str, list[str]] = {}
    for source, uses in data_plan(cfg).items():
        ps = loaded[source]
        need = _check_size(source, uses, ps)
        if len(uses) == 1:
            key, n = uses[0]
            out[key] = ps.sample(n, seed=cfg.data_seed).instructions
            continue
        drawn = ps.sample(need, seed=cfg.data_seed).instructions
        start = 0
        for key, n in uses:
            out[key] = drawn[start:start + n]
            start += n
    return {k: out[k] for k in SPLIT_KEYS}


def released_sample(cfg: PipelineConfig, loaded: dict[str, PromptSet]) -> dict[str, list[str]]:
    """``data.sampling: released`` (see :func:`sample_splits`); every split has its own
    source (checked by :func:`check_released_sources`)."""
    from steerscope.data.sampling import released_splits

    sources = split_sources(cfg)
    pools = {old: loaded[sources[new][0]].instructions for old, new in RELEASED_SPLIT.items()}
    d = cfg.data
    drawn = released_splits(pools, n_train=d.n_train, n_val=d.n_val, n_test=d.n_test,
                            seed=cfg.data_seed)
    out = {RELEASED_SPLIT[old]: v for old, v in drawn.items()}
    out["present_test"] = loaded[sources["present_test"][0]].instructions[:d.n_test]
    return {k: out[k] for k in SPLIT_KEYS}


def released_pools(cfg: PipelineConfig) -> dict[str, list[str]]:
    """The instructions of each split's source, in file order, under the released sampler's
    split names (for the released NTP/PO prompts,
    :func:`steerscope.data.sampling.released_training_prompts`)."""
    sources = split_sources(cfg)
    return {old: load_source(sources[new][0], cfg.data.data_dir).instructions
            for old, new in RELEASED_SPLIT.items()}


def _split_files(source, data_dir: str | None) -> list[Path]:
    """The JSON files behind a file or local named-dataset source (none for other kinds)."""
    from steerscope.data.readers import DATA_DIR_ENV, DATASETS

    kind = source_kind(source, data_dir)
    if kind == "file":
        paths = [Path(source).expanduser()]
    elif kind == "local":
        root = Path(data_dir if data_dir is not None else os.environ[DATA_DIR_ENV]).expanduser()
        paths = [root / rel for rel in DATASETS[source.strip().lower()].local]
    else:
        return []
    return [p for p in paths if p.suffix.lower() == ".json"]


def check_released_sources(cfg: PipelineConfig) -> None:
    """``data.sampling: released`` needs one source per split (the released stream samples
    each split file on its own) and split files whose items carry the ``instruction`` field
    the released code reads; one-line errors naming the key or file, before any compute."""
    named = split_sources(cfg)
    seen: dict[Any, str] = {}
    for key in SPLIT_KEYS:
        source, where = named[key]
        if source in seen:
            raise SteerscopeError(f"config key '{where}' names the same source as "
                                  f"'{seen[source]}', but data.sampling: released samples "
                                  "each split from its own file",
                                  "give every split its own source or use data.sampling: "
                                  "per_split")
        seen[source] = where
    for key in (*RELEASED_KEYS, RELEASED_TEST):
        source, where = named[key]
        for path in _split_files(source, cfg.data.data_dir):
            try:
                items = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # unreadable files get the reader's own error
            bad = next((i for i, it in enumerate(items if isinstance(items, list) else [None])
                        if not isinstance(it, dict) or "instruction" not in it), None)
            if bad is not None:
                raise SteerscopeError(
                    f"config key '{where}': split file {path} item {bad + 1} has no "
                    "'instruction' field, which data.sampling: released reads",
                    "use a split file of {\"instruction\": ...} items or data.sampling: "
                    "per_split")


def _check_size(source: str, uses: list[tuple[str, int]], ps: PromptSet) -> int:
    need = sum(n for _, n in uses)
    if need > len(ps):
        keys = " + ".join(f"{k} ({n})" for k, n in uses)
        raise SteerscopeError(
            f"prompt source '{source}' has {len(ps)} prompts but {keys} need {need}",
            "lower data.n_train / n_val / n_test or use a larger source")
    return need


def _prompts_digest(ps: PromptSet) -> str:
    return _sha(ps.instructions)


# --- everything ---------------------------------------------------------------------------------
def check_inputs(cfg: PipelineConfig) -> Inputs:
    """Check the model and data against the config and fingerprint them (no weights read).

    Raises a one-line :class:`SteerscopeError` for a missing model or prompt file, a layer
    outside the model, a source too small for the asked sizes, or a ``device_map`` combined
    with several processes.
    """
    if cfg.data.data_dir is not None and not Path(cfg.data.data_dir).expanduser().is_dir():
        raise SteerscopeError(f"config key 'data.data_dir': folder {cfg.data.data_dir} does "
                              "not exist", "fix the path or drop the key")
    try:
        shape = model_shape(cfg.model.source, cfg.model.revision)
    except SteerscopeError as exc:
        raise SteerscopeError(f"config key 'model.source': {exc}") from None
    L = shape.n_layers
    v = cfg.vectors

    def check_layer(key: str, layer: int) -> None:
        if not 0 <= layer < L:
            raise SteerscopeError(f"config key '{key}': layer {layer} is out of range for this "
                                  f"{L}-layer model", f"use a layer from 0 to {L - 1}")

    if v.layer is not None:
        check_layer("vectors.layer", v.layer)
    for x in v.dim.layers or []:
        check_layer("vectors.dim.layers", x)
    for x in v.layers or []:
        check_layer("vectors.layers", x)
    if v.layer is not None and v.dim.layers is not None and v.layer not in v.dim.layers:
        raise SteerscopeError(f"config key 'vectors.layer' ({v.layer}) is not among "
                              f"vectors.dim.layers {v.dim.layers}", "drop one of the two keys")
    if cfg.model.device_map is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SteerscopeError("config key 'model.device_map' shards one model over several "
                              "GPUs and cannot be combined with several processes (torchrun)",
                              "launch one process or drop model.device_map")

    if cfg.data.sampling == "released":
        check_released_sources(cfg)
    named = {k: where for k, (_, where) in split_sources(cfg).items()}
    data: dict[str, str] = {}
    sizes: dict[str, int] = {}
    prompt_sets: dict[Any, PromptSet] = {}
    for source, uses in data_plan(cfg).items():
        keys = ", ".join(named[k] for k, _ in uses)
        try:
            ps = load_source(source, cfg.data.data_dir)  # a Hub dataset: downloaded now
            _check_size(source, uses, ps)
            if source_kind(source, cfg.data.data_dir) == "hub":
                digest = _sha({"hub": source})  # (the run hash of Hub sources is unchanged)
            else:
                digest = _prompts_digest(ps)
        except SteerscopeError as exc:
            raise SteerscopeError(f"config key {keys}: {exc}") from None
        prompt_sets[source] = ps
        for key, _ in uses:
            data[key] = digest
            sizes[key] = len(ps)
    _check_released_training_prompts(cfg, sizes)
    return Inputs(shape, {k: data[k] for k in SPLIT_KEYS}, prompt_sets)


def _check_released_training_prompts(cfg: PipelineConfig, sizes: dict[str, int]) -> None:
    """``vectors.preference.prompts: released`` draws ``n_prompts`` per class from the train
    splits: a one-line error when a train split is smaller."""
    pref = cfg.vectors.preference
    if pref.prompts != "released" or pref.n_prompts is None:
        return
    for key in ("present_train", "absent_train"):
        if pref.n_prompts > sizes[key]:
            raise SteerscopeError(
                f"config key 'vectors.preference.n_prompts': {pref.n_prompts} released training "
                f"prompts per class, but {key} has {sizes[key]}",
                f"lower vectors.preference.n_prompts to at most {sizes[key]}")
