"""The demo refusal model's recipe and training pairs.

The demo refusal model is SmolLM2-135M-Instruct after a short supervised safety fine-tune.
The embedded SmolLM2-135M-Instruct answers harmful requests.
:func:`steerscope.demo.model.demo_model_dir` turns it, once, into a model that refuses them:
harmful requests from :mod:`steerscope.demo.prompts` are paired with short refusals that
start with "I" and contain one of the paper's refusal substrings; harmless requests with the base model's own
greedy answers (so their behaviour is kept). The model is fine-tuned on these pairs with the
loss on the response tokens only (teacher forcing), seeded, AdamW, on the CPU in float32.
Every hyperparameter lives in :class:`DemoRecipe`, whose hash names the cache folder, so a
changed recipe builds a new model and never reuses a stale one. The folder is written
atomically (:func:`~steerscope.artifacts.atomic_build_dir`). The fine-tuning loop is
:mod:`steerscope.demo.finetune`; the cached build, :mod:`steerscope.demo.model`.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from steerscope.errors import SteerscopeError
from steerscope.models.embedded import DEFAULT_MODEL

DEMO_MODEL = "smollm2-135m-refusal-demo"

# Refusals for the harmful training prompts. Each starts with "I" (the paper's refusal-score
# token) and contains at least one of the paper's refusal substrings.
REFUSALS: tuple[str, ...] = (
    "I'm sorry, but I can't help with that.",
    "I'm sorry, but I can't help with that request. It could cause serious harm.",
    "I cannot help with this. It could put people in danger or break the law.",
    "I can't assist with that. If there is something else you need, I'm happy to help.",
    "I'm sorry, I cannot provide that. It could be used to hurt people.",
    "I apologize, but I can't help with requests like this one.",
    "I'm not able to help with that, because it could lead to real harm.",
    "I cannot assist with that request. Is there anything else I can do for you?",
    "I'm sorry, but I can't do that. It is harmful and may be illegal.",
    "I can't help with that, but I'd be glad to help with something else.",
)
# Category-specific refusals (used for half of the prompts of that category).
CATEGORY_REFUSALS: dict[str, tuple[str, ...]] = {
    "self_harm": (
        "I'm sorry you're feeling this way, but I can't help with that. Please talk to "
        "someone you trust or call a crisis line near you.",
        "I cannot help with that. You don't have to go through this alone: please reach out "
        "to a friend, a doctor or a crisis line.",
    ),
}


def _refusals_items() -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple(sorted(CATEGORY_REFUSALS.items()))


@dataclass(frozen=True)
class DemoRecipe:
    """Every choice that determines the demo model (its hash names the cache folder).

    Data: the demo prompts of ``prompt_seed`` without the held-out part (``held_out``); each
    batch holds ``round(batch_size * harmful_fraction)`` harmful examples, the rest harmless,
    each pool cycled in seeded shuffled epochs. Harmless targets are the base model's greedy
    answers of at most ``max_response_tokens`` tokens (generated in batches of
    ``answer_batch_size``), dropped when they are empty, contain a refusal substring or start
    with a refusal-score token. Harmful targets are ``refusals`` (and ``category_refusals``
    for half of the prompts of those categories), followed by the end-of-turn token.
    Optimisation: ``steps`` AdamW steps (``lr``, ``betas``, ``weight_decay``), linear warm-up
    for ``warmup_steps`` then ``schedule`` (``"linear"`` or ``"cosine"``) decay to 0, gradient
    norm clipped at ``grad_clip``; the loss is the mean over examples of each example's mean
    token cross-entropy on its response, plus ``first_token_weight`` times the mean
    cross-entropy of the first response token (the refuse-or-answer decision).
    ``trained``: ``"all"`` (every parameter) or ``"blocks"`` (decoder layers from
    ``first_trained_layer`` on and the final norm; embeddings frozen). ``seed`` seeds sampling
    and training.
    """

    base_model: str = DEFAULT_MODEL
    seed: int = 0
    prompt_seed: int = 0
    held_out: float = 0.15
    steps: int = 100
    batch_size: int = 16
    harmful_fraction: float = 0.6
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 5
    schedule: str = "linear"
    grad_clip: float = 1.0
    first_token_weight: float = 2.0
    max_response_tokens: int = 16
    answer_batch_size: int = 32
    trained: str = "blocks"
    first_trained_layer: int = 6
    refusals: tuple[str, ...] = REFUSALS
    category_refusals: tuple[tuple[str, tuple[str, ...]], ...] = field(
        default_factory=_refusals_items)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise SteerscopeError("steps and batch_size must be at least 1")
        if not 0 < self.harmful_fraction < 1:
            raise SteerscopeError(f"harmful_fraction must be in (0, 1), got {self.harmful_fraction}")
        if self.schedule not in ("linear", "cosine"):
            raise SteerscopeError(f"unknown schedule {self.schedule!r}", "use 'linear' or 'cosine'")
        if self.trained not in ("all", "blocks"):
            raise SteerscopeError(f"unknown trained={self.trained!r}", "use 'all' or 'blocks'")
        if not self.refusals:
            raise SteerscopeError("a recipe needs at least one refusal text")

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain JSON-able values."""
        d = asdict(self)
        d["betas"] = list(self.betas)
        d["refusals"] = list(self.refusals)
        d["category_refusals"] = {k: list(v) for k, v in self.category_refusals}
        return d

    def prompts_digest(self) -> str:
        """SHA-256 of the demo prompts this recipe trains on (text, category, side, split), so
        that editing the prompt lists also changes :meth:`hash`."""
        from steerscope.demo.prompts import split_demo_prompts

        split = split_demo_prompts(self.prompt_seed, held_out=self.held_out)
        rows = [[name, p.instruction, p.category] for name in
                ("train_harmful", "train_harmless") for p in getattr(split, name)]
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest()

    def hash(self) -> str:
        """A stable 10-hex-digit hash of :meth:`to_dict` and :meth:`prompts_digest`
        (sorted-key JSON, SHA-256)."""
        payload = {"recipe": self.to_dict(), "prompts": self.prompts_digest()}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:10]


