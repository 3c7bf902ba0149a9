"""The intervention runtime and its position contract, on tiny models of every architecture."""

from __future__ import annotations

import pytest
import torch
from conftest import left_padded

from steerscope.errors import SteerscopeError
from steerscope.generation import generate_ids, position_ids_from_mask
from steerscope.models.archs import validate_model
from steerscope.runtime import (
    Ablate,
    Add,
    Capture,
    Edit,
    Replace,
    Runtime,
    ablate_direction,
    attached_runtimes,
    steer,
)

D = 64
LAYER = 1


def _vec(seed=0, scale=4.0):
    return torch.randn(D, generator=torch.Generator().manual_seed(seed)) * scale


def _logits(model, ids, mask):
    return model(input_ids=ids, attention_mask=mask,
                 position_ids=position_ids_from_mask(mask)).logits


@pytest.mark.acceptance
def test_no_intervention_gives_exact_hf_logits(tiny):
    ids, mask, _ = left_padded()
    ref = _logits(tiny, ids, mask)
    impl = tiny.config._attn_implementation
    with Runtime(tiny, []):
        got = _logits(tiny, ids, mask)
    assert torch.equal(ref, got)
    # captures of every non-pattern point attached: still exactly the HF logits
    caps = [Capture(p, LAYER) for p in ("resid_pre", "attn_in", "attn_out", "mlp_in", "mlp_out",
                                        "q", "k", "v", "z")]
    with Runtime(tiny, caps):
        got = _logits(tiny, ids, mask)
    assert torch.equal(ref, got)
    assert tiny.config._attn_implementation == impl


@pytest.mark.acceptance
@pytest.mark.parametrize("scope", ["all", "prompt", "generated", (-1, 0, 11)])
def test_cached_generation_equals_full_recompute(tiny, scope):
    ids, mask, _ = left_padded(seed=1)
    ops = [steer(_vec(), LAYER, alpha=1.0, scope=scope)]
    cached = generate_ids(tiny, ids, mask, max_new_tokens=12, interventions=ops,
                          stop_at_eos=False)
    full = generate_ids(tiny, ids, mask, max_new_tokens=12, interventions=ops, use_cache=False,
                        stop_at_eos=False)
    assert torch.equal(cached.new_tokens, full.new_tokens)
    plain = generate_ids(tiny, ids, mask, max_new_tokens=12, stop_at_eos=False)
    assert not torch.equal(cached.new_tokens, plain.new_tokens), "steering had no effect"


@pytest.mark.acceptance
def test_left_padded_batch_equals_single_runs(tiny):
    ids, mask, seqs = left_padded(seed=2)
    ops = [steer(_vec(1), LAYER, alpha=-1.0)]
    batch = generate_ids(tiny, ids, mask, max_new_tokens=10, interventions=ops, stop_at_eos=False)
    with Runtime(tiny, ops):
        batch_logits = _logits(tiny, ids, mask)
    for i, s in enumerate(seqs):
        single = generate_ids(tiny, s[None], max_new_tokens=10, interventions=ops,
                              stop_at_eos=False)
        assert torch.equal(single.new_tokens[0], batch.new_tokens[i])
        with Runtime(tiny, ops):
            one = tiny(input_ids=s[None]).logits[0]
        torch.testing.assert_close(batch_logits[i, -len(s):], one, atol=2e-5, rtol=1e-5)


def test_attention_pattern_capture_and_override(tiny):
    ids, mask, _ = left_padded(seed=3)
    real = mask.bool()
    cap = Capture("pattern", LAYER)
    with Runtime(tiny, [cap]):
        captured_logits = _logits(tiny, ids, mask)
    pattern = cap.value  # [B, H, T, T]
    assert pattern.shape == (3, 4, ids.shape[1], ids.shape[1])
    sums = pattern.sum(-1)  # [B, H, T]
    torch.testing.assert_close(sums.permute(0, 2, 1)[real], torch.ones_like(sums.permute(0, 2, 1)[real]))
    # the eager path agrees with the model's own attention at real positions
    torch.testing.assert_close(captured_logits[real], _logits(tiny, ids, mask)[real], atol=1e-4, rtol=1e-4)
    # overriding with themselves changes nothing
    with Runtime(tiny, [Replace("pattern", LAYER, value=pattern)]):
        same = _logits(tiny, ids, mask)
    assert torch.equal(same, captured_logits)
    # overriding with uniform attention over the allowed keys changes the output
    allowed = (pattern > 0).float()
    uniform = allowed / allowed.sum(-1, keepdim=True).clamp(min=1)
    with Runtime(tiny, [Replace("pattern", LAYER, value=uniform)]):
        changed = _logits(tiny, ids, mask)
    assert (changed[real] - captured_logits[real]).abs().max() > 1e-3


