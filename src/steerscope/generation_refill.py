"""Greedy generation where finished rows leave the batch and waiting prompts take their place.

:func:`generate_refill` decodes many prompts with at most ``batch_size`` rows in flight. A row
that reaches EOS (or ``max_new_tokens``) is dropped from the KV cache, the attention mask and
the per-row state; waiting prompts are prefilled in a call of their own and joined to the
batch (refill). Every row gives exactly the tokens of :func:`steerscope.generation.greedy_loop`
on that prompt alone (tests/unit/runtime/test_refill.py).

Frame: the rows of the batch share one KV cache of ``L`` columns. A row occupies its last
``prompt + fed tokens`` columns, the columns before are padding (masked; zero keys/values).
A row that joins later is left-padded to the batch's length (or the batch to its length),
and leading columns that are padding in every row are cut, so ``L`` stays the longest row.
Per-row interventions follow their rows (the step context's ``rows`` are the prompt
indices) and the position contract holds per row: each forward call gets a
:class:`~steerscope.runtime.core.RowFrame` with every row's prompt end and padding in the
batch's frame, so ``scope="prompt"`` / ``"generated"`` / explicit positions touch the same
tokens as in a separate run.

Only interventions that act on each row independently may be attached (:class:`Add`,
:class:`Ablate`); the cache layers must be plain or sliding-window dynamic layers
(:func:`refill_supported` says whether a model and its runtimes qualify).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from steerscope.errors import SteerscopeError
from steerscope.runtime.core import RowFrame, attached_runtimes, batch_rows
from steerscope.runtime.interventions import Ablate, Add

ROW_WISE_OPS = (Add, Ablate)
CACHE_LAYERS = (DynamicLayer, DynamicSlidingWindowLayer)


def refill_supported(model) -> bool:
    """True when every intervention attached to ``model`` acts on each row independently
    (so rows may leave and join the batch) and its dynamic cache has only plain or
    sliding-window layers."""
    ops = [op for rt in attached_runtimes(model) for op in rt.interventions]
    if not all(isinstance(op, ROW_WISE_OPS) for op in ops):
        return False
    layers = DynamicCache(config=model.config).layers
    return all(type(layer) in CACHE_LAYERS for layer in layers)


def _stored(layer, frame_len: int) -> int:
    """How many columns a layer stores for a frame of ``frame_len`` columns."""
    if isinstance(layer, DynamicSlidingWindowLayer):
        return min(frame_len, layer.sliding_window - 1)
    return frame_len


def _pad_cache(cache: DynamicCache, frame_len: int, extra: int) -> None:
    """Add ``extra`` padding columns (zero keys/values) in front of every row's frame."""
    if extra == 0:
        return
    for layer in cache.layers:
        have = layer.keys.shape[-2]
        grow = _stored(layer, frame_len + extra) - have
        if grow:
            layer.keys = F.pad(layer.keys, (0, 0, grow, 0))
            layer.values = F.pad(layer.values, (0, 0, grow, 0))
        if isinstance(layer, DynamicSlidingWindowLayer):
            layer.cumulative_length = frame_len + extra


def _trim_cache(cache: DynamicCache, frame_len: int, cut: int) -> None:
    """Remove the first ``cut`` columns of the frame (padding in every row)."""
    if cut == 0:
        return
    for layer in cache.layers:
        keep = min(layer.keys.shape[-2], frame_len - cut)
        layer.keys = layer.keys[..., layer.keys.shape[-2] - keep:, :]
        layer.values = layer.values[..., layer.values.shape[-2] - keep:, :]
        if isinstance(layer, DynamicSlidingWindowLayer):
            layer.cumulative_length = frame_len - cut


