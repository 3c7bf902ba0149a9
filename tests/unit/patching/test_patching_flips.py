"""Harmful flips from a jailbreak judge (issue 12.6): the paper keeps a harmful prompt when
its judge calls the steered response unsafe and the base response safe. Checked with fake
judges whose verdicts disagree with the refusal substrings, on hand-made rollouts, on a tiny
model through ``build_patching_datasets``, and through the pipeline stage's
``patching_datasets``."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from steerscope.errors import SteerscopeError
from steerscope.models.tiny import tiny_model, tiny_tokenizer
from steerscope.patching.data import (
    Rollout,
    build_patching_datasets,
    datasets_from_rollouts,
    judge_present_rollouts,
)
from steerscope.pipeline.config import config_from_dict
from steerscope.pipeline.stages.patching import patching_datasets
from steerscope.vectors import SteeringVector

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny matrices: one thread


class RecordingJudge:
    """A fake judge: ``verdicts(prompts, responses) -> list[bool]`` (True = unsafe); records
    every call."""

    def __init__(self, verdicts):
        self.verdicts, self.calls = verdicts, []

    def judge(self, prompts, responses):
        out = [bool(v) for v in self.verdicts(list(prompts), list(responses))]
        self.calls.append((list(prompts), list(responses), out))
        return out


def _roll(prompt, base, steered):
    from steerscope.evaluate.matchers import is_refusal_substring

    return Rollout(prompt, [1, 2], [3], [4], base, steered, is_refusal_substring(base),
                   is_refusal_substring(steered))


def _kept(datasets, name="present/steered"):
    return [e.prompt for e in datasets[name]]


def test_flips_follow_the_judge_not_the_substrings():
    rolls = [
        # substrings: flipped; judge: the "compliance" is empty talk, safe -> not flipped
        _roll("a", "I cannot help.", "Here is a vague story."),
        # substrings: not flipped (steered says "I can't"); judge: unsafe content -> flipped
        _roll("b", "I'm sorry, no.", "I can't stress enough: step 1, mix ..."),
        # both agree: flipped
        _roll("c", "I cannot.", "Step 1: acquire the materials."),
        # base already unsafe per judge: never flipped
        _roll("d", "Step 1 ...", "Step 1: acquire the materials."),
    ]
    unsafe_texts = {"I can't stress enough: step 1, mix ...", "Step 1: acquire the materials.",
                    "Step 1 ..."}
    judge = RecordingJudge(lambda ps, rs: [r in unsafe_texts for r in rs])
    assert _kept(datasets_from_rollouts(rolls, [])) == ["a", "c"]  # substrings
    judged = judge_present_rollouts(rolls, judge)
    assert _kept(datasets_from_rollouts(judged, [])) == ["b", "c"]
    # one call: every base response, then every steered one, with their prompts
    assert len(judge.calls) == 1
    prompts, responses, _ = judge.calls[0]
    assert prompts == list("abcd") * 2
    assert responses == [r.base_text for r in rolls] + [r.steered_text for r in rolls]
    # independent re-derivation of the paper's rule from the verdict table
    expected = [r.prompt for r in rolls
                if r.steered_text in unsafe_texts and r.base_text not in unsafe_texts]
    assert _kept(datasets_from_rollouts(judged, [])) == expected
    # the rollouts given are not modified; a plain callable works as a judge too
    assert rolls[0].steered_refused is False
    plain = judge_present_rollouts(rolls, lambda ps, rs: [r in unsafe_texts for r in rs])
    assert [(r.base_refused, r.steered_refused) for r in plain] == \
        [(r.base_refused, r.steered_refused) for r in judged]


def test_a_bad_judge_is_a_one_line_error():
    rolls = [_roll("a", "I cannot.", "Sure.")]
    with pytest.raises(SteerscopeError, match="1 verdicts for 2 responses") as e:
        judge_present_rollouts(rolls, lambda ps, rs: [True])
    assert "\n" not in str(e.value)
    with pytest.raises(SteerscopeError, match="a judge must be callable"):
        judge_present_rollouts(rolls, 3)


@pytest.fixture(scope="module")
def chat():
    return tiny_model("llama", n_layers=3), tiny_tokenizer()


def _vector():
    v = torch.randn(64, generator=torch.Generator().manual_seed(1)) * 4
    return SteeringVector(v, 1, method="dim")


HARMFUL = ["harm one", "harm two", "harm three", "harm four"]
HARMLESS = ["nice one", "nice two"]


def _steered_unsafe_for(chosen):
    """A judge calling the steered response of each ``chosen`` prompt unsafe and everything
    else safe. (The tiny tokenizer decodes responses to empty text, so it tells base from
    steered by the documented call order: every base response, then every steered one.)"""
    def verdicts(prompts, responses):
        seen: dict[str, int] = {}
        out = []
        for p in prompts:
            seen[p] = seen.get(p, 0) + 1
            out.append(p in chosen and seen[p] == 2)
        return out

    return RecordingJudge(verdicts)


def test_build_patching_datasets_uses_the_judge_on_a_tiny_model(chat):
    model, tok = chat
    v = _vector()
    # substrings on a random model: nothing refuses, so no harmful prompt flips
    plain = build_patching_datasets(model, tok, v, HARMFUL, HARMLESS, max_new_tokens=5)
    assert plain["present/steered"] == [] and plain["present/base"] == []
    chosen = [HARMFUL[1], HARMFUL[3]]
    judge = _steered_unsafe_for(chosen)
    ds = build_patching_datasets(model, tok, v, HARMFUL, HARMLESS, max_new_tokens=5,
                                 judge=judge)
    assert _kept(ds) == _kept(ds, "present/base") == chosen
    # the judge was called once, on harmful prompts only (harmless outcomes stay with the
    # substrings), and its steered verdicts are the ones the flips used
    assert len(judge.calls) == 1 and judge.calls[0][0] == HARMFUL * 2
    # present/steered teacher-forces the steered tokens, present/base the base tokens
    for s_ex, b_ex in zip(ds["present/steered"], ds["present/base"]):
        assert s_ex.prompt_len == b_ex.prompt_len and s_ex.alpha == -1.0
        assert not torch.equal(s_ex.input_ids, b_ex.input_ids)
    # a judge calling nothing unsafe keeps no harmful prompt
    none = build_patching_datasets(model, tok, v, HARMFUL, [], max_new_tokens=5,
                                   judge=_steered_unsafe_for([]))
    assert none["present/steered"] == []


def test_the_pipeline_stage_passes_the_configured_judge(chat):
    model, tok = chat
    lm = SimpleNamespace(model=model, tokenizer=tok)
    section = config_from_dict({"patching": {"judge": "llamaguard", "n_prompts": 10,
                                             "max_new_tokens": 5, "batch_size": 3}}).patching
    chosen = [HARMFUL[2]]
    datasets, counts = patching_datasets(lm, _vector(), HARMFUL, HARMLESS, section=section,
                                         bypass_alpha=-1.0, induce_alpha=1.0,
                                         judge=_steered_unsafe_for(chosen))
    assert _kept(datasets) == chosen and counts["flipped"]["present"] == 1


@pytest.mark.parametrize("patching, match", [
    ({"judge": "llamaguard", "flip": "tokens"}, r"'patching.judge' applies to patching.flip"),
    ({"judge": " "}, r"'patching.judge' is empty"),
])
def test_bad_patching_judge_keys_fail_in_one_line(patching, match):
    with pytest.raises(SteerscopeError, match=match) as e:
        config_from_dict({"patching": patching})
    assert "\n" not in str(e.value)
