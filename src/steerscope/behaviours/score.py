"""The fast score of a behaviour: log-odds of a first-token set at the last prompt position.

``score = log(P + 1e-8) - log(1 - P + 1e-8)`` with ``P`` the next-token probability mass of
the behaviour's score tokens, in float64: refusal's score (paper §2,
:func:`steerscope.evaluate.refusal.refusal_scores`) with the behaviour's tokens.

Score tokens given as strings (``score_tokens: ["I", ...]``) map to the first token the model
would emit to start each string after the chat prompt (as for refusal's ``"I"``).
``score_tokens: auto`` derives them from the model itself (:func:`auto_score_tokens`):

1. the greedy first token (argmax of the next-token logits at the last prompt position, i.e.
   the first token of the greedy completion) of every present and every absent **train**
   prompt;
2. per token, its frequency among present prompts ``f_p`` and among absent prompts ``f_a``;
3. **single tokens**: candidates are tokens with ``f_p - f_a >= min_gap`` (default 0.25) and
   ``f_p >= 2 f_a``; the ``top_k`` (default 3) candidates by ``f_p - f_a``, ties by lower
   token id (rule ``"single"``);
4. **a token set**, only when step 3 finds none (the present answers share no first token,
   as a style, a persona or a language): every token more frequent after present than after
   absent prompts (``f_p > f_a``) and the first token of at least
   ``min_count`` (default 2) present prompts. Among all sets of tokens, the tokens with
   ``f_p > f_a`` are the set whose frequency gap ``f_p(S) - f_a(S)`` (the sum of its tokens'
   gaps) is largest; ``min_count`` drops tokens seen once, whose gap is mostly chance. The
   set is kept when its gap is at least ``min_gap`` (rule ``"set"``), ordered by gap, ties by
   lower token id. The fast score is then the log-odds of the whole set's probability mass,
   as refusal's score is the log-odds of its refusal tokens.

No single token and no set reaching ``min_gap`` is an error naming ``score_tokens`` (pass
strings instead). :class:`ScoreTokens` records what was chosen and why (the pipeline logs it
and writes it to results.json, ``dim_selection.score_tokens``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from steerscope.errors import SteerscopeError
from steerscope.evaluate.refusal import refusal_scores, refusal_token_ids
from steerscope.models.chat import encode_prompts

AUTO = "auto"  # score_tokens: derive the tokens from the model
AUTO_TOP_K = 3
AUTO_MIN_GAP = 0.25
AUTO_MIN_COUNT = 2  # set rule: a token must start at least this many present completions

RULE_LISTED = "listed"  # score_tokens given as strings
RULE_SINGLE = "single"  # auto: the top single tokens (step 3)
RULE_SET = "set"  # auto: the token set (step 4)


@dataclass(frozen=True)
class ScoreTokens:
    """The fast score's tokens and how they were chosen: ``ids`` (in order), ``rule``
    (:data:`RULE_LISTED`, :data:`RULE_SINGLE` or :data:`RULE_SET`) and, for ``auto``, each
    chosen token's frequencies ``{id: (f_p, f_a)}`` after present / absent train prompts."""

    ids: tuple[int, ...]
    rule: str
    frequencies: Mapping[int, tuple[float, float]] = field(default_factory=dict)

    @property
    def gap(self) -> float | None:
        """``f_p(S) - f_a(S)`` of the chosen tokens together (None for listed tokens)."""
        if self.rule == RULE_LISTED:
            return None
        return float(sum(p - a for p, a in self.frequencies.values()))

    def describe(self, tokenizer) -> dict:
        """JSON-able record: the rule, the ids, each token as text, the set's gap and each
        token's ``[f_p, f_a]``."""
        out = {"rule": self.rule, "ids": list(self.ids),
               "tokens": [tokenizer.decode([i]) for i in self.ids]}
        if self.rule != RULE_LISTED:
            out["gap"] = self.gap
            out["frequencies"] = [list(self.frequencies[i]) for i in self.ids]
        return out


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


