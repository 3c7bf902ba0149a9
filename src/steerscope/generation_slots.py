"""Greedy decoding in fixed batch slots: a preallocated KV cache, finished rows refilled in
place, and one decode step that can be compiled (a CUDA graph on CUDA).

:func:`generate_slots` decodes many prompts with ``batch_size`` slots. Slot ``b`` holds one
prompt at a time in its own rows of a preallocated KV cache ([B, H_kv, T, D] per layer), laid
out without padding: the key of the token at position ``p`` sits at column ``p``, so every
row has its own length and the decode mask is ``column <= position`` (and, on
sliding-window layers, ``column > position - window``). A row that reaches EOS (or its
limit) frees its slot; waiting prompts are prefilled together (left-padded, eagerly, under a
:class:`~steerscope.runtime.Runtime` like :func:`~steerscope.generation.generate_ids`'s
prefill) and their keys and values are copied into the free slots. Every tensor the decode
step touches keeps its shape and address from step to step, so the step is compiled once
per (batch, length) shape and, on CUDA with ``mode="reduce-overhead"``, replayed as a CUDA
graph: the per-step Python and kernel-launch overhead that bounds eager decoding of small
models is paid once. Each row gives exactly the tokens of a separate eager run of its
prompt with its setting in float32 (tests/unit/runtime/test_slots.py); in bf16 on a GPU the
compiled kernels may round differently from the eager ones.

Interventions: steering (:class:`~steerscope.runtime.Add` at ``resid_pre``, whole-vector,
scope ``"all"`` / ``"generated"`` / ``"prompt"``, one setting or per-row settings) only
(:func:`decode_supported`). In the decode steps the additions are forward pre-hooks that add
a [B, 1, d] buffer (the slot's ``alpha * vector``) inside the compiled step.
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Callable, Sequence

import torch
from transformers import DynamicCache

from steerscope.errors import SteerscopeError
from steerscope.generation_refill import prefill_left_padded
from steerscope.models.archs import validate_model
from steerscope.runtime.core import Runtime, attached_runtimes
from steerscope.runtime.interventions import Add, Intervention
from steerscope.runtime.scope import StepContext

DECODE_SCOPES = ("all", "generated", "prompt")
MASK_IMPLEMENTATIONS = ("sdpa", "eager")
LENGTH_QUANTUM = 256  # the cache length is rounded up to this, so calls share a compiled step
_DECODER_ATTR = "_steerscope_slot_decoder"
_COMPILED_STEPS: dict[tuple, Callable | None] = {}  # shape key -> compiled step (None: failed)


def decode_supported(interventions: Sequence[Intervention]) -> bool:
    """True when every intervention is whole-vector steering at ``resid_pre`` with a named
    scope (what a compiled decode step adds from its buffers)."""
    return all(isinstance(op, Add) and op.point == "resid_pre" and op.heads is None
               and isinstance(op.scope, str) and op.scope in DECODE_SCOPES
               for op in interventions)


def slots_supported(model, interventions: Sequence[Intervention] = ()) -> bool:
    """True when :func:`generate_slots` can run ``model`` with ``interventions``: supported
    steering only, no other runtime attached to the model, an ``sdpa`` or ``eager``
    attention implementation, full or sliding-window attention layers only, and no
    bidirectional attention."""
    config = model.config
    return (decode_supported(interventions)
            and not attached_runtimes(model)
            and getattr(config, "_attn_implementation", None) in MASK_IMPLEMENTATIONS
            and set(layer_kinds(config)[0]) <= {"full_attention", "sliding_attention"}
            and not getattr(config, "use_bidirectional_attention", False))


def setting_deltas(op: Add, rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[n, d] in ``like``'s dtype and device: what ``op`` adds for settings ``rows`` ([n]
    long; ignored by a one-setting op), the values :meth:`Add.apply` adds."""
    n = len(rows)
    if op.n_rows is not None:
        ctx = StepContext(0, 1, n, None, torch.zeros(n, dtype=torch.long), like.device,
                          rows=rows)
        return op.row_delta(ctx, like)
    delta = (op.alpha * op.vector).to(device=like.device, dtype=like.dtype)  # [d]
    return delta.expand(n, -1)


