"""Steering value vectors: the OV decomposition against the model's real attention output."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import left_padded

from steerscope.errors import SteerscopeError
from steerscope.mechanisms.freeze import NormScaleRecorder, freeze_interventions
from steerscope.mechanisms.svv import (
    decompose_attention,
    logit_lens,
    steering_value_vectors,
    svv_report,
)
from steerscope.models.archs import validate_model
from steerscope.models.tiny import tiny_model, tiny_tokenizer
from steerscope.runtime import Capture, Runtime, steer

LAYER = 1
ALPHA = -1.5


def _vector() -> torch.Tensor:
    return torch.randn(64, generator=torch.Generator().manual_seed(2))


def _run(model, arch, ops, layers, points):
    """One teacher-forced pass of a left-padded batch; captures {point: {layer: value}}."""
    ids, mask, _ = left_padded(seed=4)
    caps = {p: {lv: Capture(p, lv) for lv in layers} for p in points}
    all_ops = list(ops) + [c for d in caps.values() for c in d.values()]
    with Runtime(model, all_ops, arch=arch), torch.no_grad():
        model(input_ids=ids, attention_mask=mask,
              position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=False)
    return {p: {lv: c.value for lv, c in d.items()} for p, d in caps.items()}, mask.bool()


@pytest.mark.acceptance
def test_svv_matches_brute_force(tiny):
    """svv^h = (s ⊙ γ) W_V^h W_O^h, computed head by head with the real modules."""
    arch = validate_model(tiny)
    s = _vector()
    svv = steering_value_vectors(arch, s, LAYER)
    norm = arch.component(LAYER, "attn_norm")
    v = arch.component(LAYER, "v_proj")
    o = arch.component(LAYER, "o_proj")
    with torch.no_grad():
        vs = v(s * arch.norm_weight(norm)) - (v.bias if v.bias is not None else 0)  # [G*dh]
        for h in range(arch.n_heads):
            g = arch.kv_head_of(h)
            z = torch.zeros(arch.n_heads * arch.d_head)
            z[h * arch.d_head:(h + 1) * arch.d_head] = vs[g * arch.d_head:(g + 1) * arch.d_head]
            expect = o.weight @ z
            torch.testing.assert_close(svv[h], expect, atol=1e-5, rtol=1e-5)


@pytest.mark.acceptance
def test_decomposition_equals_real_attention_output(tiny):
    """Attention(H + αS) = Σ_h [A D_c (H ⊙ γ) W_OV + α D_c svv] at every layer >= ℓ."""
    arch = validate_model(tiny)
    s = _vector()
    layers = range(LAYER, arch.n_layers)
    # the model's own (sdpa) attention output, and A / the residual from a capture run
    real, mask = _run(tiny, arch, [steer(s, LAYER, ALPHA)], layers, ["attn_out"])
    caps, _ = _run(tiny, arch, [steer(s, LAYER, ALPHA)], layers, ["resid_pre", "pattern"])
    for lv in layers:
        dec = decompose_attention(arch, lv, caps["resid_pre"][lv], caps["pattern"][lv], s, ALPHA)
        out = real["attn_out"][lv]
        assert dec.svv_term[mask].abs().max() > 1e-2  # the steering term is not negligible
        torch.testing.assert_close(dec.total[mask], out[mask], atol=5e-5, rtol=1e-4)


@pytest.mark.acceptance
def test_svv_removal_removes_exactly_that_term(tiny):
    """Under SVV removal the attention output is the decomposition without the svv term;
    at the steering layer it differs from plain steering by exactly Σ_h α c^h svv^h."""
    arch = validate_model(tiny)
    s = _vector()
    layers = range(LAYER, arch.n_layers)
    pts = ["resid_pre", "pattern", "attn_out"]
    with NormScaleRecorder(arch, layers, "attn_norm") as rec:
        ops = freeze_interventions(arch, s, LAYER, ALPHA, "svv", recorder=rec)
        removed, mask = _run(tiny, arch, ops, layers, pts)
    steered, _ = _run(tiny, arch, [steer(s, LAYER, ALPHA)], layers, pts)
    for lv in layers:
        dec = decompose_attention(arch, lv, removed["resid_pre"][lv], removed["pattern"][lv], s,
                                  ALPHA)
        torch.testing.assert_close(removed["attn_out"][lv][mask], (dec.input_term + dec.bias)[mask],
                                   atol=5e-5, rtol=1e-4)
    dec = decompose_attention(arch, LAYER, steered["resid_pre"][LAYER],
                              steered["pattern"][LAYER], s, ALPHA)
    diff = steered["attn_out"][LAYER] - removed["attn_out"][LAYER]
    torch.testing.assert_close(diff[mask], dec.svv_term[mask], atol=5e-5, rtol=1e-4)


@pytest.mark.acceptance
def test_logit_lens_matches_model_head():
    model = tiny_model("gemma2", n_layers=2)
    arch = validate_model(model)
    x = torch.randn(3, 64)
    vals, ids = logit_lens(arch, x, top_k=5)
    with torch.no_grad():
        logits = model.lm_head(model.model.norm(x))
        cap = model.config.final_logit_softcapping
        logits = torch.tanh(logits / cap) * cap
    ref_vals, ref_ids = logits.topk(5, dim=-1)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(vals, ref_vals)


def test_report_ranking_flips_and_artifacts(tmp_path):
    model = tiny_model("qwen3", n_layers=3)
    tok = tiny_tokenizer()
    s = _vector()
    plain = svv_report(model, tok, s, 1, top_k=7)
    assert plain.ranking == "svv norm"
    assert len(plain.heads) == 2 * 4
    norms = [h["norm"] for h in plain.heads]
    assert norms == sorted(norms, reverse=True)
    assert all(len(h["tokens"]) == 7 and not h["flipped"] for h in plain.heads)

    scores = {"a1.h0": 0.5, "a2.h3": -2.0, "a2.h1": 0.1, "m1": 9.0, "a0.h2": 4.0}
    rep = svv_report(model, tok, s, 1, head_scores=scores, top_k=7, vector_name="dim")
    assert [h["head"] for h in rep.heads[:3]] == ["a2.h3", "a1.h0", "a2.h1"]
    assert rep.heads[0]["flipped"] and not rep.heads[1]["flipped"]
    assert rep.heads[3]["score"] is None
    # the flipped head reads -svv: its top token is the unflipped head's bottom token
    arch = validate_model(model)
    svv = steering_value_vectors(arch, s, 2, post_norm=True)[3]
    _, ids = logit_lens(arch, -svv[None], 1)
    assert rep.heads[0]["tokens"][0][0] == tok.decode([int(ids[0, 0])])
    assert rep.total["head"] == "SUM" and len(rep.raw["tokens"]) == 7
    text = rep.table()
    assert "a2.h3 (-)" in text and "SUM" in text and "raw vector" in text
    path = rep.save(tmp_path / "svv.json")
    assert json.loads(path.read_text())["heads"][0]["head"] == "a2.h3"
    png = rep.figure(tmp_path / "svv.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # tokens that look like mathtext ("$$", a code token) are drawn as text
    rep.heads[0]["tokens"][0] = ("$$", rep.heads[0]["tokens"][0][1])
    rep.raw["tokens"][1] = ("$x^", rep.raw["tokens"][1][1])
    assert rep.figure(tmp_path / "svv2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_bad_input():
    model = tiny_model("llama", n_layers=2)
    s = _vector()
    with pytest.raises(SteerscopeError, match="outside this model"):
        svv_report(model, None, s, 0, head_scores={"a5.h0": 1.0})
    with pytest.raises(SteerscopeError, match="no head scores"):
        svv_report(model, None, s, 1, head_scores={"a0.h0": 1.0})
    with pytest.raises(SteerscopeError, match="NaN"):
        svv_report(model, None, s, 0, head_scores={"a1.h0": float("nan")})
    with pytest.raises(SteerscopeError, match="residual width"):
        svv_report(model, None, torch.ones(3), 0)
    with pytest.raises(SteerscopeError, match="out of range"):
        svv_report(model, None, s, 2)
