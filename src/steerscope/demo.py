"""The demo: the whole study (:func:`steerscope.pipeline.run_pipeline`) on the embedded demo
refusal model, offline, sized for 2 CPU cores.

:func:`demo_run_config` is :func:`steerscope.pipeline.demo_config` (the demo refusal model,
built-in prompts, DIM + NTP + PO, steered evaluation, patching, circuits, freezing, svv and
sparsification) with the few knobs a first-time user turns: the methods, the prompt counts,
the generation length, the standard prompt splits instead of the built-in prompts.
:func:`run_demo` runs (or resumes) it; the run folder is ``<out>/demo-<hash>/`` with
``results.json`` and ``report.html``.
"""

from __future__ import annotations

import os
from typing import Any

from steerscope.errors import SteerscopeError
from steerscope.pipeline.config import PipelineConfig, demo_config

METHODS = ("dim", "ntp", "po")
# the standard splits (paper): train/val from the Arditi et al. splits, test = JailbreakBench
# and the Alpaca test split
STANDARD_SPLITS = {
    "harmful_train": "harmful_train", "harmless_train": "harmless_train",
    "harmful_val": "harmful_val", "harmless_val": "harmless_val",
    "harmful_test": "jailbreakbench", "harmless_test": "harmless_test",
}


def demo_run_config(*, model: str = "demo", dtype: str | None = None, device: str | None = None,
                    methods=METHODS, data_dir: str | os.PathLike | None = None,
                    n_train: int | None = None, n_val: int | None = None,
                    n_test: int | None = None, max_new_tokens: int | None = None,
                    relax_kl: bool = True) -> PipelineConfig:
    """The demo's pipeline config: :func:`demo_config` with these overrides (None: keep).

    ``data_dir`` (or ``$STEERSCOPE_DATA_DIR``): use the standard splits found there instead
    of the built-in prompts. ``n_test`` also caps the prompts of patching, freezing and
    sparsification; ``max_new_tokens`` applies to every generation. ``relax_kl``: see
    :func:`steerscope.vectors.select_dim` (on for the demo's small validation sets).
    """
    methods = [m.strip() for m in methods if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or "dim" not in methods:
        raise SteerscopeError(f"demo methods must include 'dim' and be among {METHODS}, got "
                              f"{methods}", "use e.g. --methods dim,ntp,po")
    base = demo_config()
    over: dict[str, Any] = {"model": {"source": model},
                            "vectors": {"methods": methods, "dim": {"relax_kl": relax_kl}}}
    if dtype is not None:
        over["model"]["dtype"] = dtype
    if device is not None:
        over["model"]["device"] = device
    data: dict[str, Any] = {}
    data_dir = data_dir or os.environ.get("STEERSCOPE_DATA_DIR")
    if data_dir:
        data.update(STANDARD_SPLITS, data_dir=str(data_dir))
    for key, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if value is not None:
            data[key] = value
    over["data"] = data
    n_test = n_test if n_test is not None else base.data.n_test
    for section in ("patching", "freeze", "sparsify"):
        cur = getattr(base, section)
        entry: dict[str, Any] = {}
        if getattr(cur, "n_prompts", None) is not None and cur.n_prompts > n_test:
            entry["n_prompts"] = n_test
        if max_new_tokens is not None and hasattr(cur, "max_new_tokens"):
            entry["max_new_tokens"] = max_new_tokens
        if entry:
            over[section] = entry
    if max_new_tokens is not None:
        over["vectors"]["preference"] = {"max_new_tokens": max_new_tokens}
        over["evaluation"] = {"max_new_tokens": max_new_tokens}
    return demo_config(**over)


def run_demo(out: str | os.PathLike = "runs", *, until: str | None = None,
             progress: bool | None = None, **config):
    """Run (or resume) the demo pipeline under ``out``; ``config``: see
    :func:`demo_run_config`. Returns the :class:`~steerscope.pipeline.runner.RunResult`."""
    from steerscope.pipeline import run_pipeline

    return run_pipeline(demo_run_config(**config), out, until=until, progress=progress)
