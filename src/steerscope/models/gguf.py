"""Reading ``.gguf`` files with transformers: the architecture check from the metadata alone,
and loading a dequantised float model with its tokenizer."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from steerscope.errors import ModelNotFoundError, SteerscopeError
from steerscope.models.archs import ARCHITECTURES, spec_for_gguf_arch

# GGUF architecture name -> transformers ``model_type`` (from the table rows' ``gguf_arch``
# and ``name``; e.g. gemma3 -> gemma3_text)
GGUF_MODEL_TYPES = {(s.gguf_arch or s.name): s.model_types[0] for s in ARCHITECTURES}


def quiet_transformers():
    """A context that lowers transformers' log level to errors (hides the GGUF notices)."""
    from transformers.utils import logging as hf_logging

    @contextlib.contextmanager
    def ctx():
        before = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            yield
        finally:
            hf_logging.set_verbosity(before)

    return ctx()


def load_gguf(gguf: Path, dtype: torch.dtype | str = torch.float32, **model_kwargs):
    """Tokenizer and dequantised float model read from one ``.gguf`` file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=str(gguf))
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent),
            gguf_file=str(gguf),
            dtype=dtype,
            quantization_config=GgufConfig(dequantize=True),
            **model_kwargs,
        )
    return tokenizer, model


def strip_quantization(model) -> None:
    """Detach the GGUF quantizer from a dequantised model so it saves (and reloads) as a plain
    float model without a ``quantization_config``."""
    model.hf_quantizer = None
    for attr in ("is_quantized", "_is_quantized"):
        if attr in vars(model):
            setattr(model, attr, False)
    if "quantization_method" in vars(model):
        model.quantization_method = None
    config = model.config
    if "quantization_config" in vars(config):
        delattr(config, "quantization_config")
    if "_is_quantized" in vars(config):
        config._is_quantized = False


def check_gguf_arch(path: str) -> None:
    """Raise the architecture error for a ``.gguf`` file of an unsupported architecture, from
    its metadata alone (fast); silently skip when the metadata reader is unavailable."""
    try:
        from transformers.integrations.gguf.reader import read_gguf_metadata
    except ImportError:  # pragma: no cover - other transformers versions: checked after loading
        return
    try:
        metadata, _ = read_gguf_metadata(path)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"cannot read the GGUF file '{path}' ({exc})",
                                 "pass a valid .gguf file") from exc
    arch = metadata.get("general.architecture")
    if isinstance(arch, bytes):
        arch = arch.decode()
    if arch:
        spec_for_gguf_arch(arch)


def gguf_depth(path: Path) -> tuple[int, str | None]:
    """``(block count, architecture name)`` from a ``.gguf`` file's metadata alone."""
    from transformers.integrations.gguf.reader import read_gguf_metadata

    try:
        meta, _ = read_gguf_metadata(str(path))
    except (OSError, ValueError) as exc:
        raise SteerscopeError(f"cannot read the GGUF file {path} ({exc})",
                              "pass a valid .gguf file") from exc
    arch = meta.get("general.architecture")
    arch = arch.decode() if isinstance(arch, bytes) else arch
    count = meta.get(f"{arch}.block_count")
    if count is None:
        raise SteerscopeError(f"the GGUF file {path} records no block count",
                              "pass a model folder instead")
    return int(count), arch
