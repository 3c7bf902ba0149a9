"""Checks that need more than the config text, run by ``run_pipeline`` before anything is
written or computed (after :func:`steerscope.pipeline.inputs.check_inputs`):

- ``model.device``: CUDA / MPS present, the CUDA index exists;
- ``vectors.extraction``: each method takes the given keywords;
- ``<section>.options``: only keys the section's stage declared (``register_stage(options=)``);
- ``evaluation.judge``: the judge model resolves (a local folder with ``config.json``, or a
  Hub id in the local cache or reachable) without loading it;
- ``vectors.position`` / ``vectors.dim.positions``: every sampled train/val prompt, chat
  formatted, has that many tokens (when the tokenizer is on disk: a local model folder or the
  cached embedded model; otherwise the vectors stage checks);
- ``behaviour``: its listed fast-score tokens encode with the model's tokenizer (when the
  tokenizer is on disk); a ``classifier`` or ``chat`` judge's model resolves, as
  ``evaluation.judge``'s;
- ``model.source``: a local folder's weight headers cover their files and its
  ``num_hidden_layers`` matches them, a ``.gguf`` file's tensor table fits the file
  (:mod:`steerscope.models.file_checks`); the chat template (``model.chat_template`` or the
  tokenizer's own) renders a one-message chat (when the tokenizer is on disk).

:func:`check_code_consent` (run by ``run_pipeline`` after these, before anything is written)
refuses a judge that runs code without the run's consent, ``allow_code``.

Each failure is one :class:`~steerscope.errors.SteerscopeError` naming the config key.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from steerscope.errors import SteerscopeError

if TYPE_CHECKING:
    from steerscope.pipeline.config import PipelineConfig

JUDGE_KEY = "config key 'evaluation.judge'"


def preflight(cfg: PipelineConfig) -> None:
    """Every check of this module, cheapest first."""
    check_device(cfg.model.device)
    check_extraction(cfg)
    check_options(cfg)
    check_judge(cfg.evaluation.judge)
    check_behaviour_judge(cfg)
    check_model_files(cfg.model.source)
    check_chat_template_renders(cfg)
    check_positions(cfg)
    check_score_tokens(cfg)


def check_device(device: str) -> None:
    """``device`` names a device this machine has (``auto``/``cpu`` always do)."""
    key = "config key 'model.device'"
    text = device.strip().lower()
    if text in ("auto", "cpu"):
        return
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise SteerscopeError(f"{key}: '{device}' is not a device",
                              "use cpu, cuda, cuda:N, mps or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SteerscopeError(f"{key}: '{device}' but CUDA is not available on this machine",
                                  "set model.device: cpu (or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SteerscopeError(f"{key}: '{device}' but this machine has "
                                  f"{torch.cuda.device_count()} CUDA device(s)",
                                  "use an index below that, or cuda")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise SteerscopeError(f"{key}: '{device}' but MPS is not available on this machine",
                              "set model.device: cpu (or auto)")


def check_extraction(cfg: PipelineConfig) -> None:
    """Each ``vectors.extraction.<method>`` mapping binds to the method's signature."""
    from steerscope.vectors.methods import METHODS

    probe = torch.zeros(2, 1)
    for method, keywords in cfg.vectors.extraction.items():
        fn = METHODS.get(method)
        if fn is None:
            continue  # not an extraction method: config.check_values names it
        try:
            inspect.signature(fn).bind(probe, probe, **keywords)
        except TypeError as exc:
            raise SteerscopeError(
                f"config key 'vectors.extraction.{method}': method '{method}' does not take "
                f"{sorted(keywords)} ({exc})",
                f"see help(steerscope.vectors.methods.METHODS['{method}'])") from None


def check_options(cfg: PipelineConfig) -> None:
    """Every ``<section>.options`` key is one that section's stage declared."""
    from steerscope.pipeline.registry import STAGES

    declared: dict[str, set[str]] = {}
    for stage in STAGES.values():
        if stage.section is not None:
            declared.setdefault(stage.section, set()).update(stage.options)
    for section, known in declared.items():
        options = getattr(getattr(cfg, section, None), "options", None)
        for key in options or {}:
            if key not in known:
                valid = ", ".join(sorted(known)) if known else "none yet"
                raise SteerscopeError(f"unknown config key '{section}.options.{key}'",
                                      f"keys {section}.options takes: {valid}")