@pytest.mark.acceptance
def test_pattern_capture_during_cached_generation_matches_full_pass(tiny):
    ids, mask, _ = left_padded(seed=4)
    cap = Capture("pattern", LAYER)
    gen = generate_ids(tiny, ids, mask, max_new_tokens=6, interventions=[cap], stop_at_eos=False)
    stepwise = cap.value  # [B, H, P+N-1, P+N-1] from one prefill and 5 cached steps
    seq = gen.sequences[:, :-1]
    full_mask = torch.cat([mask, torch.ones(3, 5, dtype=torch.long)], 1)
    cap2 = Capture("pattern", LAYER)
    with Runtime(tiny, [cap2]):
        _logits(tiny, seq, full_mask)
    real = full_mask.bool()
    a, b = stepwise.permute(0, 2, 1, 3)[real], cap2.value.permute(0, 2, 1, 3)[real]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.acceptance
@pytest.mark.parametrize("scope", ["all", "prompt", "generated", (-1, 0, 2)])
def test_steering_added_exactly_once_per_position_in_scope(tiny, scope):
    """Capture the steered residual during KV-cached generation, then teacher-force the same
    tokens without steering: the difference is exactly alpha*s at the positions in scope
    (prompt tokens and every generated token fed back, the first one included) and 0
    elsewhere."""
    ids, mask, _ = left_padded(seed=5)
    s, alpha, n_new = _vec(2), -1.5, 8
    cap = Capture("resid_pre", LAYER)
    gen = generate_ids(tiny, ids, mask, max_new_tokens=n_new,
                       interventions=[steer(s, LAYER, alpha, scope=scope), cap], stop_at_eos=False)
    steered = cap.value  # [B, P + N - 1, d]
    prompt_len = ids.shape[1]
    assert steered.shape == (3, prompt_len + n_new - 1, D)
    seq = gen.sequences[:, :-1]
    full_mask = torch.cat([mask, torch.ones(3, n_new - 1, dtype=torch.long)], 1)
    base = Capture("resid_pre", LAYER)
    with Runtime(tiny, [base]):
        _logits(tiny, seq, full_mask)
    diff = steered - base.value  # [B, T, d]
    pos = torch.arange(seq.shape[1])
    pad = (mask == 0).sum(1)
    if scope == "all":
        expected = torch.ones(3, seq.shape[1], dtype=torch.bool)
    elif scope == "prompt":
        expected = (pos < prompt_len).expand(3, -1)
    elif scope == "generated":
        expected = (pos >= prompt_len).expand(3, -1)
    else:
        targets = torch.stack([torch.tensor([prompt_len - 1, int(p), int(p) + 2]) for p in pad])
        expected = (pos[None, :, None] == targets[:, None, :]).any(-1)
    real = full_mask.bool()  # padding positions carry no contract (fully masked queries)
    in_scope = diff[expected & real]
    torch.testing.assert_close(in_scope, (alpha * s).expand_as(in_scope), atol=1e-4, rtol=1e-4)
    out_of_scope = diff[~expected & real]
    if len(out_of_scope):
        assert out_of_scope.abs().max() <= 1e-4


@pytest.mark.acceptance
def test_hf_generate_sees_the_same_positions(tiny):
    """The runtime also works under transformers' own generate()."""
    ids, mask, _ = left_padded(seed=6)
    ops = [steer(_vec(3), LAYER, 1.0, scope="generated")]
    ours = generate_ids(tiny, ids, mask, max_new_tokens=6, interventions=ops, stop_at_eos=False)
    with Runtime(tiny, ops):
        hf = tiny.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                           min_new_tokens=6, pad_token_id=0)
    assert torch.equal(hf[:, ids.shape[1]:], ours.new_tokens)