def layer_kinds(config) -> tuple[list[str], dict[str, int | None]]:
    """Each layer's attention kind and each kind's window (None: full attention), as the
    model's own mask functions see them."""
    kinds = getattr(config, "layer_types", None)
    if kinds is None:
        kind = "sliding_attention" if getattr(config, "sliding_window", None) else "full_attention"
        kinds = [kind] * int(config.num_hidden_layers)
    windows = {k: (int(config.sliding_window) if k == "sliding_attention" else None)
               for k in set(kinds)}
    return list(kinds), windows


def register_delta_hooks(owner, model, layers: Sequence[int]) -> list:
    """Forward pre-hooks that add ``owner.deltas[k]`` ([B, 1, d]) to the residual entering
    block ``layers[k]`` (the final norm at ``n_layers``) while ``owner.active``; the handles."""
    arch = validate_model(model)

    def hook_for(k: int):
        def hook(module, args, kwargs):
            if not owner.active:
                return None
            if args:
                return (args[0] + owner.deltas[k], *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + owner.deltas[k]}
        return hook

    return [(arch.final_norm if layer == arch.n_layers else arch.block(layer))
            .register_forward_pre_hook(hook_for(k), with_kwargs=True)
            for k, layer in enumerate(layers)]


class SlotDecoder:
    """The preallocated state of slot decoding for one (batch, length) shape: KV buffers,
    per-slot positions, steering buffers with their hooks, and the (compiled) decode step.

    It is also the cache object the model's attention layers write to in a decode step
    (:meth:`update`: each slot's new key and value go to column ``pos[b]``)."""

    def __init__(self, model, batch: int, total: int, layers: tuple[int, ...], *,
                 compile: bool, mode: str | None):
        arch = validate_model(model)
        config = model.config
        like = next(arch.block(0).parameters())
        device, dtype = like.device, like.dtype
        self.model, self.batch, self.total, self.layers = model, batch, total, layers
        self.compile, self.mode = compile, mode
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        shape = (batch, heads, total, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(arch.n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device)
                       for _ in range(arch.n_layers)]
        self.pos = torch.zeros(batch, dtype=torch.long, device=device)  # [B] next column
        self.columns = torch.arange(total, device=device)  # [T]
        self.slot_index = torch.arange(batch, device=device)[:, None]  # [B, 1]
        self.head_index = torch.arange(heads, device=device)[None, :]  # [1, H]
        self.deltas = [torch.zeros(batch, 1, arch.d_model, dtype=dtype, device=device)
                       for _ in layers]  # one [B, 1, d] buffer per decode-step steering op
        self.types, self.windows = layer_kinds(config)
        self.dict_mask = getattr(config, "layer_types", None) is not None
        self.additive = config._attn_implementation == "eager"
        self.mask_dtype = dtype
        if compile and device.type == "cuda":
            for t in [*self.keys, *self.values, self.pos, self.columns, self.slot_index,
                      self.head_index, *self.deltas]:
                torch._dynamo.mark_static_address(t)
        self.active = False
        self.steps = 0  # decode steps run (all slots at once), over every call
        self.handles = register_delta_hooks(self, model, layers)
        self.key = (id(model), batch, total, layers, mode)
        self.compiled_step = compiled_step_for(self.key) if compile else None  # None: eager
        self.cudagraph_skips = 0  # CUDA graphs torch skipped at the first compiled step

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        """Write each slot's new key / value ([B, H, 1, D]) to column ``pos[b]``; return
        the layer's whole buffers [B, H, T, D]. (``index_put_``: inductor writes it in place;
        a ``scatter_`` would copy the whole cache every step.)"""
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        idx = (self.slot_index, self.head_index, self.pos[:, None])  # [B, 1], [1, H], [B, 1]
        keys.index_put_(idx, key_states[:, :, 0].to(keys.dtype))  # [B, H, D]
        values.index_put_(idx, value_states[:, :, 0].to(values.dtype))
        return keys, values

    def masks(self):
        """The decode step's attention mask(s) [B, 1, 1, T]: a dict by layer kind where the
        model takes one, else the single kind's mask."""
        pos = self.pos[:, None]  # [B, 1]
        allowed = self.columns[None, :] <= pos  # [B, T]
        out = {}
        for kind, window in self.windows.items():
            m = allowed if window is None else allowed & (self.columns[None, :] > pos - window)
            m = m[:, None, None, :]
            if self.additive:
                m = torch.zeros(m.shape, dtype=self.mask_dtype, device=m.device).masked_fill(
                    ~m, torch.finfo(self.mask_dtype).min)
            out[kind] = m
        return out if self.dict_mask else out[self.types[0]]

    def run_step(self, token: torch.Tensor) -> torch.Tensor:
        """One decode step of every slot (``token`` [B]); the greedy next tokens [B]. A step
        that fails to compile (a graph break included) warns once and runs eagerly, for this
        and every later decoder of its shape; a CUDA graph that torch skips warns once."""
        self.active = True
        self.steps += 1
        try:
            if self.compiled_step is None:
                return slot_step(self, token[:, None]).clone()
            if self.mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()
            skips = _cudagraph_skips()
            try:
                out = self.compiled_step(self, token[:, None].clone()).clone()
            except torch.OutOfMemoryError:
                raise
            except Exception as err:  # noqa: BLE001 - any compiler failure: run eagerly
                warnings.warn(f"compiled decoding failed ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}); decoding "
                              "eagerly", RuntimeWarning, stacklevel=2)
                _COMPILED_STEPS[self.key] = None  # later decoders of this shape: eager
                self.compiled_step = None
                return slot_step(self, token[:, None]).clone()
            if self.steps == 1 and self.mode == "reduce-overhead":
                self.cudagraph_skips = _cudagraph_skips() - skips
                if self.cudagraph_skips:
                    warnings.warn("torch skipped the CUDA graph of the compiled decode step "
                                  "(TORCH_LOGS=perf_hints says why): decoding is compiled "
                                  "but pays the per-step launch overhead",
                                  RuntimeWarning, stacklevel=2)
            return out
        finally:
            self.active = False

    def load_prefill(self, cache: DynamicCache, slots: torch.Tensor, pad: torch.Tensor,
                     width: int) -> None:
        """Copy a left-padded prefill's cache ([n] rows, frame ``width``, ``pad`` [n]) into
        ``slots`` [n], position ``p`` of a row to column ``p``. A sliding-window layer that
        kept only its last columns fills the columns it has (the others are never read)."""
        n = len(slots)
        target = torch.arange(width, device=slots.device)  # [width] positions
        for layer, (keys, values) in enumerate(zip(self.keys, self.values)):
            src_k, src_v = cache.layers[layer].keys, cache.layers[layer].values  # [n, H, S, D]
            stored = src_k.shape[2]
            j = (target[None, :] + pad[:, None] - (width - stored)).clamp(0, stored - 1)
            idx = j[:, None, :, None].expand(n, src_k.shape[1], width, src_k.shape[3])
            keys[slots, :, :width] = src_k.gather(2, idx).to(keys.dtype)
            values[slots, :, :width] = src_v.gather(2, idx).to(values.dtype)

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def slot_step(dec: SlotDecoder, token: torch.Tensor) -> torch.Tensor:
    """One decode step of every slot of ``dec``: ``token`` [B, 1] in, greedy tokens [B] out."""
    logits = dec.model(input_ids=token, position_ids=dec.pos[:, None],
                       attention_mask=dec.masks(), cache=dec, use_cache=True,
                       logits_to_keep=1).logits[:, -1]  # [B, V]
    return logits.argmax(-1)


