"""Models: the architecture table, tiny random models, named model sources, loading real ones
(float or quantized)."""

from steerscope.artifacts import atomic_build_dir, cache_dir
from steerscope.models.archs import (
    ARCHITECTURES,
    SUPPORTED_MODEL_TYPES,
    ArchSpec,
    ModelArch,
    get_module,
    spec_for_model_type,
    validate_model,
)
from steerscope.models.embedded import (
    DEFAULT_MODEL,
    EMBEDDED_GGUF,
    default_model_dir,
    embedded_gguf_path,
)
from steerscope.models.gemma3 import GEMMA3_MODEL  # registers the named model gemma3-270m
from steerscope.models.loading import (
    DTYPES,
    LoadedModel,
    load_model,
    resolve_device,
    resolve_dtype,
)
from steerscope.models.quantization import (
    QUANTIZATIONS,
    linear_weight,
    parameter_bytes,
)
from steerscope.models.sources import (
    MODEL_SOURCES,
    ModelSource,
    model_source,
    register_model_source,
)
from steerscope.models.tiny import (
    TINY_ARCHS,
    save_tiny_chat_model,
    tiny_config,
    tiny_model,
    tiny_tokenizer,
)

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_MODEL",
    "DTYPES",
    "EMBEDDED_GGUF",
    "GEMMA3_MODEL",
    "MODEL_SOURCES",
    "QUANTIZATIONS",
    "SUPPORTED_MODEL_TYPES",
    "TINY_ARCHS",
    "ArchSpec",
    "LoadedModel",
    "ModelArch",
    "ModelSource",
    "atomic_build_dir",
    "cache_dir",
    "default_model_dir",
    "embedded_gguf_path",
    "get_module",
    "linear_weight",
    "load_model",
    "model_source",
    "parameter_bytes",
    "register_model_source",
    "resolve_device",
    "resolve_dtype",
    "spec_for_model_type",
    "tiny_config",
    "tiny_model",
    "tiny_tokenizer",
    "save_tiny_chat_model",
    "validate_model",
]
