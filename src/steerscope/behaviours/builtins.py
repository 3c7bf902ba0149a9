"""The built-in behaviours (``list_behaviours()``), each defined once here.

``refusal`` is the paper's setup with today's exact sources, judge and score tokens: present
= harmful requests (``harmful_train`` / ``harmful_val`` / ``jailbreakbench``), absent =
harmless requests (``harmless_train`` / ``harmless_val`` / ``harmless_test``), judged by the
paper's refusal substrings, fast score on the token that starts ``"I"``.

The others use prompt sets written by the project (``builtin:<behaviour>_<side>_<split>``,
from the ``prompts_*`` data modules) and were measured on the embedded SmolLM2-135M-Instruct
(docs/behaviours.md, ``benchmarks/behaviour_steerability.py``).
"""

from __future__ import annotations

from steerscope.behaviours import prompts_french, prompts_lists
from steerscope.behaviours.definition import SIDES, SPLITS, Behaviour, Splits
from steerscope.behaviours.sources import register_prompt_set
from steerscope.evaluate.matchers import REFUSAL_SUBSTRINGS
from steerscope.evaluate.refusal import PAPER_REFUSAL_PHRASES

REFUSAL = Behaviour(
    name="refusal",
    description="Refusing a request (the paper's setup): present on harmful requests, absent "
                "on harmless ones",
    present=Splits("harmful_train", "harmful_val", "jailbreakbench"),
    absent=Splits("harmless_train", "harmless_val", "harmless_test"),
    judge={"kind": "substring", "substrings": list(REFUSAL_SUBSTRINGS)},
    score_tokens=tuple(PAPER_REFUSAL_PHRASES),
    labels={"behaviour": "refusal", "present": "harmful", "absent": "harmless",
            "remove": "bypass", "induce": "induce"},
)


def _builtin_splits(name: str, side: str) -> Splits:
    return Splits(*(f"builtin:{name}_{side}_{split}" for split in SPLITS))


def _register(name: str, module) -> None:
    for side in SIDES:
        for split in SPLITS:
            register_prompt_set(f"{name}_{side}_{split}",
                                lambda side=side, split=split: module.prompts(side, split))


_register("french", prompts_french)
_register("lists", prompts_lists)

FRENCH = Behaviour(
    name="french",
    description="Answering in French: present on requests written in French, absent on the "
                "same requests in English",
    present=_builtin_splits("french", "present"),
    absent=_builtin_splits("french", "absent"),
    judge={"kind": "regex", "min_matches": 4, "ignore_case": True,
           "patterns": [r"\b(le|la|les|des|du|une|est|et|sont|dans|pour|avec|qui|sur|pas|"
                        r"vous|nous|je|tu|il|elle|ce|cette|mais|plus|très)\b"]},
    score_tokens="auto",
    labels={"behaviour": "French", "present": "French requests", "absent": "English requests",
            "remove": "to English", "induce": "to French"},
)

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

BUILTIN_BEHAVIOURS: dict[str, Behaviour] = {
    b.name: b for b in (REFUSAL, FRENCH, LISTS)}

__all__ = ["BUILTIN_BEHAVIOURS", "FRENCH", "LISTS", "REFUSAL"]
