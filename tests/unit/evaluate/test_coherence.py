"""Coherence measures (fluency, ce_reference, coherent rates) and the strength sweep, checked
against plain PyTorch on the HF model's own forward."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_model

from steerscope.errors import SteerscopeError
from steerscope.evaluate.alpha_sweep import (
    alpha_curve,
    check_alpha_grid,
    choose_alphas,
    curve_table,
    reference_completions,
)
from steerscope.evaluate.coherence import (
    ReferenceCE,
    check_fluency_threshold,
    coherence_of,
    completion_ce,
    per_token,
)
from steerscope.evaluate.presence import CallablePresence
from steerscope.models.tiny import tiny_tokenizer
from steerscope.vectors.vector import SteeringVector

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _plain_ce(model, tok, prompt: str, completion: str, vector=None, layer=None, alpha=0.0):
    """Summed CE of the completion's tokens: one unpadded HF forward, written separately
    (the completion's tokens: those of prompt+completion after the prompt's own tokens; the
    steering: a forward pre-hook adding alpha·v to the residual entering ``layer``)."""
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    f = tok(prompt + completion, add_special_tokens=False)["input_ids"]
    assert f[:len(p)] == p  # the character tokenizer: no merge across the boundary
    ids = torch.tensor([f])
    handle = None
    if vector is not None:
        block = model.model.layers[layer]
        handle = block.register_forward_pre_hook(
            lambda mod, args, kwargs: ((args[0] + alpha * vector,) + args[1:], kwargs)
            if args else (args, {**kwargs, "hidden_states": kwargs["hidden_states"]
                                 + alpha * vector}), with_kwargs=True)
    try:
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0].double()  # [T, V]
    finally:
        if handle is not None:
            handle.remove()
    logp = torch.log_softmax(logits[:-1], -1)  # predictions of positions 1..T-1
    targets = ids[0, 1:]
    token_ce = -logp[torch.arange(len(targets)), targets]  # [T-1]
    k = len(f) - len(p)
    return float(token_ce[-k:].sum()), k


def test_fluency_equals_plain_pytorch_ce():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    prompts = ["hello there", "a", "steering vectors are fun"]
    outs = ["general kenobi", "bc", "and useful"]
    sums, counts = completion_ce(model, tok, prompts, outs, batch_size=2)  # padded batches
    for i, (p, c) in enumerate(zip(prompts, outs)):
        ref, k = _plain_ce(model, tok, p, c)
        assert int(counts[i]) == k
        assert math.isclose(float(sums[i]), ref, rel_tol=1e-4, abs_tol=1e-4)
    assert per_token(sums, counts) == pytest.approx(float(sums.sum()) / int(counts.sum()))


def test_steered_ce_equals_plain_hook_and_zero_vector_gives_zero():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    v = torch.randn(64, generator=torch.Generator().manual_seed(3)) * 2.0
    sv = SteeringVector(v, 2, method="x")
    prompts, outs = ["hello there", "abc"], ["general kenobi", "def g"]
    sums, _ = completion_ce(model, tok, prompts, outs, interventions=[sv.intervention(1.5)])
    for i, (p, c) in enumerate(zip(prompts, outs)):
        ref, _ = _plain_ce(model, tok, p, c, vector=v, layer=2, alpha=1.5)
        assert math.isclose(float(sums[i]), ref, rel_tol=1e-4, abs_tol=1e-4)
    ref_ce = ReferenceCE(model, tok, prompts, outs)
    zero = SteeringVector(torch.zeros(64), 2, method="zero")
    assert ref_ce.delta(zero, 1.0) == 0.0
    assert ref_ce.delta(None, 1.0) == 0.0
    base = per_token(*completion_ce(model, tok, prompts, outs))
    steered = per_token(sums, completion_ce(model, tok, prompts, outs)[1])
    assert ref_ce.delta(sv, 1.5) == pytest.approx(steered - base, abs=1e-9)


def test_coherence_counts_by_hand():
    outs = ["fine text here", "I I I I I I I I I I I I I I I I I I I I I I I", "odd", ""]
    present = [True, True, False, False]
    sums = torch.tensor([3.0, 2.0, 50.0, 0.0], dtype=torch.float64)
    counts = torch.tensor([3, 20, 5, 0])
    c = coherence_of(outs, present, sums, counts, use="induce", fluency_threshold=4.5)
    # coherent: only the first (the loop is a loop, "odd" has CE 10/token, "" has no tokens)
    assert c.n_coherent == 1 and c.coherent_share == 0.25
    assert c.coherent_behaviour_rate == 1.0 and c.coherent_success == 0.25
    assert c.fluency == pytest.approx(55.0 / 28)
    r = coherence_of(outs, present, sums, counts, use="remove", fluency_threshold=4.5)
    assert r.coherent_success == 0.0  # the one coherent completion shows the behaviour


def test_sweep_curve_and_auto_choice():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    sv = SteeringVector(torch.randn(64, generator=torch.Generator().manual_seed(1)) * 3, 1,
                        method="dim")
    judge = CallablePresence(lambda t: "a" in t)
    ref = ReferenceCE(model, tok, *reference_completions(model, tok, ["tell me", "hi"],
                                                         max_new_tokens=4))
    entries, outs = alpha_curve(model, tok, {"dim": sv}, ["bad one", "bad two"],
                                ["tell me", "hi"], grid=[0.5, 1.0], judge=judge, reference=ref,
                                fluency_threshold=100.0, max_new_tokens=4, batch_size=3)
    assert [(e["method"], e["use"], e["alpha"]) for e in entries] == [
        ("none", "remove", 0.0), ("none", "induce", 0.0), ("dim", "remove", -0.5),
        ("dim", "remove", -1.0), ("dim", "induce", 0.5), ("dim", "induce", 1.0)]
    # each setting's completions are its own (the packed batches change nothing)
    from steerscope.generation import generate
    from steerscope.models.chat import format_prompt

    fmt = [format_prompt(tok, p) for p in ["bad one", "bad two"]]
    alone = generate(model, tok, fmt, interventions=[sv.intervention(-1.0)], max_new_tokens=4)
    assert outs["dim", "remove", -1.0] == alone
    e = entries[3]
    assert e["behaviour_rate"] == sum("a" in t for t in alone) / 2
    assert e["ce_reference"] == pytest.approx(ref.delta(sv, -1.0))
    chosen = choose_alphas(entries, share=0.9)
    for use in ("remove", "induce"):
        pts = [x for x in entries if x["method"] == "dim" and x["use"] == use]
        best = max(x["coherent_success"] for x in pts)
        base = next(x["coherent_success"] for x in entries
                    if x["method"] == "none" and x["use"] == use)
        pick = chosen["dim"][use]
        if best > max(0.0, base):
            assert pick["rule"] == "auto"
            ok = [x["alpha"] for x in pts if x["coherent_success"] >= 0.9 * best]
            assert pick["alpha"] == min(ok, key=abs)
        else:
            assert pick["rule"] == "fallback"
    assert "dim" in curve_table(entries, chosen)


def test_choose_alphas_rule():
    def pt(a, s):
        return {"method": "m", "use": "induce", "alpha": a, "coherent_success": s}
    got = choose_alphas([pt(0.5, 0.2), pt(1.0, 0.85), pt(2.0, 0.9)], share=0.9)
    assert got["m"]["induce"]["alpha"] == 1.0  # 0.85 >= 0.9 * 0.9
    # no better than the unsteered model: the fallback
    none = {"method": "none", "use": "induce", "alpha": 0.0, "coherent_success": 0.9}
    got = choose_alphas([none, pt(0.5, 0.2), pt(1.0, 0.9)], fallback={"induce": 2.0})
    assert got["m"]["induce"]["alpha"] == 2.0 and got["m"]["induce"]["rule"] == "fallback"
    got = choose_alphas([pt(0.5, 0.0), pt(1.0, 0.0)], fallback={"induce": 1.0})
    assert got["m"]["induce"] == {"alpha": 1.0, "coherent_success": None, "rule": "fallback",
                                  "best_coherent_success": 0.0, "share": 0.9}


@pytest.mark.parametrize("grid,msg", [([], "is empty"), ([1.0, 0.5], "not strictly increasing"),
                                      ([0.5, 0.5], "not strictly increasing"),
                                      ([float("nan")], "not a finite"), ([-1.0], "not a finite"),
                                      ([float("inf")], "not a finite")])
def test_bad_grid_is_one_line(grid, msg):
    with pytest.raises(SteerscopeError, match=msg) as err:
        check_alpha_grid(grid)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf"), "x", True])
def test_bad_fluency_threshold(value):
    with pytest.raises(SteerscopeError, match="fluency_threshold must be a positive number"):
        check_fluency_threshold(value)
