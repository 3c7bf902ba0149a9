"""Extension points as records (issue 24 item 7): a vector method, a pipeline stage and a
behaviour are added from this test file alone (no edit under src/) and run end to end on a
tiny model; an attribution method and an architecture row are records too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import PIPELINE_HARMFUL, PIPELINE_HARMLESS, write_pipeline_workdir

from steerscope.errors import SteerscopeError
from steerscope.models.archs import ARCHITECTURES, HOOK_SITES, validate_model
from steerscope.patching import ATTRIBUTION_METHODS, attribution_method, eap_ig, exact_patching
from steerscope.pipeline import registry, run_pipeline
from steerscope.pipeline.stages.vectors import TRAINED_METHODS, known_methods
from steerscope.testing import TINY_ARCHS, tiny_config
from steerscope.vectors import (
    METHODS,
    VECTOR_METHODS,
    SteeringVector,
    register_method,
    vector_method,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def toy_direction(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Twice the difference in means [d] (so the toy vector is 2 x the DIM vector)."""
    return 2.0 * (positive.double().mean(0) - negative.double().mean(0))


def toy_stage(ctx, section, inputs) -> dict:
    """Compares the toy vector with DIM's and writes the comparison into its folder."""
    folder = inputs["vectors"].dir
    dim = SteeringVector.load(folder / "dim.safetensors")
    toy = SteeringVector.load(folder / "toy.safetensors")
    cos = float(torch.nn.functional.cosine_similarity(dim.vector.double(), toy.vector.double(),
                                                      dim=0))
    out = {"cosine": cos, "norm_ratio": toy.norm / dim.norm, "layer": toy.layer}
    (ctx.out / "toy.json").write_text(json.dumps(out))
    return out


@pytest.fixture
def toy_extensions():
    """Register the toy method and the toy stage; remove both afterwards."""
    register_method("toy", toy_direction)
    registry.register_stage("toy", deps=("model", "data", "vectors"), order=35,
                            results=lambda out, so_far: {"toy": dict(out.outputs)})(toy_stage)
    yield
    VECTOR_METHODS.pop("toy", None)
    METHODS.pop("toy", None)
    registry.STAGES.pop("toy", None)


def _toy_behaviour(root: Path) -> Path:
    """A behaviour of its own (inline prompts, a regex judge, listed score tokens)."""
    path = root / "toy_behaviour.yaml"
    path.write_text(yaml.safe_dump({
        "name": "toy",
        "present": {s: list(PIPELINE_HARMFUL) for s in ("train", "val", "test")},
        "absent": {s: list(PIPELINE_HARMLESS) for s in ("train", "val", "test")},
        "judge": {"kind": "regex", "patterns": ["[aeiou]"], "min_matches": 1},
        "score_tokens": ["a"],
        "labels": {"present": "toy on", "absent": "toy off"},
    }))
    return path


