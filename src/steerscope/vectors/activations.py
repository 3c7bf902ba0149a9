"""Residual-stream activations of formatted prompts at chosen layers and prompt positions.

Activations are read at ``resid_pre`` (the residual **entering** block ``layer``; ``layer = L``
is the residual entering the final norm) with :class:`~steerscope.runtime.Capture`
interventions attached by one :class:`~steerscope.runtime.Runtime`, so one forward pass per
batch captures every requested layer. Prompts are already formatted (chat template applied)
and are run in order, in left-padded batches (:func:`~steerscope.models.chat.encode_prompts`)
with position ids that skip the padding, so a padded row gives what the prompt gives alone.

Positions follow the runtime's position contract and must be negative: ``-1`` is the last
prompt token, ``-k`` the k-th token from the prompt end (e.g. the post-instruction template
tokens of :func:`~steerscope.models.chat.post_instruction_tokens`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from steerscope.errors import SteerscopeError
from steerscope.models.archs import ModelArch, validate_model
from steerscope.models.calls import forward_accepts, model_device
from steerscope.models.chat import check_formatted_prompts, encode_prompts
from steerscope.runtime import Capture, Edit, Runtime

_AUTO_PROGRESS_BATCHES = 4  # show a progress bar above this many batches when progress=None


class _StopForward(Exception):
    """Raised by a hook once every requested layer has been captured (skips the rest)."""


def _stop(x, ctx):  # an Edit function: abort the forward pass
    raise _StopForward


def _check_layers(layers, arch: ModelArch) -> list[int]:
    if isinstance(layers, int):
        layers = [layers]
    try:
        layers = [int(layer) for layer in layers]
    except (TypeError, ValueError) as exc:
        raise SteerscopeError(f"layers {layers!r} are not a list of ints",
                              "pass block indices, e.g. [10, 12]") from exc
    if not layers:
        raise SteerscopeError("no layers given", "pass at least one layer")
    if len(set(layers)) != len(layers):
        raise SteerscopeError(f"layers {layers} contain duplicates", "pass each layer once")
    for layer in layers:
        arch.check_layer(layer, allow_final=True)
    return layers


def _check_positions(positions) -> list[int]:
    if isinstance(positions, int):
        positions = [positions]
    try:
        positions = [int(p) for p in positions]
    except (TypeError, ValueError) as exc:
        raise SteerscopeError(f"positions {positions!r} are not a list of ints",
                              "pass negative positions, e.g. [-2, -1]") from exc
    if not positions:
        raise SteerscopeError("no positions given", "pass at least one, e.g. [-1]")
    if any(p >= 0 for p in positions):
        raise SteerscopeError(
            f"positions {positions} must be negative (counted back from the prompt end)",
            "use -1 for the last prompt token, -2 for the one before, ...")
    if len(set(positions)) != len(positions):
        raise SteerscopeError(f"positions {positions} contain duplicates", "pass each once")
    return positions


def _batches(
    model,
    tokenizer,
    prompts: list[str],
    layers: list[int],
    positions: list[int],
    batch_size: int,
    arch: ModelArch,
    progress: bool | None,
    desc: str,
) -> Iterator[torch.Tensor]:
    """Yield, per batch, the activations [B, len(layers), len(positions), d] (model dtype, CPU).

    Prompts are taken in order. Every layer is captured in one forward pass; the pass stops
    right after the deepest requested layer.
    """
    if int(batch_size) < 1:
        raise SteerscopeError(f"batch_size must be at least 1, got {batch_size}", "pass e.g. 16")
    batch_size = int(batch_size)
    # Capture.value returns the scope's positions in time order: sort once, then reorder.
    order = sorted(range(len(positions)), key=lambda i: positions[i])  # time order
    inverse = [0] * len(order)
    for rank, i in enumerate(order):
        inverse[i] = rank  # column of positions[i] in the time-ordered capture
    scope = tuple(positions[i] for i in order)
    need = -min(positions)  # a prompt needs at least this many tokens
    device = model_device(model)
    kwargs = {}
    if forward_accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = 1
    if forward_accepts(model, "use_cache"):
        kwargs["use_cache"] = False
    starts = range(0, len(prompts), batch_size)
    if progress is None:
        progress = len(starts) > _AUTO_PROGRESS_BATCHES
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=desc, unit="batch", leave=False)
    stop_layer = max(layers) + 1
    for s in starts:
        enc = encode_prompts(tokenizer, prompts[s : s + batch_size], device=device)
        ids, mask = enc["input_ids"], enc["attention_mask"]  # [B, T]
        lengths = mask.sum(-1)  # [B]
        short = (lengths < need).nonzero().flatten().tolist()
        if short:
            i = s + short[0]
            raise SteerscopeError(
                f"prompt {i} has {int(lengths[short[0]])} tokens but position {-need} was "
                "requested",
                "use positions within every prompt or pass longer (formatted) prompts")
        caps = [Capture("resid_pre", layer, scope=scope) for layer in layers]
        ops = list(caps)
        if stop_layer <= arch.n_layers:
            ops.append(Edit("resid_pre", stop_layer, fn=_stop))
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, T]
        with torch.no_grad(), Runtime(model, ops, arch=arch):
            try:
                model(input_ids=ids, attention_mask=mask, position_ids=position_ids, **kwargs)
            except _StopForward:
                pass
        acts = torch.stack([c.value for c in caps], dim=1)  # [B, nL, K (time order), d]
        yield acts[:, :, inverse].cpu()  # [B, nL, K (given order), d]


def mean_activations(
    model,
    tokenizer,
    formatted_prompts: Sequence[str],
    *,
    layers: Sequence[int] | int,
    positions: Sequence[int] | int,
    batch_size: int = 16,
    arch: ModelArch | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    """Mean ``resid_pre`` activation over the prompts at each layer and position.

    Returns [len(layers), len(positions), d] float64 on the CPU: entry ``[j, k]`` is the mean
    over prompts of the residual entering block ``layers[j]`` at prompt position
    ``positions[k]`` (negative, from the prompt end), summed in float64.
    """
    arch = arch if arch is not None else validate_model(model)
    prompts = check_formatted_prompts(formatted_prompts)
    layers = _check_layers(layers, arch)
    positions = _check_positions(positions)
    total = torch.zeros(len(layers), len(positions), arch.d_model, dtype=torch.float64)
    for acts in _batches(model, tokenizer, prompts, layers, positions, batch_size, arch,
                         progress, "mean activations"):
        total += acts.to(torch.float64).sum(0)  # [nL, K, d]
    return total / len(prompts)  # [nL, K, d] float64


def collect_activations(
    model,
    tokenizer,
    formatted_prompts: Sequence[str],
    *,
    layers: Sequence[int] | int,
    positions: Sequence[int] | int,
    batch_size: int = 16,
    arch: ModelArch | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    """Per-prompt ``resid_pre`` activations (for PCA, probes, ...).

    Returns [N, len(layers), len(positions), d] float32 on the CPU, prompts in the given order;
    ``[n, j, k]`` is prompt ``n``'s residual entering block ``layers[j]`` at position
    ``positions[k]`` (negative, from the prompt end).
    """
    arch = arch if arch is not None else validate_model(model)
    prompts = check_formatted_prompts(formatted_prompts)
    layers = _check_layers(layers, arch)
    positions = _check_positions(positions)
    out = [acts.float() for acts in _batches(model, tokenizer, prompts, layers, positions,
                                             batch_size, arch, progress, "activations")]
    return torch.cat(out, dim=0)  # [N, nL, K, d] float32


__all__ = ["collect_activations", "mean_activations"]