def _cudagraph_skips() -> int:
    """How many times torch has skipped a CUDA graph in this process."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])


def compiled_step_for(key: tuple) -> Callable | None:
    """:func:`slot_step` under :func:`torch.compile` for one shape ``key`` (model, batch,
    length, steering layers, mode), kept for later decoders of that shape. Each key compiles
    a copy with a code object of its own: torch keeps compiled versions per code object and
    stops compiling one after ``recompile_limit`` (8) versions, which a shared function would
    reach after 8 shapes. The buffers are inputs (not guarded by address), so a new decoder
    of the same shape reuses the compiled step (on CUDA the graph is re-recorded).
    ``fullgraph``: a graph break raises (and the step runs eagerly) rather than leaving a
    step of several graphs. None once the key's step has failed to compile."""
    if key not in _COMPILED_STEPS:
        code = slot_step.__code__.replace(co_name=f"slot_step_{len(_COMPILED_STEPS)}")
        fresh = types.FunctionType(code, slot_step.__globals__, code.co_name)
        _COMPILED_STEPS[key] = torch.compile(fresh, mode=key[-1], dynamic=False,
                                             fullgraph=True)
    return _COMPILED_STEPS[key]


def slot_decoder(model, batch: int, total: int, layers: tuple[int, ...], *, compile: bool,
                 mode: str | None) -> SlotDecoder:
    """The model's :class:`SlotDecoder` for this shape; a decoder of another shape is
    released first (its KV buffers are the largest allocation of a generation)."""
    dec = model.__dict__.get(_DECODER_ATTR)
    key = (batch, total, layers, compile, mode)
    if dec is not None and (dec.batch, dec.total, dec.layers, dec.compile, dec.mode) == key:
        return dec
    release_slots(model)
    dec = SlotDecoder(model, batch, total, layers, compile=compile, mode=mode)
    model.__dict__[_DECODER_ATTR] = dec
    return dec


