"""The pipeline with ``vectors.layers: [1, 2]`` on the tiny chat model (issue 28 point 3):
multi-layer DIM and extraction vectors, the steering table, patching over the shared α and
circuits; stages that need a single-layer vector, trained objectives and bad layer lists
fail in one line before any compute."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_pipeline_workdir

from steerscope.errors import SteerscopeError
from steerscope.models.chat import format_prompt
from steerscope.pipeline import check_results, run_pipeline
from steerscope.vectors import SteeringVectorSet, collect_activations, extract_vector

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_pipeline import tiny_config  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny matrices: one thread

OFF = {"enabled": False}


def multi_config(root: Path, **changes) -> dict:
    cfg = tiny_config(root, vectors={"methods": ["dim", "pca"], "layers": [1, 2]},
                      freeze=OFF, svv=OFF, sparsify=OFF)
    for k, v in changes.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    return cfg


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return write_pipeline_workdir(tmp_path_factory.mktemp("multilayer"))


def test_a_run_with_two_steered_layers(workdir, tmp_path):
    res = run_pipeline(multi_config(workdir), tmp_path / "runs", progress=False)
    results = json.loads(res.results_path.read_text())
    assert {"model", "vectors", "steering", "circuits", "edge_types"} <= set(
        check_results(results))
    assert results["model"]["steering_layers"] == [1, 2]
    assert results["model"]["steering_layer"] == 1
    for m in ("dim", "pca"):
        assert results["vectors"][m]["layers"] == [1, 2] and results["vectors"][m]["layer"] == 1
    assert set(results["steering"]) == {"none", "dim", "pca"}

    from steerscope.models.loading import load_model

    lm = load_model(str(workdir / "model"))
    dim, pca = (SteeringVectorSet.load(res.run_dir / results["vectors"][m]["path"], lm.arch)
                for m in ("dim", "pca"))  # results.json paths: relative to the run folder
    assert dim.layers == pca.layers == [1, 2] and dim.position == pca.position
    # DIM: each layer's direction is the difference of the train means at that layer and the
    # selected position (vectors.dim.filter is off in the tiny config: every train prompt)
    prompts = json.loads(next(res.run_dir.rglob("prompts.json")).read_text())
    f = {k: [format_prompt(lm.tokenizer, p) for p in prompts[k]]
         for k in ("present_train", "absent_train")}
    kw = dict(layers=[1, 2], positions=[dim.position])
    mean = {k: collect_activations(lm.model, lm.tokenizer, v, **kw)[:, :, 0].double().mean(0)
            for k, v in f.items()}  # [2, d]
    torch.testing.assert_close(dim.vector, (mean["present_train"] - mean["absent_train"]).float(),
                               rtol=1e-5, atol=1e-6)
    # pca: extract_vector over both layers at DIM's position
    again = extract_vector(lm.model, lm.tokenizer, f["present_train"], f["absent_train"],
                           method="pca", layer=[1, 2], position=dim.position, batch_size=4)
    torch.testing.assert_close(pca.vector, again.vector, rtol=1e-5, atol=1e-6)
    # patching: α over both layers, the graph from layer 1
    from steerscope.patching.result import PatchingResult

    patch_dirs = [p.parent for p in res.run_dir.rglob("result.json")]
    assert patch_dirs, "the patching stage wrote a result"
    r = PatchingResult.load(patch_dirs[0])
    assert r.graph.layer == 1 and r.meta["vector"]["layers"] == [1, 2]
    assert tuple(r.scores["eap_ig"].steer_grad.shape) == (2, 64)
    # the Hub: steerscope vectors push of the run writes one set per method, cards with figures
    from huggingface_hub import ModelCard

    from steerscope.cli import main

    assert main(["vectors", "push", str(res.run_dir), "--out", str(tmp_path / "hub")]) == 0
    for m, vs in (("dim", dim), ("pca", pca)):
        back = SteeringVectorSet.from_pretrained(tmp_path / "hub" / m, arch=lm.arch)
        assert back.layers == [1, 2] and torch.equal(back.vector, vs.vector)
        card = ModelCard.load(tmp_path / "hub" / m / "README.md").text
        assert "| layers | 1, 2 |" in card and f"## Results of run `{results['run']['name']}`" \
            in card and f"| harmful (prompts with the behaviour) | {m} (remove) |" in card


@pytest.mark.parametrize("changes, match", [
    ({"vectors": {"layers": []}}, r"'vectors.layers': layers is an empty list: list at least"),
    ({"vectors": {"layers": [1, 1]}}, r"'vectors.layers': layers \[1, 1\] repeat layer 1: "
                                      r"list each layer once"),
    ({"vectors": {"layers": [1, 9]}}, r"'vectors.layers': layer 9 is out of range for this "
                                      r"4-layer model: use a layer from 0 to 3"),
    ({"vectors": {"methods": ["dim", "ntp"]}}, r"'vectors.layers' makes multi-layer vectors, "
                                               r"but 'ntp' trains one layer's vector"),
    ({"vectors": {"layer": 1}}, r"'vectors.layer' cannot be combined with vectors.layers"),
    ({"freeze": {"enabled": True}}, r"the freeze stage needs a single-layer vector: set "
                                    r"freeze.enabled: false or drop vectors.layers"),
    ({"svv": {"enabled": True}}, r"the svv stage needs a single-layer vector"),
])
def test_bad_multi_layer_configs_fail_before_any_compute(workdir, tmp_path, changes, match):
    out = tmp_path / "runs"
    with pytest.raises(SteerscopeError, match=match) as e:
        run_pipeline(multi_config(workdir, **changes), out)
    assert "\n" not in str(e.value)
    assert not out.exists()
