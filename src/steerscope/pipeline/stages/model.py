"""Stage ``model``: load and validate the model, record its identity (``model.json``).

Config section ``model`` (:class:`ModelSection`, passed to
:func:`steerscope.models.load_model`); results.json section ``model``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from steerscope.artifacts import atomic_write_json
from steerscope.errors import SteerscopeError
from steerscope.pipeline.checks import fail
from steerscope.pipeline.registry import StageOutput, register_stage
from steerscope.pipeline.stages.common import read_json

MODEL_FILE = "model.json"


@dataclass
class ModelSection:
    """Which model to load and how (passed to :func:`steerscope.models.load_model`)."""

    source: str = "default"
    """The model: 'default', 'demo', a local folder, a .gguf file or a Hub id."""
    dtype: str = "float32"
    """Weight dtype: float32 | bfloat16 | float16 | auto."""
    device: str = "cpu"
    """Device: cpu | cuda | cuda:N | mps | auto (per-rank cuda under torchrun)."""
    device_map: str | dict[str, Any] | None = None
    """A transformers device map, e.g. auto: shard over the GPUs (None: one device)."""
    revision: str | None = None
    """Hub revision (None: the default branch)."""
    attn_implementation: str | None = None
    """Attention implementation passed to transformers (None: its default)."""
    quantization: str | None = None
    """Load the weights quantized: int8 | bnb-int8 | nf4 | fp4 (None: float)."""
    chat_template: str | None = None
    """Prompt format: None = the tokenizer's own chat template (dates pinned); a name such
    as 'llama3-no-system-header' (the authors' released Llama-3 format) or Jinja text."""

    def check(self, cfg) -> None:
        """The dtype, quantization and chat template are known; the source is not blank."""
        from steerscope.models.loading import resolve_dtype
        from steerscope.models.quantization import check_quantization

        try:
            resolve_dtype(self.dtype)
        except SteerscopeError as exc:
            raise SteerscopeError(f"config key 'model.dtype': {exc}") from None
        try:
            check_quantization(self.quantization)
        except SteerscopeError as exc:
            raise SteerscopeError(f"config key 'model.quantization': {exc}") from None
        if not self.source.strip():
            fail("model.source", "is empty",
                 "name a model: 'default', 'demo', a folder or a Hub id")
        if self.chat_template is not None:
            from steerscope.models.chat import resolve_chat_template

            try:
                resolve_chat_template(self.chat_template)
            except SteerscopeError as exc:
                raise SteerscopeError(f"config key 'model.chat_template': {exc}") from None


def model_info(loaded) -> dict[str, Any]:
    """The model's identity and shape (the ``model`` section of results.json, less the
    steering layer)."""
    a = loaded.arch
    return {
        "id": loaded.model_id,
        "revision": loaded.revision,
        "architecture": a.name,
        "model_type": getattr(loaded.model.config, "model_type", None),
        "n_layers": a.n_layers,
        "d_model": a.d_model,
        "n_heads": a.n_heads,
        "n_kv_heads": a.n_kv_heads,
        "d_head": a.d_head,
        "vocab_size": a.vocab_size,
        "dtype": str(loaded.dtype).removeprefix("torch."),
        # only when quantized, so a float run's model.json (and its digest) is unchanged
        **({"quantization": loaded.quantization} if loaded.quantization else {}),
    }


def model_stage(ctx, section, inputs) -> dict[str, Any]:
    """Load and validate the model; record its identity. A model without a local folder (a
    .gguf file) is saved as a float safetensors folder ``hf/`` so that ``results.json``'s
    ``model.path`` always loads with ``AutoModelForCausalLM.from_pretrained``."""
    loaded = ctx.model()
    info = model_info(loaded)
    if loaded.path is None:
        if ctx.is_main:
            loaded.model.save_pretrained(ctx.out / "hf")
            loaded.tokenizer.save_pretrained(ctx.out / "hf")
        info["path"] = None
        info["local_copy"] = "hf"
    else:
        info["path"] = str(loaded.path)
    atomic_write_json(ctx.out / MODEL_FILE, info)
    ctx.log(f"{info['id']}: {info['architecture']}, {info['n_layers']} layers, "
            f"d_model {info['d_model']}")
    return {"file": MODEL_FILE}


def model_results(out: StageOutput, so_far: dict) -> dict[str, Any]:
    """``model``: id, revision, architecture, path first, then the shape."""
    info = read_json(out, MODEL_FILE)
    if info.get("path") is None and info.get("local_copy"):
        info["path"] = str(out.dir / info["local_copy"])
    info.pop("local_copy", None)
    keys = ("id", "revision", "architecture", "path")
    return {"model": {**{k: info.get(k) for k in keys},
                      **{k: v for k, v in info.items() if k not in keys}}}


def model_key(cfg, inputs) -> dict[str, Any]:
    """The model's content digest keys this stage."""
    return {"model": inputs.model.digest}


register_stage("model", section="model", config=ModelSection, results=model_results,
               key_extra=model_key, order=10)(model_stage)
