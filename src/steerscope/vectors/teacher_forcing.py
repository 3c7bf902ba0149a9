"""Teacher-forced log-likelihoods of responses under an additive steering vector, and the
NTP and PO losses built on them (paper §3).

A vector ``v`` [d_model] is added to the residual entering block ``layer`` at every position
with a per-example coefficient ``c``: ``h^ℓ ← h^ℓ + c·v``. All log-probabilities are
teacher-forced and summed over the labelled response tokens (the first
``max_response_tokens`` tokens of the response); ``|y|`` is their number.

* NTP: ``loss = −(1/|y_w|)·log p(y_w | x, h^ℓ + c·v)``, averaged over the batch.
* PO: ``Δ = (β⁺/|y_w|)·log p(y_w | steered) − (1/|y_l|)·log p(y_l | steered)``,
  ``loss = −log σ(Δ)``, averaged over the batch, with
  ``β⁺ = max((log p_ref(y_l) − log p_ref(y_w))·φ, 1)``; ``log p_ref`` are the **summed**
  log-probabilities of the labelled tokens under the unsteered model.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from steerscope.errors import SteerscopeError
from steerscope.generation import position_ids_from_mask
from steerscope.models.archs import ModelArch
from steerscope.runtime.core import Runtime
from steerscope.runtime.interventions import Edit


# ---------------------------------------------------------------------------------------
# teacher-forced log-likelihood
# ---------------------------------------------------------------------------------------
@dataclass
class TeacherForcedBatch:
    """A left-padded batch of prompt + response sequences for teacher forcing.

    Each row is cut after its last labelled token (later tokens cannot affect the labelled
    ones under causal attention), so every row's labelled tokens end at the last position.
    """

    input_ids: torch.Tensor  # [B, T] long
    attention_mask: torch.Tensor  # [B, T] long, 1 = real token
    label_mask: torch.Tensor  # [B, T] bool, True at the labelled response tokens
    n_tokens: torch.Tensor  # [B] long, labelled tokens per row (|y|)

    def to(self, device) -> TeacherForcedBatch:
        return TeacherForcedBatch(self.input_ids.to(device), self.attention_mask.to(device),
                                  self.label_mask.to(device), self.n_tokens.to(device))


@dataclass
class ResponseLogProbs:
    """Per-example teacher-forced results: summed log-probability of the labelled tokens,
    their number and how many equal the argmax of the logits."""

    logprob: torch.Tensor  # [B] float32
    n_tokens: torch.Tensor  # [B] long
    matches: torch.Tensor  # [B] long


def pad_token_id(tokenizer) -> int:
    """The tokenizer's padding id (its EOS id when it has none, 0 as the last resort)."""
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id
    if isinstance(pad_id, (list, tuple)):
        pad_id = pad_id[0]
    return 0 if pad_id is None else int(pad_id)


def encode_rows(tokenizer, prompts: Sequence[str], responses: Sequence[str],
                max_response_tokens: int) -> list[tuple[list[int], int]]:
    """Per example: (token ids of prompt + first labelled response tokens, number labelled).

    The text ``prompt + response`` is tokenized as one string (``add_special_tokens=False``);
    the response starts after the longest common prefix of its tokens with the prompt's own
    tokens (so a token merging across the boundary counts as response), and at least one
    token is left as prompt.
    """
    if len(prompts) != len(responses):
        raise SteerscopeError(f"{len(prompts)} prompts but {len(responses)} responses",
                              "pass one response per prompt")
    if not prompts:
        raise SteerscopeError("no prompt/response pairs to encode", "pass at least one")
    for t in (*prompts, *responses):
        if not isinstance(t, str):
            raise SteerscopeError(f"prompts and responses must be strings, got {type(t).__name__}")
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    full_ids = tokenizer([p + r for p, r in zip(prompts, responses)],
                         add_special_tokens=False)["input_ids"]
    rows = []
    for i, (p, f) in enumerate(zip(prompt_ids, full_ids)):
        if len(p) == 0:
            raise SteerscopeError(f"prompt {i} is empty after tokenization",
                                  "pass chat-formatted prompts")
        boundary = 0
        for a, b in zip(p, f):
            if a != b:
                break
            boundary += 1
        boundary = max(boundary, 1)
        k = max(0, min(len(f) - boundary, max_response_tokens))
        rows.append((list(f[: boundary + k]), k))
    return rows


def collate_rows(rows: Sequence[tuple[list[int], int]], pad_id: int,
                 device=None) -> TeacherForcedBatch:
    """Left-pad rows from :func:`encode_rows` into a :class:`TeacherForcedBatch`."""
    width = max(len(ids) for ids, _ in rows)
    b = len(rows)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)  # [B, T]
    attention_mask = torch.zeros((b, width), dtype=torch.long)  # [B, T]
    label_mask = torch.zeros((b, width), dtype=torch.bool)  # [B, T]
    for i, (ids, k) in enumerate(rows):
        input_ids[i, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, width - len(ids):] = 1
        if k:
            label_mask[i, width - k:] = True
    n_tokens = torch.tensor([k for _, k in rows], dtype=torch.long)  # [B]
    batch = TeacherForcedBatch(input_ids, attention_mask, label_mask, n_tokens)
    return batch if device is None else batch.to(device)


def encode_teacher_forced(tokenizer, prompts: Sequence[str], responses: Sequence[str], *,
                          max_response_tokens: int = 64, device=None) -> TeacherForcedBatch:
    """Left-padded batch of ``prompt + response`` with labels on the first
    ``max_response_tokens`` response tokens (prompts already chat-formatted)."""
    rows = encode_rows(tokenizer, prompts, responses, max_response_tokens)
    return collate_rows(rows, pad_token_id(tokenizer), device)


