"""Patching a multi-layer vector (issue 28 point 3): the shared coefficient α is the one
steering input, the graph starts at the first steered layer. Each check compares with an
independent computation: the HF model with plain PyTorch hooks adding ``α·s_k`` at each
steered layer (logits, a central finite difference of the metric in α, m(α) − m(0)) and exact
patching (real forward passes with edges reverted)."""

from __future__ import annotations

import pytest
import torch

from steerscope.models.tiny import tiny_model
from steerscope.patching.data import PatchingExample
from steerscope.patching.forward import GraphModel
from steerscope.patching.gradients import ig_gradients
from steerscope.patching.metrics import LogitDiff
from steerscope.patching.scores import eap_ig_example, exact_example, prepare_example

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny matrices: one thread

LAYERS = [1, 3]


def _rows(seed=1, scale=3.0, dtype=torch.float32) -> torch.Tensor:
    """Two steering directions [2, 64], one per steered layer."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(len(LAYERS), 64, generator=g) * scale).to(dtype)


def _example(seed=0, length=13, prompt_len=6, alpha=1.0):
    g = torch.Generator().manual_seed(seed)
    return PatchingExample(torch.randint(3, 256, (length,), generator=g), prompt_len, alpha,
                           "absent/steered")


def _hf_logits(model, ids: torch.Tensor, rows: torch.Tensor, alpha: float) -> torch.Tensor:
    """[1, S, V] logits of the HF model with ``alpha·rows[k]`` added to the input of block
    ``LAYERS[k]`` at every position: plain forward pre-hooks, nothing from steerscope."""
    handles = []
    for layer, vec in zip(LAYERS, rows):
        def hook(module, args, kwargs, vec=vec):
            if args:
                return (args[0] + alpha * vec, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + alpha * vec}
        handles.append(model.model.layers[layer].register_forward_pre_hook(hook,
                                                                           with_kwargs=True))
    try:
        with torch.no_grad():
            return model(input_ids=ids.view(1, -1), use_cache=False).logits
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("name", ["llama", "gemma2", "qwen3"])
def test_graph_forward_steers_every_layer_and_reverts_to_the_base_model(name):
    """No edge reverted = the HF model steered at both layers; every edge (or every edge of
    the steer node) reverted = the unsteered HF model."""
    model = tiny_model(name)
    ids = torch.randint(3, 256, (1, 11), generator=torch.Generator().manual_seed(1))
    rows, alpha = _rows(), -1.0
    steered_hf, base_hf = _hf_logits(model, ids, rows, alpha), _hf_logits(model, ids, rows, 0.0)
    one_layer_hf = _hf_logits(model, ids, rows * torch.tensor([[1.0], [0.0]]), alpha)
    assert (steered_hf - one_layer_hf).abs().max() > 0.1, "the second layer must matter"
    gm = GraphModel(model, LAYERS)
    assert gm.layer == 1 and gm.graph.layer == 1 and gm.steer_layers == (1, 3)
    prep = gm.prepare(ids)
    base = gm.run(prep, rows, 0.0)
    steered = gm.run(prep, rows, alpha)
    steer_row = torch.zeros_like(gm.graph.adjacency)
    steer_row[0] = gm.graph.adjacency[0]
    everything = gm.run(prep, rows, alpha, reverted=gm.graph.adjacency, base=base.upstream)
    steer_only = gm.run(prep, rows, alpha, reverted=steer_row, base=base.upstream)
    kw = dict(atol=5e-5, rtol=1e-5)
    torch.testing.assert_close(steered.logits, steered_hf, **kw)
    torch.testing.assert_close(base.logits, base_hf, **kw)
    torch.testing.assert_close(everything.logits, base_hf, **kw)
    torch.testing.assert_close(steer_only.logits, base_hf, **kw)
    # reverse roles: the unsteered run with every steer edge carrying its steered value
    back = gm.run(prep, rows, 0.0, reverted=steer_row, base=steered.upstream, base_alpha=alpha)
    torch.testing.assert_close(back.logits, steered_hf, **kw)


def _fixed_metric(ex: PatchingExample) -> LogitDiff:
    pos = ex.response_positions
    return LogitDiff(pos, torch.arange(3, 3 + len(pos)), torch.arange(40, 40 + len(pos)))


@pytest.mark.parametrize("low_memory", [True, False])
def test_alpha_gradient_matches_a_finite_difference_of_plain_hooks(low_memory):
    """dm/dα = Σ_k s_k · Σ_positions ∂m/∂(residual entering layer k), read from the gradient
    rows (row 0 and the extra row), equals a central finite difference of the metric of the
    HF model steered with plain hooks (float64)."""
    model = tiny_model("llama", seed=3, dtype=torch.float64)
    gm = GraphModel(model, LAYERS)
    ex = _example(seed=5)
    # eps: the attention softmax runs in float32 even in a float64 model, which makes a
    # smaller step noisy (1e-4: 2e-4 relative error, for single-layer steering too)
    rows, a, eps = _rows(seed=6, dtype=torch.float64), 0.7, 3e-3
    metric = _fixed_metric(ex)
    pos = ex.response_positions
    prep = gm.prepare(ex.input_ids)
    g_up, _ = ig_gradients(gm, prep, rows, a, a, metric, pos, 1, low_memory=low_memory)
    U = gm.graph.n_up
    assert g_up.shape[0] == U + 1
    g = torch.stack([g_up[0, 0].sum(0), g_up[U, 0].sum(0)]).double()  # [2, d]
    analytic = float((rows * g).sum())

    def m(alpha):
        return float(metric(_hf_logits(model, ex.input_ids, rows, alpha)[:, pos]))

    fd = (m(a + eps) - m(a - eps)) / (2 * eps)
    assert abs(fd) > 1e-2, "the metric must depend on α"
    assert analytic == pytest.approx(fd, rel=1e-4)  # measured 8e-6
    first_only = float((rows[0] * g[0]).sum())
    assert abs(first_only - fd) > 100 * abs(analytic - fd), "the second layer's row matters"


@pytest.mark.parametrize("name, metric, reverse", [("llama", "logit_diff", False),
                                                   ("gemma2", "kl", False),
                                                   ("qwen3", "logit_diff", True)])
def test_alpha_node_score_converges_to_exact_patching(name, metric, reverse):
    """The steer node's EAP-IG score is an IG over the shared α across both layers: it
    converges to m(clean) − m(corrupt), which exact patching of the node and the HF model with
    plain hooks both give; its per-layer shares steer_ie [2, d] sum to it."""
    model = tiny_model(name)
    gm = GraphModel(model, LAYERS)
    ex = _example(seed=3, alpha=-1.0)
    rows = _rows(seed=4)
    ctx = prepare_example(gm, ex, rows, metric=metric, reverse=reverse)
    assert ctx.weight > 0
    pos = ctx.metric.positions
    hf = {a: float(ctx.metric(_hf_logits(model, ex.input_ids, rows, a)[:, pos]))
          for a in (0.0, ex.alpha)}
    clean, corrupt = (hf[0.0], hf[ex.alpha]) if reverse else (hf[ex.alpha], hf[0.0])
    assert clean - corrupt == pytest.approx(ctx.m_clean - ctx.m_corrupt, rel=1e-4, abs=1e-5)
    exact = float(exact_example(gm, ctx, nodes=[0], edges=[])["nodes"][0])
    assert exact == pytest.approx(clean - corrupt, rel=1e-4, abs=1e-5)
    err = {}
    for steps in (2, 24):
        r = eap_ig_example(gm, ctx, steps)
        assert r["steer_grad"].shape == r["steer_ie"].shape == (2, 64)
        assert float(r["steer_ie"].sum()) == pytest.approx(float(r["nodes"][0]), rel=1e-5)
        err[steps] = abs(float(r["nodes"][0]) - exact)
    assert err[24] < 0.01 * abs(exact) + 1e-4
    assert err[24] < err[2] or err[2] < 1e-4


def test_edge_scores_match_exact_patching_in_the_linear_regime():
    """float64, tiny α, fixed-token logit difference: EAP-IG edge scores (the steer node's
    edges into layers before and after the second steered layer included) equal exact
    patching to first order, and the steer node's edges sum to its α node score."""
    model = tiny_model("llama", seed=3, dtype=torch.float64)
    gm = GraphModel(model, LAYERS)
    ex = _example(seed=5, length=12, prompt_len=5, alpha=1e-5)
    rows = _rows(seed=6, dtype=torch.float64)
    ctx = prepare_example(gm, ex, rows, metric="kl")
    ctx.metric = _fixed_metric(ex)
    ctx.m_clean = float(ctx.metric(gm.run(ctx.prep, rows, ex.alpha,
                                          positions=ex.response_positions).logits))
    ig = eap_ig_example(gm, ctx, steps=2)
    g = gm.graph
    scale = ig["nodes"].abs().max()
    torch.testing.assert_close(ig["edges"].sum(1), ig["nodes"], atol=1e-5 * scale, rtol=1e-4)
    steer_edges = g.adjacency[0].nonzero().flatten()
    later = [int(g.edge_id(f"steer->{g.down_names[d]}")) for d in steer_edges.tolist()]
    others = torch.randperm(g.n_edges, generator=torch.Generator().manual_seed(0))[:30]
    edges = sorted(set(later) | set(others.tolist()))
    exact = exact_example(gm, ctx, nodes=None, edges=edges)
    for got, want in ((ig["nodes"], exact["nodes"]),
                      (g.from_matrix(ig["edges"])[edges], g.from_matrix(exact["edges"])[edges])):
        # first order in α: within 1% of the largest score
        torch.testing.assert_close(got.double(), want.double(), rtol=0,
                                   atol=0.01 * float(want.abs().max()))


def test_batched_eap_ig_equals_one_example_at_a_time():
    """Several examples in one backward pass per IG step (right-padded) give each example's
    own multi-layer record."""
    from steerscope.patching.scores import eap_ig

    gm = GraphModel(tiny_model("qwen3"), LAYERS)
    rows = _rows(seed=8)
    examples = [_example(seed=s, length=n, alpha=a)
                for s, n, a in ((1, 13, 1.0), (2, 10, -1.0), (3, 12, 1.0))]
    one = eap_ig(gm, examples, rows, steps=3, batch_size=1)
    many = eap_ig(gm, examples, rows, steps=3, batch_size=3)
    for key in ("edges", "nodes", "steer_grad", "steer_ie"):
        a, b = getattr(one, key), getattr(many, key)
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * float(a.abs().max()))
    assert one.steer_grad.shape == (2, 64)
