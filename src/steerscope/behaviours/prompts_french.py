"""Prompt data of the built-in ``french`` behaviour (answer language): the same requests
written in French (present: the model answers in French) and in English (absent).

Pure data. Splits are by topic, so val and test topics are unseen in train: train = every
template x topics 0-5 (30), val = templates 0-3 x topics 6-7 (8), test = every template x
topics 8-9 (10).
"""

from __future__ import annotations

# (English, French) request templates; {} is the topic
TEMPLATES: tuple[tuple[str, str], ...] = (
    ("Describe {} in two sentences.", "Décris {} en deux phrases."),
    ("Tell me three facts about {}.", "Donne-moi trois faits sur {}."),
    ("Write a short story about {}.", "Écris une courte histoire sur {}."),
    ("Why do people like {}?", "Pourquoi les gens aiment-ils {} ?"),
    ("Write a short poem about {}.", "Écris un court poème sur {}."),
)
# (English, French) topics
TOPICS: tuple[tuple[str, str], ...] = (
    ("the sea", "la mer"),
    ("cats", "les chats"),
    ("the moon", "la lune"),
    ("winter", "l'hiver"),
    ("gardens", "les jardins"),
    ("bread", "le pain"),
    ("trains", "les trains"),
    ("music", "la musique"),
    ("forests", "les forêts"),
    ("coffee", "le café"),
)


def _split(split: str) -> list[tuple[str, str]]:
    if split == "train":
        return [(t[0].format(a), t[1].format(b)) for a, b in TOPICS[:6] for t in TEMPLATES]
    if split == "val":
        return [(t[0].format(a), t[1].format(b)) for a, b in TOPICS[6:8] for t in TEMPLATES[:4]]
    return [(t[0].format(a), t[1].format(b)) for a, b in TOPICS[8:] for t in TEMPLATES]


def prompts(side: str, split: str) -> tuple[str, ...]:
    """The requests of one side (``present``: French, ``absent``: English) and split."""
    return tuple(fr if side == "present" else en for en, fr in _split(split))