def test_toy_method_stage_and_behaviour_run_from_a_test_file(tmp_path, toy_extensions):
    root = write_pipeline_workdir(tmp_path)
    assert "toy" in known_methods() and vector_method("toy").kind == "extraction"
    names = list(registry.STAGES)
    assert names.index("toy") == names.index("vectors") + 1  # its order: 35
    cfg = {
        "name": "toy", "behaviour": str(_toy_behaviour(root)),
        "model": {"source": str(root / "model")},
        "data": {"n_train": 4, "n_val": 3, "n_test": 4},
        "vectors": {"methods": ["dim", "toy"], "batch_size": 4,
                    "dim": {"filter": False, "kl_threshold": 1e9, "induce_threshold": -1e9,
                            "positions": [-1]}},
    }
    res = run_pipeline(cfg, tmp_path / "runs", progress=False, until="toy")
    results = json.loads((res.run_dir / "results.json").read_text())
    assert results["behaviour"]["name"] == "toy"
    assert "toy" in results["vectors"]
    toy = results["toy"]
    # independent check: the toy direction is 2 x the difference in means, like DIM's vector
    assert toy["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert toy["norm_ratio"] == pytest.approx(2.0, rel=1e-5)
    assert json.loads(next(res.run_dir.rglob("toy.json")).read_text()) == toy


def test_vector_methods_are_records_of_both_kinds():
    assert TRAINED_METHODS == ("ntp", "po")
    assert [k for k, m in VECTOR_METHODS.items() if m.kind == "trained"] == ["ntp", "po"]
    assert vector_method("dim").function is METHODS["dim"]
    assert vector_method("po").function is None and "po" not in METHODS
    with pytest.raises(SteerscopeError, match="unknown vector method 'nope'"):
        vector_method("nope")


def test_attribution_methods_are_records():
    assert list(ATTRIBUTION_METHODS) == ["eap_ig", "exact"]
    assert attribution_method("eap_ig").function is eap_ig
    assert attribution_method("exact").function is exact_patching
    assert not attribution_method("exact").approximate
    with pytest.raises(SteerscopeError, match="unknown attribution method"):
        attribution_method("acdc")


def test_a_family_is_one_row():
    """The tiny configs and the runtime's hook sites come from the architecture rows."""
    assert TINY_ARCHS == tuple(a.name for a in ARCHITECTURES)
    for spec in ARCHITECTURES:
        assert type(tiny_config(spec.name)).__name__ == spec.tiny_config_class
        assert dict(spec.hook_sites) == HOOK_SITES
    with pytest.raises(SteerscopeError, match="unknown tiny architecture"):
        tiny_config("gpt2")


def test_a_stage_with_a_later_dependency_fails_in_one_line():
    with pytest.raises(SteerscopeError, match="depends on unknown stage 'nope'") as e:
        registry.register_stage("bad_toy", deps=("nope",))(lambda ctx, s, i: {})
    assert "\n" not in str(e.value) and "bad_toy" not in registry.STAGES
    with pytest.raises(SteerscopeError, match="runs after it"):
        registry.register_stage("early_toy", deps=("report",), order=5)(lambda ctx, s, i: {})
    assert "early_toy" not in registry.STAGES and list(registry.STAGES)[0] == "model"
    registry.register_stage("late_toy", deps=("vectors",))(lambda ctx, s, i: {})
    try:
        assert list(registry.STAGES)[-2:] == ["late_toy", "report"]  # before the report
    finally:
        registry.STAGES.pop("late_toy")


def test_hook_sites_reach_the_modules_the_runtime_hooked_before(tiny):
    """Every point's module, as the former if/elif chose it."""
    arch = validate_model(tiny)
    expect = {"resid_pre": arch.block(1), "attn_in": arch.component(1, "attn"),
              "mlp_in": arch.component(1, "mlp"), "attn_out": arch.component(1, "attn"),
              "mlp_out": arch.component(1, "mlp"), "q": arch.component(1, "q_proj"),
              "k": arch.component(1, "k_proj"), "v": arch.component(1, "v_proj"),
              "z": arch.component(1, "o_proj"), "pattern": arch.component(1, "attn")}
    for point, module in expect.items():
        assert arch.hook_module(point, 1)[0] is module
    assert arch.hook_module("resid_pre", arch.n_layers)[0] is arch.final_norm


def test_a_discovered_stage_without_an_order_goes_before_the_report():
    """Stages found by name are imported alphabetically: one without ``order=`` is still
    placed just before the report, after the stages placed there earlier."""
    saved = dict(registry.STAGES)
    try:
        with registry.discovering():
            registry.register_stage("aa_toy", deps=("vectors",))(lambda ctx, s, i: {})
            registry.register_stage("zz_toy", deps=("aa_toy",))(lambda ctx, s, i: {})
        assert list(registry.STAGES)[-3:] == ["aa_toy", "zz_toy", "report"]
        with pytest.raises(SteerscopeError, match="depends on unknown stage 'nope'"):
            with registry.discovering():
                registry.register_stage("bad_toy", deps=("nope",))(lambda ctx, s, i: {})
    finally:
        registry.STAGES.clear()
        registry.STAGES.update(saved)
