"""Compiled greedy decoding: a static KV cache and one captured decode step.

:func:`generate_compiled` decodes a left-padded batch like
:func:`steerscope.generation.generate_ids` (same tokens; tests/unit/runtime/test_compiled.py)
but with transformers' :class:`~transformers.StaticCache` (every tensor keeps its shape from
step to step) and the decode step wrapped in :func:`torch.compile`. On CUDA the default mode is
``"reduce-overhead"``: the step is captured as a CUDA graph and replayed, so the per-step
Python and kernel-launch overhead (which bounds steered decoding at small models) is paid once.

The prefill runs eagerly under a :class:`~steerscope.runtime.Runtime` (any scope). In the
decode steps the steering additions are plain forward pre-hooks that add a fixed [B, 1, d]
tensor (``alpha[r] * vector[r]`` per row) inside the captured graph: only steering
(:class:`~steerscope.runtime.Add` at ``resid_pre``) with scope ``"all"``, ``"generated"`` or
``"prompt"`` qualifies (:func:`compiled_supported`); anything else uses the eager loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import StaticCache

from steerscope.errors import SteerscopeError
from steerscope.models.archs import validate_model
from steerscope.runtime.core import Runtime
from steerscope.runtime.interventions import Add, Intervention, check_row_count
from steerscope.runtime.scope import StepContext

DECODE_SCOPES = ("all", "generated", "prompt")


def compiled_supported(interventions: Sequence[Intervention]) -> bool:
    """True when every intervention is steering at ``resid_pre`` with a named scope."""
    return all(isinstance(op, Add) and op.point == "resid_pre" and op.heads is None
               and isinstance(op.scope, str) and op.scope in DECODE_SCOPES
               for op in interventions)


def decode_delta(op: Add, batch: int, like: torch.Tensor) -> torch.Tensor:
    """[B, 1, d] (or [d]) in ``like``'s dtype and device: what ``op`` adds to every row in a
    decode step, computed as :meth:`Add.apply` computes it."""
    if op.n_rows is not None:
        ctx = StepContext(0, 1, batch, None, torch.zeros(batch, dtype=torch.long), like.device)
        return op.row_delta(ctx, like).unsqueeze(1)
    return (op.alpha * op.vector).to(device=like.device, dtype=like.dtype)


class DecodeSteering:
    """Context manager: forward pre-hooks that add each decode-step steering delta at its
    layer (graph-friendly: no Python branching on tensor values)."""

    def __init__(self, model, interventions: Sequence[Add], batch: int, arch=None):
        self.arch = arch if arch is not None else validate_model(model)
        self.ops = [op for op in interventions if op.scope != "prompt"]
        self.batch = batch
        self._handles: list = []

    def __enter__(self) -> DecodeSteering:
        arch = self.arch
        like = next(arch.block(0).parameters())
        for op in self.ops:
            delta = decode_delta(op, self.batch, like)
            module = arch.final_norm if op.layer == arch.n_layers else arch.block(op.layer)

            def hook(module, args, kwargs, delta=delta):
                if args:
                    return (args[0] + delta, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + delta}

            self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


@torch.no_grad()
def generate_compiled(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      *, max_new_tokens: int = 64, interventions: Sequence[Intervention] = (),
                      eos_token_id: int | Sequence[int] | None = None,
                      pad_token_id: int | None = None, stop_at_eos: bool = True,
                      compile: bool = True, mode: str | None = None):
    """Greedy decoding of a left-padded batch ([B, P] ids and mask) with a static cache and
    the decode step compiled (``mode``: default ``"reduce-overhead"`` on CUDA, torch's
    default elsewhere; ``compile=False`` runs the same static-cache loop eagerly). Returns a
    :class:`~steerscope.generation.Generation` with the tokens of ``generate_ids``."""
    from steerscope.generation import Generation, prepare_greedy_inputs

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
    cache = StaticCache(config=model.config, max_cache_len=total)
    full_mask = torch.zeros(batch, total, dtype=torch.long, device=device)  # [B, P + N]
    full_mask[:, :prompt_len] = mask
    position = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, P]
    with Runtime(model, list(interventions), prompt_len=prompt_len):
        logits = model(input_ids=ids, attention_mask=full_mask, position_ids=position,
                       cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]

    def step(token, pos, attn_mask):  # [B, 1], [B, 1], [B, P + N] -> logits [B, V]
        return model(input_ids=token, attention_mask=attn_mask, position_ids=pos,
                     cache=cache, use_cache=True).logits[:, -1]

    if compile:
        mode = mode if mode is not None else ("reduce-overhead" if device.type == "cuda"
                                              else None)
        step = torch.compile(step, mode=mode, dynamic=False)
    new = torch.full((batch, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    lengths = torch.zeros(batch, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    next_pos = position[:, -1:] + 1  # [B, 1]
    n_done = max_new_tokens
    with DecodeSteering(model, interventions, batch):
        for k in range(max_new_tokens):
            token = logits.argmax(-1)  # [B]
            token = torch.where(done, torch.full_like(token, pad_token_id), token)
            new[:, k] = token
            lengths += (~done).long()
            if len(eos):
                done |= torch.isin(token, eos)
            if (stop_at_eos and bool(done.all())) or k == max_new_tokens - 1:
                n_done = k + 1
                break
            full_mask[:, prompt_len + k] = 1
            logits = step(token[:, None].clone(), next_pos.clone(), full_mask.clone())
            next_pos = next_pos + 1
    new = new[:, :n_done]
    return Generation(torch.cat([ids, new], dim=1), new, lengths, prompt_len)


__all__ = ["DecodeSteering", "compiled_supported", "generate_compiled"]