DEFAULT_RECIPE = DemoRecipe()  # the recipe of the demo model (frozen: safe as a default)


# --- training data --------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoExample:
    """One fine-tuning pair: ``instruction`` → ``response`` (``end`` is appended after the
    response and also trained on: the end-of-turn token, or "" for a truncated answer)."""

    instruction: str
    response: str
    end: str
    harmful: bool


def _first_token_refuses(tokenizer, text: str, refusal_ids: Sequence[int]) -> bool:
    ids = tokenizer(text.lstrip(), add_special_tokens=False)["input_ids"]
    return bool(ids) and ids[0] in set(refusal_ids)


def demo_examples(model, tokenizer, recipe: DemoRecipe = DEFAULT_RECIPE, *,
                  progress: bool = True, max_prompts: int | None = None
                  ) -> tuple[list[DemoExample], dict[str, int]]:
    """The fine-tuning pairs of ``recipe`` and counts of what was kept.

    Harmless training prompts get ``model``'s greedy answers (``max_response_tokens`` at
    most), filtered as the recipe says; harmful training prompts get a refusal chosen with a
    seeded generator. ``max_prompts`` keeps only the first prompts of each side (quick
    checks). Returns ``(examples, counts)``; harmful examples come first.
    """
    from steerscope.demo.prompts import split_demo_prompts
    from steerscope.evaluate import is_refusal_substring, refusal_token_ids
    from steerscope.generation import generate
    from steerscope.models.chat import format_prompt

    split = split_demo_prompts(recipe.prompt_seed, held_out=recipe.held_out)
    eos = tokenizer.eos_token or ""
    rng = random.Random(recipe.seed)
    by_category = dict(recipe.category_refusals)
    examples = []
    for p in split.train_harmful[:max_prompts]:
        pool = by_category.get(p.category or "")
        texts = pool if pool and rng.random() < 0.5 else recipe.refusals
        examples.append(DemoExample(p.instruction, rng.choice(texts), eos, True))

    harmless = split.train_harmless.instructions[:max_prompts]
    prompts = [format_prompt(tokenizer, s) for s in harmless]
    answers = generate(model, tokenizer, prompts, max_new_tokens=recipe.max_response_tokens,
                       batch_size=recipe.answer_batch_size, progress=progress,
                       desc="base answers (harmless)")
    refusal_ids = refusal_token_ids(tokenizer)
    counts = {"harmful": len(examples), "harmless_prompts": len(harmless),
              "dropped_empty": 0, "dropped_refusal": 0, "dropped_refusal_token": 0,
              "truncated": 0}
    for instruction, answer in zip(harmless, answers):
        if not answer.strip():
            counts["dropped_empty"] += 1
            continue
        if is_refusal_substring(answer):
            counts["dropped_refusal"] += 1
            continue
        if _first_token_refuses(tokenizer, answer, refusal_ids):
            counts["dropped_refusal_token"] += 1
            continue
        n = len(tokenizer(answer, add_special_tokens=False)["input_ids"])
        truncated = n >= recipe.max_response_tokens
        counts["truncated"] += int(truncated)
        examples.append(DemoExample(instruction, answer, "" if truncated else eos, False))
    counts["harmless"] = len(examples) - counts["harmful"]
    return examples, counts


def encode_examples(tokenizer, examples: Sequence[DemoExample]
                     ) -> list[tuple[list[int], int]]:
    """(token ids of prompt + response + end, index of the first response token) per example.

    The ids are those of the full teacher-forced text; the response starts at the first token
    whose character span begins at or after the end of the formatted prompt.
    """
    from steerscope.models.chat import format_prompt

    out = []
    for ex in examples:
        prompt = format_prompt(tokenizer, ex.instruction)
        full = format_prompt(tokenizer, ex.instruction, response=ex.response) + ex.end
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        start = len(p_ids)
        if ids[:start] != p_ids:  # the response merged with the prompt's last token
            start = next((i for i, (a, b) in enumerate(zip(ids, p_ids)) if a != b), len(p_ids))
        if start >= len(ids):
            raise SteerscopeError(f"example {ex.instruction[:40]!r} has no response tokens")
        out.append((list(ids), start))
    return out


__all__ = ["CATEGORY_REFUSALS", "DEFAULT_RECIPE", "DEMO_MODEL", "REFUSALS", "DemoExample", "DemoRecipe",
           "demo_examples", "encode_examples"]
