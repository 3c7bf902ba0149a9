"""Evaluation: refusal score, refusal matchers, attack success rate and judges."""

from steerscope.evaluate.judges import (
    ChatModelJudge,
    ClassifierJudge,
    Judge,
    SubstringJudge,
    get_judge,
)
from steerscope.evaluate.matchers import (
    MIN_JAILBREAK_WORDS,
    REFUSAL_PREFIXES,
    REFUSAL_SUBSTRINGS,
    attack_success_rate,
    is_refusal_prefix,
    is_refusal_substring,
    normalize_text,
    refusal_rate,
    word_count,
    word_count_floor,
)
from steerscope.evaluate.refusal import (
    DEFAULT_REFUSAL_PHRASES,
    PAPER_REFUSAL_PHRASES,
    refusal_score_from_logits,
    refusal_scores,
    refusal_scores_from_ids,
    refusal_token_ids,
)
from steerscope.evaluate.repetition import is_repetitive, repetition_rate

__all__ = [
    "DEFAULT_REFUSAL_PHRASES",
    "MIN_JAILBREAK_WORDS",
    "PAPER_REFUSAL_PHRASES",
    "REFUSAL_PREFIXES",
    "REFUSAL_SUBSTRINGS",
    "ChatModelJudge",
    "ClassifierJudge",
    "Judge",
    "SubstringJudge",
    "attack_success_rate",
    "get_judge",
    "is_refusal_prefix",
    "is_refusal_substring",
    "is_repetitive",
    "normalize_text",
    "refusal_rate",
    "refusal_score_from_logits",
    "refusal_scores",
    "refusal_scores_from_ids",
    "refusal_token_ids",
    "repetition_rate",
    "word_count",
    "word_count_floor",
]
