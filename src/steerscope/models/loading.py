"""Loading a causal LM and its tokenizer.

``load_model`` accepts a named model of :mod:`steerscope.models.sources` (``"default"``: the
embedded SmolLM2-135M-Instruct, :mod:`steerscope.models.embedded`; ``"demo"``: the demo
refusal model, :mod:`steerscope.demo`), a local folder written by ``save_pretrained``, a
``.gguf`` file, or a Hugging Face Hub id. It checks the architecture against the table in
:mod:`steerscope.models.archs` *before* reading any weights, so an unsupported model fails in
about a second, and returns a :class:`LoadedModel`: the model in eval mode with gradients off,
a tokenizer that pads on the left, and the bound :class:`~steerscope.models.archs.ModelArch`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from steerscope.errors import SteerscopeError
from steerscope.models.archs import ModelArch, validate_model
from steerscope.models.chat import check_template_renders
from steerscope.models.file_checks import check_gguf_file, check_model_folder
from steerscope.models.gguf import check_gguf_arch, load_gguf, strip_quantization
from steerscope.models.quantization import (
    QUANTIZATIONS,
    check_quantization,
    model_quantization,
    quantization_config,
    release_loading_memory,
)
from steerscope.models.sources import (
    ResolvedSource,
    check_model_type,
    hub_offline,
    model_source,
    not_found,
    read_config_json,
    resolve_source,
)

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
_DTYPE_ALIASES = {"fp32": "float32", "float": "float32", "bf16": "bfloat16", "fp16": "float16",
                  "half": "float16"}


@dataclass
class LoadedModel:
    """A loaded causal LM with its tokenizer and its validated architecture binding.

    ``model_id`` is what was loaded (a value ``load_model`` accepts again); ``revision`` the
    Hub revision asked for (``None`` for local sources); ``path`` a local folder from which
    ``AutoModelForCausalLM.from_pretrained(path)`` loads the same model, or ``None`` when
    there is none (a ``.gguf`` file); ``dtype`` and ``device`` those of the model's weights
    (``device`` is where inputs go: the device of the input embeddings); ``quantization`` the
    quantization scheme asked for (``"int8"``, ...), or the ``quant_method`` of a checkpoint
    stored quantized, or ``None`` for a float model.
    """

    model: Any
    tokenizer: Any
    arch: ModelArch
    model_id: str
    revision: str | None
    path: str | None
    dtype: torch.dtype
    device: torch.device
    quantization: str | None = None  # the scheme asked for, or the checkpoint's quant_method


# --- arguments -----------------------------------------------------------------------------


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    """The torch dtype named by ``dtype`` (``"float32"``, ``"bfloat16"``, ``"float16"``, a
    floating ``torch.dtype``), or ``"auto"`` (the checkpoint's own dtype); a one-line error
    for anything else."""
    if isinstance(dtype, torch.dtype):
        if dtype.is_floating_point:
            return dtype
    elif isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        key = _DTYPE_ALIASES.get(key, key)
        if key == "auto":
            return "auto"
        if key in DTYPES:
            return DTYPES[key]
    raise SteerscopeError(
        f"unknown dtype {dtype!r}", f"use one of {', '.join([*DTYPES, 'auto'])} or a floating torch.dtype"
    )


def resolve_device(device: str | torch.device) -> torch.device:
    """The torch device named by ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``,
    or ``"auto"``: CUDA if available, else MPS, else CPU); a one-line error when the name is
    unknown or the device is not available."""
    valid = "use 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'"
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        name = device.strip().lower()
        if name == "auto":
            if torch.cuda.is_available():
                return torch.device("cuda")
            mps = getattr(torch.backends, "mps", None)
            if mps is not None and mps.is_available():
                return torch.device("mps")
            return torch.device("cpu")
        try:
            dev = torch.device(name)
        except (RuntimeError, ValueError):
            raise SteerscopeError(f"unknown device {device!r}", valid) from None
    else:
        raise SteerscopeError(f"unknown device {device!r}", valid)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SteerscopeError(f"device {str(dev)!r} was asked for but CUDA is not available",
                                  "use device='cpu' or device='auto'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SteerscopeError(
                f"device {str(dev)!r} does not exist: this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)", valid)
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise SteerscopeError("device 'mps' was asked for but MPS is not available",
                                  "use device='cpu' or device='auto'")
    return dev



# --- loading -------------------------------------------------------------------------------


def prepare_tokenizer(tokenizer) -> None:
    """Give ``tokenizer`` a pad token (its EOS token when it has none) and left padding."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            raise SteerscopeError("the tokenizer has no pad, EOS or unknown token to pad with",
                                  "set tokenizer.pad_token in the model folder")
    tokenizer.padding_side = "left"


