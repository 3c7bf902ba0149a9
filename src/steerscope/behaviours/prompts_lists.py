"""Prompt data of the built-in ``lists`` behaviour (answer format): requests for a numbered
list (present: the model answers with a list) and the same requests for one paragraph
(absent).

Pure data. Splits are by topic: train = every template x topics 0-5 (30), val = templates
0-3 x topics 6-7 (8), test = every template x topics 8-9 (10).
"""

from __future__ import annotations

from steerscope.data import PromptSet

# (list, paragraph) request templates; {} is the topic
TEMPLATES: tuple[tuple[str, str], ...] = (
    ("Give me a numbered list of five tips for {}.",
     "Give me some advice about {} in one short paragraph."),
    ("List the main steps of {} as a numbered list.",
     "Describe how {} works in one short paragraph."),
    ("Make a numbered list of things to know about {}.",
     "Write one paragraph about what to know about {}."),
    ("List five common mistakes in {}, numbered.",
     "In one paragraph, explain what people get wrong about {}."),
    ("Write a numbered checklist for {}.",
     "Write a short paragraph about getting ready for {}."),
)
TOPICS: tuple[str, ...] = (
    "cooking rice", "learning to swim", "planting a garden", "moving house", "running a marathon",
    "writing a cover letter", "baking bread", "studying for an exam", "cleaning a kitchen",
    "planning a trip",
)


def _split(split: str) -> list[tuple[str, str]]:
    if split == "train":
        return [(a.format(t), b.format(t)) for t in TOPICS[:6] for a, b in TEMPLATES]
    if split == "val":
        return [(a.format(t), b.format(t)) for t in TOPICS[6:8] for a, b in TEMPLATES[:4]]
    return [(a.format(t), b.format(t)) for t in TOPICS[8:] for a, b in TEMPLATES]


def prompts(side: str, split: str) -> tuple[str, ...]:
    """The requests of one side (``present``: numbered list, ``absent``: paragraph)."""
    return tuple(a if side == "present" else b for a, b in _split(split))


def prompt_set(key: str) -> PromptSet:
    """``builtin:lists_<key>`` with ``key`` = ``<side>_<split>``, e.g. ``present_train``."""
    side, _, split = key.partition("_")
    return PromptSet.from_strings(prompts(side, split), name=f"lists_{key}")
