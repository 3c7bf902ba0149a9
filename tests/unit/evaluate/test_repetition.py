"""Repetition loops (evaluate.repetition) on completions taken from real demo runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from steerscope.errors import SteerscopeError
from steerscope.evaluate.repetition import (
    distinct_share,
    is_repetitive,
    repeated_share,
    repetition_rate,
    text_tokens,
)

# completions of the Gemma-3 demo model (steerscope demo --model demo-gemma, 48 tokens)
LOOPS = [
    "I I I I I I I I I I I I I I I I I I I I I I I I I I I I I I I I I I I I I I I I",
    "A.\nA.\nA.\nA.\nA.\nA.\nA.\nA.\nA.\nA.\nA.\nA.\nA.\nA.\nA.\nA.\n",
    "A. Ayer Ayer Ayer Ayer Ayer Ayer Ayer Ayer Ayer Ayer Ayer Ayer Ayer Ayer Ayer Ayer",
    'To begin with, a Python\'s "" :" " " " " " " " " " " " " " " " " " " " " " " " "',
    "To save money on groceries, you can use a combination" + " of a combination" * 12,
    "1.```html\n" + "```html\n" * 14,
]
SENTENCE_LOOP = "The night of the event was a dark and somber night. " * 4  # units > 30 chars
GLUED = [  # loops without spaces: one token, caught by the repeated-characters share
    "I cannot" + "I" * 46,
    "The answer is" + "is" * 20,
    'The local, ' + '"' * 45,  # a run of one punctuation character is one token
]
REPO = Path(__file__).resolve().parents[3]
LONG_FINE = [  # long answers: the rules look at the end, so length alone makes no loop
    (REPO / "src/steerscope/pipeline/distributed.py").read_text()[:3500],  # code
    (REPO / "README.md").read_text()[:3000],  # markdown prose
    "Here is the table:\n\n| a | b |\n|---|---|\n| 1 | 2 |\n" + "-" * 20 + "\nThat is all.",
    " " * 32 + "hello world, indented",
]
FINE = [
    "I cannot assist with that request. Is there anything else I can do for you?",
    "The plot of Die Hard is a tale of a brave and determined hero, a young and ambitious "
    "entrepreneur, who is trapped in a skyscraper during a robbery.",
    "I'm sorry, I cannot provide that. It could be done. it is harmful and may be the one "
    "that you do.I cannot do that. it is harmful and may be the one that you do.I cannot",
    "1. Preheat the oven. 2. Mix the flour and water. 3. Knead the dough. 4. Bake it.",
    "Wait.... what? Hmm.... That is a surprising result, isn't it? Let me check it again.",
    "no no no no no",  # short: never a loop
    "",
]


@pytest.mark.parametrize("text", LOOPS)
def test_loops_are_repetitive(text):
    assert is_repetitive(text)
    assert distinct_share(text) < 0.3 or repeated_share(text) >= 0.5


@pytest.mark.parametrize("text", GLUED)
def test_glued_loops_are_repetitive(text):
    assert len(text_tokens(text)) < 12 or distinct_share(text) >= 0.3  # missed by tokens
    assert repeated_share(text) >= 0.5 and is_repetitive(text)


def test_repeated_share_counts_back_to_back_copies():
    assert repeated_share("abababab") == 1.0  # "ab" 4 times
    assert repeated_share("ababab") == 0.0  # 3 copies are not a loop
    assert repeated_share("xyz" + "ha" * 4 + "x") == 8 / 12
    assert repeated_share("") == 0.0
    assert repeated_share(" " * 40) == 0.0  # whitespace units do not count


@pytest.mark.parametrize("text", LONG_FINE, ids=range(len(LONG_FINE)))
def test_long_code_markdown_and_indentation_are_not_loops(text):
    assert not is_repetitive(text)


def test_a_loop_at_the_end_of_a_long_answer_is_one():
    answer = (REPO / "README.md").read_text()[:3000]
    assert is_repetitive(answer + " I I I I I I I I I I I I I I I I I I I I I I I I I I I I I"
                         " I I I I I I I I I I I I I I I I I I I I I I I I I I I I I I I I")
    assert distinct_share(answer, window=None) < distinct_share(answer)  # why the window


@pytest.mark.parametrize("text", FINE)
def test_answers_refusals_and_short_texts_are_not(text):
    assert not is_repetitive(text)


def test_tokens_split_words_and_punctuation_case_folded():
    assert text_tokens("Hello, World! hello") == ["hello", ",", "world", "!", "hello"]
    assert text_tokens('---- "" x') == ["----", '""', "x"]
    assert distinct_share("") == 1.0
    assert distinct_share("a b a b") == 0.5  # counted by hand: 2 distinct of 4


def test_thresholds_are_parameters():
    assert is_repetitive("no no no no no", min_tokens=5)
    assert is_repetitive(SENTENCE_LOOP) and repeated_share(SENTENCE_LOOP) == 0.0
    assert not is_repetitive(SENTENCE_LOOP, max_distinct_share=0.1)


def test_rate_counts_loops_and_rejects_bad_input():
    assert repetition_rate(LOOPS[:2] + FINE[:2]) == 0.5
    assert repetition_rate(FINE) == 0.0
    with pytest.raises(SteerscopeError, match="one string"):
        repetition_rate("I I I")
    with pytest.raises(SteerscopeError, match="no completions"):
        repetition_rate([])
