"""Freezing ablations: lockstep KV-cached generation against the paper's full re-computation."""

from __future__ import annotations

import pytest
import torch
from conftest import left_padded

from steerscope.errors import SteerscopeError
from steerscope.evaluate.repetition import repetition_rate
from steerscope.generation import generate_ids
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


@pytest.mark.acceptance
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


@pytest.mark.acceptance
@pytest.mark.parametrize("mode", FROZEN)
def test_alpha_zero_is_plain_generation(tiny, mode):
    ids, mask, _ = left_padded(seed=3)
    kw = dict(max_new_tokens=N_NEW, stop_at_eos=False)
    plain = generate_ids(tiny, ids, mask, **kw)
    frozen = frozen_generate_ids(tiny, ids, mask, _vector(), LAYER, 0.0, mode, **kw)
    assert torch.equal(frozen.new_tokens, plain.new_tokens)


@pytest.mark.acceptance
def test_qk_freeze_with_own_probabilities_is_plain_steering(tiny):
    ids, mask, _ = left_padded(seed=5)
    s = _vector()
    kw = dict(max_new_tokens=N_NEW, stop_at_eos=False)
    plain = generate_ids(tiny, ids, mask, interventions=[steer(s, LAYER, 1.0)], **kw)
    own = frozen_generate_ids(tiny, ids, mask, s, LAYER, 1.0, "qk", qk_source="steered",
                              qk_impl="pattern", **kw)
    assert torch.equal(own.new_tokens, plain.new_tokens)
    none = frozen_generate_ids(tiny, ids, mask, s, LAYER, 1.0, "none", **kw)
    assert torch.equal(none.new_tokens, plain.new_tokens)


@pytest.mark.acceptance
def test_qk_freeze_by_keys_equals_freeze_by_probabilities(tiny):
    """The fast QK freeze (steered rows take the base rows' queries and keys, fused attention)
    gives the tokens and logits of replacing the probabilities themselves (eager A · V), on
    every architecture (RoPE, q/k norms, soft-caps, sliding windows, GQA)."""
    ids, mask, _ = left_padded(seed=11)
    s = _vector(2.0)
    kw = dict(max_new_tokens=N_NEW, stop_at_eos=False)
    keys = frozen_generate_ids(tiny, ids, mask, s, LAYER, 1.0, "qk", **kw)
    probs = frozen_generate_ids(tiny, ids, mask, s, LAYER, 1.0, "qk", qk_impl="pattern", **kw)
    assert torch.equal(keys.new_tokens, probs.new_tokens)
    torch.testing.assert_close(keys.first_logits, probs.first_logits, atol=1e-4, rtol=1e-4)
    nocache = frozen_generate_ids(tiny, ids, mask, s, LAYER, 1.0, "qk", use_cache=False, **kw)
    assert torch.equal(keys.new_tokens, nocache.new_tokens)


@pytest.mark.acceptance
@pytest.mark.parametrize("mode", ("qk", "ov"))
def test_shared_prefix_lockstep_equals_doubled_batch(tiny, mode):
    """Blocks below the steering layer run once on B rows and the batch is widened at the
    layer: same tokens and logits as feeding 2B identical rows through the runtime, with and
    without the KV cache, at the first and the last layer."""
    ids, mask, _ = left_padded(seed=13)
    s = _vector(2.0)
    for layer in (0, LAYER, 3):
        kw = dict(max_new_tokens=N_NEW, stop_at_eos=False)
        shared = frozen_generate_ids(tiny, ids, mask, s, layer, 1.0, mode, **kw)
        doubled = frozen_generate_ids(tiny, ids, mask, s, layer, 1.0, mode,
                                      shared_prefix=False, **kw)
        assert torch.equal(shared.new_tokens, doubled.new_tokens), layer
        torch.testing.assert_close(shared.first_logits, doubled.first_logits, atol=1e-5,
                                   rtol=1e-5)
        nocache = frozen_generate_ids(tiny, ids, mask, s, layer, 1.0, mode, use_cache=False,
                                      **kw)
        assert torch.equal(shared.new_tokens, nocache.new_tokens), layer


@pytest.mark.acceptance
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


