"""Quantized models: the named quantization schemes, their transformers configs, and reading a
quantized linear layer's weight back as a float matrix.

``load_model(..., quantization=NAME)`` loads a model through one of transformers' quantization
configs (docs/quantization.md):

- ``"int8"``: torchao's ``Int8WeightOnlyConfig``: int8 weights with one float scale per output
  row, float activations. Runs on CPU and CUDA. A weight-only scheme: the layer computes
  ``x @ dequantize(W).T``, so every analysis that reads the dequantized weights (svv, logit
  lens, the patching graph's per-head projections) reproduces what the model computes;
- ``"bnb-int8"``, ``"nf4"``, ``"fp4"``: bitsandbytes' LLM.int8() and 4-bit NF4 / FP4, on CUDA.
  (bitsandbytes' CPU path casts inputs to 16-bit floats, so steerscope refuses it on CPU.)

A ``transformers`` quantization config object (``QuantoConfig(...)``, ``TorchAoConfig(...)``,
...) is passed through unchanged for schemes not named here.

:func:`linear_weight` is the one accessor every analysis uses to read a linear layer's weight:
the weight itself for a float layer, the dequantized float matrix for a quantized one.
:func:`parameter_bytes` counts the bytes a model's parameters really occupy (the int8 data
and scales of a quantized tensor, not the float shape it presents).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from steerscope.errors import SteerscopeError


@dataclass(frozen=True)
class QuantizationScheme:
    """One named quantization: the Python package it needs (``package``, installed by the
    pip extra ``extra``), the device types it runs on, and what it stores."""

    name: str
    package: str
    extra: str
    devices: tuple[str, ...]
    description: str


QUANTIZATIONS: dict[str, QuantizationScheme] = {
    s.name: s
    for s in (
        QuantizationScheme("int8", "torchao", "quant", ("cpu", "cuda"),
                           "torchao int8 weight-only (per-row scales, float activations)"),
        QuantizationScheme("bnb-int8", "bitsandbytes", "bnb", ("cuda",),
                           "bitsandbytes LLM.int8() (int8 weights and activations, fp16 outliers)"),
        QuantizationScheme("nf4", "bitsandbytes", "bnb", ("cuda",),
                           "bitsandbytes 4-bit NormalFloat weights (blocks of 64)"),
        QuantizationScheme("fp4", "bitsandbytes", "bnb", ("cuda",),
                           "bitsandbytes 4-bit float weights (blocks of 64)"),
    )
}
_NO_QUANTIZATION = ("none", "")


def _names() -> str:
    return ", ".join(QUANTIZATIONS)


def check_quantization(quantization: Any) -> str | None:
    """The scheme name ``quantization`` stands for (``None``: no quantization), or a one-line
    error for a name that is not one; a transformers quantization config object is accepted
    and returns its ``quant_method``. Checks nothing about the machine."""
    if quantization is None:
        return None
    if isinstance(quantization, str):
        key = quantization.strip().lower()
        if key in _NO_QUANTIZATION:
            return None
        if key in QUANTIZATIONS:
            return key
        raise SteerscopeError(f"unknown quantization {quantization!r}",
                              f"use one of {_names()}, or pass a transformers quantization "
                              "config object (e.g. QuantoConfig(weights='int8'))")
    from transformers.utils.quantization_config import QuantizationConfigMixin

    if isinstance(quantization, QuantizationConfigMixin):
        return str(getattr(quantization.quant_method, "value", quantization.quant_method))
    raise SteerscopeError(f"quantization must be a name or a transformers quantization config, "
                          f"got {type(quantization).__name__}", f"use one of {_names()}")


def quantization_config(quantization: Any, device: torch.device, dtype: Any):
    """The transformers quantization config that loads a model with ``quantization`` on
    ``device`` (its float parts and compute in ``dtype``), or ``None`` for no quantization.

    One-line errors, before any weights are read: an unknown name, a scheme whose package is
    not installed (naming the pip extra that installs it), a scheme that does not run on
    ``device``.
    """
    name = check_quantization(quantization)
    if name is None:
        return None
    if name not in QUANTIZATIONS:  # a transformers config object, passed through
        return check_config_backend(quantization, name, device, dtype)
    scheme = QUANTIZATIONS[name]
    if importlib.util.find_spec(scheme.package) is None:
        raise SteerscopeError(
            f"quantization '{name}' needs the package '{scheme.package}', which is not installed",
            f"pip install 'steerscope[{scheme.extra}]' (or drop quantization=)")
    if device.type not in scheme.devices:
        other = [s.name for s in QUANTIZATIONS.values() if device.type in s.devices]
        raise SteerscopeError(
            f"quantization '{name}' runs on {' or '.join(scheme.devices)}, not on "
            f"'{device.type}'",
            f"use a CUDA device, or quantization={other[0]!r} on {device.type}" if other
            else "use a CUDA device")
    import transformers

    if scheme.package == "torchao":
        from torchao.quantization import Int8WeightOnlyConfig

        return transformers.TorchAoConfig(Int8WeightOnlyConfig())
    if name == "bnb-int8":
        return transformers.BitsAndBytesConfig(load_in_8bit=True)
    compute = dtype if isinstance(dtype, torch.dtype) else torch.float16
    return transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=name,
                                           bnb_4bit_compute_dtype=compute)


def check_config_backend(config: Any, method: str, device: torch.device, dtype: Any):
    """``config`` (a transformers quantization config object) when transformers' quantizer for
    it finds its packages installed and accepts ``device``; else a one-line error naming the
    quant method, before any weights are read (transformers itself would raise a bare
    ``ImportError`` only once loading has begun)."""
    from transformers.quantizers import AutoHfQuantizer

    try:
        quantizer = AutoHfQuantizer.from_config(config)
        quantizer.validate_environment(device_map={"": str(device)},
                                       dtype=dtype if isinstance(dtype, torch.dtype) else None)
    except ImportError as exc:
        raise SteerscopeError(f"quantization config {type(config).__name__} ({method}) needs a "
                              f"package that is not installed ({_first_line(exc)})",
                              "install it, or use quantization='int8' (torchao) on this "
                              "machine") from None
    except (ValueError, RuntimeError) as exc:
        raise SteerscopeError(f"quantization config {type(config).__name__} ({method}) cannot "
                              f"load on '{device.type}' ({_first_line(exc)})",
                              f"use one of {_names()} or another device") from None
    return config


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class _TorchaoImportNoise(logging.Filter):
    """Drops the warnings torchao logs when it is imported with a CPU-only torch (each CUDA
    kernel library it cannot load; torch's note on its enum registrations). transformers
    imports torchao whenever it is installed, for float models too; the int8 weight-only path
    needs none of those libraries."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ((msg.startswith("Failed to load") and ".so" in msg)
                    or "register_constant()" in msg)