def current_slot_decoder(model) -> SlotDecoder | None:
    """The model's slot decoder kept from the last :func:`generate_slots` call, if any."""
    return model.__dict__.get(_DECODER_ATTR)


def release_slots(model) -> None:
    """Remove the model's slot decoder (hooks, KV buffers) and, when it decoded through CUDA
    graphs, torch's recorded graphs (they hold the freed buffers' addresses and a memory
    pool; a later decoder re-records, the compiled step itself is kept)."""
    dec = model.__dict__.pop(_DECODER_ATTR, None)
    if dec is not None:
        dec.close()
        if next(model.parameters()).device.type == "cuda":
            if dec.compiled_step is not None and dec.mode == "reduce-overhead":
                from torch._inductor.cudagraph_trees import reset_cudagraph_trees

                reset_cudagraph_trees()
            torch.cuda.empty_cache()


def slot_count(batch_size: int, n_prompts: int) -> int:
    """Slots for ``n_prompts`` at most ``batch_size`` wide, in few distinct values (each
    compiles once): ``batch_size`` rounded down to a multiple of 64 from 128 up, of 16 from
    16 up, and at most the power of two at or above ``n_prompts``."""
    step = 64 if batch_size >= 128 else 16 if batch_size >= 16 else 1
    cap = batch_size - batch_size % step
    return max(1, min(cap, 1 << max(0, n_prompts - 1).bit_length()))