def choose_score_tokens(present_firsts: Sequence[int], absent_firsts: Sequence[int], *,
                        top_k: int = AUTO_TOP_K, min_gap: float = AUTO_MIN_GAP,
                        min_count: int = AUTO_MIN_COUNT) -> ScoreTokens:
    """The ``auto`` rule (module docstring, steps 2-4) on the greedy first tokens of the
    present and absent train prompts; a one-line error naming ``score_tokens`` when no single
    token and no set reaches ``min_gap``."""
    if not present_firsts or not absent_firsts:
        raise SteerscopeError("score_tokens: auto needs present and absent train prompts",
                              "pass both prompt lists")
    cp, ca = Counter(present_firsts), Counter(absent_firsts)
    n_p, n_a = len(present_firsts), len(absent_firsts)
    freq = {t: (cp[t] / n_p, ca[t] / n_a) for t in cp}
    single = sorted((-(p - a), t) for t, (p, a) in freq.items()
                    if p - a >= min_gap and p >= 2 * a)
    if single:
        ids = [t for _, t in single[:top_k]]
        return ScoreTokens(tuple(ids), RULE_SINGLE, {t: freq[t] for t in ids})
    in_set = sorted((-(p - a), t) for t, (p, a) in freq.items() if p > a and cp[t] >= min_count)
    ids = [t for _, t in in_set]
    if ids and sum(freq[t][0] - freq[t][1] for t in ids) >= min_gap:
        return ScoreTokens(tuple(ids), RULE_SET, {t: freq[t] for t in ids})
    raise SteerscopeError(
        "score_tokens: auto found no first token far more frequent after present than "
        f"absent train prompts (gap >= {min_gap}), nor a set of first tokens (each more "
        f"frequent after present prompts, seen at least {min_count} times) whose gap "
        f"reaches {min_gap}",
        "list score tokens explicitly, e.g. score_tokens: [\"I\"]")


def auto_score_tokens(model, tokenizer, present_formatted: Sequence[str],
                      absent_formatted: Sequence[str], *, top_k: int = AUTO_TOP_K,
                      min_gap: float = AUTO_MIN_GAP, min_count: int = AUTO_MIN_COUNT,
                      batch_size: int = 16) -> ScoreTokens:
    """Score tokens by the documented rule (module docstring) from formatted train prompts,
    with the record of the choice."""
    return choose_score_tokens(
        greedy_first_tokens(model, tokenizer, present_formatted, batch_size=batch_size),
        greedy_first_tokens(model, tokenizer, absent_formatted, batch_size=batch_size),
        top_k=top_k, min_gap=min_gap, min_count=min_count)


def auto_score_token_ids(model, tokenizer, present_formatted: Sequence[str],
                         absent_formatted: Sequence[str], **kwargs) -> list[int]:
    """The ids of :func:`auto_score_tokens` (same arguments)."""
    return list(auto_score_tokens(model, tokenizer, present_formatted, absent_formatted,
                                  **kwargs).ids)


def score_token_ids(behaviour, tokenizer, *, model=None,
                    present_formatted: Sequence[str] | None = None,
                    absent_formatted: Sequence[str] | None = None) -> list[int]:
    """The fast score's token ids of ``behaviour`` (a
    :class:`~steerscope.behaviours.Behaviour`) for this tokenizer. Strings need only the
    tokenizer; ``auto`` needs the model and the formatted present/absent train prompts."""
    return list(score_token_choice(behaviour, tokenizer, model=model,
                                   present_formatted=present_formatted,
                                   absent_formatted=absent_formatted).ids)


def score_token_choice(behaviour, tokenizer, *, model=None,
                       present_formatted: Sequence[str] | None = None,
                       absent_formatted: Sequence[str] | None = None) -> ScoreTokens:
    """:func:`score_token_ids` with the record of how the tokens were chosen."""
    if behaviour.score_tokens != AUTO:
        return ScoreTokens(tuple(string_score_token_ids(tokenizer, behaviour.score_tokens)),
                           RULE_LISTED)
    if model is None or not present_formatted or not absent_formatted:
        raise SteerscopeError(f"behaviour '{behaviour.name}' has score_tokens: auto, which "
                              "needs the model and its train prompts",
                              "pass model=, present_formatted= and absent_formatted=")
    return auto_score_tokens(model, tokenizer, present_formatted, absent_formatted)


def fast_scores(model, tokenizer, formatted: Sequence[str], score_ids: Sequence[int], *,
                batch_size: int = 16, progress: bool | None = None) -> torch.Tensor:
    """The fast score of every formatted prompt: [N] float64 on the CPU (the refusal score's
    computation with ``score_ids``)."""
    return refusal_scores(model, tokenizer, formatted, refusal_ids=list(score_ids),
                          batch_size=batch_size, progress=progress)


__all__ = ["AUTO_MIN_COUNT", "AUTO_MIN_GAP", "AUTO_TOP_K", "RULE_LISTED", "RULE_SET",
           "RULE_SINGLE", "ScoreTokens", "auto_score_token_ids", "auto_score_tokens",
           "choose_score_tokens", "fast_scores", "greedy_first_tokens", "score_token_choice",
           "score_token_ids", "string_score_token_ids"]