for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).addFilter(_TorchaoImportNoise())


def model_quantization(model: nn.Module) -> str | None:
    """The ``quant_method`` of a loaded model's quantization (``"torchao"``,
    ``"bitsandbytes"``, ...), or ``None`` for a float model."""
    config = getattr(getattr(model, "config", None), "quantization_config", None)
    if config is None:
        return None
    method = config.get("quant_method") if isinstance(config, dict) else config.quant_method
    return str(getattr(method, "value", method))


def release_loading_memory(model: nn.Module) -> None:
    """Give back the memory a quantized load leaves behind: the float parameters and buffers
    that stayed views of the checkpoint's memory map (the embeddings, the norms) are copied so
    the map, whose every page the quantizer read, can close; freed heap goes back to the
    system (glibc ``malloc_trim``, where there is one). Changes no value."""
    import ctypes
    import gc

    with torch.no_grad():
        for p in model.parameters():
            if type(p) is nn.Parameter and p.device.type == "cpu":
                p.data = p.data.clone()
        for module in model.modules():
            for name, b in list(module._buffers.items()):
                if type(b) is torch.Tensor and b.device.type == "cpu":
                    module._buffers[name] = b.clone()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


# --- reading weights -----------------------------------------------------------------------


def _bnb_dequantized(weight: torch.Tensor) -> torch.Tensor | None:
    """The float32 matrix of a bitsandbytes ``Int8Params`` / ``Params4bit`` weight, or
    ``None`` when ``weight`` is neither."""
    quant_state = getattr(weight, "quant_state", None)
    if quant_state is not None:  # Params4bit: packed uint8 [n*m/2, 1] and its block scales
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(weight.data, quant_state).float()
    scb = getattr(weight, "SCB", None)
    if scb is not None and weight.dtype == torch.int8:  # Int8Params: int8 [n, m], row scales
        return weight.data.float() * (scb.float().unsqueeze(1) / 127.0)
    return None


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight ``W`` [out, in] of linear layer ``module`` as the layer applies it
    (``y = x @ W.T + b``): ``module.weight`` itself for a float layer (same tensor, same
    dtype), the dequantized float32 matrix for a quantized one (torchao / quanto tensor
    subclasses, bitsandbytes 8- and 4-bit, any module with a ``dequantize()``)."""
    weight = getattr(module, "weight", None)
    if weight is None:
        raise SteerscopeError(f"module {type(module).__name__} has no weight to read")
    deq = _bnb_dequantized(weight)
    if deq is not None:
        return deq
    if type(weight) in (torch.Tensor, nn.Parameter) and weight.is_floating_point():
        return weight
    if hasattr(weight, "__tensor_flatten__") and hasattr(weight, "dequantize"):
        return weight.dequantize().float()  # torchao / quanto tensor subclasses
    if hasattr(module, "dequantize"):  # e.g. HQQLinear
        return module.dequantize().float()
    raise SteerscopeError(
        f"cannot read the weight of {type(module).__name__} (a {type(weight).__name__}) as a "
        "float matrix", f"load the model with one of the quantizations {_names()} or in float")


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """``(out_features, in_features)`` of a linear layer, float or quantized (a 4-bit weight
    is stored packed, so its tensor shape is not the matrix's)."""
    out_f, in_f = getattr(module, "out_features", None), getattr(module, "in_features", None)
    if isinstance(out_f, int) and isinstance(in_f, int):
        return out_f, in_f
    return tuple(module.weight.shape)


def _tensor_bytes(t: torch.Tensor) -> int:
    """Bytes of storage behind ``t``: the inner tensors of a tensor subclass (torchao, quanto),
    plus the scales bitsandbytes keeps beside its int8 / 4-bit data."""
    if hasattr(t, "__tensor_flatten__") and type(t) not in (torch.Tensor, nn.Parameter):
        names, _ = t.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(t, n)) for n in names)
    total = t.numel() * t.element_size()
    scb = getattr(t, "SCB", None)
    if isinstance(scb, torch.Tensor):
        total += scb.numel() * scb.element_size()
    absmax = getattr(getattr(t, "quant_state", None), "absmax", None)
    if isinstance(absmax, torch.Tensor):
        total += absmax.numel() * absmax.element_size()
    return total


def parameter_bytes(model: nn.Module) -> int:
    """Bytes the parameters and buffers of ``model`` occupy (each tied tensor once)."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += _tensor_bytes(t)
    return total