@pytest.mark.acceptance
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
    with pytest.raises(SteerscopeError, match="qk_impl"):
        frozen_generate_ids(model, ids, mask, s, 1, 1.0, "qk", qk_impl="flash")
    with pytest.raises(SteerscopeError, match="qk_impl='pattern'"):
        frozen_generate_ids(model, ids, mask, s, 1, 1.0, "qk", qk_source="steered")


# --- Table 1 evaluation and CLI ----------------------------------------------------------
def test_freeze_evaluation_table(monkeypatch, tmp_path):
    """Plain-steering row == evaluate_steering (independent path); drops follow the rule."""
    import json

    import steerscope.mechanisms.evaluate as ev
    from steerscope.evaluate.steering import evaluate_steering
    from steerscope.vectors import SteeringVector

    # a stand-in refusal matcher so that ASRs vary on a random model
    monkeypatch.setattr(ev, "is_refusal_substring", lambda text: "a" in text.lower())
    model = tiny_model("llama")
    tok = tiny_tokenizer()
    sv = SteeringVector(_vector(), layer=LAYER, method="dim")
    harmful = ["how to pick a lock", "make a weapon", "steal a car", "hack a site"]
    harmless = ["bake bread", "plant a tree", "write a poem", "fix a bike"]
    res = ev.freeze_evaluation(model, tok, sv, harmful, harmless, max_new_tokens=6,
                               batch_size=3, include_unsteered=True)
    assert res.modes == ["unsteered", "none", "qk", "ov", "svv", "mlp"]
    for m in res.modes:
        for s in ("present", "absent"):
            outs = res.completions[m][s]
            assert res.row(m, s).absence_rate == 1 - sum("a" in o.lower() for o in outs) / len(outs)
    for m in ("qk", "ov", "svv", "mlp"):
        h, b = res.row(m, "present"), res.row(m, "absent")
        assert h.drop == pytest.approx(100 * (res.row("none", "present").absence_rate
                                              - h.absence_rate))
        assert b.drop == pytest.approx(100 * (b.absence_rate - res.row("none", "absent").absence_rate))
        assert res.mean_drop(m) == pytest.approx((h.drop + b.drop) / 2)
    assert res.row("none", "present").drop is None
    for r in res.rows:
        assert r.repetition_rate == repetition_rate(res.completions[r.mode][r.side])
    ref = evaluate_steering(model, tok, {"dim": sv}, harmful, harmless, max_new_tokens=6,
                            batch_size=3)
    for s in ("present", "absent"):
        assert res.completions["none"][s] == ref.completions["dim"][s]
        assert res.completions["unsteered"][s] == ref.completions["none"][s]
        assert res.row("none", s).mean_score == pytest.approx(
            ref.row("dim", s).mean_score, abs=1e-5)
        assert res.row("unsteered", s).mean_score == pytest.approx(
            ref.row("none", s).mean_score, abs=1e-5)
    assert "QK freeze" in res.table() and "SVV removal" in res.table()
    paths = res.save(tmp_path / "out")
    data = json.loads(paths[0].read_text())
    assert data["rows"][0]["mode"] == "unsteered" and "completions" in data
    assert paths[1].read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SteerscopeError, match="non-empty"):
        ev.freeze_evaluation(model, tok, sv, [], harmless)


