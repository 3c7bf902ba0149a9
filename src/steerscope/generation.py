"""Batched greedy generation with left padding and a KV cache, under any interventions.

``generate_ids`` is the token-level loop (one prefill, then one KV-cached step per token, or a
full re-computation of the sequence at every step with ``use_cache=False``, the reference);
``generate`` works on text prompts in length-sorted batches with a progress bar.
Interventions given here are attached with a :class:`~steerscope.runtime.Runtime` whose
prompt length is the padded prompt length, so ``scope="generated"`` means exactly the
generated tokens, in both modes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from steerscope.errors import SteerscopeError
from steerscope.generation_refill import generate_refill, refill_supported
from steerscope.generation_sizes import (  # noqa: F401  (sizes are also importable from here)
    DEFAULT_BATCH_SIZE,
    batch_size_for_free_memory,
    batch_size_from_memory,
    compute_itemsize,
    context_length,
    fixed_batch_size,
    kv_bytes_per_token,
    refuse_longer_than_context,
    resolve_batch_size,
    warn_if_too_long,
)
from steerscope.generation_slots import (
    cache_length,
    generate_slots,
    release_slots,
    slots_supported,
)
from steerscope.models.chat import encode_prompts
from steerscope.runtime.core import Runtime, batch_rows
from steerscope.runtime.interventions import Intervention, check_row_count
from steerscope.validation import check_positive_int

# compiled="auto" decodes in compiled slots only for jobs of at least this many prompts x
# max_new_tokens: below it, compiling the step (once per shape) costs more than it saves
AUTO_SLOTS_MIN_TOKENS = 8192


@dataclass
class Generation:
    """Output of :func:`generate_ids`.

    ``sequences``: [B, P + N] prompt (left-padded) followed by the generated tokens (pad after
    an EOS); ``new_tokens``: [B, N]; ``lengths``: [B] number of generated tokens up to and
    including the EOS.
    """

    sequences: torch.Tensor
    new_tokens: torch.Tensor
    lengths: torch.Tensor
    prompt_len: int


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] positions that skip left padding: 0 at each row's first real token."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def eos_token_ids(model, eos_token_id) -> list[int]:
    """The end-of-sequence token ids generation stops at: ``eos_token_id`` (an id or a list)
    when given, else the model's generation config's, else its config's; [] when none."""
    if eos_token_id is None:
        eos_token_id = getattr(model.generation_config, "eos_token_id", None)
        if eos_token_id is None:
            eos_token_id = getattr(model.config, "eos_token_id", None)
    if eos_token_id is None:
        return []
    return [int(e) for e in (eos_token_id if isinstance(eos_token_id, Iterable) else [eos_token_id])]


def prepare_greedy_inputs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                          eos_token_id, pad_token_id: int | None,
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """The inputs of a greedy loop on the model's device: ``input_ids`` [B, P], the long mask
    [B, P] (all ones when None), the EOS ids [E] (see :func:`eos_token_ids`) and the pad id
    (``pad_token_id``, else the first EOS id, else 0)."""
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    attention_mask = attention_mask.to(device).long()
    eos = torch.tensor(eos_token_ids(model, eos_token_id), device=device, dtype=torch.long)
    if pad_token_id is None:
        pad_token_id = int(eos[0]) if len(eos) else 0
    return input_ids, attention_mask, eos, pad_token_id


def record_greedy_token(logits: torch.Tensor, step: int, new: torch.Tensor,
                        lengths: torch.Tensor, done: torch.Tensor, eos: torch.Tensor,
                        pad_token_id: int) -> torch.Tensor:
    """The greedy token [B] of ``logits`` [B, V] (pad for rows already done), written to
    ``new[:, step]``; ``lengths`` counts it for unfinished rows and ``done`` marks EOS (both
    updated in place)."""
    token = logits.argmax(-1)  # [B]
    token = torch.where(done, torch.full_like(token, pad_token_id), token)
    new[:, step] = token
    lengths += (~done).long()
    if len(eos):
        done |= torch.isin(token, eos)
    return token


