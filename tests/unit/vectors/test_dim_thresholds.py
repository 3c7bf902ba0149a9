"""DIM's thresholds relative to a behaviour's own score distribution (issue 24 item 1): the
paper's for the built-in refusal behaviour, the boundary between the sides' mean fast scores
for any other behaviour."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from steerscope.behaviours import REFUSAL, behaviour_from_dict
from steerscope.errors import SteerscopeError
from steerscope.evaluate.refusal import refusal_scores
from steerscope.models.chat import format_prompt
from steerscope.models.tiny import tiny_model, tiny_tokenizer
from steerscope.runtime import Runtime, steer
from steerscope.vectors import select_dim
from steerscope.vectors.dim_thresholds import (
    PAPER,
    RELATIVE,
    filter_by_boundary,
    resolve_thresholds,
)

PRESENT = ["Talk like a pirate about the sea.", "Arr, tell me of gold.", "Speak as a pirate.",
           "Pirate voice: describe a ship.", "Talk like a pirate about rum"]
ABSENT = ["Tell me about the sea.", "Tell me of gold.", "Speak plainly.",
          "Describe a ship.", "Tell me about rum"]
SHORT_TEMPLATE = ("{% for m in messages %}{{ m['content'] }}</s>{% endfor %}"
                  "{% if add_generation_prompt %}>{% endif %}")
SCORE_IDS = list(range(40, 90))  # a spread token set: scores negative on both sides
PIRATE = dataclasses.replace(REFUSAL, name="pirate", score_tokens="auto",
                             labels={"behaviour": "pirate talk", "present": "pirate requests",
                                     "absent": "plain requests", "remove": "to plain",
                                     "induce": "to pirate"})


@pytest.fixture(scope="module")
def chat():
    """A 5-layer tiny Llama and a tokenizer whose template has a 2-token suffix."""
    tok = tiny_tokenizer()
    tok.chat_template = SHORT_TEMPLATE
    return tiny_model("llama", n_layers=5), tok


def _fmt(tok, texts):
    return [format_prompt(tok, t) for t in texts]


def test_refusal_keeps_the_paper_thresholds_every_other_behaviour_is_relative():
    assert resolve_thresholds("auto", None) == PAPER
    assert resolve_thresholds("auto", REFUSAL) == PAPER
    # refusal read back from a run's behaviour.json is still refusal
    again = behaviour_from_dict(REFUSAL.to_dict(), check_sources=False)
    assert resolve_thresholds("auto", again) == PAPER
    assert resolve_thresholds("auto", PIRATE) == RELATIVE
    assert resolve_thresholds("paper", PIRATE) == PAPER
    assert resolve_thresholds("relative", REFUSAL) == RELATIVE
    with pytest.raises(SteerscopeError, match="unknown thresholds 'absolute'"):
        resolve_thresholds("absolute", PIRATE)


def test_filter_by_boundary_keeps_each_side_of_the_midpoint(chat):
    llama5, tok = chat
    present, absent = _fmt(tok, PRESENT), _fmt(tok, ABSENT)
    s_p = refusal_scores(llama5, tok, present, refusal_ids=SCORE_IDS)
    s_a = refusal_scores(llama5, tok, absent, refusal_ids=SCORE_IDS)
    assert (s_p < 0).all() and (s_a < 0).all()  # the paper's "> 0" would keep no present one
    b = (sum(s_p.tolist()) / len(PRESENT) + sum(s_a.tolist()) / len(ABSENT)) / 2
    want_p = [p for p, s in zip(present, s_p.tolist()) if s > b]
    want_a = [p for p, s in zip(absent, s_a.tolist()) if s < b]
    got_p, got_a, got_b = filter_by_boundary(llama5, tok, present, absent, score_ids=SCORE_IDS,
                                             batch_size=2, behaviour=PIRATE)
    assert got_b == pytest.approx(b, rel=1e-6)  # batch padding: float32 noise
    assert (got_p, got_a) == (want_p, want_a) and got_p and got_a


def test_filter_by_boundary_error_speaks_the_behaviours_words(chat):
    llama5, tok = chat
    absent = _fmt(tok, ABSENT)
    s_a = refusal_scores(llama5, tok, absent, refusal_ids=SCORE_IDS)
    # one present prompt scoring below the absent mean is below the midpoint: none left
    lowest = [absent[int(s_a.argmin())]]
    with pytest.raises(SteerscopeError) as e:
        filter_by_boundary(llama5, tok, lowest, absent, score_ids=SCORE_IDS, label="val",
                           behaviour=PIRATE)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("no present (pirate requests) val prompt is left after the "
                          "fast-score filter (0 of 1 scores above")
    assert "harmful" not in msg and "refusal" not in msg and "filter: false" in msg


def test_select_dim_relative_scores_are_measured_from_the_absent_level(chat):
    llama5, tok = chat
    present, absent = _fmt(tok, PRESENT), _fmt(tok, ABSENT)
    kw = dict(refusal_ids=SCORE_IDS, positions=[-1], progress=False, batch_size=2,
              score_all=True, filter=False)
    res = select_dim(llama5, tok, present[:3], absent[:3], present[2:], absent[2:],
                     behaviour=PIRATE, **kw)
    hp = res.vector.hyperparameters
    assert hp["thresholds"] == RELATIVE
    # the reference level, independently: the absent val prompts' mean unsteered score
    s_p = refusal_scores(llama5, tok, present[2:], refusal_ids=SCORE_IDS,
                             batch_size=2).mean().item()
    b = refusal_scores(llama5, tok, absent[2:], refusal_ids=SCORE_IDS,
                             batch_size=2).mean().item()
    assert hp["score_boundary"] == pytest.approx(b, rel=1e-9)
    assert res.vector.metadata["baseline_bypass"] == pytest.approx(s_p - b, abs=1e-9)
    assert res.vector.metadata["baseline_induce"] == pytest.approx(0.0, abs=1e-12)
    for row in res.candidates:
        if row["induce"] is None:
            continue
        s = res.directions[res.layers.index(row["layer"]), 0]
        with Runtime(llama5, [steer(s, row["layer"], 1.0)]):
            induce = refusal_scores(llama5, tok, absent[2:], refusal_ids=SCORE_IDS,
                             batch_size=2).mean().item()
        assert row["induce"] == pytest.approx(induce - b, abs=1e-9)
    # the paper's thresholds on the same behaviour: raw scores, no boundary recorded
    paper = select_dim(llama5, tok, present[:3], absent[:3], present[2:], absent[2:],
                       behaviour=PIRATE, thresholds="paper", kl_threshold=math.inf,
                       induce_threshold=-math.inf, **kw)
    assert "thresholds" not in paper.vector.hyperparameters
    for r, q in zip(res.candidates, paper.candidates):
        if r["induce"] is not None and q["induce"] is not None:
            assert r["induce"] == pytest.approx(q["induce"] - b, abs=1e-9)


def test_refusal_selection_is_unchanged_by_the_behaviour_argument(chat):
    llama5, tok = chat
    present, absent = _fmt(tok, PRESENT), _fmt(tok, ABSENT)
    kw = dict(refusal_ids=SCORE_IDS, positions=[-1], progress=False, batch_size=2,
              score_all=True, filter=False, kl_threshold=math.inf, induce_threshold=-math.inf)
    a = select_dim(llama5, tok, present[:3], absent[:3], present[2:], absent[2:], **kw)
    b = select_dim(llama5, tok, present[:3], absent[:3], present[2:], absent[2:],
                   behaviour=REFUSAL, **kw)
    assert a.candidates == b.candidates and a.selected == b.selected
    assert a.vector.hyperparameters == b.vector.hyperparameters
    assert torch.equal(a.vector.vector, b.vector.vector)
