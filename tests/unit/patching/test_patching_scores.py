"""EAP-IG against exact patching, node/edge consistency, metrics and patching data."""

from __future__ import annotations

import pytest
import torch

from steerscope.errors import DataError, SteerscopeError
from steerscope.models.tiny import tiny_model
from steerscope.patching.data import (
    PatchingExample,
    Rollout,
    datasets_from_rollouts,
)
from steerscope.patching.forward import GraphModel
from steerscope.patching.metrics import LogitDiff, make_metric
from steerscope.patching.scores import (
    aggregate,
    eap_ig,
    eap_ig_example,
    exact_example,
    exact_patching,
    head_node_scores,
    prepare_example,
    steer_dimension_scores,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny matrices: one thread


def _example(seed=0, length=14, prompt_len=6, alpha=1.0, dataset="absent/steered"):
    g = torch.Generator().manual_seed(seed)
    return PatchingExample(torch.randint(3, 256, (length,), generator=g), prompt_len, alpha,
                           dataset)


def _vector(seed=1, scale=3.0):
    return torch.randn(64, generator=torch.Generator().manual_seed(seed)) * scale


@pytest.mark.acceptance
@pytest.mark.parametrize("metric", ["logit_diff", "kl"])
def test_edge_scores_of_a_node_sum_to_its_node_score(tiny, metric):
    """Node score (gradient at the node) = sum of its edge scores (gradients at the inputs)."""
    gm = GraphModel(tiny, 1)
    ctx = prepare_example(gm, _example(), _vector(), metric=metric)
    assert ctx.weight > 0
    r = eap_ig_example(gm, ctx, steps=3)
    scale = r["nodes"].abs().max()
    torch.testing.assert_close(r["edges"].sum(1), r["nodes"], atol=1e-5 * scale, rtol=1e-4)
    assert (r["edges"][~gm.graph.adjacency] == 0).all()
    # single-upstream graph: the steering node alone
    torch.testing.assert_close(r["steer_ie"].sum(), r["nodes"][0], atol=1e-5 * scale, rtol=1e-4)


@pytest.mark.acceptance
@pytest.mark.parametrize("name, metric", [("llama", "logit_diff"), ("gemma2", "kl"),
                                          ("qwen3", "logit_diff")])
def test_steering_node_score_converges_to_exact_patching(name, metric):
    """The steering node's EAP-IG score is an IG over α: it converges to m(M) − m(∅)
    (midpoint rule, error O(1/T²)) whatever the non-linearities."""
    gm = GraphModel(tiny_model(name, n_layers=3), 1)
    ctx = prepare_example(gm, _example(seed=3, alpha=-1.0), _vector(4), metric=metric)
    exact = exact_example(gm, ctx, nodes=[0], edges=[])["nodes"][0]
    assert exact == pytest.approx(ctx.m_clean - ctx.m_corrupt, rel=1e-5, abs=1e-5)
    err = {}
    for steps in (2, 24):
        err[steps] = abs(float(eap_ig_example(gm, ctx, steps)["nodes"][0]) - float(exact))
    assert err[24] < 0.01 * abs(float(exact)) + 1e-4
    assert err[24] < err[2] or err[2] < 1e-4


@pytest.mark.acceptance
def test_eap_ig_approaches_exact_patching_in_the_linear_regime():
    """A float64 model with a tiny steering coefficient is linear in α to first order, and
    a logit difference with fixed tokens is linear in the logits: EAP-IG node and edge
    scores then equal exact patching up to O(α) relative error (measured 0.1%; tolerance 1% of the
    largest score)."""
    model = tiny_model("llama", seed=3, n_layers=3, dtype=torch.float64)
    gm = GraphModel(model, 0)
    ex = _example(seed=5, length=12, prompt_len=5, alpha=1e-5)
    s = _vector(6, scale=3.0).double()
    ctx = prepare_example(gm, ex, s, metric="kl")
    pos = ex.response_positions
    ctx.metric = LogitDiff(pos, torch.arange(3, 3 + len(pos)), torch.arange(40, 40 + len(pos)))
    steered = gm.run(ctx.prep, s, ex.alpha, positions=pos)
    ctx.m_clean = float(ctx.metric(steered.logits))
    ig = eap_ig_example(gm, ctx, steps=2)
    g = gm.graph
    edges = torch.randperm(g.n_edges, generator=torch.Generator().manual_seed(0))[:40].tolist()
    exact = exact_example(gm, ctx, nodes=None, edges=edges)
    pairs = {"nodes": (ig["nodes"], exact["nodes"]),
             "edges": (g.from_matrix(ig["edges"])[edges], g.from_matrix(exact["edges"])[edges])}
    for key, (a, b) in pairs.items():
        a, b = a.double(), b.double()
        assert (a - b).abs().max() < 0.01 * b.abs().max(), key
        assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.999, key


def test_aggregation_is_position_weighted_then_dataset_mean():
    overall, per = aggregate([1.0, 3.0, 10.0], [1, 3, 5], ["a", "a", "b"])
    assert per["a"] == pytest.approx((1 + 9) / 4)
    assert overall == pytest.approx(((1 + 9) / 4 + 10) / 2)
    t, _ = aggregate([torch.ones(2), torch.zeros(2)], [1, 1], ["a", "a"])
    assert torch.allclose(t, torch.full((2,), 0.5))


def test_eap_ig_over_datasets_and_outputs():
    model = tiny_model("qwen2", n_layers=3)
    gm = GraphModel(model, 1)
    s = _vector(7)
    exs = [_example(10, alpha=1.0, dataset="absent/steered"),
           _example(11, alpha=-1.0, dataset="present/base")]
    sc = eap_ig(gm, exs, s, steps=2)
    assert sc.edges.shape == (gm.graph.n_edges,) and sc.nodes.shape == (gm.graph.n_up,)
    assert set(sc.per_dataset) == {"absent/steered", "present/base"}
    g, ie = steer_dimension_scores(sc)
    assert g.shape == ie.shape == (64,) and g.dtype == torch.float32
    torch.testing.assert_close(ie, s * g)
    torch.testing.assert_close(ie.sum(), sc.nodes[0], rtol=1e-4, atol=1e-4)
    heads = head_node_scores(sc, gm.graph)
    assert list(heads)[:2] == ["a1.h0", "a1.h1"] and len(heads) == 2 * 4
    exact = exact_patching(gm, exs, s, nodes=[0, 1], edges=[0])
    assert torch.isfinite(exact.nodes[:2]).all() and torch.isnan(exact.nodes[2:]).all()
    assert torch.isfinite(exact.edges[0]) and torch.isnan(exact.edges[1:]).all()
    with pytest.raises(SteerscopeError):
        steer_dimension_scores(exact)


def test_metrics_mask_positions():
    clean = torch.tensor([[[0.0, 5.0, 1.0], [3.0, 0.0, 0.0]]])
    corrupt = torch.tensor([[[0.0, 1.0, 5.0], [3.0, 0.0, 1.0]]])
    pos = torch.tensor([4, 5])
    m = make_metric("logit_diff", pos, clean, corrupt)
    assert m.positions.tolist() == [4] and m.y.tolist() == [1] and m.y_star.tolist() == [2]
    assert float(m(clean[:, :1])) == pytest.approx(4.0)
    kl = make_metric("kl", pos, clean, corrupt, tau=0.5)
    assert kl.positions.tolist() == [4]
    assert float(kl(clean[:, :1])) > 0 > float(kl(corrupt[:, :1]))
    with pytest.raises(SteerscopeError):
        make_metric("bogus", pos, clean, corrupt)


def test_datasets_from_rollouts_keep_flipped_prompts():
    def roll(name, base_ref, steer_ref):
        return Rollout(name, [1, 5, 6], [7, 8], [9, 10, 2], "b", "s", base_ref, steer_ref)

    harmful = [roll("h1", True, False), roll("h2", True, True), roll("h3", True, False)]
    harmless = [roll("x1", False, True), roll("x2", True, True)]
    ds = datasets_from_rollouts(harmful, harmless, max_per_dataset=1)
    assert [len(ds[k]) for k in ds] == [1, 1, 1, 0] or [len(v) for v in ds.values()] == [1, 1, 1, 1]
    ex = ds["present/steered"][0]
    assert ex.input_ids.tolist() == [1, 5, 6, 9, 10, 2] and ex.alpha == -1.0
    assert ex.response_positions.tolist() == [2, 3, 4]
    assert ds["absent/base"][0].input_ids.tolist() == [1, 5, 6, 7, 8]
    assert ds["absent/steered"][0].alpha == 1.0
    assert PatchingExample.from_json(ex.to_json()).input_ids.tolist() == ex.input_ids.tolist()
    with pytest.raises(SteerscopeError):
        PatchingExample(torch.tensor([1, 2]), 2, 1.0)


def test_examples_without_an_unmasked_position_are_a_data_error(tiny):
    """Steering with α = 0 changes no greedy token: every position is masked, so there is
    nothing to score and EAP-IG says so (instead of failing on an empty list)."""
    gm = GraphModel(tiny, 1)
    with pytest.raises(DataError, match="metric is empty") as e:
        eap_ig(gm, [_example(alpha=0.0), _example(seed=3, alpha=0.0)], _vector(), steps=2)
    assert "\n" not in str(e.value)