def greedy_loop(model, ids: torch.Tensor, mask: torch.Tensor, *, batch: int,
                max_new_tokens: int, use_cache: bool, eos: torch.Tensor, pad_token_id: int,
                stop_at_eos: bool, rows: slice | None = None, copies: int = 1,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The greedy decoding loop under whatever hooks are attached (the caller's context).

    ``ids``/``mask``: [copies·B, P] left-padded prompts; the next token of each of the B
    sequences is the argmax of the logits of ``rows`` (default: the first B rows) and is fed to
    all ``copies`` of that sequence (lockstep runs). One prefill and one KV-cached step per
    token, or the whole sequence re-run at every step with ``use_cache=False``. Returns
    ``new_tokens`` [B, N] (pad after an EOS), ``lengths`` [B] (up to and including the EOS)
    and the first step's logits of ``rows`` [B, V] float32.
    """
    device = ids.device
    rows = rows if rows is not None else slice(0, batch)
    new = torch.full((batch, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    lengths = torch.zeros(batch, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    first_logits = None
    cache = DynamicCache(config=model.config) if use_cache else None
    pos = position_ids_from_mask(mask)
    step_ids, step_pos = ids, pos
    for step in range(max_new_tokens):
        if use_cache:
            out = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos,
                        cache=cache, use_cache=True, logits_to_keep=1)
        else:
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos,
                        use_cache=False, logits_to_keep=1)
        logits = out.logits[rows, -1]  # [B, V]
        if step == 0:
            first_logits = logits.float().clone()
        token = record_greedy_token(logits, step, new, lengths, done, eos, pad_token_id)
        if (stop_at_eos and bool(done.all())) or step == max_new_tokens - 1:
            new = new[:, : step + 1]
            break
        fed = token.repeat(copies)[:, None]  # [copies·B, 1]
        next_pos = pos[:, -1:] + 1
        ids = torch.cat([ids, fed], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        pos = torch.cat([pos, next_pos], dim=1)
        step_ids, step_pos = fed, next_pos
    return new, lengths, first_logits


@torch.no_grad()
def generate_ids(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int = 64,
    interventions: Sequence[Intervention] = (),
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    use_cache: bool = True,
    stop_at_eos: bool = True,
    runtime: Runtime | None = None,
) -> Generation:
    """Greedy decoding of a left-padded batch ([B, P] ids and mask) under ``interventions``.

    With ``use_cache=False`` every step re-runs the whole sequence (reference for the
    position contract: it must give the same tokens as the cached loop).
    """
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise SteerscopeError(f"input_ids must be a non-empty [batch, length] tensor, got shape "
                              f"{tuple(input_ids.shape)}")
    if max_new_tokens < 1:
        raise SteerscopeError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if runtime is None or runtime.rows is None:  # rows given: they pick the settings
        check_row_count(list(interventions) if runtime is None else runtime.interventions,
                        int(input_ids.shape[0]))
    input_ids, attention_mask, eos, pad_token_id = prepare_greedy_inputs(
        model, input_ids, attention_mask, eos_token_id, pad_token_id)
    batch, prompt_len = input_ids.shape

    if runtime is None:
        ctx = Runtime(model, interventions, prompt_len=prompt_len) if interventions else nullcontext()
    else:
        if interventions:
            raise SteerscopeError("pass either interventions or a runtime, not both")
        runtime.reset(prompt_len)
        ctx = nullcontext(runtime)

    with ctx:
        new, lengths, _ = greedy_loop(model, input_ids, attention_mask, batch=batch,
                                      max_new_tokens=max_new_tokens, use_cache=use_cache,
                                      eos=eos, pad_token_id=pad_token_id,
                                      stop_at_eos=stop_at_eos)
    return Generation(torch.cat([input_ids, new], dim=1), new, lengths, prompt_len)


def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    interventions: Sequence[Intervention] = (),
    max_new_tokens: int = 64,
    batch_size: int | str = DEFAULT_BATCH_SIZE,
    progress: bool | None = None,
    desc: str = "generating",
    refill: bool = True,
    row_settings: Sequence[int] | None = None,
    compiled: bool | str = "auto",
) -> list[str]:
    """Greedy completions of already chat-formatted ``prompts`` (strings), in input order.

    Prompts are batched by length (left-padded); decoding stops at EOS; the returned text
    excludes the prompt and special tokens. Per-row interventions (``steer`` with [N, d]
    vectors or [N] alphas) give prompt ``i`` setting ``row_settings[i]`` (default ``i``: then
    N = the number of prompts).
    With ``refill`` (default) and interventions that act on each row independently, finished
    rows leave the batch and waiting prompts take their place
    (:func:`steerscope.generation_refill.generate_refill`; same tokens). ``batch_size``
    ``"auto"``: the largest batch that fits the free CUDA memory, halved on out-of-memory
    (:func:`batch_size_from_memory`; :data:`DEFAULT_BATCH_SIZE` off CUDA).
    ``compiled``: decode in fixed slots with a compiled step (a CUDA graph on CUDA;
    :func:`steerscope.generation_slots.generate_slots`, same tokens as the eager loop up to
    the device's floating-point differences between kernels): ``"auto"`` (default) on CUDA
    for jobs of :data:`AUTO_SLOTS_MIN_TOKENS` or more when the interventions are steering that
    the step supports (:func:`use_slots`),
    ``True`` also off CUDA (compiling takes minutes on a CPU), ``False`` never.
    """
    if isinstance(prompts, str):
        raise SteerscopeError("prompts must be a list of strings, not one string")
    if len(prompts) == 0:
        raise SteerscopeError("no prompts to generate from", "pass a non-empty list")
    if batch_size != "auto":
        check_positive_int(batch_size, "batch_size")
    settings = check_row_settings(interventions, row_settings, len(prompts))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    token_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    lengths = [len(ids) for ids in token_ids]
    refuse_longer_than_context(model, lengths)
    warn_if_too_long(model, max(lengths) + max_new_tokens, sum(
        n + max_new_tokens > context_length(model) for n in lengths))
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    runtime = Runtime(model, interventions) if interventions else None
    with runtime if runtime is not None else nullcontext():
        use_refill = refill and refill_supported(model)
    slots = use_slots(model, interventions, compiled,
                      n_tokens=len(prompts) * max_new_tokens) if refill else False
    longest = (cache_length(max(lengths), max_new_tokens) if slots  # the slots' cache length
               else max(lengths) + max_new_tokens)
    batch_size = resolve_batch_size(model, batch_size, longest)
    if use_refill or slots:
        tokens = _generate_refilled(model, token_ids, order, runtime, settings,
                                    batch_size=batch_size,
                                    max_new_tokens=max_new_tokens, pad_id=pad_id,
                                    show=progress, desc=desc,
                                    slots=interventions if slots else None)
    else:
        tokens = _generate_batched(model, tokenizer, prompts, order, runtime, settings,
                                   batch_size=batch_size, max_new_tokens=max_new_tokens,
                                   pad_id=pad_id, show=progress, desc=desc)
    return [tokenizer.decode(t, skip_special_tokens=True) for t in tokens]


def use_slots(model, interventions: Sequence[Intervention], compiled: bool | str, *,
              n_tokens: int = AUTO_SLOTS_MIN_TOKENS, device: torch.device | None = None) -> bool:
    """Whether :func:`generate` decodes in compiled slots: ``compiled`` ``"auto"`` on CUDA
    for a job of ``n_tokens`` (prompts x max_new_tokens) >= :data:`AUTO_SLOTS_MIN_TOKENS`
    on a model with unquantized weights (quantized kernels under ``torch.compile`` are
    untested here), and ``True`` anywhere, when no other runtime is attached to the model and the
    interventions and model qualify (:func:`~steerscope.generation_slots.slots_supported`);
    ``compiled=True`` with ones that do not is a one-line error. ``device``: the model's."""
    if compiled not in (True, False, "auto"):
        raise SteerscopeError(f"compiled must be true, false or 'auto', got {compiled!r}")
    if compiled is False:
        return False
    ok = slots_supported(model, interventions)
    quantized = getattr(model, "hf_quantizer", None) is not None  # int8 / 4-bit weights
    if compiled is True and not ok:
        raise SteerscopeError("compiled decoding needs steering at resid_pre (scope all / "
                              "generated / prompt), sdpa or eager attention and no other "
                              "attached runtime", "pass compiled='auto' or False")
    device = device if device is not None else next(model.parameters()).device
    return ok and (compiled is True or (device.type == "cuda" and not quantized
                                        and n_tokens >= AUTO_SLOTS_MIN_TOKENS))


def check_row_settings(interventions: Sequence[Intervention], row_settings: Sequence[int] | None,
                       n_prompts: int) -> list[int]:
    """The setting index of every prompt (default: prompt i is setting i); a one-line error,
    before any compute, when per-row interventions do not have a setting for each."""
    if row_settings is None:
        check_row_count(interventions, n_prompts, "prompt list")
        return list(range(n_prompts))
    settings = [int(r) for r in row_settings]
    if len(settings) != n_prompts:
        raise SteerscopeError(f"row_settings has {len(settings)} entries for {n_prompts} prompts",
                              "give one setting index per prompt")
    counts = [op.n_rows for op in interventions if getattr(op, "n_rows", None) is not None]
    for n in counts:
        if min(settings) < 0 or max(settings) >= n:
            raise SteerscopeError(f"row_settings must index the {n} per-row settings, got "
                                  f"values {min(settings)}..{max(settings)}",
                                  f"use indices 0..{n - 1}")
    return settings


def _generate_batched(model, tokenizer, prompts, order, runtime, settings, *, batch_size,
                      max_new_tokens, pad_id, show, desc) -> list[list[int]]:
    """Fixed length-sorted batches, each decoded until all its rows finish."""
    results: list[list[int] | None] = [None] * len(prompts)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    show = show if show is not None else len(batches) > 1
    device = next(model.parameters()).device
    for idx in tqdm(batches, desc=desc, disable=not show):
        enc = encode_prompts(tokenizer, [prompts[i] for i in idx], device=device)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        if runtime is None:
            gen = generate_ids(model, ids, mask, max_new_tokens=max_new_tokens,
                               pad_token_id=pad_id)
        else:
            rows = torch.tensor([settings[i] for i in idx], dtype=torch.long, device=device)
            with runtime, batch_rows(model, rows):
                gen = generate_ids(model, ids, mask, max_new_tokens=max_new_tokens,
                                   pad_token_id=pad_id, runtime=runtime)
        for row, i in enumerate(idx):
            results[i] = gen.new_tokens[row, : int(gen.lengths[row])].tolist()
    return results  # type: ignore[return-value]


def _generate_refilled(model, token_ids, order, runtime, settings, *, batch_size,
                       max_new_tokens, pad_id, show, desc, slots=None) -> list[list[int]]:
    """Rows leave the batch when they finish and waiting prompts join (in compiled slots
    when ``slots`` is the list of interventions); on an out-of-memory error the batch is
    halved and the unfinished prompts are run again."""
    _, _, eos, pad_id = prepare_greedy_inputs(model, torch.zeros(1, 1, dtype=torch.long),
                                              None, None, pad_id)
    device = next(model.parameters()).device
    results: dict[int, list[int]] = {}
    show = show if show is not None else len(order) > batch_size
    bar = tqdm(total=len(order), desc=desc, disable=not show)
    while True:
        todo = [i for i in order if i not in results]
        if not todo:
            break
        ids = [torch.tensor(token_ids[i], dtype=torch.long) for i in todo]

        def done(k, toks, todo=todo):
            results[todo[k]] = toks
            bar.update(1)

        try:
            if slots is not None:
                try:
                    generate_slots(model, ids, batch_size=batch_size,
                                   max_new_tokens=max_new_tokens, eos=eos, pad_token_id=pad_id,
                                   interventions=slots, row_ids=[settings[i] for i in todo],
                                   on_done=done)
                finally:  # the slots' KV buffers are freed for whatever runs next
                    release_slots(model)
            else:
                with runtime if runtime is not None else nullcontext():
                    generate_refill(model, ids, batch_size=batch_size,
                                    max_new_tokens=max_new_tokens, eos=eos,
                                    pad_token_id=pad_id, row_ids=[settings[i] for i in todo],
                                    on_done=done)
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            batch_size //= 2
    bar.close()
    return [results[i] for i in range(len(token_ids))]
