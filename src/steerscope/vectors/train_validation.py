"""Encoding a preference data set for training and validating a learned steering vector on
it (the validation loss and token-match rates of :mod:`steerscope.vectors.trained`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from steerscope.errors import SteerscopeError
from steerscope.vectors.teacher_forcing import (
    beta_plus,
    encode_rows,
    ntp_loss,
    pad_token_id,
    po_loss,
    score_rows,
)
from steerscope.vectors.train_config import TrainConfig
from steerscope.vectors.training_data import PreferenceData, PreferenceExample

WHOLE_RESPONSE = 1 << 30  # max_response_tokens that keeps every response token


@dataclass
class EncodedData:
    """Token rows and unsteered reference log-probs of a data set, for one max length."""

    winners: list[tuple[list[int], int]]
    losers: list[tuple[list[int], int]]
    signs: torch.Tensor  # [N] float
    ref_w: torch.Tensor | None = None  # [N] summed unsteered log p(y_w)
    ref_l: torch.Tensor | None = None  # [N]
    # match_scope "response": the winners' rows over the whole response (token match only)
    match_winners: list[tuple[list[int], int]] | None = None


def check_preference_data(data, name: str) -> list[PreferenceExample]:
    """The examples of ``data`` (a non-empty PreferenceData); a one-line error naming ``name``
    otherwise."""
    if not isinstance(data, PreferenceData):
        raise SteerscopeError(f"{name} must be PreferenceData, got {type(data).__name__}",
                              "build it with build_preference_data")
    if len(data) == 0:
        raise SteerscopeError(f"{name} has no examples", "pass a non-empty preference data set")
    return list(data.examples)


def encode_data(model, tokenizer, data: PreferenceData, config: TrainConfig, name: str, arch,
                 eval_batch_size: int, cache: dict | None) -> EncodedData:
    """The token rows of ``data`` at ``config.max_response_tokens`` (kept in ``cache`` per
    data set and length) and, for PO, the unsteered reference log-probs."""
    examples = data.examples
    key = (name, id(data), config.max_response_tokens, config.match_scope)
    if cache is not None and key in cache:
        enc = cache[key]
    else:
        prompts = [e.prompt for e in examples]
        winners = encode_rows(tokenizer, prompts, [e.winner for e in examples],
                              config.max_response_tokens)
        losers = encode_rows(tokenizer, prompts, [e.loser for e in examples],
                             config.max_response_tokens)
        for i, ((_, kw), (_, kl)) in enumerate(zip(winners, losers)):
            if kw == 0 or kl == 0:
                which = "winner" if kw == 0 else "loser"
                raise SteerscopeError(f"{name} example {i} has an empty {which} response",
                                      "drop examples with empty responses")
        signs = torch.tensor([float(e.sign) for e in examples])
        enc = EncodedData(winners, losers, signs)
        if config.match_scope == "response":
            enc.match_winners = encode_rows(tokenizer, prompts, [e.winner for e in examples],
                                            WHOLE_RESPONSE)
        if cache is not None:
            cache[key] = enc
    if config.objective == "po" and enc.ref_w is None:
        pad = pad_token_id(tokenizer)
        enc.ref_w = score_rows(model, enc.winners, pad, batch_size=eval_batch_size,
                               arch=arch).logprob
        enc.ref_l = score_rows(model, enc.losers, pad, batch_size=eval_batch_size,
                               arch=arch).logprob
    return enc


@torch.no_grad()
def validate_vector(model, enc: EncodedData, v: torch.Tensor, config: TrainConfig, layer: int, pad: int,
              arch, eval_batch_size: int, deployed_norm: float | None) -> dict[str, float]:
    """Validation loss and token-match rates of ``v`` [d] at the scale of
    ``config.validation`` (see the module docstring)."""
    if config.validation == "deployed":
        coef = float(deployed_norm) / max(float(v.norm()), 1e-30)
    else:
        coef = config.validation_factor
    coefs = enc.signs * coef  # [N]
    w = score_rows(model, enc.winners, pad, layer=layer, vector=v, coefs=coefs,
                   batch_size=eval_batch_size, arch=arch)
    m = w if enc.match_winners is None else score_rows(
        model, enc.match_winners, pad, layer=layer, vector=v, coefs=coefs,
        batch_size=eval_batch_size, arch=arch)  # match_scope "response": every token
    n_w = m.n_tokens.clamp(min=1)  # [N]
    match = float(m.matches.sum()) / max(1, int(m.n_tokens.sum()))
    match_mean = float((m.matches / n_w).mean())
    if config.objective == "ntp":
        loss = float(ntp_loss(w.logprob, w.n_tokens))
    else:
        lo = score_rows(model, enc.losers, pad, layer=layer, vector=v, coefs=coefs,
                        batch_size=eval_batch_size, arch=arch)
        beta = beta_plus(enc.ref_w, enc.ref_l, config.phi)
        loss = float(po_loss(w.logprob, w.n_tokens, lo.logprob, lo.n_tokens, beta))
    return {"val_loss": loss, "val_match": match, "val_match_mean": match_mean,
            "coef": coef, "trained_norm": float(v.norm())}