def judge_model_id(spec: str | None) -> str | None:
    """The model a judge spec loads (None for the substring judge)."""
    from steerscope.evaluate.judges import LLAMAGUARD2

    if spec is None or spec.strip().lower() == "substring":
        return None
    spec = spec.strip()
    if spec.lower() in ("llamaguard", "llamaguard2", "llama-guard-2"):
        return LLAMAGUARD2
    kind, sep, rest = spec.partition(":")
    if sep and kind.lower() in ("classifier", "chat") and rest:
        return rest
    return spec


def check_judge(spec: str | None) -> None:
    """The judge's model is a local folder with ``config.json``, or a Hub id whose config is
    in the local cache or downloadable now (one request, before any compute)."""
    model = judge_model_id(spec)
    if model is None:
        return
    check_judge_model(model, JUDGE_KEY, "set evaluation.judge: substring")


def check_behaviour_judge(cfg: PipelineConfig) -> None:
    """A behaviour whose judge is a ``classifier`` or ``chat`` model: that model resolves
    (as :func:`check_judge`), named with the behaviour file's key."""
    from steerscope.pipeline.behaviour import run_behaviour

    judge = run_behaviour(cfg).judge
    model = judge.get("model") if judge.get("kind") in ("classifier", "chat") else None
    if isinstance(model, str) and model.strip():
        check_judge_model(model.strip(), f"config key 'behaviour' ({cfg.behaviour}): judge.model",
                          "fix judge.model in the behaviour file")


def check_judge_model(model: str, key: str, alternative: str) -> None:
    """``model`` is a local folder with ``config.json``, or a Hub id whose config is in the
    local cache or downloadable now; one-line error naming ``key`` otherwise."""
    path = Path(model).expanduser()
    fix = f"download it first, pass a local folder, or {alternative}"
    if path.exists() or model.startswith(("/", ".", "~")) or model.count("/") > 1:
        if not (path / "config.json").is_file():
            raise SteerscopeError(f"{key}: judge model folder {path} does not exist or "
                                  "has no config.json", "pass a folder written by "
                                  f"save_pretrained, or {alternative}")
        return
    from huggingface_hub import file_exists, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(model, "config.json"), str):
        return
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise SteerscopeError(f"{key}: judge model '{model}' is not in the local Hugging "
                              "Face cache and HF_HUB_OFFLINE is set", fix)
    try:
        found = file_exists(model, "config.json")
    except Exception as exc:  # no network, gated, bad id: all mean "cannot load it"
        raise SteerscopeError(f"{key}: cannot reach judge model '{model}' on the Hugging "
                              f"Face Hub ({type(exc).__name__})", fix) from None
    if not found:
        raise SteerscopeError(f"{key}: judge model '{model}' has no config.json on the "
                              "Hugging Face Hub", "check the id")


def check_code_consent(cfg: PipelineConfig) -> None:
    """Code runs only with ``cfg.allow_code`` (``--allow-code``): the behaviour's
    ``callable`` judge (imported here when allowed, so a missing module fails now) or a judge
    model that ships its own code (the behaviour's, ``evaluation.judge``'s,
    ``patching.judge``'s); one line naming the function or model and the flag otherwise."""
    from steerscope.behaviours import CODE_CONSENT_FIX, check_judge_code
    from steerscope.evaluate.judges import model_ships_code
    from steerscope.pipeline.behaviour import run_behaviour

    try:
        check_judge_code(run_behaviour(cfg).judge, cfg.allow_code)
    except SteerscopeError as exc:
        raise SteerscopeError(f"behaviour {cfg.behaviour}: {exc}") from None
    if cfg.allow_code:
        return
    for key, spec in (("evaluation.judge", cfg.evaluation.judge),
                      ("patching.judge", cfg.patching.judge)):
        model = judge_model_id(spec)
        if model is not None and model_ships_code(model):
            raise SteerscopeError(f"config key '{key}': judge model '{model}' ships its own "
                                  "code (auto_map in its config); it runs only when you allow "
                                  "it", CODE_CONSENT_FIX)
