"""Fine-tuning a model on the demo recipe's pairs (teacher forcing, response tokens only)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

import torch

from steerscope.demo.recipe import DEFAULT_RECIPE, DemoExample, DemoRecipe, encode_examples
from steerscope.errors import SteerscopeError
from steerscope.models.archs import validate_model


def _lr_factor(step: int, recipe: DemoRecipe) -> float:
    """The learning-rate multiplier at 0-based ``step``: linear warm-up, then decay to 0."""
    if step < recipe.warmup_steps:
        return (step + 1) / (recipe.warmup_steps + 1)
    span = max(1, recipe.steps - recipe.warmup_steps)
    t = (step - recipe.warmup_steps) / span
    if recipe.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    return 1.0 - t


def _trainable(model, recipe: DemoRecipe) -> list[torch.nn.Parameter]:
    """Switch on gradients for the parameters the recipe trains; returns them."""
    model.requires_grad_(False)
    if recipe.trained == "all":
        model.requires_grad_(True)
    else:
        arch = validate_model(model)
        if not 0 <= recipe.first_trained_layer < arch.n_layers:
            raise SteerscopeError(
                f"first_trained_layer={recipe.first_trained_layer} is not a layer of this "
                f"{arch.n_layers}-layer model", f"pass 0 to {arch.n_layers - 1}")
        for layer in list(arch.layers)[recipe.first_trained_layer:]:
            layer.requires_grad_(True)
        arch.final_norm.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise SteerscopeError("the recipe trains no parameters",
                              "lower first_trained_layer or use trained='all'")
    return params


def _response_logits(arch, input_ids, attention_mask, positions):
    """Logits [N, V] that predict the tokens at ``positions`` (a [N, 2] tensor of (row, col)
    with col >= 1): the decoder runs once over the batch, the LM head only on the positions
    needed (with the model's final logit soft-capping, if any)."""
    hidden = arch.base(input_ids=input_ids, attention_mask=attention_mask,
                       use_cache=False).last_hidden_state  # [B, T, D]
    logits = arch.unembed(hidden[positions[:, 0], positions[:, 1] - 1])  # [N, V]
    cap = arch.final_logit_softcap
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _batch_tensors(encoded: Sequence[tuple[list[int], int]], pad_id: int):
    """Right-padded ids and mask [B, T], the (row, col) of every response token [N, 2], and
    the example index of each [N]."""
    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    pos, owner = [], []
    for i, (row, start) in enumerate(encoded):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        pos.extend((i, c) for c in range(start, len(row)))
        owner.extend([i] * (len(row) - start))
    return ids, mask, torch.tensor(pos, dtype=torch.long), torch.tensor(owner, dtype=torch.long)


def finetune(model, tokenizer, examples: Sequence[DemoExample], recipe: DemoRecipe = DEFAULT_RECIPE,
             *, progress: bool = True,
             callback: Callable[[int, float], None] | None = None) -> list[float]:
    """Fine-tune ``model`` in place on ``examples`` as ``recipe`` says; returns the loss of
    every step.

    Each step draws ``round(batch_size * harmful_fraction)`` harmful and the rest harmless
    examples (each pool in seeded shuffled epochs) and minimises the mean over examples of
    the mean cross-entropy of their response tokens (prompt tokens are masked), plus
    ``first_token_weight`` times the mean cross-entropy of their first response tokens. The model is
    left in eval mode with gradients off. ``callback(step, loss)`` runs after every step.
    """
    from tqdm.auto import tqdm

    harmful = [e for e in examples if e.harmful]
    harmless = [e for e in examples if not e.harmful]
    if not harmful or not harmless:
        raise SteerscopeError("fine-tuning needs harmful and harmless examples")
    enc_h = encode_examples(tokenizer, harmful)
    enc_l = encode_examples(tokenizer, harmless)
    n_h = min(recipe.batch_size - 1, max(1, round(recipe.batch_size * recipe.harmful_fraction)))
    n_l = recipe.batch_size - n_h
    rng = random.Random(recipe.seed + 1)

    def cycler(n: int):
        order: list[int] = []
        while True:
            if not order:
                order = rng.sample(range(n), n)
            yield order.pop()

    draw_h, draw_l = cycler(len(enc_h)), cycler(len(enc_l))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    arch = validate_model(model)
    torch.manual_seed(recipe.seed)
    params = _trainable(model, recipe)
    opt = torch.optim.AdamW(params, lr=recipe.lr, betas=recipe.betas,
                            weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, recipe))
    model.train()
    losses: list[float] = []
    bar = tqdm(range(recipe.steps), desc="fine-tuning demo model", disable=not progress)
    try:
        for step in bar:
            batch = [enc_h[next(draw_h)] for _ in range(n_h)] + \
                    [enc_l[next(draw_l)] for _ in range(n_l)]
            ids, mask, pos, owner = _batch_tensors(batch, pad_id)
            logits = _response_logits(arch, ids, mask, pos)  # [N, V]
            targets = ids[pos[:, 0], pos[:, 1]]  # [N]
            tok_loss = torch.nn.functional.cross_entropy(logits.float(), targets,
                                                         reduction="none")  # [N]
            per_ex = torch.zeros(len(batch)).index_add_(0, owner, tok_loss)
            counts = torch.bincount(owner, minlength=len(batch)).clamp(min=1)
            loss = (per_ex / counts).mean()
            if recipe.first_token_weight:
                first = torch.ones_like(owner, dtype=torch.bool)
                first[1:] = owner[1:] != owner[:-1]  # the first response token of each example
                loss = loss + recipe.first_token_weight * tok_loss[first].mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if callback is not None:
                callback(step, losses[-1])
    finally:
        model.eval()
        model.requires_grad_(False)
    return losses
