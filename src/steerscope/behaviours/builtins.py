"""The built-in behaviours (``list_behaviours()``), each defined once here.

``refusal`` is the paper's setup with today's exact sources, judge and score tokens: present
= harmful requests (``harmful_train`` / ``harmful_val`` / ``jailbreakbench``), absent =
harmless requests (``harmless_train`` / ``harmless_val`` / ``harmless_test``), judged by the
paper's refusal substrings, fast score on the token that starts ``"I"``.

The others use prompt sets written by the project (``builtin:<behaviour>_<side>_<split>``,
listed in :data:`steerscope.data.builtin.BUILTIN_SETS`, from the ``prompts_*`` data modules) and were measured on the embedded SmolLM2-135M-Instruct
(docs/behaviours.md, ``benchmarks/behaviour_steerability.py``).
"""

from __future__ import annotations

from steerscope.behaviours.definition import SPLITS, Behaviour, Splits
from steerscope.data.readers import REFUSAL_SETS
from steerscope.evaluate.matchers import REFUSAL_SUBSTRINGS
from steerscope.evaluate.refusal import PAPER_REFUSAL_PHRASES

REFUSAL = Behaviour(
    name="refusal",
    description="Refusing a request (the paper's setup): present on harmful requests, absent "
                "on harmless ones",
    present=Splits(*(REFUSAL_SETS[f"present_{s}"] for s in SPLITS)),
    absent=Splits(*(REFUSAL_SETS[f"absent_{s}"] for s in SPLITS)),
    judge={"kind": "substring", "substrings": list(REFUSAL_SUBSTRINGS)},
    score_tokens=tuple(PAPER_REFUSAL_PHRASES),
    labels={"behaviour": "refusal", "present": "harmful", "absent": "harmless",
            "remove": "bypass", "induce": "induce"},
)


def _builtin_splits(name: str, side: str) -> Splits:
    return Splits(*(f"builtin:{name}_{side}_{split}" for split in SPLITS))


LISTS = Behaviour(
    name="lists",
    description="Answering with a numbered list: present on requests for a list, absent on "
                "the same requests for one paragraph",
    present=_builtin_splits("lists", "present"),
    absent=_builtin_splits("lists", "absent"),
    judge={"kind": "regex", "min_matches": 2, "ignore_case": True,
           "patterns": [r"(?m)^\s*(?:\*\*)?\d+[.)]"]},
    score_tokens="auto",
    labels={"behaviour": "numbered lists", "present": "list requests",
            "absent": "paragraph requests", "remove": "to prose", "induce": "to lists"},
)

CODE = Behaviour(
    name="code",
    description="Answering with Python code: present on requests for a function, absent on "
                "the same tasks asked for in plain words",
    present=_builtin_splits("code", "present"),
    absent=_builtin_splits("code", "absent"),
    judge={"kind": "regex", "min_matches": 1, "ignore_case": False,
           "patterns": [r"```", r"(?m)^\s*def \w+\(", r"(?m)^\s*(?:import \w|return\b|print\()"]},
    score_tokens="auto",
    labels={"behaviour": "code", "present": "code requests", "absent": "plain-words requests",
            "remove": "to words", "induce": "to code"},
)

BUILTIN_BEHAVIOURS: dict[str, Behaviour] = {
    b.name: b for b in (REFUSAL, LISTS, CODE)}

__all__ = ["BUILTIN_BEHAVIOURS", "CODE", "LISTS", "REFUSAL"]
