"""The patching graph (edge counts, names, coarse variant) and the graph forward pass
(reverted-edge runs against the Hugging Face model)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma2Config, LlamaConfig

from steerscope.errors import SteerscopeError
from steerscope.models.archs import validate_model
from steerscope.patching.forward import GraphModel
from steerscope.patching.graph import Graph, edge_count_formula
from steerscope.runtime import Runtime, steer

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny matrices: one thread


def _meta_model(config):
    """A model with random (meta, never allocated) weights from a real config."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


GEMMA2_2B = dict(hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                 num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=256000)
LLAMA32_3B = dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                  num_attention_heads=24, num_key_value_heads=8, head_dim=128, vocab_size=128256)


@pytest.mark.parametrize("config, layer, fine, coarse", [
    (Gemma2Config(**GEMMA2_2B), 15, 8790, 2212),
    (LlamaConfig(**LLAMA32_3B), 12, 124441, 12849),
])
def test_edge_counts_of_the_paper_models(config, layer, fine, coarse):
    arch = validate_model(_meta_model(config))
    g = Graph.from_arch(arch, layer)
    assert g.n_edges == fine == edge_count_formula(arch.n_layers, layer, arch.n_heads,
                                                   arch.n_kv_heads)
    assert g.coarsened().n_edges == coarse == edge_count_formula(
        arch.n_layers, layer, arch.n_heads, arch.n_kv_heads, coarse=True)


@pytest.mark.parametrize("n_layers, layer, h, kv", [(4, 0, 4, 2), (6, 3, 6, 3), (5, 4, 2, 1)])
def test_edge_count_formula_matches_enumeration(n_layers, layer, h, kv):
    g = Graph(n_layers, layer, h, kv)
    assert g.n_edges == edge_count_formula(n_layers, layer, h, kv)
    assert len(set(g.edge_names)) == g.n_edges


def test_node_names_and_edges():
    g = Graph(4, 2, 4, 2)
    assert g.up_names[:6] == ["steer", "a2.h0", "a2.h1", "a2.h2", "a2.h3", "m2"]
    assert g.down_names[:9] == ["a2.h0.q", "a2.h1.q", "a2.h2.q", "a2.h3.q", "a2.g0.k",
                                "a2.g1.k", "a2.g0.v", "a2.g1.v", "m2.in"]
    assert g.down_names[-1] == "logits"
    names = g.edge_names
    assert "steer->a2.h0.q" in names and "a2.h1->m2.in" in names and "m2->a3.g1.v" in names
    assert "a2.h1->a2.h0.q" not in names and "m2->m2.in" not in names
    assert "a3.h0->logits" in names
    for i in (0, 7, len(names) - 1):
        assert g.edge_id(names[i]) == i
    with pytest.raises(SteerscopeError):
        g.edge_id("m3->a2.h0.q")
    with pytest.raises(SteerscopeError):
        Graph(4, 4, 4, 2)
    # consumers: a key input feeds every head of its group
    cons = g.consumers()
    assert [g.up_names[i] for i in cons[g.down_index("a2.g1.k")]] == ["a2.h2", "a2.h3"]
    assert cons[g.down_index("logits")] == []


def test_coarse_scores_are_sums_and_masks_broadcast():
    g = Graph(4, 1, 4, 2)
    c = g.coarsened()
    scores = torch.randn(g.n_edges)
    cm = g.coarsen_scores(g.to_matrix(scores))
    assert cm.shape == (c.n_up, c.n_down)
    assert torch.allclose(cm.sum(), scores.sum(), atol=1e-4)
    q = c.down_index("a2.q")
    fine_q = [g.down_index(f"a2.h{h}.q") for h in range(4)]
    assert torch.allclose(cm[:, q], g.to_matrix(scores)[:, fine_q].sum(1))
    mask = torch.zeros(c.n_up, c.n_down, dtype=torch.bool)
    mask[0, q] = True
    fine = g.coarse_to_fine(mask)
    assert fine.sum() == 4 and all(fine[0, i] for i in fine_q)


def _steered_and_base(model, ids, s, layer, alpha):
    with torch.no_grad():
        base = model(ids).logits
        with Runtime(model, [steer(s, layer, alpha)]):
            steered = model(ids).logits
    return base, steered


@pytest.mark.acceptance
@pytest.mark.parametrize("layer", [0, 2])
def test_reverted_edge_run_matches_hf(tiny, layer):
    """No edge reverted = the steered HF model; every edge reverted = the unsteered one."""
    ids = torch.randint(3, 256, (1, 11), generator=torch.Generator().manual_seed(1))
    s = torch.randn(64, generator=torch.Generator().manual_seed(2)) * 3
    base_hf, steered_hf = _steered_and_base(tiny, ids, s, layer, -1.0)
    gm = GraphModel(tiny, layer)
    prep = gm.prepare(ids)
    base = gm.run(prep, s, 0.0)
    steered = gm.run(prep, s, -1.0)
    everything = gm.run(prep, s, -1.0, reverted=gm.graph.adjacency, base=base.upstream)
    nothing = gm.run(prep, s, -1.0, reverted=torch.zeros_like(gm.graph.adjacency),
                     base=base.upstream)
    assert (steered_hf - base_hf).abs().max() > 0.5  # steering changes the logits
    torch.testing.assert_close(steered.logits, steered_hf, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(nothing.logits, steered_hf, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(base.logits, base_hf, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(everything.logits, base_hf, atol=2e-5, rtol=1e-5)


@pytest.mark.acceptance
def test_reverting_all_edges_of_the_steering_node_is_the_base_model(tiny):
    ids = torch.randint(3, 256, (1, 9), generator=torch.Generator().manual_seed(3))
    s = torch.randn(64, generator=torch.Generator().manual_seed(4)) * 3
    gm = GraphModel(tiny, 1)
    prep = gm.prepare(ids)
    base = gm.run(prep, s, 0.0)
    mask = torch.zeros_like(gm.graph.adjacency)
    mask[0] = True
    out = gm.run(prep, s, 1.0, reverted=mask, base=base.upstream, positions=torch.tensor([3, 8]))
    torch.testing.assert_close(out.logits, base.logits[:, [3, 8]], atol=2e-5, rtol=1e-5)


def test_tracked_run_keeps_gradients(tiny):
    ids = torch.randint(3, 256, (1, 7), generator=torch.Generator().manual_seed(5))
    s = torch.randn(64)
    gm = GraphModel(tiny, 2)
    prep = gm.prepare(ids)
    run = gm.run(prep, s, 0.5, track=True)
    ups, downs = torch.cat(run.up_parts), torch.cat(run.down_parts)
    assert ups.shape[0] == gm.graph.n_up and downs.shape[0] == gm.graph.n_down
    grads = torch.autograd.grad(run.logits[0, -1, 5], run.up_parts + run.down_parts)
    assert all(gr is not None for gr in grads)
    with pytest.raises(SteerscopeError):
        gm.run(prep, s, 0.5, track=True, reverted=gm.graph.adjacency)
    with pytest.raises(SteerscopeError):
        gm.run(prep, torch.randn(63), 0.5)