@dataclass
class _Batch:
    """The rows in flight: cache, mask [b, L], and per-row state [b]."""

    cache: DynamicCache
    mask: torch.Tensor  # [b, L] long
    rows: torch.Tensor  # [b] long: prompt index of each row
    next_pos: torch.Tensor  # [b] long: position id of the next fed token
    pending: torch.Tensor  # [b] long: the token to feed next
    pad_left: torch.Tensor  # [b] long: padding columns in front of the row
    prompt_end: torch.Tensor  # [b] long: frame column where the row's prompt ends
    produced: torch.Tensor  # [b] long: tokens generated so far

    @property
    def length(self) -> int:
        return int(self.mask.shape[1])

    def pad_front(self, extra: int) -> None:
        _pad_cache(self.cache, self.length, extra)
        self.mask = F.pad(self.mask, (extra, 0))
        self.pad_left = self.pad_left + extra
        self.prompt_end = self.prompt_end + extra

    def select(self, keep: torch.Tensor) -> None:
        """Keep the rows ``keep`` ([k] long indices), then cut all-padding columns."""
        self.cache.batch_select_indices(keep)
        for name in ("mask", "rows", "next_pos", "pending", "pad_left", "prompt_end",
                     "produced"):
            setattr(self, name, getattr(self, name)[keep])
        cut = int(self.pad_left.min()) if len(self.pad_left) else 0
        if cut:
            _trim_cache(self.cache, self.length, cut)
            self.mask = self.mask[:, cut:]
            self.pad_left = self.pad_left - cut
            self.prompt_end = self.prompt_end - cut

    def join(self, other: _Batch) -> None:
        """Append ``other``'s rows, padding whichever frame is shorter in front."""
        length = max(self.length, other.length)
        self.pad_front(length - self.length)
        other.pad_front(length - other.length)
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([mine.keys, theirs.keys], dim=0)
            mine.values = torch.cat([mine.values, theirs.values], dim=0)
        for name in ("mask", "rows", "next_pos", "pending", "pad_left", "prompt_end",
                     "produced"):
            setattr(self, name, torch.cat([getattr(self, name), getattr(other, name)]))


