"""The demo refusal model: SmolLM2-135M-Instruct after a short supervised safety fine-tune.

The embedded SmolLM2-135M-Instruct answers harmful requests. ``demo_model_dir`` turns it,
once, into a model that refuses them: harmful requests from
:mod:`steerscope.data.demo_prompts` are paired with short refusals that start with "I" and
contain one of the paper's refusal substrings; harmless requests with the base model's own
greedy answers (so their behaviour is kept). The model is fine-tuned on these pairs with the
loss on the response tokens only (teacher forcing), seeded, AdamW, on the CPU in float32.
Every hyperparameter lives in :class:`DemoRecipe`, whose hash names the cache folder, so a
changed recipe builds a new model and never reuses a stale one. The folder is written
atomically (:func:`~steerscope.models.loading.atomic_build_dir`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from steerscope.errors import SteerscopeError
from steerscope.models.loading import (
    DEFAULT_MODEL,
    MANIFEST_NAME,
    LoadedModel,
    atomic_build_dir,
    load_model,
)
from steerscope.models.loading import cache_dir as _cache_root

logger = logging.getLogger(__name__)

DEMO_MODEL = "smollm2-135m-refusal-demo"
DEMO_MANIFEST_FORMAT = 1

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
        from steerscope.data.demo_prompts import split_demo_prompts

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


def demo_examples(model, tokenizer, recipe: DemoRecipe = DemoRecipe(), *,
                  progress: bool = True, max_prompts: int | None = None
                  ) -> tuple[list[DemoExample], dict[str, int]]:
    """The fine-tuning pairs of ``recipe`` and counts of what was kept.

    Harmless training prompts get ``model``'s greedy answers (``max_response_tokens`` at
    most), filtered as the recipe says; harmful training prompts get a refusal chosen with a
    seeded generator. ``max_prompts`` keeps only the first prompts of each side (quick
    checks). Returns ``(examples, counts)``; harmful examples come first.
    """
    from steerscope.data.demo_prompts import split_demo_prompts
    from steerscope.evaluate import is_refusal_substring, refusal_token_ids
    from steerscope.generate import generate
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


def _encode_examples(tokenizer, examples: Sequence[DemoExample]
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


# --- fine-tuning ----------------------------------------------------------------------------


def _lr_factor(step: int, recipe: DemoRecipe) -> float:
    """The learning-rate multiplier at 0-based ``step``: linear warm-up, then decay to 0."""
    if step < recipe.warmup_steps:
        return (step + 1) / (recipe.warmup_steps + 1)
    span = max(1, recipe.steps - recipe.warmup_steps)
    t = (step - recipe.warmup_steps) / span
    if recipe.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    return 1.0 - t


def _trainable(model, recipe: DemoRecipe) -> list[torch.nn.Parameter]:
    """Switch on gradients for the parameters the recipe trains; returns them."""
    from steerscope.models.archs import validate_model

    model.requires_grad_(False)
    if recipe.trained == "all":
        model.requires_grad_(True)
    else:
        arch = validate_model(model)
        if not 0 <= recipe.first_trained_layer < arch.n_layers:
            raise SteerscopeError(
                f"first_trained_layer={recipe.first_trained_layer} is not a layer of this "
                f"{arch.n_layers}-layer model", f"pass 0 to {arch.n_layers - 1}")
        for layer in list(arch.layers)[recipe.first_trained_layer:]:
            layer.requires_grad_(True)
        arch.final_norm.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise SteerscopeError("the recipe trains no parameters",
                              "lower first_trained_layer or use trained='all'")
    return params


def _response_logits(arch, input_ids, attention_mask, positions):
    """Logits [N, V] that predict the tokens at ``positions`` (a [N, 2] tensor of (row, col)
    with col >= 1): the decoder runs once over the batch, the LM head only on the positions
    needed (with the model's final logit soft-capping, if any)."""
    hidden = arch.base(input_ids=input_ids, attention_mask=attention_mask,
                       use_cache=False).last_hidden_state  # [B, T, D]
    logits = arch.unembed(hidden[positions[:, 0], positions[:, 1] - 1])  # [N, V]
    cap = arch.final_logit_softcap
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _batch_tensors(encoded: Sequence[tuple[list[int], int]], pad_id: int):
    """Right-padded ids and mask [B, T], the (row, col) of every response token [N, 2], and
    the example index of each [N]."""
    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    pos, owner = [], []
    for i, (row, start) in enumerate(encoded):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        pos.extend((i, c) for c in range(start, len(row)))
        owner.extend([i] * (len(row) - start))
    return ids, mask, torch.tensor(pos, dtype=torch.long), torch.tensor(owner, dtype=torch.long)


def finetune(model, tokenizer, examples: Sequence[DemoExample], recipe: DemoRecipe = DemoRecipe(),
             *, progress: bool = True,
             callback: Callable[[int, float], None] | None = None) -> list[float]:
    """Fine-tune ``model`` in place on ``examples`` as ``recipe`` says; returns the loss of
    every step.

    Each step draws ``round(batch_size * harmful_fraction)`` harmful and the rest harmless
    examples (each pool in seeded shuffled epochs) and minimises the mean over examples of
    the mean cross-entropy of their response tokens (prompt tokens are masked), plus
    ``first_token_weight`` times the mean cross-entropy of their first response tokens. The model is
    left in eval mode with gradients off. ``callback(step, loss)`` runs after every step.
    """
    from tqdm.auto import tqdm

    harmful = [e for e in examples if e.harmful]
    harmless = [e for e in examples if not e.harmful]
    if not harmful or not harmless:
        raise SteerscopeError("fine-tuning needs harmful and harmless examples")
    enc_h = _encode_examples(tokenizer, harmful)
    enc_l = _encode_examples(tokenizer, harmless)
    n_h = min(recipe.batch_size - 1, max(1, round(recipe.batch_size * recipe.harmful_fraction)))
    n_l = recipe.batch_size - n_h
    rng = random.Random(recipe.seed + 1)

    def cycler(n: int):
        order: list[int] = []
        while True:
            if not order:
                order = rng.sample(range(n), n)
            yield order.pop()

    draw_h, draw_l = cycler(len(enc_h)), cycler(len(enc_l))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    from steerscope.models.archs import validate_model

    arch = validate_model(model)
    torch.manual_seed(recipe.seed)
    params = _trainable(model, recipe)
    opt = torch.optim.AdamW(params, lr=recipe.lr, betas=recipe.betas,
                            weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, recipe))
    model.train()
    losses: list[float] = []
    bar = tqdm(range(recipe.steps), desc="fine-tuning demo model", disable=not progress)
    try:
        for step in bar:
            batch = [enc_h[next(draw_h)] for _ in range(n_h)] + \
                    [enc_l[next(draw_l)] for _ in range(n_l)]
            ids, mask, pos, owner = _batch_tensors(batch, pad_id)
            logits = _response_logits(arch, ids, mask, pos)  # [N, V]
            targets = ids[pos[:, 0], pos[:, 1]]  # [N]
            tok_loss = torch.nn.functional.cross_entropy(logits.float(), targets,
                                                         reduction="none")  # [N]
            per_ex = torch.zeros(len(batch)).index_add_(0, owner, tok_loss)
            counts = torch.bincount(owner, minlength=len(batch)).clamp(min=1)
            loss = (per_ex / counts).mean()
            if recipe.first_token_weight:
                first = torch.ones_like(owner, dtype=torch.bool)
                first[1:] = owner[1:] != owner[:-1]  # the first response token of each example
                loss = loss + recipe.first_token_weight * tok_loss[first].mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if callback is not None:
                callback(step, losses[-1])
    finally:
        model.eval()
        model.requires_grad_(False)
    return losses


