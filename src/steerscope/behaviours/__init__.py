"""Behaviours: what a steering study is about (refusal is one).

A :class:`Behaviour` has two prompt sides (present / absent, each with train, val and test
sources), a judge (completion -> behaviour present?), a fast score (log-odds of a first-token
set at the last prompt position) and two uses: remove (α < 0 on present prompts) and induce
(α > 0 on absent prompts). Users define one in YAML (docs/behaviours.md) and load it with
:func:`load_behaviour`; :func:`list_behaviours` gives the built-in ones.
"""

from steerscope.behaviours.builtins import BUILTIN_BEHAVIOURS, REFUSAL
from steerscope.behaviours.definition import (
    AUTO,
    LABEL_KEYS,
    SIDES,
    SPLITS,
    USES,
    Behaviour,
    Splits,
)
from steerscope.behaviours.judges import (
    CODE_CONSENT_FIX,
    JUDGE_KINDS,
    check_judge_code,
    check_judge_spec,
    make_judge,
)
from steerscope.behaviours.load import (
    DEFAULT_BEHAVIOUR,
    behaviour_from_dict,
    check_behaviour,
    list_behaviours,
    load_behaviour,
)
from steerscope.behaviours.score import (
    ScoreTokens,
    auto_score_token_ids,
    auto_score_tokens,
    choose_score_tokens,
    fast_scores,
    score_token_choice,
    score_token_ids,
    string_score_token_ids,
)
from steerscope.behaviours.sources import builtin_prompt_sets, check_source, load_source

__all__ = [
    "AUTO", "BUILTIN_BEHAVIOURS", "CODE_CONSENT_FIX", "DEFAULT_BEHAVIOUR", "JUDGE_KINDS",
    "LABEL_KEYS", "REFUSAL", "SIDES", "SPLITS", "USES", "Behaviour", "Splits",
    "ScoreTokens", "auto_score_token_ids", "auto_score_tokens", "behaviour_from_dict",
    "builtin_prompt_sets", "check_behaviour",
    "check_judge_code", "check_judge_spec", "choose_score_tokens",
    "check_source", "fast_scores", "list_behaviours", "load_behaviour", "load_source",
    "make_judge", "score_token_choice", "score_token_ids", "string_score_token_ids",
]