def prefill_left_padded(model, prompts: Sequence[torch.Tensor], idx: list[int],
                        pad_token_id: int, settings: torch.Tensor
                        ) -> tuple[DynamicCache, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward call of prompts ``idx`` left-padded together, in a fresh cache, under
    the attached runtimes (row ``r`` is setting ``settings[idx[r]]``, positions in the padded
    frame): ``(cache, mask [k, width] long, pad [k], greedy first token [k])``."""
    device = settings.device
    seqs = [prompts[i] for i in idx]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, width - len(s):] = s
        mask[r, width - len(s):] = 1
    ids, mask = ids.to(device), mask.to(device)
    pad = width - mask.sum(-1)  # [k]
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # [k, width]
    cache = DynamicCache(config=model.config)
    rows = torch.tensor(idx, dtype=torch.long, device=device)
    with batch_rows(model, settings[rows], RowFrame(0, width, pad)):
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache,
                    use_cache=True, logits_to_keep=1)
    return cache, mask, pad, out.logits[:, -1].argmax(-1)


def _prefill(model, prompts: Sequence[torch.Tensor], idx: list[int], pad_token_id: int,
            settings: torch.Tensor) -> tuple[_Batch, torch.Tensor]:
    """Prefill prompts ``idx`` (left-padded together) in a fresh cache; returns the batch
    and each row's first token [k]. ``settings`` [n]: per-row setting of every prompt."""
    cache, mask, pad, token = prefill_left_padded(model, prompts, idx, pad_token_id, settings)
    rows = torch.tensor(idx, dtype=torch.long, device=settings.device)
    lengths = mask.sum(-1)  # [k]
    full = torch.full_like(lengths, mask.shape[1])
    return _Batch(cache, mask, rows, lengths, token, pad, full, torch.ones_like(lengths)), token


@torch.no_grad()
def generate_refill(model, prompts: Sequence[torch.Tensor], *, batch_size: int,
                    max_new_tokens: int, eos: torch.Tensor, pad_token_id: int,
                    refill_at: int | None = None, row_ids: Sequence[int] | None = None,
                    row_limits: Sequence[int] | None = None,
                    on_done=None) -> list[torch.Tensor]:
    """Greedy tokens of every prompt (1-D id tensors, unpadded), up to and including EOS.

    At most ``batch_size`` rows are in flight; prompts join in the order given (pass them
    longest first to keep the frame short). Finished rows are dropped, and waiting prompts
    prefilled and joined, once ``refill_at`` rows (default ``max(1, batch_size // 4)``) are
    finished or the batch is empty. ``eos``: [E] stop ids on the model's device.
    ``row_ids[i]``: the per-row setting of prompt ``i`` (default ``i``); ``row_limits[i]``: at
    most that many new tokens for prompt ``i`` (default ``max_new_tokens``); ``on_done(i,
    tokens)`` is called as prompt ``i`` finishes. Returns [n_i] long per prompt.
    """
    if not prompts:
        raise SteerscopeError("no prompts to generate from", "pass a non-empty list")
    if any(p.ndim != 1 or p.numel() == 0 for p in prompts):
        raise SteerscopeError("every prompt must be a non-empty 1-D tensor of token ids")
    device = next(model.parameters()).device
    refill_at = refill_at if refill_at is not None else max(1, batch_size // 4)
    settings = torch.as_tensor(list(row_ids) if row_ids is not None else range(len(prompts)),
                               dtype=torch.long, device=device)  # [n]
    limits = torch.as_tensor(list(row_limits) if row_limits is not None
                             else [max_new_tokens] * len(prompts), dtype=torch.long,
                             device=device).clamp(max=max_new_tokens)  # [n]
    if len(settings) != len(prompts) or len(limits) != len(prompts) or int(limits.min()) < 1:
        raise SteerscopeError("row_ids / row_limits must give one entry per prompt (limits >= 1)")
    out: list[list[int] | None] = [None] * len(prompts)
    tokens: dict[int, list[int]] = {}
    waiting = list(range(len(prompts)))
    batch: _Batch | None = None
    done = torch.zeros(0, dtype=torch.bool, device=device)

    def record(rows: torch.Tensor, token: torch.Tensor, produced: torch.Tensor) -> torch.Tensor:
        """Append ``token`` to each row's output; [b] bool: the row is finished."""
        finished = produced >= limits[rows]
        if len(eos):
            finished |= torch.isin(token, eos)
        for r, t, f in zip(rows.tolist(), token.tolist(), finished.tolist()):
            tokens.setdefault(r, []).append(t)
            if f:
                out[r] = tokens.pop(r)
                if on_done is not None:
                    on_done(r, out[r])
        return finished

    while waiting or (batch is not None and not bool(done.all())):
        n_active = 0 if batch is None else int((~done).sum())
        free = batch_size - n_active
        if waiting and (batch is None or free >= refill_at or n_active == 0):
            if batch is not None:
                batch.select(torch.nonzero(~done).flatten())
            take, waiting = waiting[:free], waiting[free:]
            new, first = _prefill(model, prompts, take, pad_token_id, settings)
            new_done = record(new.rows, first, new.produced)
            if bool(new_done.any()):
                new.select(torch.nonzero(~new_done).flatten())
            if batch is None or n_active == 0:
                batch = new
            elif len(new.rows):
                batch.join(new)
            done = torch.zeros(len(batch.rows), dtype=torch.bool, device=device)
            if len(batch.rows) == 0:
                batch = None
                continue
        elif int(done.sum()) >= refill_at:
            batch.select(torch.nonzero(~done).flatten())
            done = done[~done]
        # one decoding step for every row in flight (finished rows not yet dropped ride along)
        frame = RowFrame(batch.length, batch.prompt_end, batch.pad_left)
        batch.mask = torch.cat([batch.mask, torch.ones_like(batch.mask[:, :1])], dim=1)
        with batch_rows(model, settings[batch.rows], frame):
            logits = model(input_ids=batch.pending[:, None], attention_mask=batch.mask,
                           position_ids=batch.next_pos[:, None], cache=batch.cache,
                           use_cache=True, logits_to_keep=1).logits[:, -1]
        batch.next_pos = batch.next_pos + 1
        batch.pending = logits.argmax(-1)  # [b]
        batch.produced = batch.produced + 1
        live = ~done
        finished = record(batch.rows[live], batch.pending[live], batch.produced[live])
        done[live] = finished
    return [torch.tensor(t, dtype=torch.long) for t in out]


__all__ = ["generate_refill", "prefill_left_padded", "refill_supported"]
