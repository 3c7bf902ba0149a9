"""The library on a behaviour: the one steered-evaluation primitive and its callers."""

from __future__ import annotations

import pytest
import torch

from steerscope.behaviours import REFUSAL, behaviour_from_dict
from steerscope.errors import SteerscopeError
from steerscope.evaluate.steered import steered_outcome
from steerscope.evaluate.steering import evaluate_steering
from steerscope.models.chat import format_prompt
from steerscope.models.tiny import tiny_model, tiny_tokenizer
from steerscope.vectors import SteeringVector

PRESENT = ["make a bomb", "steal a car", "hack a bank"]
ABSENT = ["bake bread", "write a poem"]


@pytest.fixture(scope="module")
def chat():
    return tiny_model("qwen2"), tiny_tokenizer()


def _vectors():
    g = torch.Generator().manual_seed(0)
    return {"a": SteeringVector(torch.randn(64, generator=g) * 8, layer=1, method="a")}


def _tiny_behaviour():
    return behaviour_from_dict({
        "name": "tiny",
        "present": {"train": PRESENT, "val": PRESENT, "test": PRESENT},
        "absent": {"train": ABSENT, "val": ABSENT, "test": ABSENT},
        "judge": {"kind": "regex", "patterns": ["[aeiou]"], "min_matches": 3},
        "score_tokens": ["a", "b"]})


def test_refusal_behaviour_gives_the_same_table(chat):
    model, tok = chat
    kw = dict(max_new_tokens=6, batch_size=2)
    old = evaluate_steering(model, tok, _vectors(), PRESENT, ABSENT, **kw)
    new = evaluate_steering(model, tok, _vectors(), PRESENT, ABSENT, behaviour=REFUSAL, **kw)
    old_json, new_json = old.to_json(), new.to_json()
    assert old_json.pop("labels").items() <= new_json.pop("labels").items()  # refusal's words
    assert old_json == new_json
    assert {r.side for r in new.rows} == {"present", "absent"}
    r = new.row("a", "present")
    assert (r.side, r.use, r.absence_rate) == ("present", "remove", 1 - r.behaviour_rate)
    assert "harmful ASR" in new.table() and "harmful ASR" in old.table()


def test_any_behaviour_through_the_steering_table(chat):
    model, tok = chat
    b = _tiny_behaviour()
    ev = evaluate_steering(model, tok, _vectors(), PRESENT, ABSENT, behaviour=b,
                           max_new_tokens=6, batch_size=2)
    judge = b.make_judge()
    for r in ev.rows:
        outs = ev.completions[r.method][r.side]
        flags = judge.judge(ev.prompts[r.side], outs)
        assert r.behaviour_rate == sum(flags) / len(flags) == 1 - r.absence_rate
    assert ev.row("a", "present").alpha == -1.0 and ev.row("a", "absent").use == "induce"
    assert "none" in ev.table()


def test_steered_outcome_with_a_generator(chat):
    model, tok = chat
    texts = [format_prompt(tok, p) for p in ABSENT]
    logits = torch.zeros(2, model.config.vocab_size)  # uniform: P = 2 / V
    got = steered_outcome(model, tok, texts, score_ids=[1, 2],
                          generator=lambda t: (["I cannot", "ok"], logits))
    assert got.present == [True, False] and got.rate == 0.5
    p = 2 / model.config.vocab_size
    expect = torch.log(torch.tensor(p, dtype=torch.float64) + 1e-8) - torch.log(
        torch.tensor(1 - p, dtype=torch.float64) + 1e-8)
    assert torch.allclose(got.scores, expect.expand(2)) and got.score_rate == 0.0
    with pytest.raises(SteerscopeError, match="no prompts"):
        steered_outcome(model, tok, [])


def test_preference_data_refuse_instruction_is_refusal_only(chat):
    from steerscope.vectors.training_data import build_preference_data

    model, tok = chat
    with pytest.raises(SteerscopeError, match="harmless_refuse: dim"):
        build_preference_data(model, tok, PRESENT, ABSENT, _vectors()["a"],
                              behaviour=_tiny_behaviour())


def test_demo_check_equals_generation_and_refusal_scores(chat):
    """The demo model's check goes through steered_outcome and gives the numbers of a direct
    generate + refusal_scores + substring matcher computation."""
    from steerscope.demo.model import evaluate_refusal
    from steerscope.evaluate import is_refusal_substring, refusal_scores
    from steerscope.generation import generate

    model, tok = chat

    class Loaded:
        pass

    loaded = Loaded()
    loaded.model, loaded.tokenizer = model, tok
    res = evaluate_refusal(loaded, PRESENT, ABSENT, max_new_tokens=4, batch_size=2,
                           progress=False)
    for name, prompts in (("harmful", PRESENT), ("harmless", ABSENT)):
        formatted = [format_prompt(tok, p) for p in prompts]
        outs = generate(model, tok, formatted, max_new_tokens=4, batch_size=2, progress=False)
        scores = refusal_scores(model, tok, formatted, batch_size=2)
        assert res[name]["completions"] == outs
        assert res[name]["scores"] == [float(s) for s in scores]
        assert res[name]["substring_rate"] == sum(map(is_refusal_substring, outs)) / len(outs)
        assert res[name]["score_rate"] == float((scores > 0).double().mean())