def cache_length(longest_prompt: int, max_new_tokens: int) -> int:
    """Columns of the slot cache: the longest row, rounded up to :data:`LENGTH_QUANTUM`."""
    need = longest_prompt + max_new_tokens
    return -(-need // LENGTH_QUANTUM) * LENGTH_QUANTUM


@torch.no_grad()
def _prefill(model, prompts, idx: list[int], ops, settings: torch.Tensor, pad_token_id: int):
    """Prefill prompts ``idx`` left-padded together under ``ops`` (per-row settings
    ``settings[idx]``); returns (cache, pad [k], width, first greedy token [k])."""
    with Runtime(model, list(ops)):
        cache, mask, pad, first = prefill_left_padded(model, prompts, idx, pad_token_id,
                                                      settings)
    return cache, pad, int(mask.shape[1]), first


@torch.no_grad()
def generate_slots(model, prompts: Sequence[torch.Tensor], *, batch_size: int,
                   max_new_tokens: int, eos: torch.Tensor, pad_token_id: int,
                   interventions: Sequence[Intervention] = (),
                   row_ids: Sequence[int] | None = None,
                   row_limits: Sequence[int] | None = None, on_done=None,
                   compile: bool = True, mode: str | None = None,
                   refill_at: int | None = None) -> list[torch.Tensor]:
    """Greedy tokens of every prompt (1-D id tensors, unpadded), up to and including EOS,
    decoded in ``batch_size`` slots (see the module docstring).

    Prompts join in the order given (pass them longest first). Free slots are refilled once
    ``refill_at`` of them (default ``max(1, batch_size // 8)``) are free or none is busy.
    ``eos``: [E] stop ids on the model's device; ``row_ids[i]``: the per-row setting of
    prompt ``i`` (default ``i``); ``row_limits[i]``: at most that many new tokens (default
    ``max_new_tokens``); ``on_done(i, tokens)`` is called as prompt ``i`` finishes.
    ``compile``: wrap the decode step in :func:`torch.compile` (``mode`` default
    ``"reduce-overhead"`` on CUDA, a CUDA graph); ``False`` runs the same step eagerly.
    Returns [n_i] long per prompt.
    """
    if not prompts:
        raise SteerscopeError("no prompts to generate from", "pass a non-empty list")
    if any(p.ndim != 1 or p.numel() == 0 for p in prompts):
        raise SteerscopeError("every prompt must be a non-empty 1-D tensor of token ids")
    if not slots_supported(model, interventions):
        raise SteerscopeError("slot decoding supports only steering at resid_pre with scope "
                              "all / generated / prompt, on sdpa or eager attention with no "
                              "other runtime attached", "use generate_refill")
    device = next(model.parameters()).device
    n = len(prompts)
    settings = torch.as_tensor(list(row_ids) if row_ids is not None else range(n),
                               dtype=torch.long, device=device)  # [n]
    limits = [min(int(x), max_new_tokens) for x in (row_limits if row_limits is not None
                                                    else [max_new_tokens] * n)]
    if len(settings) != n or len(limits) != n or min(limits) < 1:
        raise SteerscopeError("row_ids / row_limits must give one entry per prompt (limits >= 1)")
    if compile and mode is None and device.type == "cuda":
        mode = "reduce-overhead"
    batch = slot_count(batch_size, n)
    refill_at = refill_at if refill_at is not None else max(1, batch // 8)
    decode_ops = [op for op in interventions if op.scope != "prompt"]
    total = cache_length(max(len(p) for p in prompts), max_new_tokens)
    dec = slot_decoder(model, batch, total, tuple(op.layer for op in decode_ops),
                       compile=compile, mode=mode)
    eos_ids = set(int(e) for e in eos.tolist())
    out: list[torch.Tensor | None] = [None] * n
    held: list[int | None] = [None] * batch  # prompt index in each slot
    made: list[list[int]] = [[] for _ in range(batch)]
    token = torch.full((batch,), pad_token_id, dtype=torch.long, device=device)  # [B]
    waiting = list(range(n))
    live: list[torch.Tensor | None] = [None]  # [B] bool on the device, rebuilt on a change

    def record(slot: int, tok: int) -> None:
        """Append ``tok`` to the slot's row; free the slot when the row ends."""
        i = held[slot]
        made[slot].append(tok)
        if tok in eos_ids or len(made[slot]) >= limits[i]:
            out[i] = torch.tensor(made[slot], dtype=torch.long)
            if on_done is not None:
                on_done(i, made[slot])
            held[slot], made[slot] = None, []
            live[0] = None

    while True:
        free = [b for b in range(batch) if held[b] is None]
        busy = batch - len(free)
        if waiting and (len(free) >= refill_at or busy == 0):
            take, waiting = waiting[:len(free)], waiting[len(free):]
            slots = torch.tensor(free[:len(take)], dtype=torch.long, device=device)
            cache, pad, width, first = _prefill(model, prompts, take, interventions, settings,
                                                pad_token_id)
            dec.load_prefill(cache, slots, pad, width)
            del cache
            lengths = torch.tensor([len(prompts[i]) for i in take], device=device)
            dec.pos[slots] = lengths
            joined = settings[torch.tensor(take, device=device)]  # [k] their settings
            for d, op in zip(dec.deltas, decode_ops):
                d[slots] = setting_deltas(op, joined, d).unsqueeze(1)
            token[slots] = first
            live[0] = None
            for slot, i, tok in zip(slots.tolist(), take, first.tolist()):
                held[slot] = i
                record(slot, tok)
            continue
        if busy == 0:
            break
        if live[0] is None:
            live[0] = torch.tensor([h is not None for h in held], device=device)  # [B]
        nxt = dec.run_step(token)  # [B]
        dec.pos += live[0].long()  # free slots keep writing their last column
        token = nxt  # a free slot's token is never read (its next occupant's is set)
        for slot, tok in enumerate(nxt.tolist()):
            if held[slot] is not None:
                record(slot, tok)
    return out  # type: ignore[return-value]


__all__ = ["SlotDecoder", "current_slot_decoder", "decode_supported", "generate_slots",
           "release_slots", "slots_supported"]
