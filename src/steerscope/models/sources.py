"""Where a model comes from: the table of named models steerscope finds or builds itself
(``"default"``, ``"gemma3-270m"``, and the demo refusal models that :mod:`steerscope.demo`
registers), and the classification of every other source (local folder, ``.gguf`` file, Hub
id), without loading anything.

A named model is a :class:`ModelSource` row whose fields are functions. The embedded models'
rows are added by their own modules (:mod:`steerscope.models.embedded`,
:mod:`steerscope.models.gemma3`); a model built by a higher layer registers its row from there
(:mod:`steerscope.demo.sources`, on ``import steerscope.demo``; a name not registered yet
first imports the listed providers, :mod:`steerscope.providers`), so ``models/`` never imports
it, by name or otherwise. A new named
model is one :func:`register_model_source` call.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerscope.errors import ModelNotFoundError, SteerscopeError
from steerscope.models.archs import spec_for_model_type
from steerscope.providers import load_providers


@dataclass(frozen=True)
class ModelSource:
    """A model known by name. ``aliases``: the names ``load_model`` accepts for it (lower
    case); ``model_id``: the id it is loaded under. Each remaining field is a function taking
    no argument (or, as before, a ``"module:function"`` string naming one, imported on use): ``folder`` returns the folder ``from_pretrained`` loads (building and caching
    it on first use); ``fingerprint`` a JSON-able dict that identifies the model without
    reading weights (it goes into run hashes); ``shape`` ``(n_layers, model_type)`` without
    reading weights; ``tokenizer_folder`` a folder that holds (or will hold, once built) the
    model's tokenizer, without building."""

    model_id: str
    aliases: tuple[str, ...]
    folder: Callable[[], Any] | str
    fingerprint: Callable[[], Any] | str
    shape: Callable[[], Any] | str
    tokenizer_folder: Callable[[], Any] | str

    def call(self, field_name: str) -> Any:
        """Call the function of the field ``field_name``."""
        fn = getattr(self, field_name)
        if isinstance(fn, str):
            module, _, name = fn.partition(":")
            fn = getattr(importlib.import_module(module), name)
        return fn()


#: every named model, in registration order (the embedded ones register on import of
#: :mod:`steerscope.models`, the demo models on import of :mod:`steerscope.demo`)
MODEL_SOURCES: list[ModelSource] = []


def model_source(name: Any) -> ModelSource | None:
    """The :class:`ModelSource` that ``name`` (case-insensitive, a str) names, or None."""
    if not isinstance(name, str):
        return None
    found = registered_source(name)
    if found is None:
        load_providers()  # e.g. the demo models (steerscope.demo), registered on import
        found = registered_source(name)
    return found


def registered_source(name: str) -> ModelSource | None:
    """The row registered so far under alias ``name`` (no provider imported), or None."""
    key = name.strip().lower()
    return next((s for s in MODEL_SOURCES if key in s.aliases), None)


def register_model_source(source: ModelSource) -> None:
    """Add a named model (a one-line error when one of its aliases is taken by another row;
    registering the same row again does nothing)."""
    if source in MODEL_SOURCES:
        return
    taken = [a for a in source.aliases if registered_source(a) is not None]
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
