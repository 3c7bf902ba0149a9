"""Compiled greedy decoding: a static KV cache and one captured decode step.

:func:`generate_compiled` decodes a left-padded batch like
:func:`steerscope.generation.generate_ids` (same tokens; tests/unit/runtime/test_compiled.py)
but with transformers' :class:`~transformers.StaticCache` (every tensor keeps its shape from
step to step, and the cache object is reused for calls of the same shape) and the decode step wrapped in :func:`torch.compile`. On CUDA the default mode is
``"reduce-overhead"``: the step is captured as a CUDA graph and replayed, so the per-step
Python and kernel-launch overhead (which bounds steered decoding at small models) is paid once.

The prefill runs eagerly under a :class:`~steerscope.runtime.Runtime` (any scope). In the
decode steps the steering additions are plain forward pre-hooks that add a [B, 1, d] buffer
(``alpha[r] * vector[r]`` per row, copied in before the loop) inside the captured graph: only steering
(:class:`~steerscope.runtime.Add` at ``resid_pre``) with scope ``"all"``, ``"generated"`` or
``"prompt"`` qualifies (:func:`compiled_supported`); anything else uses the eager loop. For many prompts,
:func:`steerscope.generation_slots.generate_slots` keeps the batch full (finished rows
refilled in place) with the same compiled step; this module decodes one left-padded batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import StaticCache

from steerscope.errors import SteerscopeError
from steerscope.generation import Generation, prepare_greedy_inputs, record_greedy_token
from steerscope.generation_slots import decode_supported, register_delta_hooks, setting_deltas
from steerscope.models.archs import validate_model
from steerscope.runtime.core import Runtime
from steerscope.runtime.interventions import Intervention, check_row_count

_DECODERS_ATTR = "_steerscope_compiled_decoders"
compiled_supported = decode_supported  # every intervention is steering the step can add


class CompiledDecoder:
    """A static KV cache, [B, 1, d] steering buffers with their hooks, and the compiled
    decode step, for one (batch, length, steering layers) shape; reused across calls, so
    the step compiles (and on CUDA is captured) once. The hooks add their buffers only
    while ``active`` (inside :func:`generate_compiled`'s decode loop)."""

    def __init__(self, model, batch: int, total: int, layers: tuple[int, ...], *,
                 compile: bool, mode: str | None):
        arch = validate_model(model)
        like = next(arch.block(0).parameters())
        self.model, self.batch, self.total = model, batch, total
        self.cache = StaticCache(config=model.config, max_cache_len=total)
        self.deltas = [torch.zeros(batch, 1, arch.d_model, dtype=like.dtype, device=like.device)
                       for _ in layers]  # one [B, 1, d] buffer per decode-step steering op
        self.active = False
        self.handles = register_delta_hooks(self, model, layers)
        self.step = torch.compile(self._step, mode=mode, dynamic=False) if compile \
            else self._step

    def _step(self, token, pos, attn_mask):  # [B, 1], [B, 1], [B, P + N] -> [B, V]
        return self.model(input_ids=token, attention_mask=attn_mask, position_ids=pos,
                          cache=self.cache, use_cache=True).logits[:, -1]

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def compiled_decoder(model, batch: int, total: int, layers: tuple[int, ...], *, compile: bool,
                     mode: str | None) -> CompiledDecoder:
    """The model's :class:`CompiledDecoder` for this shape (built on first use)."""
    decoders = model.__dict__.setdefault(_DECODERS_ATTR, {})
    key = (batch, total, layers, compile, mode)
    if key not in decoders:
        decoders[key] = CompiledDecoder(model, batch, total, layers, compile=compile, mode=mode)
    return decoders[key]


def release_compiled(model) -> None:
    """Remove every compiled decoder (its hooks, cache and compiled step) from ``model``."""
    for dec in model.__dict__.pop(_DECODERS_ATTR, {}).values():
        dec.close()


@torch.no_grad()
def generate_compiled(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      *, max_new_tokens: int = 64, interventions: Sequence[Intervention] = (),
                      eos_token_id: int | Sequence[int] | None = None,
                      pad_token_id: int | None = None, stop_at_eos: bool = True,
                      compile: bool = True, mode: str | None = None):
    """Greedy decoding of a left-padded batch ([B, P] ids and mask) with a static cache and
    the decode step compiled (``mode``: default ``"reduce-overhead"`` on CUDA, torch's
    default elsewhere; ``compile=False`` runs the same static-cache loop eagerly). Returns a
    :class:`~steerscope.generation.Generation` with the tokens of ``generate_ids``. The
    compiled step is kept on the model for the next call of the same shape
    (:func:`release_compiled` drops it)."""
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise SteerscopeError(f"input_ids must be a non-empty [batch, length] tensor, got shape "
                              f"{tuple(input_ids.shape)}")
    if max_new_tokens < 1:
        raise SteerscopeError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not compiled_supported(interventions):
        raise SteerscopeError("compiled decoding supports only steering at resid_pre with "
                              "scope all / generated / prompt", "use generate_ids")
    check_row_count(interventions, int(input_ids.shape[0]))
    ids, mask, eos, pad_token_id = prepare_greedy_inputs(model, input_ids, attention_mask,
                                                         eos_token_id, pad_token_id)
    batch, prompt_len = ids.shape
    total = prompt_len + max_new_tokens
    device = ids.device
    if compile and mode is None and device.type == "cuda":
        mode = "reduce-overhead"
    decode_ops = [op for op in interventions if op.scope != "prompt"]
    dec = compiled_decoder(model, batch, total, tuple(op.layer for op in decode_ops),
                           compile=compile, mode=mode)
    dec.cache.reset()
    every_row = torch.arange(batch, device=device)  # row i is setting i
    for buf, op in zip(dec.deltas, decode_ops):
        buf.copy_(setting_deltas(op, every_row, buf).unsqueeze(1))
    full_mask = torch.zeros(batch, total, dtype=torch.long, device=device)  # [B, P + N]
    full_mask[:, :prompt_len] = mask
    position = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, P]
    with Runtime(model, list(interventions), prompt_len=prompt_len):
        logits = model(input_ids=ids, attention_mask=full_mask, position_ids=position,
                       cache=dec.cache, use_cache=True, logits_to_keep=1).logits[:, -1]
    new = torch.full((batch, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    lengths = torch.zeros(batch, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    next_pos = position[:, -1:] + 1  # [B, 1]
    n_done = max_new_tokens
    dec.active = True
    try:
        for k in range(max_new_tokens):
            token = record_greedy_token(logits, k, new, lengths, done, eos, pad_token_id)
            if (stop_at_eos and bool(done.all())) or k == max_new_tokens - 1:
                n_done = k + 1
                break
            full_mask[:, prompt_len + k] = 1
            logits = dec.step(token[:, None].clone(), next_pos.clone(), full_mask.clone())
            next_pos = next_pos + 1
    finally:
        dec.active = False
    new = new[:, :n_done]
    return Generation(torch.cat([ids, new], dim=1), new, lengths, prompt_len)


__all__ = ["CompiledDecoder", "compiled_supported", "generate_compiled", "release_compiled"]
