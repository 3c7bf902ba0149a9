"""score_tokens: auto's token-set rule (issue 24 item 1): when no single first token separates
the sides, the set of every token more frequent after present than absent train prompts
(seen at least twice), scored as the log-odds of the set."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from steerscope.behaviours.score import (
    AUTO_MIN_COUNT,
    AUTO_MIN_GAP,
    RULE_SET,
    RULE_SINGLE,
    choose_score_tokens,
)
from steerscope.errors import SteerscopeError


def _firsts(counts: dict[int, int]) -> list[int]:
    return [t for t, n in counts.items() for _ in range(n)]


def _best_set_brute_force(present: list[int], absent: list[int]) -> set[int]:
    """Independently: among every subset of the tokens seen at least AUTO_MIN_COUNT times
    after present prompts, the largest one maximising f_p(S) - f_a(S)."""
    cp, ca = Counter(present), Counter(absent)
    pool = [t for t in cp if cp[t] >= AUTO_MIN_COUNT]
    best, best_gap = set(), 0.0
    for r in range(1, len(pool) + 1):
        for subset in itertools.combinations(pool, r):
            gap = (sum(cp[t] for t in subset) / len(present)
                   - sum(ca[t] for t in subset) / len(absent))
            if gap > best_gap + 1e-12 or (abs(gap - best_gap) <= 1e-12 and len(subset) > len(best)):
                best, best_gap = set(subset), gap
    return best


# a persona (the pirate prompts on SmolLM2): present opens with "The" 32, "A" 22, "Ar" 10;
# absent with "A" 35, "The" 24 and four singletons. No single token has a gap >= 0.25.
PERSONA = ({1: 32, 2: 22, 3: 10}, {2: 35, 1: 24, 4: 2, 5: 1, 6: 1, 7: 1})
# spread: present answers start with 8 different tokens, absent mostly with one
SPREAD = ({10: 9, 11: 8, 12: 8, 13: 7, 14: 7, 15: 1, 1: 24},
          {1: 50, 10: 4, 11: 3, 16: 7})


@pytest.mark.parametrize("counts", [PERSONA, SPREAD])
def test_the_set_is_every_token_more_frequent_after_present_prompts(counts):
    present, absent = _firsts(counts[0]), _firsts(counts[1])
    got = choose_score_tokens(present, absent)
    assert got.rule == RULE_SET
    assert set(got.ids) == _best_set_brute_force(present, absent)
    # the set's gap, by hand
    n_p, n_a = len(present), len(absent)
    want_gap = sum(counts[0][t] / n_p - counts[1].get(t, 0) / n_a for t in got.ids)
    assert got.gap == pytest.approx(want_gap) and got.gap >= AUTO_MIN_GAP
    # ordered by gap (largest first), each token's frequencies recorded
    gaps = [got.frequencies[t][0] - got.frequencies[t][1] for t in got.ids]
    assert gaps == sorted(gaps, reverse=True)
    for t in got.ids:
        assert got.frequencies[t] == (counts[0][t] / n_p, counts[1].get(t, 0) / n_a)


def test_persona_set_by_hand():
    got = choose_score_tokens(_firsts(PERSONA[0]), _firsts(PERSONA[1]))
    # "Ar": 10/64 - 0 = 0.156; "The": 32/64 - 24/64 = 0.125; together 0.281 >= 0.25
    assert got.ids == (3, 1) and got.gap == pytest.approx(18 / 64)


def test_a_singleton_is_not_in_the_set():
    # token 15 starts one present completion and no absent one: its gap is chance
    got = choose_score_tokens(_firsts(SPREAD[0]), _firsts(SPREAD[1]))
    assert 15 not in got.ids


def test_a_separating_single_token_keeps_the_single_rule():
    # lists/code: one token far more frequent after present prompts -> the top single tokens,
    # never the set (so their score tokens, and numbers, are unchanged)
    present = _firsts({5: 40, 6: 10, 7: 14})
    absent = _firsts({6: 30, 7: 34})
    got = choose_score_tokens(present, absent)
    assert got.rule == RULE_SINGLE and got.ids == (5,)


def test_no_set_reaching_the_gap_is_an_error():
    # a gap of 0.2 spread over two tokens: below min_gap
    present = _firsts({1: 30, 2: 30, 3: 40})
    absent = _firsts({1: 20, 2: 20, 3: 60})
    with pytest.raises(SteerscopeError) as e:
        choose_score_tokens(present, absent)
    msg = str(e.value)
    assert "\n" not in msg and "score_tokens" in msg and "set of first tokens" in msg
    # the same distribution on both sides: nothing separates
    with pytest.raises(SteerscopeError):
        choose_score_tokens(present, list(present))
    with pytest.raises(SteerscopeError, match="present and absent train prompts"):
        choose_score_tokens([], absent)
