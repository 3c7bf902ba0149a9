"""The shipped configs (configs/*.yaml) load under the strict schema and keep the paper's
hyperparameters that docs/reproduce.md promises."""

from __future__ import annotations

from pathlib import Path

import pytest

from steerscope.pipeline.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_there_are_paper_configs():
    assert {p.name for p in CONFIGS} >= {"paper-gemma2-2b.yaml", "paper-llama32-3b.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_strictly_with_the_paper_settings(path):
    cfg = load_config(path)
    assert cfg.seed == 42
    assert (cfg.data.n_train, cfg.data.n_val, cfg.data.n_test) == (128, 32, 100)
    assert cfg.data.harmful_test == "jailbreakbench"
    assert cfg.vectors.methods == ["dim", "ntp", "po"]
    assert cfg.vectors.dim.kl_threshold == 0.1 and not cfg.vectors.dim.relax_kl
    assert cfg.vectors.ntp.preset == cfg.vectors.po.preset == "paper"
    assert cfg.evaluation.max_new_tokens == 512
    assert cfg.patching.ig_steps == 10 and cfg.circuits.threshold == 0.85
    assert cfg.sparsify.taus == [0, 0.1, 0.3, 0.5, 1, 1.5, 2, 2.5]
