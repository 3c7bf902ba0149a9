"""The run's behaviour and where each prompt split comes from: the top-level config key
``behaviour`` (a built-in name or a YAML file, :func:`steerscope.behaviours.load_behaviour`)
gives the sources of its two sides; the ``data`` section overrides any of them. Used by the
config checks, the input checks (:mod:`steerscope.pipeline.inputs`) and the data stage."""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from typing import Any

from steerscope.errors import SteerscopeError

# prompts.json keys (``<side>_<split>``), in sampling order
SPLIT_KEYS = tuple(f"{side}_{split}" for split in ("train", "val", "test")
                   for side in ("present", "absent"))
# refusal's name of a data-section key (``data.harmful_train`` ...) -> (side, split)
SPLIT_SIDES = {f"{old}_{split}": (side, split) for split in ("train", "val", "test")
               for side, old in (("present", "harmful"), ("absent", "harmless"))}


@lru_cache(maxsize=16)
def _behaviour(spec: str, data_dir: str | None):
    from steerscope.behaviours import load_behaviour

    return load_behaviour(spec, data_dir=data_dir, check_sources=False)


def run_behaviour(cfg):
    """The run's :class:`~steerscope.behaviours.Behaviour` (one-line error naming the
    ``behaviour`` key when it does not load), with the run's consent to run its judge's code
    (``cfg.allow_code``)."""
    try:
        b = _behaviour(cfg.behaviour, cfg.data.data_dir)
    except SteerscopeError as exc:
        raise SteerscopeError(f"config key 'behaviour': {exc}") from None
    allow = bool(getattr(cfg, "allow_code", False))
    return b if b.allow_code == allow else dataclasses.replace(b, allow_code=allow)


def split_sources(cfg) -> dict[str, tuple[Any, str]]:
    """prompts.json key (:data:`SPLIT_KEYS`) -> (its source, the config key that names it):
    ``data.present_*``, else ``data.harmful_*`` (refusal's name), else the behaviour's
    source (named by the ``data`` key)."""
    b = run_behaviour(cfg)
    out = {}
    for old, (side, split) in SPLIT_SIDES.items():
        key = f"{side}_{split}"
        if getattr(cfg.data, key) is not None:
            out[key] = (getattr(cfg.data, key), f"data.{key}")
        elif getattr(cfg.data, old) is not None:
            out[key] = (getattr(cfg.data, old), f"data.{old}")
        else:
            out[key] = (b.source(side, split), f"data.{key}")
    return {k: out[k] for k in SPLIT_KEYS}