def load_model(
    source: str | os.PathLike = "default",
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    device_map: str | dict | None = None,
    revision: str | None = None,
    attn_implementation: str | None = None,
    quantization: Any = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer, validate its architecture, and return them.

    ``source``: a named model (:func:`~steerscope.models.sources.model_source`: ``"default"``
    or ``"smollm2-135m-instruct"``, the embedded model from its cached copy; ``"demo"`` or
    ``"smollm2-135m-refusal-demo"``, the demo refusal model; both built on first use), a local folder with a ``config.json``, a ``.gguf`` file
    (dequantised to a float model; tokenizer read from the same file), or a Hub id
    (``org/name``, at ``revision``; honours ``HF_HUB_OFFLINE``). ``dtype``: ``"float32"``,
    ``"bfloat16"``, ``"float16"``, a torch dtype or ``"auto"``. ``device``: ``"cpu"``,
    ``"cuda[:N]"``, ``"mps"`` or ``"auto"``; ignored when ``device_map`` is given (passed to
    ``from_pretrained``, e.g. ``"auto"``). An unsupported architecture is rejected from the
    config before any weights are read. ``quantization``: ``None`` (float), a scheme name
    of :data:`~steerscope.models.quantization.QUANTIZATIONS` (``"int8"``: torchao int8
    weights, CPU or CUDA; ``"bnb-int8"``, ``"nf4"``, ``"fp4"``: bitsandbytes, CUDA) or a
    transformers quantization config; for a folder or Hub id (a ``.gguf`` file is refused).
    The model is returned in eval mode with
    ``requires_grad`` off; the tokenizer pads on the left (with EOS when it has no pad token).
    """
    torch_dtype = resolve_dtype(dtype)
    target = None if device_map is not None else resolve_device(device)
    revision = None if revision is None else str(revision)
    scheme = check_quantization(quantization)
    quant_config = quantization_config(quantization, target or resolve_device("auto"), torch_dtype)

    named = model_source(source)
    if named is not None:
        if revision is not None:
            raise SteerscopeError(f"revision= applies to Hub ids, not to the named model "
                                  f"'{named.model_id}'", "drop revision")
        src = ResolvedSource("dir", str(named.call("folder")), named.model_id)
    else:
        src = resolve_source(source)
        if revision is not None and src.kind != "hub":
            raise SteerscopeError(f"revision= applies to Hub ids, not to the local model '{src.location}'",
                                  "drop revision")

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_kwargs: dict[str, Any] = {}
    if attn_implementation is not None:
        model_kwargs["attn_implementation"] = attn_implementation
    if device_map is not None:
        model_kwargs["device_map"] = device_map
    if quant_config is not None:
        if src.kind == "gguf":
            raise SteerscopeError(f"quantization= applies to a model folder or Hub id, not to the "
                                  f".gguf file '{src.location}'",
                                  "load it once in float and save_pretrained it to a folder")
        model_kwargs["quantization_config"] = quant_config
        if device_map is None:  # quantized weights are placed while loading, never moved
            model_kwargs["device_map"] = {"": str(target)}
            target = None

    path: str | None
    if src.kind == "dir":
        check_model_type(read_config_json(os.path.join(src.location, "config.json")),
                          os.path.join(src.location, "config.json"))
        check_model_folder(src.location)  # headers only: truncated weights, a wrong depth
        try:
            tokenizer = AutoTokenizer.from_pretrained(src.location)
        except (OSError, ValueError, RecursionError) as exc:  # RecursionError: a deep JSON file
            raise SteerscopeError(
                f"cannot load a tokenizer from '{src.location}' ({type(exc).__name__})",
                "save the model's tokenizer into the same folder (tokenizer.save_pretrained)",
            ) from exc
        check_template_renders(tokenizer, src.location)  # before any weight is read
        model = AutoModelForCausalLM.from_pretrained(src.location, dtype=torch_dtype, **model_kwargs)
        path = src.location
    elif src.kind == "gguf":
        check_gguf_file(src.location)  # header only: a truncated file, a wrong block count
        check_gguf_arch(src.location)
        tokenizer, model = load_gguf(Path(src.location), torch_dtype, **model_kwargs)
        check_template_renders(tokenizer, src.location)
        strip_quantization(model)
        path = None
    else:
        from transformers.utils import cached_file

        offline = hub_offline()
        hub_kwargs = dict(revision=revision, local_files_only=offline)
        try:
            config_file = cached_file(src.location, "config.json", **hub_kwargs)
        except Exception as exc:  # offline, unknown repo, gated, bad revision, network ...
            raise not_found(src.location) from exc
        if config_file is None:
            raise not_found(src.location)
        check_model_type(read_config_json(config_file), f"the config.json of '{src.location}'")
        try:
            tokenizer = AutoTokenizer.from_pretrained(src.location, **hub_kwargs)
            check_template_renders(tokenizer, src.location)
            model = AutoModelForCausalLM.from_pretrained(src.location, dtype=torch_dtype,
                                                         **hub_kwargs, **model_kwargs)
        except OSError as exc:
            raise not_found(src.location) from exc
        path = os.path.dirname(config_file)

    model.eval()
    model.requires_grad_(False)
    if quant_config is not None:
        release_loading_memory(model)
    if target is not None:
        model.to(target)
    arch = validate_model(model)
    prepare_tokenizer(tokenizer)
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        arch=arch,
        model_id=src.model_id,
        revision=revision,
        path=path,
        dtype=model.dtype,
        device=model.get_input_embeddings().weight.device,
        quantization=scheme if scheme in QUANTIZATIONS else model_quantization(model),
    )
