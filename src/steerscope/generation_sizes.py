"""How long and how wide generation may be: the model's context window (one-line errors and
warnings for prompts past it), bytes of KV cache per token, and batch sizes, fixed or sized
from the free CUDA memory (``batch_size="auto"``)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from steerscope.errors import SteerscopeError
from steerscope.validation import check_positive_int

DEFAULT_BATCH_SIZE = 16  # prompts per batch when the batch size is not sized from memory


def context_length(model) -> int:
    """The model's context window (``max_position_embeddings``; unbounded when unknown)."""
    n = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and n > 0 else 1 << 62


def refuse_longer_than_context(model, lengths: Sequence[int]) -> None:
    """A one-line error when a prompt alone (``lengths``: tokens per prompt) is longer than
    the model's context window: its forward pass would run far past the positions the model
    was trained on (and a huge prompt would take minutes and gigabytes)."""
    n_ctx = context_length(model)
    over = [n for n in lengths if n > n_ctx]
    if over:
        raise SteerscopeError(f"{len(over)} prompt(s) are longer than the model's context of "
                              f"{n_ctx} tokens (longest {max(over)} tokens)",
                              "shorten or drop them")


def warn_if_too_long(model, longest: int, n_over: int) -> None:
    """Warn (once per call) when ``n_over`` prompts plus their generated tokens exceed the
    model's context window: positions past it are out of the model's training range, so the
    completions are unreliable. Nothing is truncated."""
    if n_over:
        warnings.warn(f"{n_over} prompt(s) with their new tokens are longer than the model's "
                      f"context of {context_length(model)} tokens (longest {longest}): their "
                      "completions are unreliable; shorten the prompts or --max-new-tokens",
                      stacklevel=3)


def compute_itemsize(model) -> int:
    """Bytes per element of the model's activations and KV cache: its floating dtype (the
    first floating parameter's; a quantized model's integer weights do not count)."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return torch.empty((), dtype=dtype).element_size()


def kv_bytes_per_token(model) -> int:
    """Bytes of KV cache one token of one row takes (keys and values, every layer)."""
    cfg = getattr(model.config, "text_config", None) or model.config
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return 2 * cfg.num_hidden_layers * heads * head_dim * compute_itemsize(model)


def batch_size_for_free_memory(model, longest: int, free_bytes: int, *, cap: int = 512,
                               headroom: float = 0.7) -> int:
    """The largest batch (1..``cap``) whose KV cache for ``longest`` tokens per row, plus each
    row's prefill activations and one step's float32 logits, fits ``headroom`` of
    ``free_bytes``."""
    cfg = getattr(model.config, "text_config", None) or model.config
    item = compute_itemsize(model)
    per_row = (kv_bytes_per_token(model) * longest  # the KV cache
               + 8 * longest * cfg.hidden_size * item  # prefill activations (a few copies)
               + 4 * cfg.vocab_size * 2)  # float32 logits of the last position, twice
    return max(1, min(cap, int(free_bytes * headroom // per_row)))


def batch_size_from_memory(model, longest: int) -> int:
    """:func:`batch_size_for_free_memory` of the free memory of the model's CUDA device; on
    any other device :data:`DEFAULT_BATCH_SIZE`."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        return DEFAULT_BATCH_SIZE
    free, _ = torch.cuda.mem_get_info(device)
    return batch_size_for_free_memory(model, longest, free)


def fixed_batch_size(batch_size: int | str) -> int:
    """``batch_size``, or :data:`DEFAULT_BATCH_SIZE` for ``"auto"``: the batch of work that
    is not sized from memory (scoring, cross-entropy, lockstep freezing)."""
    return DEFAULT_BATCH_SIZE if batch_size == "auto" else check_positive_int(batch_size,
                                                                              "batch_size")


def resolve_batch_size(model, batch_size: int | str, longest: int) -> int:
    """``batch_size`` itself, or for ``"auto"`` :func:`batch_size_from_memory`."""
    if batch_size == "auto":
        return batch_size_from_memory(model, longest)
    return check_positive_int(batch_size, "batch_size")