def steering_edit(layer: int, vector: torch.Tensor, coef: torch.Tensor) -> Edit:
    """``h^layer ← h^layer + coef[b]·vector`` at every position of row ``b`` (differentiable
    in ``vector`` and ``coef``)."""
    return Edit("resid_pre", layer,
                fn=lambda x, ctx: x + (coef[:, None, None] * vector).to(x))  # [B, T, d]


def response_logprobs(model, batch: TeacherForcedBatch, *, layer: int | None = None,
                      vector: torch.Tensor | None = None, coef: torch.Tensor | None = None,
                      arch: ModelArch | None = None) -> ResponseLogProbs:
    """Teacher-forced Σ_t log p(y_t | x, y_<t, h^ℓ + c_b·v) over each row's labelled tokens.

    Without ``vector`` the model runs unsteered. ``coef`` [B] defaults to ones. Runs in the
    caller's grad mode: gradients flow into ``vector`` (and ``coef``) when they require them.
    """
    device = batch.input_ids.device
    b, t = batch.input_ids.shape
    k = int(batch.n_tokens.max())
    if k == 0:
        zero = torch.zeros(b, device=device)
        return ResponseLogProbs(zero, batch.n_tokens, torch.zeros_like(batch.n_tokens))
    ctx = nullcontext()
    if vector is not None:
        if layer is None:
            raise SteerscopeError("steering needs a layer", "pass layer=")
        if coef is None:
            coef = torch.ones(b, device=device)
        coef = coef.to(device=device, dtype=torch.float32)  # [B]
        ctx = Runtime(model, [steering_edit(layer, vector, coef)], arch=arch)
    with ctx:
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    position_ids=position_ids_from_mask(batch.attention_mask),
                    use_cache=False, logits_to_keep=k + 1)
    logits = out.logits[:, :-1].float()  # [B, K, V]: predictions of positions T-K .. T-1
    targets = batch.input_ids[:, t - k:]  # [B, K]
    mask = batch.label_mask[:, t - k:]  # [B, K]
    token_lp = -F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # [B, K]
    logprob = (token_lp * mask).sum(-1)  # [B]
    matches = ((logits.argmax(-1) == targets) & mask).sum(-1)  # [B]
    return ResponseLogProbs(logprob, batch.n_tokens, matches)


@torch.no_grad()
def score_responses(model, tokenizer, prompts: Sequence[str], responses: Sequence[str], *,
                    layer: int | None = None, vector: torch.Tensor | None = None,
                    coefs: Sequence[float] | torch.Tensor | None = None,
                    max_response_tokens: int = 64, batch_size: int = 16) -> ResponseLogProbs:
    """:func:`response_logprobs` over a whole list, in batches, without gradients (CPU
    tensors, input order). ``coefs``: one steering coefficient per example (default 1)."""
    rows = encode_rows(tokenizer, prompts, responses, max_response_tokens)
    return score_rows(model, rows, pad_token_id(tokenizer), layer=layer, vector=vector,
                      coefs=coefs, batch_size=batch_size)


@torch.no_grad()
def score_rows(model, rows, pad_id, *, layer=None, vector=None, coefs=None, batch_size=16,
               arch=None) -> ResponseLogProbs:
    """:func:`response_logprobs` over rows from :func:`encode_rows`, in batches of
    ``batch_size``, without gradients (CPU tensors, input order)."""
    device = next(model.parameters()).device
    if coefs is not None:
        coefs = torch.as_tensor(coefs, dtype=torch.float32)  # [N]
    if vector is not None:
        vector = vector.detach().to(device=device, dtype=torch.float32)
    lp, n, m = [], [], []
    for i in range(0, len(rows), batch_size):
        batch = collate_rows(rows[i:i + batch_size], pad_id, device)
        c = None if coefs is None else coefs[i:i + batch_size].to(device)
        r = response_logprobs(model, batch, layer=layer, vector=vector, coef=c, arch=arch)
        lp.append(r.logprob.cpu())
        n.append(r.n_tokens.cpu())
        m.append(r.matches.cpu())
    return ResponseLogProbs(torch.cat(lp), torch.cat(n), torch.cat(m))


# ---------------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------------
def ntp_loss(logp_w: torch.Tensor, n_w: torch.Tensor) -> torch.Tensor:
    """NTP: mean over the batch of −(1/|y_w|)·log p(y_w | steered). ``logp_w``, ``n_w``: [B]."""
    return -(logp_w / n_w.clamp(min=1)).mean()


def beta_plus(ref_w: torch.Tensor, ref_l: torch.Tensor, phi: float) -> torch.Tensor:
    """β⁺ = max((log p_ref(y_l) − log p_ref(y_w))·φ, 1), per example ([B] summed log-probs)."""
    return ((ref_l - ref_w) * phi).clamp(min=1.0)


def po_loss(logp_w: torch.Tensor, n_w: torch.Tensor, logp_l: torch.Tensor, n_l: torch.Tensor,
            beta: torch.Tensor) -> torch.Tensor:
    """One-directional RePS: mean over the batch of −log σ(Δ),
    Δ = (β⁺/|y_w|)·log p(y_w | steered) − (1/|y_l|)·log p(y_l | steered). All inputs [B]."""
    delta = beta * logp_w / n_w.clamp(min=1) - logp_l / n_l.clamp(min=1)  # [B]
    return -F.logsigmoid(delta).mean()


__all__ = [
    "TeacherForcedBatch",
    "ResponseLogProbs",
    "pad_token_id",
    "encode_rows",
    "collate_rows",
    "encode_teacher_forced",
    "steering_edit",
    "response_logprobs",
    "score_responses",
    "score_rows",
    "ntp_loss",
    "beta_plus",
    "po_loss",
]
