"""Prompt data of the built-in ``code`` behaviour (answer format): requests for a Python
function (present: the model answers with code) and the same tasks asked for in plain words
(absent).

Pure data. Splits are by task: train = both templates x tasks 0-14 (30), val = tasks 15-18
(8), test = tasks 19-23 (10).
"""

from __future__ import annotations

from steerscope.data import PromptSet

# (code, words) request templates; {} is the task
TEMPLATES: tuple[tuple[str, str], ...] = (
    ("Write a Python function that {}.", "Explain in plain words, without code, how to {}."),
    ("Show me Python code to {}.", "Describe in a few sentences, without any code, how one "
                                   "would {}."),
)
# (third person for "a function that ...", infinitive for "how to ...")
TASKS: tuple[tuple[str, str], ...] = (
    ("reverses a string", "reverse a string"),
    ("counts the vowels in a word", "count the vowels in a word"),
    ("finds the largest number in a list", "find the largest number in a list"),
    ("checks whether a number is prime", "check whether a number is prime"),
    ("sorts a list of names", "sort a list of names"),
    ("adds up the numbers from 1 to n", "add up the numbers from 1 to n"),
    ("removes duplicates from a list", "remove duplicates from a list"),
    ("converts Celsius to Fahrenheit", "convert Celsius to Fahrenheit"),
    ("checks whether a word is a palindrome", "check whether a word is a palindrome"),
    ("computes the average of a list", "compute the average of a list"),
    ("counts the words in a sentence", "count the words in a sentence"),
    ("returns the factorial of n", "compute the factorial of n"),
    ("merges two sorted lists", "merge two sorted lists"),
    ("capitalises every word in a sentence", "capitalise every word in a sentence"),
    ("finds the smallest number in a list", "find the smallest number in a list"),
    ("computes the n-th Fibonacci number", "compute the n-th Fibonacci number"),
    ("reads a text file and counts its lines", "count the lines of a text file"),
    ("checks whether a year is a leap year", "check whether a year is a leap year"),
    ("returns the even numbers of a list", "pick the even numbers from a list"),
    ("finds the longest word in a sentence", "find the longest word in a sentence"),
    ("converts a number to binary", "convert a number to binary"),
    ("counts how often each letter appears in a text", "count how often each letter "
                                                       "appears in a text"),
    ("computes the greatest common divisor of two numbers", "compute the greatest common "
                                                            "divisor of two numbers"),
    ("checks whether two words are anagrams", "check whether two words are anagrams"),
)


def _split(split: str) -> list[tuple[str, str]]:
    if split == "train":
        rows, templates = TASKS[:15], TEMPLATES
    elif split == "val":
        rows, templates = TASKS[15:19], TEMPLATES
    else:
        rows, templates = TASKS[19:24], TEMPLATES
    return [(c.format(third), w.format(inf)) for third, inf in rows for c, w in templates]


def prompts(side: str, split: str) -> tuple[str, ...]:
    """The requests of one side (``present``: code, ``absent``: plain words)."""
    return tuple(c if side == "present" else w for c, w in _split(split))


def prompt_set(key: str) -> PromptSet:
    """``builtin:code_<key>`` with ``key`` = ``<side>_<split>``, e.g. ``present_train``."""
    side, _, split = key.partition("_")
    return PromptSet.from_strings(prompts(side, split), name=f"code_{key}")