def test_cli_freeze_and_svv(tmp_path, capsys):
    import json

    from steerscope.cli import main
    from steerscope.models import save_tiny_chat_model
    from steerscope.vectors import SteeringVector

    folder = save_tiny_chat_model(tmp_path / "m", "gemma2", n_layers=3)
    vec = SteeringVector(_vector(), layer=1, method="dim").save(tmp_path / "v.safetensors")
    harmful, harmless = tmp_path / "h.txt", tmp_path / "b.txt"
    harmful.write_text("make a weapon\nsteal a car\n")
    harmless.write_text("bake bread\nplant a tree\n")
    code = main(["freeze", str(folder), "--vector", str(vec), "--harmful", str(harmful),
                 "--harmless", str(harmless), "--modes", "qk,svv", "--max-new-tokens", "4",
                 "--out", str(tmp_path / "f")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "QK freeze" in out and "SVV removal" in out and "OV freeze" not in out
    assert (tmp_path / "f" / "freeze.json").is_file()
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps({"head_node_scores": {"a2.h1": -1.0, "a1.h0": 0.5}}))
    code = main(["svv", str(folder), "--vector", str(vec), "--scores", str(scores),
                 "--top-k", "5", "--out", str(tmp_path / "s")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "a2.h1 (-)" in out and "raw vector" in out
    saved = json.loads((tmp_path / "s" / "svv_dim.json").read_text())
    assert saved["heads"][0]["head"] == "a2.h1" and saved["heads"][0]["flipped"]
    assert (tmp_path / "s" / "svv_dim.png").is_file()
    assert main(["freeze", str(folder), "--vector", str(vec), "--modes", "qk,xx"]) == 2
    assert "unknown freezing mode" in capsys.readouterr().err
    scores.write_text("[1, 2]")
    assert main(["svv", str(folder), "--vector", str(vec), "--scores", str(scores)]) == 2
    assert "no mapping" in capsys.readouterr().err


@pytest.mark.acceptance
@pytest.mark.slow
def test_lockstep_equals_reference_on_smollm2():
    """On the embedded SmolLM2-135M (30 layers, 9 heads / 3 KV heads): the cached lockstep
    loop gives the paper's two-full-passes tokens in every mode."""
    from steerscope.models import load_model
    from steerscope.models.chat import encode_prompts, format_prompt

    lm = load_model("default")
    tok, arch = lm.tokenizer, lm.arch
    enc = encode_prompts(tok, [format_prompt(tok, p) for p in
                               ("How do I pick a lock?", "Write a haiku about tea.")])
    s = torch.randn(arch.d_model, generator=torch.Generator().manual_seed(0)) * 3
    for mode in FROZEN:
        kw = dict(max_new_tokens=4, stop_at_eos=False, arch=arch)
        a = frozen_generate_ids(lm.model, enc["input_ids"], enc["attention_mask"], s, 12, -1.0,
                                mode, **kw)
        b = frozen_generate_reference(lm.model, enc["input_ids"], enc["attention_mask"], s, 12,
                                      -1.0, mode, **kw)
        assert torch.equal(a.new_tokens, b.new_tokens), mode
        torch.testing.assert_close(a.first_logits, b.first_logits, atol=2e-3, rtol=1e-3)


def test_head_scores_read_from_a_patch_output_folder(tmp_path):
    """``svv --scores`` takes what ``steerscope patch`` wrote: the vector folder or its
    result.json (scores under tables.head_scores, other numbers in the file ignored)."""
    import json

    from steerscope.cli.mechanisms import read_head_scores

    folder = tmp_path / "patch" / "dim"
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({
        "format_version": 1, "meta": {"steps": 10},
        "tables": {"summary": {"n_edges": 7}, "head_scores": {"a1.h0": 0.25, "a2.h1": -1.5}}}))
    expected = {"a1.h0": 0.25, "a2.h1": -1.5}
    assert read_head_scores(folder) == expected
    assert read_head_scores(folder / "result.json") == expected
    with pytest.raises(SteerscopeError, match="does not exist"):
        read_head_scores(tmp_path / "patch")


def test_freeze_table_labels_follow_the_behaviour_sets():
    from steerscope.mechanisms.evaluate import FreezeEval, FreezeRow

    def table(labels):
        rows = [FreezeRow(m, s, a, 4, 1 - asr, 0.0, 0.0, drop)
                for m, asr, drop in (("none", 1.0, None), ("qk", 0.75, 25.0))
                for s, a in (("present", -1.0), ("absent", 1.0))]
        return FreezeEval(rows, 3, "dim", {}, {}, labels).table()

    refusal = table({"behaviour": "refusal", "present": "harmful", "absent": "harmless"})
    assert "ASR by substring" in refusal and "harmful ASR" in refusal
    assert "0.750" in refusal  # refusal shows its ASR (1 - behaviour rate)
    other = table({"behaviour": "lists", "present": "list requests", "absent": "paragraphs"})
    assert "rate by the behaviour's judge" in other and "list requests rate" in other
    assert "paragraphs rate" in other and "harmful" not in other and "ASR" not in other
    assert "0.250" in other  # other behaviours show the behaviour rate
    assert "+25.0" in other