def test_captured_shapes_and_component_identities(tiny):
    arch = validate_model(tiny)
    ids, mask, _ = left_padded(seed=7)
    points = ["resid_pre", "attn_in", "attn_out", "mlp_in", "mlp_out", "q", "k", "v", "z"]
    caps = {p: Capture(p, LAYER) for p in points}
    nxt = Capture("resid_pre", LAYER + 1)
    final = Capture("resid_pre", arch.n_layers)
    with Runtime(tiny, [*caps.values(), nxt, final]):
        logits = _logits(tiny, ids, mask)
    B, T = ids.shape
    assert caps["q"].value.shape == (B, T, arch.n_heads, arch.d_head)
    assert caps["k"].value.shape == (B, T, arch.n_kv_heads, arch.d_head)
    assert caps["v"].value.shape == (B, T, arch.n_kv_heads, arch.d_head)
    assert caps["z"].value.shape == (B, T, arch.n_heads, arch.d_head)
    o_proj = arch.component(LAYER, "o_proj")
    torch.testing.assert_close(o_proj(caps["z"].value.reshape(B, T, -1)), caps["attn_out"].value)
    v_proj = arch.component(LAYER, "v_proj")
    torch.testing.assert_close(v_proj(caps["attn_in"].value).view(B, T, arch.n_kv_heads, -1),
                               caps["v"].value)
    # resid_pre(l+1) = resid_pre(l) + post(attn_out) + post(mlp_out)
    post_a = arch.component(LAYER, "attn_post_norm") or (lambda x: x)
    post_m = arch.component(LAYER, "mlp_post_norm") or (lambda x: x)
    rebuilt = caps["resid_pre"].value + post_a(caps["attn_out"].value) + post_m(caps["mlp_out"].value)
    torch.testing.assert_close(rebuilt, nxt.value, atol=1e-5, rtol=1e-5)
    # the final residual through the final norm and unembedding gives the logits
    out = arch.unembed(arch.final_norm(final.value))
    cap = arch.final_logit_softcap
    if cap:
        out = torch.tanh(out / cap) * cap
    torch.testing.assert_close(out, logits, atol=1e-5, rtol=1e-5)


def test_replacing_per_head_values_changes_only_that_head(tiny):
    ids, mask, _ = left_padded(seed=8)
    z = Capture("z", LAYER)
    with Runtime(tiny, [z]):
        base = _logits(tiny, ids, mask)
    with Runtime(tiny, [Replace("z", LAYER, value=z.value)]):
        same = _logits(tiny, ids, mask)
    assert torch.equal(base, same)
    zero_head = Edit("z", LAYER, heads=[2], fn=lambda x, ctx: torch.zeros_like(x))
    z2 = Capture("z", LAYER)
    with Runtime(tiny, [zero_head, z2]):
        _logits(tiny, ids, mask)
    assert z2.value[:, :, 2].abs().max() == 0
    torch.testing.assert_close(z2.value[:, :, [0, 1, 3]], z.value[:, :, [0, 1, 3]])


def test_value_replacement_reaches_the_kv_cache(tiny):
    """A replaced v is what later tokens attend to (it is edited before the cache update)."""
    ids, mask, _ = left_padded(seed=9)
    zero_v = Edit("v", LAYER, fn=lambda x, ctx: torch.zeros_like(x))
    cached = generate_ids(tiny, ids, mask, max_new_tokens=6, interventions=[zero_v], stop_at_eos=False)
    full = generate_ids(tiny, ids, mask, max_new_tokens=6, interventions=[zero_v], use_cache=False,
                        stop_at_eos=False)
    assert torch.equal(cached.new_tokens, full.new_tokens)


def test_directional_ablation_removes_the_direction(tiny):
    arch = validate_model(tiny)
    ids, mask, _ = left_padded(seed=10)
    r = _vec(4)
    ops = ablate_direction(r, range(arch.n_layers))
    caps = [Capture(p, 2) for p in ("resid_pre", "attn_out", "mlp_out")]
    with Runtime(tiny, ops + caps):
        _logits(tiny, ids, mask)
    rhat = r / r.norm()
    for c in caps:
        assert (c.value @ rhat).abs().max() < 1e-4


