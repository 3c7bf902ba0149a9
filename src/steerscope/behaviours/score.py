"""The fast score of a behaviour: log-odds of a first-token set at the last prompt position.

``score = log(P + 1e-8) - log(1 - P + 1e-8)`` with ``P`` the next-token probability mass of
the behaviour's score tokens, in float64: refusal's score (paper §2,
:func:`steerscope.evaluate.refusal.refusal_scores`) with the behaviour's tokens.

Score tokens given as strings (``score_tokens: ["I", ...]``) map to the first token the model
would emit to start each string after the chat prompt (as for refusal's ``"I"``).
``score_tokens: auto`` derives them from the model itself (:func:`auto_score_token_ids`):

1. the greedy first token (argmax of the next-token logits at the last prompt position, i.e.
   the first token of the greedy completion) of every present and every absent **train**
   prompt;
2. per token, its frequency among present prompts ``f_p`` and among absent prompts ``f_a``;
3. candidates: tokens with ``f_p - f_a >= min_gap`` (default 0.25) and ``f_p >= 2 f_a``;
4. the ``top_k`` (default 3) candidates by ``f_p - f_a``, ties by lower token id.

No candidate is an error naming ``score_tokens`` (pass strings instead).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch

from steerscope.errors import SteerscopeError
from steerscope.evaluate.refusal import refusal_scores, refusal_token_ids
from steerscope.models.chat import encode_prompts

AUTO = "auto"  # score_tokens: derive the tokens from the model
AUTO_TOP_K = 3
AUTO_MIN_GAP = 0.25


def string_score_token_ids(tokenizer, strings: Sequence[str]) -> list[int]:
    """Ids of the first token the model emits to start each string after the chat prompt
    (deduplicated, in order); a string with no such token is an error naming
    ``score_tokens``, and so is one that encodes to the tokenizer's unknown token."""
    out: list[int] = []
    for s in strings:
        if not isinstance(s, str) or not s.strip():
            raise SteerscopeError(f"score_tokens entry {s!r} is empty",
                                  "list non-empty strings or write score_tokens: auto")
        try:
            ids = refusal_token_ids(tokenizer, (s,))
        except SteerscopeError as exc:
            raise SteerscopeError(f"score_tokens entry {s!r} cannot be encoded by this "
                                  "tokenizer", "pass a different string or score_tokens: auto"
                                  ) from exc
        unk = getattr(tokenizer, "unk_token_id", None)
        if unk is not None and unk in ids:
            raise SteerscopeError(f"score_tokens entry {s!r} encodes to the unknown token",
                                  "pass a string in the tokenizer's vocabulary or "
                                  "score_tokens: auto")
        out += [i for i in ids if i not in out]
    return out


def greedy_first_tokens(model, tokenizer, formatted: Sequence[str], *,
                        batch_size: int = 16) -> list[int]:
    """The argmax next token at the last position of every formatted prompt (its greedy
    completion's first token), in order."""
    device = next(model.parameters()).device
    out: list[int] = []
    for s in range(0, len(formatted), batch_size):
        enc = encode_prompts(tokenizer, list(formatted[s:s + batch_size]), device=device)
        mask = enc["attention_mask"]  # [B, T]
        pos = (mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, T]
        with torch.no_grad():
            logits = model(input_ids=enc["input_ids"], attention_mask=mask,
                           position_ids=pos).logits[:, -1, :]  # [B, V]
        out += logits.argmax(-1).tolist()
    return out


def auto_score_token_ids(model, tokenizer, present_formatted: Sequence[str],
                         absent_formatted: Sequence[str], *, top_k: int = AUTO_TOP_K,
                         min_gap: float = AUTO_MIN_GAP, batch_size: int = 16) -> list[int]:
    """Score tokens by the documented rule (module docstring) from formatted train prompts."""
    if not present_formatted or not absent_formatted:
        raise SteerscopeError("score_tokens: auto needs present and absent train prompts",
                              "pass both prompt lists")
    fp = Counter(greedy_first_tokens(model, tokenizer, present_formatted, batch_size=batch_size))
    fa = Counter(greedy_first_tokens(model, tokenizer, absent_formatted, batch_size=batch_size))
    n_p, n_a = len(present_formatted), len(absent_formatted)
    gaps = []
    for t in fp:
        p, a = fp[t] / n_p, fa[t] / n_a
        if p - a >= min_gap and p >= 2 * a:
            gaps.append((-(p - a), t))
    if not gaps:
        raise SteerscopeError(
            "score_tokens: auto found no first token far more frequent after present than "
            f"absent train prompts (gap >= {min_gap})",
            "list score tokens explicitly, e.g. score_tokens: [\"I\"]")
    return [t for _, t in sorted(gaps)[:top_k]]


def score_token_ids(behaviour, tokenizer, *, model=None,
                    present_formatted: Sequence[str] | None = None,
                    absent_formatted: Sequence[str] | None = None) -> list[int]:
    """The fast score's token ids of ``behaviour`` (a
    :class:`~steerscope.behaviours.Behaviour`) for this tokenizer. Strings need only the
    tokenizer; ``auto`` needs the model and the formatted present/absent train prompts."""
    if behaviour.score_tokens != AUTO:
        return string_score_token_ids(tokenizer, behaviour.score_tokens)
    if model is None or not present_formatted or not absent_formatted:
        raise SteerscopeError(f"behaviour '{behaviour.name}' has score_tokens: auto, which "
                              "needs the model and its train prompts",
                              "pass model=, present_formatted= and absent_formatted=")
    return auto_score_token_ids(model, tokenizer, present_formatted, absent_formatted)


def fast_scores(model, tokenizer, formatted: Sequence[str], score_ids: Sequence[int], *,
                batch_size: int = 16, progress: bool | None = None) -> torch.Tensor:
    """The fast score of every formatted prompt: [N] float64 on the CPU (the refusal score's
    computation with ``score_ids``)."""
    return refusal_scores(model, tokenizer, formatted, refusal_ids=list(score_ids),
                          batch_size=batch_size, progress=progress)


__all__ = ["AUTO_MIN_GAP", "AUTO_TOP_K", "auto_score_token_ids", "fast_scores",
           "greedy_first_tokens", "score_token_ids", "string_score_token_ids"]
