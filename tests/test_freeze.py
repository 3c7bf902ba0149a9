"""Freezing ablations: lockstep KV-cached generation against the paper's full re-computation."""

from __future__ import annotations

import pytest
import torch
from conftest import left_padded

from steerscope.errors import SteerscopeError
from steerscope.generate import generate_ids
from steerscope.mechanisms import (
    frozen_generate,
    frozen_generate_ids,
    frozen_generate_reference,
)
from steerscope.models.tiny import tiny_model, tiny_tokenizer
from steerscope.runtime import steer

FROZEN = ("qk", "ov", "svv", "mlp")
LAYER = 1
N_NEW = 8


def _vector(scale: float = 1.0) -> torch.Tensor:
    return torch.randn(64, generator=torch.Generator().manual_seed(1)) * scale


@pytest.mark.parametrize("mode", FROZEN)
def test_lockstep_equals_full_recompute(tiny, mode):
    """Cached lockstep == the same batch re-run without cache == the paper's two separate
    full passes per step (token for token), and the ablation really changes the output."""
    ids, mask, _ = left_padded()
    s = _vector()
    kw = dict(max_new_tokens=N_NEW, stop_at_eos=False)
    cached = frozen_generate_ids(tiny, ids, mask, s, LAYER, 1.0, mode, **kw)
    nocache = frozen_generate_ids(tiny, ids, mask, s, LAYER, 1.0, mode, use_cache=False, **kw)
    ref = frozen_generate_reference(tiny, ids, mask, s, LAYER, 1.0, mode, **kw)
    assert cached.new_tokens.shape == (3, N_NEW)
    assert torch.equal(cached.new_tokens, nocache.new_tokens)
    assert torch.equal(cached.new_tokens, ref.new_tokens)
    torch.testing.assert_close(cached.first_logits, ref.first_logits, atol=1e-4, rtol=1e-4)
    plain = generate_ids(tiny, ids, mask, interventions=[steer(s, LAYER, 1.0)], **kw)
    assert not torch.equal(cached.new_tokens, plain.new_tokens), "ablation had no effect"


@pytest.mark.parametrize("mode", FROZEN)
def test_alpha_zero_is_plain_generation(tiny, mode):
    ids, mask, _ = left_padded(seed=3)
    kw = dict(max_new_tokens=N_NEW, stop_at_eos=False)
    plain = generate_ids(tiny, ids, mask, **kw)
    frozen = frozen_generate_ids(tiny, ids, mask, _vector(), LAYER, 0.0, mode, **kw)
    assert torch.equal(frozen.new_tokens, plain.new_tokens)


def test_qk_freeze_with_own_probabilities_is_plain_steering(tiny):
    ids, mask, _ = left_padded(seed=5)
    s = _vector()
    kw = dict(max_new_tokens=N_NEW, stop_at_eos=False)
    plain = generate_ids(tiny, ids, mask, interventions=[steer(s, LAYER, 1.0)], **kw)
    own = frozen_generate_ids(tiny, ids, mask, s, LAYER, 1.0, "qk", qk_source="steered", **kw)
    assert torch.equal(own.new_tokens, plain.new_tokens)
    none = frozen_generate_ids(tiny, ids, mask, s, LAYER, 1.0, "none", **kw)
    assert torch.equal(none.new_tokens, plain.new_tokens)


def test_later_layer_and_eos_padding():
    """Steering at the last layer; rows that hit EOS are padded identically in both loops."""
    model = tiny_model("gemma2", n_layers=3)
    ids, mask, _ = left_padded(seed=7, lengths=(5, 3))
    s = _vector(2.0)
    kw = dict(max_new_tokens=6, eos_token_id=[int(t) for t in range(3, 256, 7)])
    for mode in ("qk", "ov"):
        a = frozen_generate_ids(model, ids, mask, s, 2, -1.0, mode, **kw)
        b = frozen_generate_reference(model, ids, mask, s, 2, -1.0, mode, **kw)
        assert torch.equal(a.new_tokens, b.new_tokens)
        assert torch.equal(a.lengths, b.lengths)


def test_text_generation_is_batch_independent():
    model = tiny_model("qwen3")
    tok = tiny_tokenizer()
    prompts = ["<|user|>hello there</s><|assistant|>", "<|user|>a</s><|assistant|>",
               "<|user|>how do I bake?</s><|assistant|>"]
    s = _vector()
    big, logits = frozen_generate(model, tok, prompts, s, LAYER, 1.0, "ov", max_new_tokens=6,
                                  batch_size=3)
    one, logits1 = frozen_generate(model, tok, prompts, s, LAYER, 1.0, "ov", max_new_tokens=6,
                                   batch_size=1)
    assert big == one
    assert logits.shape == (3, 256)
    torch.testing.assert_close(logits, logits1, atol=2e-5, rtol=1e-4)


def test_bad_input():
    model = tiny_model("llama", n_layers=2)
    ids, mask, _ = left_padded()
    s = _vector()
    with pytest.raises(SteerscopeError, match="unknown freezing mode"):
        frozen_generate_ids(model, ids, mask, s, 1, 1.0, "kv")
    with pytest.raises(SteerscopeError, match="residual width"):
        frozen_generate_ids(model, ids, mask, torch.ones(63), 1, 1.0, "qk")
    with pytest.raises(SteerscopeError, match="out of range"):
        frozen_generate_ids(model, ids, mask, s, 2, 1.0, "ov")
    with pytest.raises(SteerscopeError, match="NaN"):
        frozen_generate_ids(model, ids, mask, s * float("nan"), 1, 1.0, "svv")
    with pytest.raises(SteerscopeError, match="max_new_tokens"):
        frozen_generate_ids(model, ids, mask, s, 1, 1.0, "mlp", max_new_tokens=0)
    with pytest.raises(SteerscopeError, match="qk_source"):
        frozen_generate_ids(model, ids, mask, s, 1, 1.0, "qk", qk_source="other")
