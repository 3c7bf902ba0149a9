"""The built-in behaviours (``list_behaviours()``), each defined once here.

``refusal`` is the paper's setup with today's exact sources, judge and score tokens: present
= harmful requests (``harmful_train`` / ``harmful_val`` / ``jailbreakbench``), absent =
harmless requests (``harmless_train`` / ``harmless_val`` / ``harmless_test``), judged by the
paper's refusal substrings, fast score on the token that starts ``"I"``.
"""

from __future__ import annotations

from steerscope.behaviours.definition import Behaviour, Splits
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

BUILTIN_BEHAVIOURS: dict[str, Behaviour] = {REFUSAL.name: REFUSAL}

__all__ = ["BUILTIN_BEHAVIOURS", "REFUSAL"]
