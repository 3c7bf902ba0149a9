"""The demo refusal model's cached build: :func:`demo_model_dir` fine-tunes the embedded model
once per recipe (:mod:`steerscope.demo.recipe`, :mod:`steerscope.demo.finetune`) into
``<cache>/models/smollm2-135m-refusal-demo-<recipe hash>``, written atomically; and
:func:`evaluate_refusal`, the refusal rates the demo model is judged by."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from steerscope import artifacts
from steerscope.artifacts import MANIFEST_NAME, atomic_build_dir, package_version
from steerscope.demo.finetune import finetune
from steerscope.demo.recipe import (
    DEFAULT_RECIPE,
    DEMO_MODEL,
    DemoRecipe,
    demo_examples,
    prepare_base,
)
from steerscope.errors import SteerscopeError
from steerscope.models.cache_check import (
    DIGESTS_KEY,
    VERIFIED_NAME,
    cached_folder_ok,
    record_digests,
)
from steerscope.models.loading import LoadedModel, load_model

logger = logging.getLogger(__name__)

DEMO_MANIFEST_FORMAT = 1

def build_demo_model(folder: str | os.PathLike, recipe: DemoRecipe = DEFAULT_RECIPE, *,
                     base: tuple[Any, Any] | None = None, progress: bool = True,
                     max_prompts: int | None = None,
                     answerer: tuple[Any, Any] | None = None) -> dict:
    """Build the demo model into ``folder``: fine-tune the base model as ``recipe`` says and
    save it (``save_pretrained``: model + tokenizer) with a ``steerscope.json`` manifest
    (recipe, base model, losses, counts, duration, versions); returns the manifest.

    ``base``: a ``(model, tokenizer)`` to fine-tune instead of loading ``recipe.base_model``
    (e.g. a tiny model in tests); it is modified in place (and given the recipe's chat
    template and end-of-turn token, :func:`~steerscope.demo.recipe.prepare_base`).
    ``max_prompts``, ``answerer``: see :func:`demo_examples` (``max_prompts`` is for quick
    checks only; recorded in the manifest).
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
    prepare_base(model, tokenizer, recipe)
    t_gen = time.perf_counter()
    examples, counts = demo_examples(model, tokenizer, recipe, progress=progress,
                                     max_prompts=max_prompts, answerer=answerer)
    t_train = time.perf_counter()
    losses = finetune(model, tokenizer, examples, recipe, progress=progress)
    t_save = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    tail = losses[-10:]
    manifest = {
        "format": DEMO_MANIFEST_FORMAT,
        "model": recipe.model_name,
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
        "transformers_version": package_version("transformers"),
        "torch_version": torch.__version__,
        "steerscope_version": package_version("steerscope"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    manifest["files"] = {p.name: p.stat().st_size for p in sorted(folder.iterdir())
                         if p.is_file() and p.name not in (MANIFEST_NAME, VERIFIED_NAME)}
    manifest[DIGESTS_KEY] = record_digests(folder, list(manifest["files"]))
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("built the demo model in %.0f s", manifest["duration_s"]["total"])
    return manifest


def _demo_valid(folder: Path, recipe_hash: str, model_name: str = DEMO_MODEL) -> bool:
    """Whether ``folder`` holds a complete demo model ``model_name`` of the recipe with
    ``recipe_hash`` (every file of its recorded size and sha256)."""
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
        if manifest.get("model") != model_name or manifest.get("recipe_hash") != recipe_hash:
            return False
        files = manifest["files"]
        if "config.json" not in files:
            return False
        if not all((folder / name).stat().st_size == size for name, size in files.items()):
            return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return cached_folder_ok(folder, manifest)


def demo_model_dir(cache_dir: str | os.PathLike | None = None, *,
                   recipe: DemoRecipe = DEFAULT_RECIPE, progress: bool = True) -> Path:
    """The folder of the demo refusal model of ``recipe``, built first if missing.

    ``<cache>/models/<recipe.model_name>-<recipe hash>`` (for the default recipe
    ``smollm2-135m-refusal-demo-<hash>``); ``cache_dir`` overrides the cache root (default
    ``$STEERSCOPE_CACHE`` or ``~/.cache/steerscope``). The first call fine-tunes the base model
    on the CPU (SmolLM2: about 11-13 minutes on 2 cores: about 2 for the base model's answers,
    the rest for 100 training steps) and writes the folder atomically; an interrupted build
    leaves nothing behind. Later calls only check the manifest.
    """
    final = demo_folder(cache_dir, recipe=recipe)
    h, name = recipe.hash(), recipe.model_name
    if _demo_valid(final, h, name):
        return final
    return atomic_build_dir(final, lambda tmp: build_demo_model(tmp, recipe, progress=progress),
                            valid=lambda f: _demo_valid(f, h, name))


def demo_folder(cache_dir: str | os.PathLike | None = None, *,
                recipe: DemoRecipe = DEFAULT_RECIPE) -> Path:
    """Where the demo model of ``recipe`` is (or will be) cached, without building it."""
    root = Path(cache_dir).expanduser().absolute() if cache_dir is not None \
        else artifacts.cache_dir()
    return root / "models" / f"{recipe.model_name}-{recipe.hash()}"


def gemma_demo_model_dir() -> Path:
    """The folder of the Gemma-3 demo refusal model (:data:`~steerscope.demo.families.GEMMA_RECIPE`),
    built on first use."""
    from steerscope.demo.families import GEMMA_RECIPE

    return demo_model_dir(recipe=GEMMA_RECIPE)


def gemma_demo_folder() -> Path:
    """Where the Gemma-3 demo refusal model is (or will be) cached, without building it."""
    from steerscope.demo.families import GEMMA_RECIPE

    return demo_folder(recipe=GEMMA_RECIPE)


def gemma_demo_fingerprint() -> dict:
    """What identifies the Gemma-3 demo model without reading it (name and recipe hash)."""
    from steerscope.demo.families import GEMMA_RECIPE

    return {"alias": GEMMA_RECIPE.model_name, "recipe": GEMMA_RECIPE.hash()}


def demo_fingerprint() -> dict:
    """What identifies the default demo model without reading it (its name and recipe hash;
    this goes into pipeline run hashes)."""
    return {"alias": DEMO_MODEL, "recipe": DemoRecipe().hash()}


def demo_manifest(folder: str | os.PathLike) -> dict:
    """The build record (``steerscope.json``) of a demo model folder."""
    return json.loads((Path(folder) / MANIFEST_NAME).read_text())


def load_demo_model(*, recipe: DemoRecipe = DEFAULT_RECIPE, cache_dir: str | os.PathLike | None = None,
                    **kwargs) -> LoadedModel:
    """The demo refusal model (built on first use), loaded with
    :func:`~steerscope.models.loading.load_model` (``kwargs``: dtype, device, ...);
    its ``model_id`` is the recipe's ``model_name`` (:data:`DEMO_MODEL` by default)."""
    loaded = load_model(demo_model_dir(cache_dir, recipe=recipe), **kwargs)
    loaded.model_id = recipe.model_name
    return loaded


# --- evaluation -----------------------------------------------------------------------------


def evaluate_refusal(loaded, harmful, harmless, *, max_new_tokens: int = 32,
                     batch_size: int = 32, progress: bool = True) -> dict:
    """Refusal rates of a model on a harmful and a harmless prompt set.

    ``loaded``: a :class:`LoadedModel` (or anything with ``model`` and ``tokenizer``);
    ``harmful``/``harmless``: PromptSets (or lists of instructions). For each set: greedy
    completions of ``max_new_tokens`` tokens, the fraction that the paper's substring matcher
    calls refusals (``substring_rate``), the refusal score of every prompt (no generation;
    both through :func:`steerscope.evaluate.steered.steered_outcome`),
    the fraction with score > 0 (``score_rate``) and the mean score (``mean_score``).
    Returns ``{"harmful": {...}, "harmless": {...}}``, each with ``n``, the rates,
    ``mean_score``, ``completions`` and ``scores``.
    """
    from steerscope.evaluate.refusal import refusal_token_ids
    from steerscope.evaluate.steered import steered_outcome
    from steerscope.models.chat import format_prompt

    model, tokenizer = loaded.model, loaded.tokenizer
    ids = refusal_token_ids(tokenizer)
    out: dict[str, dict] = {}
    for name, prompts in (("harmful", harmful), ("harmless", harmless)):
        texts = [p if isinstance(p, str) else p.instruction for p in prompts]
        if not texts:
            raise SteerscopeError(f"the {name} prompt set is empty")
        formatted = [format_prompt(tokenizer, t) for t in texts]
        got = steered_outcome(model, tokenizer, formatted, instructions=texts, score_ids=ids,
                              max_new_tokens=max_new_tokens, batch_size=batch_size,
                              progress=progress, desc=f"generating ({name})")
        completions, scores = got.completions, got.scores  # scores [n] float64
        out[name] = {
            "n": got.n,
            "substring_rate": got.rate,
            "score_rate": got.score_rate,
            "mean_score": got.mean_score,
            "completions": completions,
            "scores": [float(s) for s in scores],
        }
    return out


__all__ = ["DEMO_MANIFEST_FORMAT", "build_demo_model", "demo_fingerprint", "demo_folder",
           "demo_manifest", "demo_model_dir", "evaluate_refusal", "gemma_demo_fingerprint",
           "gemma_demo_folder", "gemma_demo_model_dir", "load_demo_model"]
