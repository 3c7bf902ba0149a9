"""Judges see the prompt (issue 24, point 4), piece by piece: which signature a callable judge
is called with, the patching rollouts judged once per batch with their instructions (the same
verdicts as the one-pair ``refused`` callback), and the preference label check judged once
on all winners with their instructions."""

from __future__ import annotations

import functools

import pytest
import torch

from steerscope.errors import SteerscopeError
from steerscope.evaluate.matchers import is_refusal_substring
from steerscope.evaluate.presence import CallablePresence, judge_arity
from steerscope.models.tiny import tiny_model, tiny_tokenizer
from steerscope.patching.data import rollouts
from steerscope.vectors import SteeringVector
from steerscope.vectors.training_data import (
    PreferenceExample,
    label_check,
    winner_as_labelled,
    winners_as_labelled,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _one(text):
    return True


def _two(prompt, response):
    return True


def _one_optional(text, extra=None):
    return True


def _star(*args):
    return True


def _three(a, b, c):
    return True


def _keyword_only(*, text):
    return True


@pytest.mark.parametrize("fn, arity", [
    (_one, 1), (_two, 2), (_one_optional, 1), (_star, 1), (is_refusal_substring, 1),
    (len, 1), (lambda p, r: True, 2), (functools.partial(_three, 1), 2),
])
def test_judge_arity_follows_the_required_positional_parameters(fn, arity):
    assert judge_arity(fn, "m:f") == arity


@pytest.mark.parametrize("fn, n", [(_three, 3), (_keyword_only, 0)])
def test_other_signatures_are_one_line_errors(fn, n):
    with pytest.raises(SteerscopeError) as e:
        CallablePresence(fn)
    msg = str(e.value)
    assert f"takes {n} required positional arguments" in msg and "(prompt, response)" in msg
    assert "\n" not in msg


def test_a_two_argument_judge_gets_each_prompt_with_its_response():
    seen = []

    def judge(prompt, response):
        seen.append((prompt, response))
        return prompt.startswith("yes")

    presence = CallablePresence(judge)
    assert presence.judge(["yes a", "no b", "yes c"], ["r1", "r2", "r3"]) == [True, False, True]
    assert seen == [("yes a", "r1"), ("no b", "r2"), ("yes c", "r3")]
    # a one-argument judge still gets the response only
    assert CallablePresence(lambda text: text == "r2").judge(["p", "q"], ["r1", "r2"]) == \
        [False, True]


class RecordingPresence:
    """A behaviour judge recording its calls: present when the prompt ends in an odd digit
    or the response is empty."""

    def __init__(self):
        self.calls = []

    @staticmethod
    def verdict(prompt, response):
        return prompt[-1] in "13579" or not response

    def judge(self, prompts, responses):
        self.calls.append((list(prompts), list(responses)))
        return [self.verdict(p, r) for p, r in zip(prompts, responses)]


def test_rollouts_are_judged_once_per_batch_with_their_instructions():
    model, tok = tiny_model("llama", n_layers=3), tiny_tokenizer()
    v = SteeringVector(torch.randn(64, generator=torch.Generator().manual_seed(1)) * 4, 1)
    prompts = [f"prompt {i}" for i in range(5)]
    presence = RecordingPresence()
    batched = rollouts(model, tok, prompts, v, -1.0, max_new_tokens=3, batch_size=2,
                       presence=presence)
    one_by_one = rollouts(model, tok, prompts, v, -1.0, max_new_tokens=3, batch_size=2,
                          refused=RecordingPresence.verdict)
    assert batched == one_by_one
    assert [c[0] for c in presence.calls] == [prompts[0:2] * 2, prompts[2:4] * 2,
                                              prompts[4:5] * 2]
    responses = [r for c in presence.calls for r in c[1]]
    assert sorted(responses) == sorted([r.base_text for r in batched] +
                                       [r.steered_text for r in batched])
    with pytest.raises(SteerscopeError, match="both refused and presence"):
        rollouts(model, tok, prompts, v, -1.0, refused=RecordingPresence.verdict,
                 presence=presence)


def test_the_label_check_judges_every_winner_in_one_call_with_its_instruction():
    examples = [PreferenceExample(f"<chat>q{i}</chat>", winner=w, loser="x", sign=s, kind=k,
                                  instruction=f"q{i}")
                for i, (w, s, k) in enumerate([("sure", -1, "harmful"), ("", -1, "harmful"),
                                               ("ok", 1, "harmless"), ("no", 1, "harmless")])]
    presence = RecordingPresence()
    got = winners_as_labelled(examples, presence)
    assert presence.calls == [(["q0", "q1", "q2", "q3"], ["sure", "", "ok", "no"])]
    # present: q1 (odd), q3 (odd), and the empty winner (q1); harmful winners comply
    assert got == [True, False, False, True]
    assert got == [winner_as_labelled(e, RecordingPresence()) for e in examples]
    assert label_check(examples, presence) == {"present_winner_as_labelled": 0.5,
                                               "absent_winner_as_labelled": 0.5}