# --- the cached model -----------------------------------------------------------------------


def _version(dist: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def build_demo_model(folder: str | os.PathLike, recipe: DemoRecipe = DemoRecipe(), *,
                     base: tuple[Any, Any] | None = None, progress: bool = True,
                     max_prompts: int | None = None) -> dict:
    """Build the demo model into ``folder``: fine-tune the base model as ``recipe`` says and
    save it (``save_pretrained``: model + tokenizer) with a ``steerscope.json`` manifest
    (recipe, base model, losses, counts, duration, versions); returns the manifest.

    ``base``: a ``(model, tokenizer)`` to fine-tune instead of loading ``recipe.base_model``
    (e.g. a tiny model in tests); it is modified in place. ``max_prompts``: see
    :func:`demo_examples` (quick checks only; recorded in the manifest).
    """
    folder = Path(folder)
    t0, c0 = time.perf_counter(), time.process_time()
    if base is None:
        loaded = load_model(recipe.base_model)
        model, tokenizer = loaded.model, loaded.tokenizer
        base_id = loaded.model_id
    else:
        model, tokenizer = base
        base_id = getattr(model.config, "_name_or_path", None) or type(model).__name__
    model.eval()
    t_gen = time.perf_counter()
    examples, counts = demo_examples(model, tokenizer, recipe, progress=progress,
                                     max_prompts=max_prompts)
    t_train = time.perf_counter()
    losses = finetune(model, tokenizer, examples, recipe, progress=progress)
    t_save = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    tail = losses[-10:]
    manifest = {
        "format": DEMO_MANIFEST_FORMAT,
        "model": DEMO_MODEL,
        "base_model": base_id,
        "recipe": recipe.to_dict(),
        "recipe_hash": recipe.hash(),
        "prompts_sha256": recipe.prompts_digest(),
        "examples": counts,
        "max_prompts": max_prompts,
        "train_loss_first": losses[0],
        "train_loss_last10_mean": sum(tail) / len(tail),
        "train_losses": [round(v, 5) for v in losses],
        "duration_s": {
            "load": round(t_gen - t0, 1),
            "answers": round(t_train - t_gen, 1),
            "train": round(t_save - t_train, 1),
            "total": round(time.perf_counter() - t0, 1),
            "cpu_process": round(time.process_time() - c0, 1),
        },
        "torch_threads": torch.get_num_threads(),
        "transformers_version": _version("transformers"),
        "torch_version": torch.__version__,
        "steerscope_version": _version("steerscope"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    manifest["files"] = {p.name: p.stat().st_size for p in sorted(folder.iterdir())
                         if p.is_file() and p.name != MANIFEST_NAME}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("built the demo model in %.0f s", manifest["duration_s"]["total"])
    return manifest


def _demo_valid(folder: Path, recipe_hash: str) -> bool:
    """Whether ``folder`` holds a complete demo model of the recipe with ``recipe_hash``."""
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
        if manifest.get("model") != DEMO_MODEL or manifest.get("recipe_hash") != recipe_hash:
            return False
        files = manifest["files"]
        if "config.json" not in files:
            return False
        return all((folder / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def demo_model_dir(cache_dir: str | os.PathLike | None = None, *,
                   recipe: DemoRecipe = DemoRecipe(), progress: bool = True) -> Path:
    """The folder of the demo refusal model of ``recipe``, built first if missing.

    ``<cache>/models/smollm2-135m-refusal-demo-<recipe hash>``; ``cache_dir`` overrides the
    cache root (default ``$STEERSCOPE_CACHE`` or ``~/.cache/steerscope``). The first call
    fine-tunes the embedded model on the CPU (about 11-13 minutes on 2 cores: about 2 for the
    base model's answers, the rest for 100 training steps) and writes the folder atomically;
    an interrupted build leaves nothing behind. Later calls only check the manifest.
    """
    root = Path(cache_dir).expanduser().absolute() if cache_dir is not None else _cache_root()
    h = recipe.hash()
    final = root / "models" / f"{DEMO_MODEL}-{h}"
    if _demo_valid(final, h):
        return final
    return atomic_build_dir(final, lambda tmp: build_demo_model(tmp, recipe, progress=progress),
                            valid=lambda f: _demo_valid(f, h))


def demo_manifest(folder: str | os.PathLike) -> dict:
    """The build record (``steerscope.json``) of a demo model folder."""
    return json.loads((Path(folder) / MANIFEST_NAME).read_text())


def load_demo_model(*, recipe: DemoRecipe = DemoRecipe(), cache_dir: str | os.PathLike | None = None,
                    **kwargs) -> LoadedModel:
    """The demo refusal model (built on first use), loaded with
    :func:`~steerscope.models.loading.load_model` (``kwargs``: dtype, device, ...);
    its ``model_id`` is :data:`DEMO_MODEL`."""
    loaded = load_model(demo_model_dir(cache_dir, recipe=recipe), **kwargs)
    loaded.model_id = DEMO_MODEL
    return loaded


# --- evaluation -----------------------------------------------------------------------------


def evaluate_refusal(loaded, harmful, harmless, *, max_new_tokens: int = 32,
                     batch_size: int = 32, progress: bool = True) -> dict:
    """Refusal rates of a model on a harmful and a harmless prompt set.

    ``loaded``: a :class:`LoadedModel` (or anything with ``model`` and ``tokenizer``);
    ``harmful``/``harmless``: PromptSets (or lists of instructions). For each set: greedy
    completions of ``max_new_tokens`` tokens, the fraction that the paper's substring matcher
    calls refusals (``substring_rate``), the refusal score of every prompt (no generation),
    the fraction with score > 0 (``score_rate``) and the mean score (``mean_score``).
    Returns ``{"harmful": {...}, "harmless": {...}}``, each with ``n``, the rates,
    ``mean_score``, ``completions`` and ``scores``.
    """
    from steerscope.evaluate import is_refusal_substring, refusal_scores
    from steerscope.generate import generate
    from steerscope.models.chat import format_prompt

    model, tokenizer = loaded.model, loaded.tokenizer
    out: dict[str, dict] = {}
    for name, prompts in (("harmful", harmful), ("harmless", harmless)):
        texts = [p if isinstance(p, str) else p.instruction for p in prompts]
        if not texts:
            raise SteerscopeError(f"the {name} prompt set is empty")
        formatted = [format_prompt(tokenizer, t) for t in texts]
        completions = generate(model, tokenizer, formatted, max_new_tokens=max_new_tokens,
                               batch_size=batch_size, progress=progress,
                               desc=f"generating ({name})")
        scores = refusal_scores(model, tokenizer, formatted, batch_size=batch_size,
                                progress=progress)
        n = len(texts)
        out[name] = {
            "n": n,
            "substring_rate": sum(is_refusal_substring(c) for c in completions) / n,
            "score_rate": float((scores > 0).double().mean()),
            "mean_score": float(scores.mean()),
            "completions": completions,
            "scores": [float(s) for s in scores],
        }
    return out


__all__ = [
    "CATEGORY_REFUSALS",
    "DEMO_MODEL",
    "REFUSALS",
    "DemoExample",
    "DemoRecipe",
    "build_demo_model",
    "demo_examples",
    "demo_manifest",
    "demo_model_dir",
    "evaluate_refusal",
    "finetune",
    "load_demo_model",
]
