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
    Other base models: ``model_name`` names the cached model (folder prefix);
    ``answer_model`` (a model name) writes the harmless answers instead of the base model;
    ``chat_template`` replaces the base tokenizer's template; ``end_of_turn`` becomes its EOS
    (see :func:`prepare_base`); ``harmless_sample`` keeps a seeded sample of that many
    harmless training prompts (``None``: all).
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
    # Fields added for other base models (the Gemma-3 demo). Each enters :meth:`to_dict` (and
    # so the hash) only when it differs from its default, so the SmolLM2 recipe keeps its hash.
    model_name: str = DEMO_MODEL
    answer_model: str | None = None
    chat_template: str | None = None
    end_of_turn: str | None = None
    harmless_sample: int | None = None

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
        if self.harmless_sample is not None and self.harmless_sample < 1:
            raise SteerscopeError(f"harmless_sample must be at least 1, got {self.harmless_sample}",
                                  "pass a positive count or None (all)")
        if not self.model_name or "/" in self.model_name:
            raise SteerscopeError(f"model_name {self.model_name!r} cannot name a cache folder",
                                  "use a plain name such as 'gemma3-270m-refusal-demo'")

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain JSON-able values (the fields of :data:`OPTIONAL_FIELDS` only when
        they differ from their defaults)."""
        d = asdict(self)
        for name, default in OPTIONAL_FIELDS.items():
            if d[name] == default:
                del d[name]
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


# recipe fields that enter to_dict only when not at these defaults (see DemoRecipe)
OPTIONAL_FIELDS: dict[str, Any] = {"model_name": DEMO_MODEL, "answer_model": None,
                                   "chat_template": None, "end_of_turn": None,
                                   "harmless_sample": None}

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


def prepare_base(model, tokenizer, recipe: DemoRecipe = DEFAULT_RECIPE) -> None:
    """Give the base ``tokenizer`` the recipe's ``chat_template`` and make its
    ``end_of_turn`` token the EOS (the token every response ends with, and where generation
    stops: first in ``model.generation_config.eos_token_id``); nothing for ``None`` fields.
    A one-line error when ``end_of_turn`` is not a single token of the tokenizer."""
    if recipe.chat_template is not None:
        tokenizer.chat_template = recipe.chat_template
    if recipe.end_of_turn is not None:
        ids = tokenizer(recipe.end_of_turn, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise SteerscopeError(f"end_of_turn {recipe.end_of_turn!r} is not one token of the "
                                  "base tokenizer", "use the tokenizer's end-of-turn token")
        old = getattr(model.generation_config, "eos_token_id", None)
        old = [] if old is None else list(old) if isinstance(old, (list, tuple)) else [old]
        tokenizer.eos_token = recipe.end_of_turn
        model.generation_config.eos_token_id = [ids[0], *[i for i in old if i != ids[0]]]


def demo_examples(model, tokenizer, recipe: DemoRecipe = DEFAULT_RECIPE, *,
                  progress: bool = True, max_prompts: int | None = None,
                  answerer: tuple[Any, Any] | None = None
                  ) -> tuple[list[DemoExample], dict[str, int]]:
    """The fine-tuning pairs of ``recipe`` and counts of what was kept.

    Harmless training prompts get greedy answers (``max_response_tokens`` at most, counted in
    the answering model's tokens) written by ``answerer`` (a ``(model, tokenizer)``), else
    by ``recipe.answer_model`` (loaded by name), else by ``model`` itself; they are filtered
    as the recipe says (refusal tokens as ``tokenizer``, the trained one, encodes them).
    Harmful training prompts get a refusal chosen with a seeded generator. ``max_prompts``
    keeps only the first prompts of each side (quick checks). Returns ``(examples, counts)``;
    harmful examples come first.
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

    harmless = split.train_harmless.instructions
    if recipe.harmless_sample is not None and recipe.harmless_sample < len(harmless):
        keep = sorted(random.Random(recipe.seed + 2).sample(range(len(harmless)),
                                                            recipe.harmless_sample))
        harmless = [harmless[i] for i in keep]
    harmless = harmless[:max_prompts]
    if answerer is None and recipe.answer_model is not None:
        from steerscope.models.loading import load_model

        loaded = load_model(recipe.answer_model)
        answerer = (loaded.model, loaded.tokenizer)
    a_model, a_tok = answerer if answerer is not None else (model, tokenizer)
    prompts = [format_prompt(a_tok, s) for s in harmless]
    answers = generate(a_model, a_tok, prompts, max_new_tokens=recipe.max_response_tokens,
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
        n = len(a_tok(answer, add_special_tokens=False)["input_ids"])
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


__all__ = ["CATEGORY_REFUSALS", "DEFAULT_RECIPE", "DEMO_MODEL", "OPTIONAL_FIELDS", "REFUSALS",
           "DemoExample", "DemoRecipe", "demo_examples", "encode_examples", "prepare_base"]