def check_model_files(source: str) -> None:
    """A local model folder's or ``.gguf`` file's headers are sound (the named models are
    checked by digest when they load)."""
    from steerscope.models.file_checks import check_gguf_file, check_model_folder
    from steerscope.models.sources import model_source, resolve_source

    if model_source(source) is not None:
        return
    src = resolve_source(source)
    try:
        if src.kind == "dir":
            check_model_folder(src.location)
        elif src.kind == "gguf":
            check_gguf_file(src.location)
    except SteerscopeError as exc:
        raise SteerscopeError(f"config key 'model.source': {exc}") from None


def check_chat_template_renders(cfg: PipelineConfig) -> None:
    """The chat template the run uses renders a one-message chat (tokenizer on disk)."""
    from steerscope.models.chat import check_template_renders, set_chat_template

    tokenizer = _local_tokenizer(cfg.model.source)
    if tokenizer is None:
        return
    key = "model.chat_template" if cfg.model.chat_template else "model.source"
    try:
        set_chat_template(tokenizer, cfg.model.chat_template)
        check_template_renders(tokenizer, cfg.model.chat_template or cfg.model.source)
    except SteerscopeError as exc:
        raise SteerscopeError(f"config key '{key}': {exc}") from None


def _local_tokenizer(source: str):
    """The model's tokenizer when it is on disk (a local folder, or the cached embedded model
    for the ``default``/``demo`` aliases, which share it); else None."""
    from transformers import AutoTokenizer

    from steerscope.models.sources import model_source

    named = model_source(source)
    if named is not None:
        folder = named.call("tokenizer_folder")
    else:
        folder = Path(source).expanduser()
    if not (folder / "tokenizer_config.json").is_file() and \
            not (folder / "tokenizer.json").is_file():
        return None
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception:  # an unusual tokenizer: leave the check to the vectors stage
        return None


def check_positions(cfg: PipelineConfig) -> None:
    """``vectors.position`` and ``vectors.dim.positions`` reach no further back than the
    shortest chat-formatted train/val prompt of the sample."""
    v = cfg.vectors
    positions = [("vectors.position", v.position)] if v.position is not None else []
    positions += [("vectors.dim.positions", p) for p in v.dim.positions or []]
    if not positions:
        return
    tokenizer = _local_tokenizer(cfg.model.source)
    if tokenizer is None:
        return
    from steerscope.models.chat import format_prompt
    from steerscope.pipeline.inputs import data_plan, load_source, sample_splits

    splits = sample_splits(cfg, {src: load_source(src, cfg.data.data_dir)
                                 for src in data_plan(cfg)})
    texts = [format_prompt(tokenizer, p) for k, items in splits.items()
             if k.endswith(("_train", "_val")) for p in items]
    shortest = min(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    for key, pos in positions:
        if -pos > shortest:
            raise SteerscopeError(f"config key '{key}': position {pos} is before the start of "
                                  f"the shortest formatted train/val prompt ({shortest} tokens)",
                                  f"use a position from -1 to -{shortest}")


def check_score_tokens(cfg: PipelineConfig) -> None:
    """The behaviour's listed fast-score tokens each encode to a token of the model's
    tokenizer (when the tokenizer is on disk; ``auto`` tokens are derived in the vectors
    stage)."""
    from steerscope.behaviours import AUTO, check_behaviour
    from steerscope.pipeline.behaviour import run_behaviour

    behaviour = run_behaviour(cfg)
    if behaviour.score_tokens == AUTO:
        return
    tokenizer = _local_tokenizer(cfg.model.source)
    if tokenizer is None:
        return
    try:
        check_behaviour(behaviour, tokenizer)
    except SteerscopeError as exc:
        raise SteerscopeError(f"config key 'behaviour': {exc}") from None
