"""The paper's patching conventions beside steerscope's (issue 12 points 1, 5 and 7), each
checked against an independent computation: EAP-IG with the gradient at the post-norm inputs
(plain hooks on the Hugging Face model), the metric on the logits before Gemma's final soft-cap
(the HF model's ``lm_head`` output) and pooling over datasets by unmasked positions (by hand).
"""

from __future__ import annotations

import pytest
import torch

from steerscope.errors import SteerscopeError
from steerscope.models.tiny import tiny_model
from steerscope.patching.circuits import evaluate_circuits
from steerscope.patching.data import PatchingExample
from steerscope.patching.forward import GraphModel
from steerscope.patching.scores import (
    aggregate,
    eap_ig,
    eap_ig_example,
    exact_patching,
    prepare_example,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny matrices: one thread


def _example(seed=0, length=14, prompt_len=6, alpha=1.0, dataset="absent/steered"):
    g = torch.Generator().manual_seed(seed)
    return PatchingExample(torch.randint(3, 256, (length,), generator=g), prompt_len, alpha,
                           dataset)


def _vector(seed=1, scale=3.0, dtype=torch.float32):
    return (torch.randn(64, generator=torch.Generator().manual_seed(seed)) * scale).to(dtype)


# ----------------------------------------------------------------------------------------
# an independent post-norm EAP-IG: hooks on the HF model, nothing from steerscope
# ----------------------------------------------------------------------------------------
def _hf_run(model, ids, layer, s, a, *, grads: bool):
    """One forward of the HF model with ``a·s`` added to the residual entering block
    ``layer``. Returns (logits [S, V], upstream outputs {name: [S, d]}, post-norm inputs
    {name: tensor to read ``.grad`` of, or a (tensor, weight rows) pair}, the steered
    residual)."""
    cfg = model.config
    H, dh = cfg.num_attention_heads, cfg.head_dim
    blocks = model.model.layers
    up, post, handles = {}, {}, []
    state = {}

    def steer(module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        r = (x + a * s).detach().requires_grad_(grads)  # [1, S, d]
        state["steer"] = r
        if args:
            return (r, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": r}

    handles.append(blocks[layer].register_forward_pre_hook(steer, with_kwargs=True))
    for L in range(layer, len(blocks)):
        attn, mlp = blocks[L].self_attn, blocks[L].mlp

        def o_in(module, args, L=L):
            z = args[0][0].view(-1, H, dh)  # [S, H, dh]
            w = module.weight.view(-1, H, dh)  # [d, H, dh]
            for h in range(H):
                up[f"a{L}.h{h}"] = z[:, h] @ w[:, h].T  # [S, d]

        def proj_out(module, args, out, L=L, kind="q"):
            if grads:
                out.retain_grad()
            post[(L, kind)] = (out, module.weight)  # [1, S, n·dh], [n·dh, d]

        def mlp_in(module, args, L=L):
            x = args[0]
            if grads:
                x.retain_grad()
            post[f"m{L}.in"] = x

        def mlp_out(module, args, out, L=L):
            up[f"m{L}"] = out[0]

        handles += [attn.o_proj.register_forward_pre_hook(o_in),
                    attn.q_proj.register_forward_hook(lambda m, a_, o, L=L: proj_out(m, a_, o, L, "q")),
                    attn.k_proj.register_forward_hook(lambda m, a_, o, L=L: proj_out(m, a_, o, L, "k")),
                    attn.v_proj.register_forward_hook(lambda m, a_, o, L=L: proj_out(m, a_, o, L, "v")),
                    mlp.register_forward_pre_hook(mlp_in), mlp.register_forward_hook(mlp_out)]

    def head_in(module, args):
        x = args[0]
        if grads:
            x.retain_grad()
        post["logits"] = x

    handles.append(model.lm_head.register_forward_pre_hook(head_in))
    try:
        with torch.set_grad_enabled(grads):
            logits = model(input_ids=ids[None], use_cache=False).logits[0]  # [S, V]
    finally:
        for h in handles:
            h.remove()
    up["steer"] = state["steer"][0]
    return logits, up, post, state["steer"]


def _post_norm_grads(post, H, G, dh, layers) -> dict[str, torch.Tensor]:
    """{downstream name: [S, d] gradient at its post-norm input}: per head / KV head, the
    gradient w.r.t. its slice of the projection output pulled back through its weight rows."""
    out = {}
    for L in layers:
        for kind, n, fmt in (("q", H, "a{L}.h{i}.q"), ("k", G, "a{L}.g{i}.k"),
                             ("v", G, "a{L}.g{i}.v")):
            t, w = post[(L, kind)]
            g = t.grad[0]  # [S, n·dh]
            for i in range(n):
                out[fmt.format(L=L, i=i)] = g[:, i * dh:(i + 1) * dh] @ w[i * dh:(i + 1) * dh]
        out[f"m{L}.in"] = post[f"m{L}.in"].grad[0]
    out["logits"] = post["logits"].grad[0]
    return out


def _reference_post_norm_eap_ig(model, ex, s, layer, steps):
    """EAP-IG edge scores [U, D] by name with the gradient at the post-norm inputs, from
    plain hooks: Σ_positions (u_clean − u_corrupt) · (1/T) Σ_i ∂m/∂x_d at α_i = (i+½)/T·α."""
    cfg = model.config
    H, G, dh = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    layers = range(layer, cfg.num_hidden_layers)
    ids, pos = ex.input_ids, ex.response_positions
    lc, up_c, _, _ = _hf_run(model, ids, layer, s, ex.alpha, grads=False)
    lk, up_k, _, _ = _hf_run(model, ids, layer, s, 0.0, grads=False)
    y, y_star = lc[pos].argmax(-1), lk[pos].argmax(-1)
    keep = y != y_star
    pos, y, y_star = pos[keep], y[keep], y_star[keep]
    acc: dict[str, torch.Tensor] = {}
    for p in model.parameters():
        p.requires_grad_(False)
    for i in range(steps):
        logits, _, post, _ = _hf_run(model, ids, layer, s, ex.alpha * (i + 0.5) / steps,
                                     grads=True)
        lg = logits[pos]
        idx = torch.arange(len(pos))
        (lg[idx, y] - lg[idx, y_star]).mean().backward()
        for k, g in _post_norm_grads(post, H, G, dh, layers).items():
            acc[k] = acc.get(k, 0) + g.detach() / steps
    delta = {k: (up_c[k] - up_k[k]).detach() for k in up_c}
    return {(u, d): float((delta[u] * g).sum()) for u in delta for d, g in acc.items()}, pos


@pytest.mark.parametrize("name", ["llama", "qwen3"])
def test_post_norm_eap_ig_matches_plain_hooks_on_the_hf_model(name):
    """``grad_at="post_norm"``: every edge score equals (clean − corrupt upstream output) ·
    (mean IG gradient at the downstream node's post-norm input: the per-head slice of the
    q/k/v projection input, the MLP input, the lm_head input), computed with hooks on the
    unmodified HF model."""
    model = tiny_model(name, seed=2, n_layers=3, dtype=torch.float64)
    layer, steps = 1, 3
    ex = _example(seed=7, length=12, prompt_len=5, alpha=1.0)
    s = _vector(8, dtype=torch.float64)
    ref, pos = _reference_post_norm_eap_ig(model, ex, s, layer, steps)
    gm = GraphModel(model, layer)
    ctx = prepare_example(gm, ex, s)
    assert torch.equal(ctx.metric.positions.cpu(), pos) and len(pos) > 0
    r = eap_ig_example(gm, ctx, steps, "post_norm")
    g = gm.graph
    want = torch.zeros(g.n_up, g.n_down, dtype=torch.float64)
    for (u, d), v in ref.items():
        want[g.up_index(u), g.down_index(d)] = v
    want = want * g.adjacency
    got = r["edges"].double()
    torch.testing.assert_close(got, want, atol=1e-5 * float(want.abs().max()), rtol=1e-4)
    # the pre-norm variant differs (it includes the norm's Jacobian) ...
    pre = eap_ig_example(gm, ctx, steps, "pre_norm")
    assert not torch.allclose(pre["edges"].double(), want, rtol=0.05, atol=0)
    # ... while node and steering-dimension scores do not depend on the gradient location
    torch.testing.assert_close(pre["nodes"], r["nodes"])
    torch.testing.assert_close(pre["steer_grad"], r["steer_grad"])


def test_unknown_gradient_location_or_logit_reading_is_an_error():
    gm = GraphModel(tiny_model("llama", n_layers=2), 1)
    ctx = prepare_example(gm, _example(), _vector())
    with pytest.raises(SteerscopeError, match="grad_at"):
        eap_ig_example(gm, ctx, 2, "post")
    with pytest.raises(SteerscopeError, match="logits_at"):
        GraphModel(gm.model, 1, logits_at="capped")


# ----------------------------------------------------------------------------------------
# Gemma's final-logit soft-cap
# ----------------------------------------------------------------------------------------
def _gemma_with_cap(cap=2.0):
    model = tiny_model("gemma2", seed=1, n_layers=3, dtype=torch.float64)
    model.config.final_logit_softcapping = cap  # small: the cap bends the logits
    return model


def _hf_logits(model, ex, s, layer, a, *, pre_cap: bool) -> torch.Tensor:
    """[S, V] logits of the HF model steered with a·s: its output, or lm_head's output."""
    seen = {}
    hooks = [model.lm_head.register_forward_hook(lambda m, i, o: seen.setdefault("z", o))]
    try:
        logits, _, _, _ = _hf_run(model, ex.input_ids, layer, s, a, grads=False)
    finally:
        for h in hooks:
            h.remove()
    return seen["z"][0] if pre_cap else logits


def _logit_diff(lg, lk, lc):
    """Mean over positions where clean and corrupt greedy tokens differ of lg(y) − lg(y*)."""
    y, y_star = lc.argmax(-1), lk.argmax(-1)
    keep = y != y_star
    i = torch.arange(int(keep.sum()))
    return float((lg[keep][i, y[keep]] - lg[keep][i, y_star[keep]]).mean())


@pytest.mark.parametrize("logits_at", ["post_cap", "pre_cap"])
def test_metric_reads_logits_before_or_after_the_soft_cap(logits_at):
    """m(clean), m(corrupt), the steering node's exact score, its EAP-IG score (→ exact as T
    grows) and the faithfulness evaluation's m(M), m(∅) all use the logits the option names,
    checked against the HF model's output / lm_head output."""
    model = _gemma_with_cap()
    layer = 1
    ex = _example(seed=3, length=14, prompt_len=5, alpha=-1.0)
    s = _vector(4, dtype=torch.float64)
    pos = ex.response_positions
    pre = logits_at == "pre_cap"
    lc = _hf_logits(model, ex, s, layer, ex.alpha, pre_cap=pre)[pos]
    lk = _hf_logits(model, ex, s, layer, 0.0, pre_cap=pre)[pos]
    m_clean, m_corrupt = _logit_diff(lc, lk, lc), _logit_diff(lk, lk, lc)
    gm = GraphModel(model, layer, logits_at=logits_at)
    ctx = prepare_example(gm, ex, s)
    assert ctx.m_clean == pytest.approx(m_clean, rel=1e-6)
    assert ctx.m_corrupt == pytest.approx(m_corrupt, rel=1e-6)
    exact = exact_patching(gm, [ex], s, nodes=[0])
    assert float(exact.nodes[0]) == pytest.approx(m_clean - m_corrupt, rel=1e-6)
    ig = float(eap_ig_example(gm, ctx, 24)["nodes"][0])
    assert ig == pytest.approx(m_clean - m_corrupt, rel=0.01)
    ev = evaluate_circuits(gm, [ex], s, [torch.zeros(gm.graph.n_edges, dtype=torch.bool)])
    assert ev.m_full == pytest.approx(m_clean, rel=1e-6)
    assert ev.m_empty == pytest.approx(m_corrupt, rel=1e-6)
    assert float(ev.m_circuits[0]) == pytest.approx(m_corrupt, rel=1e-6)
    # the two readings really differ on this model
    other = _hf_logits(model, ex, s, layer, ex.alpha, pre_cap=not pre)[pos]
    assert abs(_logit_diff(other, lk, lc) - m_clean) > 1e-3


# ----------------------------------------------------------------------------------------
# pooling over datasets
# ----------------------------------------------------------------------------------------
def test_aggregate_pools_by_positions_or_averages_datasets():
    """Hand computation: dataset A has examples (2.0, 1 pos), (5.0, 3 pos); B (10.0, 4 pos)."""
    values, weights, names = [2.0, 5.0, 10.0], [1, 3, 4], ["A", "A", "B"]
    mean_a = (2 * 1 + 5 * 3) / 4
    overall, per = aggregate(values, weights, names)
    assert per == {"A": mean_a, "B": 10.0} and overall == (mean_a + 10.0) / 2
    overall, per = aggregate(values, weights, names, "positions")
    assert per == {"A": mean_a, "B": 10.0} and overall == (2 * 1 + 5 * 3 + 10 * 4) / 8
    t_over, _ = aggregate([torch.tensor([v, -v]) for v in values], weights, names, "positions")
    torch.testing.assert_close(t_over, torch.tensor([57 / 8, -57 / 8]))
    with pytest.raises(SteerscopeError, match="pooling"):
        aggregate(values, weights, names, "sum")


def test_eap_ig_pooled_over_positions_weights_every_example_by_its_positions():
    """``eap_ig(pooling="positions")`` = Σ_i w_i·score_i / Σ_i w_i over the per-example scores
    (w_i: unmasked positions), across datasets of different sizes; the default differs."""
    model = tiny_model("llama", seed=4, n_layers=2)
    gm = GraphModel(model, 1)
    s = _vector(5)
    exs = [_example(seed=i, length=10 + 2 * i, dataset=d)
           for i, d in enumerate(["harmful/bypass", "harmful/bypass", "absent/steered"])]
    recs = [eap_ig_example(gm, prepare_example(gm, ex, s), 2) for ex in exs]
    w = torch.tensor([float(r["weight"]) for r in recs])
    assert (w > 0).all()
    want = sum(wi * r["nodes"].double() for wi, r in zip(w, recs)) / w.sum()
    pooled = eap_ig(gm, exs, s, steps=2, pooling="positions")
    torch.testing.assert_close(pooled.nodes.double(), want, rtol=1e-5, atol=1e-6)
    assert pooled.meta["pooling"] == "positions"
    mean = eap_ig(gm, exs, s, steps=2)
    assert not torch.allclose(mean.nodes, pooled.nodes)
    torch.testing.assert_close(mean.per_dataset["absent/steered"]["nodes"],
                               pooled.per_dataset["absent/steered"]["nodes"])
