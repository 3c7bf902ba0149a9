"""The patching stage end to end on a tiny chat model: rollouts → datasets → EAP-IG →
circuits → artifacts (save/load), comparisons and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from steerscope.errors import DataError
from steerscope.models.tiny import tiny_model, tiny_tokenizer
from steerscope.patching import (
    PatchingResult,
    build_patching_datasets,
    circuit_summary,
    compare_vectors,
    patch_vector,
    steer_dimension_scores,
)
from steerscope.patching.forward import GraphModel
from steerscope.patching.scores import exact_patching
from steerscope.vectors import SteeringVector

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny matrices: one thread


@pytest.fixture(scope="module")
def chat():
    return tiny_model("llama", n_layers=3), tiny_tokenizer()


def _vector(seed, layer=1):
    v = torch.randn(64, generator=torch.Generator().manual_seed(seed)) * 4
    return SteeringVector(v, layer, method=f"v{seed}")


def _datasets(chat, vector):
    model, tok = chat
    refused = {}

    def judge(prompt, text):
        """Stand-in judge (tiny random models do not refuse): the base completion (judged
        first) refuses on harmful prompts, the steered one on harmless prompts."""
        key = prompt
        refused[key] = refused.get(key, 0) + 1
        harmful = prompt.startswith("harm")
        first = refused[key] == 1
        return first if harmful else not first

    return build_patching_datasets(model, tok, vector, ["harm one", "harm two"],
                                   ["nice one", "nice two"], max_new_tokens=6,
                                   max_per_dataset=1, refused=judge)


def test_end_to_end_save_load_and_compare(chat, tmp_path):
    model, _ = chat
    v1, v2 = _vector(1), _vector(2)
    d1, d2 = _datasets(chat, v1), _datasets(chat, v2)
    assert [len(x) for x in d1.values()] == [1, 1, 1, 1]
    assert d1["present/steered"][0].alpha == -1.0 and d1["absent/base"][0].alpha == 1.0
    r1 = patch_vector(model, v1, d1, steps=2, sizes=[10, 40, 10_000], n_random=1,
                      refine_steps=1)
    gm = GraphModel(model, 1)
    r1.scores["exact"] = exact_patching(gm, d1["present/steered"], v1.vector, nodes=[0, 3])
    s = r1.tables["summary"]
    assert r1.curves["eap_ig"].faithfulness[-1] == pytest.approx(1.0, abs=1e-5)
    assert s["min_faithful_size"] <= r1.graph.n_edges
    assert len(s["random_2x_faithfulness"]) == 1
    assert "a1.h0" in r1.tables["head_scores"]
    text = circuit_summary(r1)
    assert "minimum faithful circuit" in text and "steer->" in text
    r1.save(tmp_path / "v1")
    back = PatchingResult.load(tmp_path / "v1")
    torch.testing.assert_close(back.scores["eap_ig"].edges, r1.scores["eap_ig"].edges)
    torch.testing.assert_close(back.scores["exact"].nodes, r1.scores["exact"].nodes,
                               equal_nan=True)
    assert set(back.scores["eap_ig"].per_dataset) == set(d1)
    assert bool((back.circuits["eap_ig.min"] == r1.circuits["eap_ig.min"]).all())
    assert back.curves["eap_ig"].faithfulness == r1.curves["eap_ig"].faithfulness
    g, ie = steer_dimension_scores(back.scores["eap_ig"])
    assert g.shape == (64,)
    table = json.loads((tmp_path / "v1" / "edges.json").read_text()) if \
        (tmp_path / "v1" / "edges.json").exists() else None
    if table is not None:
        assert len(table["edge"]) == r1.graph.n_edges
    r2 = patch_vector(model, v2, {"present/steered": d2["present/steered"]}, steps=1,
                      sizes=[40, 10_000], n_random=0, refine_steps=0)
    cmp = compare_vectors(model, {"v1": r1, "v2": r2},
                          {"v1": (d1["absent/base"], v1), "v2": (d2["absent/base"], v2)},
                          sizes=[10, 20])
    assert cmp["overlap"]["v1"]["v1"] == 1.0
    assert set(cmp["interchange"]["v1"]) == {"v1", "v2"}
    assert len(cmp["matched"]["v1|v2"]) == 2


def test_no_flipped_prompt_is_a_clear_error(chat):
    model, tok = chat
    v = _vector(3)
    ds = build_patching_datasets(model, tok, v, ["harm"], ["nice"], max_new_tokens=3,
                                 refused=lambda p, t: False)
    assert all(len(x) == 0 for x in ds.values())
    with pytest.raises(DataError):
        patch_vector(model, v, ds)
