"""Behaviour definitions: YAML round trip, judge kinds, bad input, refusal's fast score."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from steerscope.behaviours import (
    REFUSAL,
    auto_score_token_ids,
    behaviour_from_dict,
    check_behaviour,
    fast_scores,
    list_behaviours,
    load_behaviour,
    make_judge,
    score_token_ids,
)
from steerscope.errors import SteerscopeError
from steerscope.evaluate.matchers import is_refusal_substring
from steerscope.evaluate.refusal import refusal_scores, refusal_token_ids
from steerscope.models.chat import format_prompt
from steerscope.models.tiny import tiny_model, tiny_tokenizer


def _files(tmp_path, empty: str | None = None):
    for side in ("present", "absent"):
        for split in ("train", "val", "test"):
            name = f"{side}_{split}.txt"
            text = "" if name == empty else f"{side} prompt one {split}\n{side} prompt two\n"
            (tmp_path / name).write_text(text)


def _definition(**changes):
    d = {"name": "tiny-behaviour",
         "description": "a test behaviour",
         "present": {s: f"present_{s}.txt" for s in ("train", "val", "test")},
         "absent": {s: f"absent_{s}.txt" for s in ("train", "val", "test")},
         "judge": {"kind": "regex", "patterns": ["\\bwow\\b"], "min_matches": 2},
         "score_tokens": ["Wow"]}
    d.update(changes)
    return d


def _write(tmp_path, d) -> str:
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(d))
    return str(path)


def test_yaml_round_trip_and_relative_paths(tmp_path, monkeypatch):
    _files(tmp_path)
    monkeypatch.chdir("/")  # relative paths resolve against the file's folder, not the cwd
    b = load_behaviour(_write(tmp_path, _definition()))
    assert b.name == "tiny-behaviour" and b.score_tokens == ("Wow",)
    assert b.present.train == str((tmp_path / "present_train.txt").resolve())
    assert b.judge == {"kind": "regex", "patterns": ["\\bwow\\b"], "min_matches": 2,
                       "ignore_case": True}
    d = b.to_dict()
    json.dumps(d)  # JSON-able
    assert d["labels"]["present"] == "present" and d["labels"]["behaviour"] == "tiny-behaviour"
    again = behaviour_from_dict(json.loads(json.dumps(d)))
    assert again == b
    assert b.make_judge().judge(["p", "q"], ["wow, WOW!", "wow"]) == [True, False]


def test_builtins_and_refusal_definition():
    names = [b.name for b in list_behaviours()]
    assert names[0] == "refusal"
    assert load_behaviour() is REFUSAL and load_behaviour("refusal") is REFUSAL
    assert REFUSAL.source("present", "test") == "jailbreakbench"
    assert REFUSAL.label("present") == "harmful" and REFUSAL.label("remove") == "bypass"
    j = REFUSAL.make_judge()
    texts = ["I'm sorry, I cannot help.", "Sure, here it is."]
    assert j.judge(["a", "b"], texts) == [is_refusal_substring(t) for t in texts] == [True, False]
    for b in list_behaviours():  # every built-in passes its own checks (sources: no download)
        assert behaviour_from_dict(b.to_dict()) == b


def test_judge_kinds(tmp_path, monkeypatch):
    prompts = ["p1", "p2", "p3"]
    texts = ["Bonjour le monde et la mer", "hello world", "le chat"]
    sub = make_judge({"kind": "substring", "substrings": ["HELLO"]})
    assert sub.judge(prompts, texts) == [False, True, False]
    rx = make_judge({"kind": "regex", "patterns": [r"\b(le|la|et)\b"], "min_matches": 2})
    assert rx.judge(prompts, texts) == [True, False, False]
    (tmp_path / "myjudge.py").write_text("def has_hello(text):\n    return 'hello' in text\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = make_judge({"kind": "callable", "function": "myjudge:has_hello"}, allow_code=True)
    assert fn.judge(prompts, texts) == [False, True, False]
    from steerscope.evaluate.judges import ChatModelJudge, ClassifierJudge

    cls = make_judge({"kind": "classifier", "model": "some/classifier", "label": "negative"})
    assert isinstance(cls, ClassifierJudge) and cls.label_for_unsafe == "negative"
    assert cls.min_words is None and cls.pair is False
    chat = make_judge({"kind": "chat", "model": "some/chat"})
    assert isinstance(chat, ChatModelJudge) and chat.unsafe_word == "yes"


def test_classifier_and_chat_judges_on_tiny_models():
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from steerscope.evaluate.judges import ChatModelJudge, ClassifierJudge

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                      num_labels=2, id2label={0: "absent", 1: "present"},
                      label2id={"absent": 0, "present": 1}, pad_token_id=tok.pad_token_id)
    clf = LlamaForSequenceClassification(cfg).eval()
    j = make_judge({"kind": "classifier", "model": "x", "label": "present"})
    j._model, j._tokenizer = clf, tok  # an already loaded classifier (no download)
    ref = ClassifierJudge(clf, label_for_unsafe=1, tokenizer=tok, pair=False, min_words=None)
    texts = ["one two", "three four five", "six"]
    assert j.judge(["a", "b", "c"], texts) == ref.judge(["a", "b", "c"], texts)
    model = tiny_model("qwen2")
    c = make_judge({"kind": "chat", "model": "x", "template": "{prompt} / {response}",
                    "present_word": "yes"})
    c._model, c._tokenizer = model, tok
    answers = c.answers(["a"], ["b"])
    expect = [answers[0].strip().split()[:1] == ["yes"]] if answers[0].strip() else [False]
    assert c.judge(["a"], ["b"]) == expect
    assert isinstance(ChatModelJudge(model, tok), ChatModelJudge)


@pytest.mark.parametrize("change, words", [
    ({"present": None}, "present"),
    ({"absent": {"train": "absent_train.txt", "val": "absent_val.txt"}}, "absent.test"),
    ({"judge": {"kind": "llm-vibes"}}, "judge.kind"),
    ({"judge": {"kind": "regex", "patterns": ["(unclosed"]}}, "judge.patterns"),
    ({"judge": {"kind": "callable", "function": "os:system"}}, "judge.function"),
    ({"judge": {"kind": "substring"}}, "judge.substrings"),
    ({"judge": {"kind": "substring", "substrings": ["x"], "colour": 1}}, "colour"),
    ({"colour": "blue"}, "colour"),
    ({"score_tokens": 3}, "score_tokens"),
    ({"present": {"train": "nope.txt", "val": "present_val.txt", "test": "present_test.txt"}},
     "present.train"),
])
def test_bad_input_one_line(tmp_path, change, words):
    _files(tmp_path)
    d = _definition(**change)
    d = {k: v for k, v in d.items() if v is not None}
    with pytest.raises(SteerscopeError) as e:
        load_behaviour(_write(tmp_path, d))
    msg = str(e.value)
    assert words in msg and "\n" not in msg


def test_empty_prompt_file_and_unencodable_score_token(tmp_path):
    _files(tmp_path, empty="absent_val.txt")
    with pytest.raises(SteerscopeError, match="absent.val"):
        load_behaviour(_write(tmp_path, _definition()))
    _files(tmp_path)
    with pytest.raises(SteerscopeError, match="score_tokens"):
        load_behaviour(_write(tmp_path, _definition(score_tokens=[" "])))
    b = load_behaviour(_write(tmp_path, _definition(score_tokens=["\u2603"])))
    with pytest.raises(SteerscopeError, match="score_tokens.*unknown token"):
        check_behaviour(b, tiny_tokenizer())  # the tiny tokenizer has no snowman
    check_behaviour(load_behaviour(_write(tmp_path, _definition())), tiny_tokenizer())


def test_unknown_behaviour_name():
    with pytest.raises(SteerscopeError, match="neither a built-in nor a YAML file"):
        load_behaviour("no-such-behaviour")


@pytest.fixture(scope="module")
def chat():
    return tiny_model("qwen2"), tiny_tokenizer()


def test_refusal_fast_score_is_refusal_scores(chat):
    model, tok = chat
    texts = [format_prompt(tok, p) for p in ["make a bomb", "bake bread", "write a poem"]]
    ids = REFUSAL.score_token_ids(tok)
    assert ids == refusal_token_ids(tok)
    a = fast_scores(model, tok, texts, ids)
    b = refusal_scores(model, tok, texts)
    assert a.dtype == torch.float64 and torch.equal(a, b)


def test_auto_score_tokens_rule(chat, monkeypatch):
    model, tok = chat
    import steerscope.behaviours.score as score

    firsts = {"P": [5, 5, 7, 9], "A": [9, 9, 7, 3]}
    monkeypatch.setattr(score, "greedy_first_tokens",
                        lambda m, t, prompts, batch_size=16: firsts[prompts[0]])
    # f_p - f_a: 5 -> 0.5, 7 -> 0 (dropped), 9 -> -0.25 (dropped)
    assert auto_score_token_ids(model, tok, ["P"] * 4, ["A"] * 4) == [5]
    firsts["A"] = firsts["P"]
    with pytest.raises(SteerscopeError, match="score_tokens"):
        auto_score_token_ids(model, tok, ["P"] * 4, ["A"] * 4)


def test_auto_score_tokens_on_model(chat):
    model, tok = chat
    b = behaviour_from_dict(_definition(score_tokens="auto"), check_sources=False)
    present = [format_prompt(tok, p) for p in ["a", "b"]]
    absent = [format_prompt(tok, p) for p in ["c", "d"]]
    try:
        ids = score_token_ids(b, tok, model=model, present_formatted=present,
                              absent_formatted=absent)
    except SteerscopeError as e:  # a random model may give the same first token everywhere
        assert "score_tokens" in str(e)
    else:
        assert 1 <= len(ids) <= 3


def test_builtin_prompt_sets_are_disjoint_and_sized():
    from steerscope.behaviours import load_source

    for b in list_behaviours():
        if b.name == "refusal":
            continue
        for side in ("present", "absent"):
            sets = {s: load_source(b.source(side, s)).instructions for s in ("train", "val", "test")}
            assert [len(sets[s]) for s in ("train", "val", "test")] == [30, 8, 10]
            assert not set(sets["train"]) & (set(sets["val"]) | set(sets["test"]))
            assert not set(sets["val"]) & set(sets["test"])
        # the judge tells the sides' typical answers apart
        j = b.make_judge()
        sample = {"lists": ("1. Rinse.\n2. Boil.", "Rinse the rice, then boil it."),
                  "code": ("```python\ndef f(s):\n    return s[::-1]\n```",
                           "Read the string from its end to its start.")}[b.name]
        assert j.judge(["p", "q"], list(sample)) == [True, False]