def test_gradients_flow_through_interventions(tiny):
    ids, mask, _ = left_padded(seed=11)
    s = _vec(5).requires_grad_(True)
    with Runtime(tiny, [steer(s, LAYER, 1.0)]):
        loss = _logits(tiny, ids, mask)[:, -1].logsumexp(-1).sum()
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_nested_runtimes_compose_and_restore(tiny):
    ids, mask, _ = left_padded(seed=12)
    impl = tiny.config._attn_implementation
    s = _vec(6)
    cap = Capture("resid_pre", LAYER)
    with Runtime(tiny, [steer(s, LAYER, 1.0)]):
        with Runtime(tiny, [cap, Capture("pattern", 2)]):
            assert len(attached_runtimes(tiny)) == 2
            _logits(tiny, ids, mask)
        assert tiny.config._attn_implementation != impl or impl.startswith("steerscope")
        _logits(tiny, ids, mask)
    assert attached_runtimes(tiny) == []
    assert tiny.config._attn_implementation == impl
    plain = Capture("resid_pre", LAYER)
    with Runtime(tiny, [plain]):
        _logits(tiny, ids, mask)
    torch.testing.assert_close(cap.value - plain.value, s.expand_as(cap.value), atol=1e-4, rtol=1e-4)


def test_runtime_detaches_after_an_exception(tiny):
    ids, mask, _ = left_padded()
    ref = _logits(tiny, ids, mask)
    with pytest.raises(RuntimeError):
        with Runtime(tiny, [steer(_vec(), LAYER, 3.0), Capture("pattern", 1)]):
            raise RuntimeError("boom")
    assert torch.equal(_logits(tiny, ids, mask), ref)


# --- bad input ---------------------------------------------------------------------------
@pytest.mark.parametrize("arch_name", ["llama"])
def test_bad_interventions_give_one_line_errors(tiny):
    bad = [
        (lambda: Runtime(tiny, [steer(_vec(), 99)]), "layer 99 is out of range"),
        (lambda: Runtime(tiny, [steer(torch.zeros(65), 1)]), "residual width is 64"),
        (lambda: Runtime(tiny, [steer(torch.full((64,), float("nan")), 1)]), "NaN"),
        (lambda: Capture("resid_mid", 1), "unknown hook point"),
        (lambda: Capture("resid_pre", 1, heads=[0]), "heads"),
        (lambda: Runtime(tiny, [Capture("z", 1, heads=[7])]), "head index 7"),
        (lambda: steer(_vec(), 1, scope="middle"), "unknown token scope"),
        (lambda: steer(_vec(), 1, scope=[]), "empty"),
        (lambda: Runtime(tiny, [Ablate("resid_pre", 1, direction=torch.zeros(64))]), "zero vector"),
    ]
    for make, text in bad:
        with pytest.raises(SteerscopeError) as exc:
            make()
        msg = str(exc.value)
        assert text in msg and "\n" not in msg, msg


@pytest.mark.parametrize("arch_name", ["llama"])
def test_wrong_replacement_shape_is_rejected(tiny):
    ids, mask, _ = left_padded()
    with pytest.raises(SteerscopeError, match="replacement for 'v'"):
        with Runtime(tiny, [Replace("v", 1, value=torch.zeros(3, ids.shape[1], 5, 16))]):
            _logits(tiny, ids, mask)


@pytest.mark.parametrize("arch_name", ["llama"])
def test_add_to_heads(tiny):
    ids, mask, _ = left_padded()
    delta = torch.ones(16)
    base, edited = Capture("q", 1), Capture("q", 1)
    with Runtime(tiny, [base]):
        _logits(tiny, ids, mask)
    with Runtime(tiny, [Add("q", 1, heads=[1], vector=delta, alpha=2.0), edited]):
        _logits(tiny, ids, mask)
    d = edited.value - base.value
    torch.testing.assert_close(d[:, :, 1], torch.full_like(d[:, :, 1], 2.0))
    assert d[:, :, [0, 2, 3]].abs().max() == 0
