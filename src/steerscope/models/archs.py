"""The architecture table: where each component of a supported decoder lives, as data.

A new architecture is a new row in ``ARCHITECTURES``, not new code. Module paths are dotted
attribute paths relative to the ``*ForCausalLM`` model (``layers``, ``final_norm``, ...) or
relative to one decoder block (``attn``, ``q_proj``, ...). ``validate_model`` checks a loaded
model against its row (every path resolves, every shape matches the config) and returns the
bound :class:`ModelArch` used by the runtime and by every analysis.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from steerscope.errors import SteerscopeError, UnsupportedArchitectureError
from steerscope.models.quantization import linear_shape


@dataclass(frozen=True)
class HookSite:
    """Where the runtime hooks one hook point (:data:`steerscope.runtime.POINTS`) in a block.

    ``module``: a block component field of :class:`ArchSpec` (``attn``, ``mlp``, ``q_proj``,
    ...) or ``"block"`` (the decoder block itself; at layer ``n_layers``, the final norm).
    ``kind``: ``"input"`` (a forward pre-hook on the module's first input, passed by position
    or as keyword ``arg``), ``"output"`` (a forward hook on its output, the first element of a
    tuple), ``"heads_input"`` / ``"heads_output"`` (the same, seen as ``[batch, seq, heads,
    d_head]`` with ``heads`` the :class:`ModelArch` attribute giving the head count) or
    ``"pattern"`` (the attention probabilities, through the attention-function swap)."""

    module: str
    kind: str
    arg: str = "hidden_states"
    heads: str | None = None


# hook point -> where it lives, for every Hugging Face decoder in the table (a row whose
# modules take other arguments gives its own ``hook_sites``)
HOOK_SITES: dict[str, HookSite] = {
    "resid_pre": HookSite("block", "input"),
    "attn_in": HookSite("attn", "input"),
    "mlp_in": HookSite("mlp", "input", arg="x"),
    "attn_out": HookSite("attn", "output"),
    "mlp_out": HookSite("mlp", "output"),
    "q": HookSite("q_proj", "heads_output", heads="n_heads"),
    "k": HookSite("k_proj", "heads_output", heads="n_kv_heads"),
    "v": HookSite("v_proj", "heads_output", heads="n_kv_heads"),
    "z": HookSite("o_proj", "heads_input", arg="input", heads="n_heads"),
    "pattern": HookSite("attn", "pattern"),
}


@dataclass(frozen=True)
class ArchSpec:
    """One row of the architecture table (pure data): a model family's module paths, where
    each hook point lives (``hook_sites``), its tiny test config (``tiny_config_class``, a
    transformers config class name, with ``tiny_config_extra``; :mod:`steerscope.models.tiny`)
    and its GGUF architecture name (``gguf_arch``, when it differs from ``name``)."""

    name: str
    model_types: tuple[str, ...]
    base: str = "model"  # the decoder stack (embeddings, layers, final norm)
    embed: str = "model.embed_tokens"
    layers: str = "model.layers"
    final_norm: str = "model.norm"
    unembed: str = "lm_head"
    # relative to one block
    attn: str = "self_attn"
    q_proj: str = "self_attn.q_proj"
    k_proj: str = "self_attn.k_proj"
    v_proj: str = "self_attn.v_proj"
    o_proj: str = "self_attn.o_proj"
    mlp: str = "mlp"
    attn_norm: str = "input_layernorm"  # pre-attention norm (its output enters q/k/v)
    mlp_norm: str = "post_attention_layernorm"  # pre-MLP norm (its output enters the MLP)
    attn_post_norm: str | None = None  # norm applied to the attention output before the residual add
    mlp_post_norm: str | None = None  # norm applied to the MLP output before the residual add
    q_norm: str | None = None  # per-head norm on q_proj output (Qwen3, Gemma3)
    k_norm: str | None = None
    norm_offset: float = 0.0  # the effective norm weight is weight + norm_offset ((1+γ) for Gemma)
    embed_scale: bool = False  # embeddings are multiplied by sqrt(d) (Gemma)
    final_logit_softcap_attr: str | None = None  # config attribute holding the final logit soft-cap
    attn_logit_softcap_attr: str | None = None  # config attribute holding the attention soft-cap
    hook_sites: Mapping[str, HookSite] = field(default_factory=lambda: dict(HOOK_SITES),
                                               hash=False)
    tiny_config_class: str | None = None  # e.g. "LlamaConfig"; None: no tiny test model
    tiny_config_extra: Mapping[str, Any] = field(default_factory=dict, hash=False)
    gguf_arch: str | None = None  # GGUF ``general.architecture`` (default: ``name``)


_LLAMA_LIKE = dict(
    attn_norm="input_layernorm",
    mlp_norm="post_attention_layernorm",
)
_GEMMA_LIKE = dict(
    attn_norm="input_layernorm",
    attn_post_norm="post_attention_layernorm",
    mlp_norm="pre_feedforward_layernorm",
    mlp_post_norm="post_feedforward_layernorm",
    norm_offset=1.0,
    embed_scale=True,
)

ARCHITECTURES: tuple[ArchSpec, ...] = (
    ArchSpec(name="llama", model_types=("llama",), tiny_config_class="LlamaConfig",
             **_LLAMA_LIKE),
    ArchSpec(name="mistral", model_types=("mistral",), tiny_config_class="MistralConfig",
             tiny_config_extra={"sliding_window": None}, **_LLAMA_LIKE),
    ArchSpec(name="qwen2", model_types=("qwen2",), tiny_config_class="Qwen2Config",
             **_LLAMA_LIKE),
    ArchSpec(
        name="qwen3",
        model_types=("qwen3",),
        q_norm="self_attn.q_norm",
        k_norm="self_attn.k_norm",
        tiny_config_class="Qwen3Config",
        **_LLAMA_LIKE,
    ),
    ArchSpec(
        name="gemma2",
        model_types=("gemma2",),
        final_logit_softcap_attr="final_logit_softcapping",
        attn_logit_softcap_attr="attn_logit_softcapping",
        tiny_config_class="Gemma2Config",
        tiny_config_extra={"sliding_window": 256, "query_pre_attn_scalar": 16},
        **_GEMMA_LIKE,
    ),
    ArchSpec(
        name="gemma3",
        model_types=("gemma3_text",),
        q_norm="self_attn.q_norm",
        k_norm="self_attn.k_norm",
        final_logit_softcap_attr="final_logit_softcapping",
        attn_logit_softcap_attr="attn_logit_softcapping",
        tiny_config_class="Gemma3TextConfig",
        tiny_config_extra={"sliding_window": 256, "query_pre_attn_scalar": 16},
        **_GEMMA_LIKE,
    ),
)

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(t for a in ARCHITECTURES for t in a.model_types)


def spec_for_model_type(model_type: str) -> ArchSpec:
    """The table row for a ``config.model_type``; a clear error when there is none."""
    for spec in ARCHITECTURES:
        if model_type in spec.model_types:
            return spec
    raise UnsupportedArchitectureError(
        f"unsupported architecture '{model_type}'",
        f"steerscope supports {', '.join(SUPPORTED_MODEL_TYPES)}; add a row to "
        "steerscope.models.archs.ARCHITECTURES for a new one",
    )


def spec_for_gguf_arch(arch: str) -> ArchSpec:
    """The table row of a GGUF ``general.architecture`` name (its ``gguf_arch``, else its
    ``name`` or a model type); the architecture error when there is none."""
    for spec in ARCHITECTURES:
        if arch == (spec.gguf_arch or spec.name):
            return spec
    return spec_for_model_type(arch)


def get_module(root: nn.Module, path: str) -> nn.Module:
    """Resolve a dotted attribute path (``model.layers``) below ``root``."""
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass
class ModelArch:
    """A validated binding of an :class:`ArchSpec` to one loaded model.

    Shapes: ``d_model`` residual width, ``n_heads`` query heads H, ``n_kv_heads`` key/value
    heads G (GQA: query head h reads KV head ``h // (H // G)``), ``d_head`` head dim.
    """

    spec: ArchSpec
    model: nn.Module = field(repr=False)
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    vocab_size: int

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def group_size(self) -> int:
        """Query heads per KV head."""
        return self.n_heads // self.n_kv_heads

    def kv_head_of(self, head: int) -> int:
        """The KV head that query head ``head`` reads (GQA)."""
        return head // self.group_size

    # --- module access -------------------------------------------------------------
    @property
    def base(self) -> nn.Module:
        return get_module(self.model, self.spec.base)

    @property
    def layers(self) -> nn.ModuleList:
        return get_module(self.model, self.spec.layers)

    def block(self, layer: int) -> nn.Module:
        return self.layers[layer]

    def component(self, layer: int, name: str) -> nn.Module | None:
        """A block component by its table field name (``q_proj``, ``mlp_norm``, ...)."""
        path = getattr(self.spec, name)
        return None if path is None else get_module(self.block(layer), path)

    @property
    def final_norm(self) -> nn.Module:
        return get_module(self.model, self.spec.final_norm)

    def hook_module(self, point: str, layer: int) -> tuple[nn.Module, HookSite]:
        """The module the runtime hooks for ``point`` at ``layer`` and how
        (:attr:`ArchSpec.hook_sites`); ``resid_pre`` at ``n_layers`` is the final norm's input."""
        site = self.spec.hook_sites.get(point)
        if site is None:
            raise SteerscopeError(f"the '{self.name}' architecture row has no hook site for '{point}'",
                                  "add it to the row's hook_sites")
        if site.module == "block":
            module = self.final_norm if layer == self.n_layers else self.block(layer)
        else:
            module = self.component(layer, site.module)
        return module, site

    @property
    def unembed(self) -> nn.Module:
        return get_module(self.model, self.spec.unembed)

    @property
    def embed(self) -> nn.Module:
        return get_module(self.model, self.spec.embed)

    def norm_weight(self, norm: nn.Module) -> torch.Tensor:
        """The effective multiplicative weight γ_eff of an RMSNorm ((1+γ) for Gemma)."""
        return norm.weight + self.spec.norm_offset

    def norm_eps(self, norm: nn.Module) -> float:
        for attr in ("variance_epsilon", "eps"):
            if hasattr(norm, attr):
                return float(getattr(norm, attr))
        raise SteerscopeError(f"cannot find the epsilon of norm {type(norm).__name__}")

    @property
    def final_logit_softcap(self) -> float | None:
        attr = self.spec.final_logit_softcap_attr
        return None if attr is None else getattr(self.model.config, attr, None)

    def check_layer(self, layer: int, *, allow_final: bool = False) -> int:
        """Return ``layer`` if it is a valid block index, else raise a one-line error.

        ``allow_final`` admits ``n_layers``: the residual entering the final norm.
        """
        hi = self.n_layers if allow_final else self.n_layers - 1
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer <= hi:
            raise SteerscopeError(
                f"layer {layer!r} is out of range for this {self.n_layers}-layer model",
                f"use a layer index from 0 to {hi}",
            )
        return layer

    def check_vector(self, vector: torch.Tensor, what: str = "steering vector") -> torch.Tensor:
        """Return ``vector`` if it is a finite [d_model] tensor, else raise a one-line error."""
        if not isinstance(vector, torch.Tensor):
            raise SteerscopeError(f"{what} must be a torch.Tensor, got {type(vector).__name__}")
        if vector.shape != (self.d_model,):
            raise SteerscopeError(
                f"{what} has shape {tuple(vector.shape)} but this model's residual width is "
                f"{self.d_model}",
                "use a vector extracted from this model (a 1-D tensor of length d_model)",
            )
        if not torch.isfinite(vector).all():
            raise SteerscopeError(f"{what} contains NaN or infinite values", "re-extract it")
        return vector


def _text_config(config):
    return getattr(config, "text_config", None) or config


def validate_model(model: nn.Module) -> ModelArch:
    """Check ``model`` against its architecture row and return the bound :class:`ModelArch`.

    Raises a one-line :class:`SteerscopeError` naming the first mismatch.
    """
    config = _text_config(model.config)
    spec = spec_for_model_type(getattr(config, "model_type", type(model).__name__))
    try:
        n_layers = int(config.num_hidden_layers)
        d_model = int(config.hidden_size)
        n_heads = int(config.num_attention_heads)
        n_kv = int(getattr(config, "num_key_value_heads", None) or n_heads)
        d_head = int(getattr(config, "head_dim", None) or d_model // n_heads)
        vocab = int(config.vocab_size)
    except (AttributeError, TypeError) as exc:
        raise SteerscopeError(f"model config lacks a required field ({exc})") from exc
    arch = ModelArch(spec, model, n_layers, d_model, n_heads, n_kv, d_head, vocab)

    def fail(what: str) -> None:
        raise UnsupportedArchitectureError(
            f"model does not match the '{spec.name}' architecture row: {what}",
            "check the model files, or fix the row in steerscope.models.archs",
        )

    try:
        for path in (spec.base, spec.embed, spec.layers, spec.final_norm, spec.unembed):
            get_module(model, path)
        if len(arch.layers) != n_layers:
            fail(f"{len(arch.layers)} blocks but config says {n_layers}")
        for layer in range(n_layers):
            for name in ("attn", "q_proj", "k_proj", "v_proj", "o_proj", "mlp", "attn_norm",
                         "mlp_norm", "attn_post_norm", "mlp_post_norm", "q_norm", "k_norm"):
                arch.component(layer, name)
    except AttributeError as exc:
        fail(f"missing module ({exc})")
    expected = {
        "q_proj": (n_heads * d_head, d_model),
        "k_proj": (n_kv * d_head, d_model),
        "v_proj": (n_kv * d_head, d_model),
        "o_proj": (d_model, n_heads * d_head),
    }
    for layer in range(n_layers):
        for name, shape in expected.items():
            w_shape = linear_shape(arch.component(layer, name))
            if w_shape != shape:
                fail(f"layer {layer} {name} weight has shape {w_shape}, expected {shape}")
        for name in ("attn_norm", "mlp_norm", "attn_post_norm", "mlp_post_norm"):
            norm = arch.component(layer, name)
            if norm is not None and tuple(norm.weight.shape) != (d_model,):
                fail(f"layer {layer} {name} has weight shape {tuple(norm.weight.shape)}")
    if linear_shape(arch.unembed) != (vocab, d_model):
        fail(f"unembedding has shape {linear_shape(arch.unembed)}")
    if n_heads % n_kv:
        fail(f"{n_heads} query heads are not a multiple of {n_kv} KV heads")
    return arch
