"""Activations, DIM candidates and the paper's DIM selection (spec §3.1), on tiny models."""

from __future__ import annotations

import json
import math

import pytest
import torch

from steerscope.errors import SteerscopeError
from steerscope.evaluate.refusal import refusal_scores
from steerscope.models.archs import validate_model
from steerscope.models.chat import format_prompt, post_instruction_tokens
from steerscope.models.tiny import tiny_model, tiny_tokenizer
from steerscope.runtime import Edit, Runtime, ablate_direction, steer
from steerscope.vectors import (
    DimResult,
    SteeringVector,
    candidate_directions,
    collect_activations,
    discard_reason,
    filter_by_refusal_score,
    mean_activations,
    next_token_kl,
    select_candidate,
    select_dim,
    selection_score,
)

HARMFUL = ["How do I build a bomb?", "Tell me how to steal a car.", "Write malware code.",
           "How to hack a bank?", "Make a poison"]
HARMLESS = ["How do I bake bread?", "Tell me a joke.", "Write a poem.", "What is 2+2?",
            "Name a color"]
# A chat template with a 2-token post-instruction suffix ("</s>" and ">"): keeps the full
# (layer x position) candidate grid small enough for fast tests.
SHORT_TEMPLATE = (
    "{% for m in messages %}{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}>{% endif %}"
)
# With the seed-0 tiny Llama these refusal ids put refusal scores on both sides of 0.
STRADDLE_IDS = list(range(120))


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg
    return msg


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def short_tok():
    t = tiny_tokenizer()
    t.chat_template = SHORT_TEMPLATE
    return t


@pytest.fixture(scope="module")
def llama5():
    return tiny_model("llama", n_layers=5)


def _fmt(tok, texts):
    return [format_prompt(tok, t) for t in texts]


def _brute_mean(model, tok, prompts, layers, positions):
    """Each prompt alone, hidden_states[l] (residual entering block l) at each position."""
    out = torch.zeros(len(layers), len(positions), model.config.hidden_size,
                      dtype=torch.float64)
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([tok(p, add_special_tokens=False)["input_ids"]])
            hs = model(input_ids=ids, output_hidden_states=True).hidden_states
            for j, layer in enumerate(layers):
                for k, pos in enumerate(positions):
                    out[j, k] += hs[layer][0, ids.shape[1] + pos].double()
    return out / len(prompts)


# ---------------------------------------------------------------------------------------
# activations
# ---------------------------------------------------------------------------------------
@pytest.mark.acceptance
def test_mean_activations_equal_brute_force(tiny, tok):
    prompts = _fmt(tok, HARMFUL)  # different lengths: left padding in every batch
    layers, positions = [0, 3, 1], [-1, -14, -2]  # unsorted on purpose
    got = mean_activations(tiny, tok, prompts, layers=layers, positions=positions,
                           batch_size=2, progress=False)
    assert got.shape == (3, 3, 64) and got.dtype == torch.float64
    ref = _brute_mean(tiny, tok, prompts, layers, positions)
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-5)
    per = collect_activations(tiny, tok, prompts, layers=layers, positions=positions,
                              batch_size=3, progress=False)
    assert per.shape == (len(prompts), 3, 3, 64) and per.dtype == torch.float32
    torch.testing.assert_close(per.double().mean(0), got, atol=1e-6, rtol=1e-6)


def test_mean_activations_bad_input(tok):
    model = tiny_model("llama")
    prompts = _fmt(tok, HARMFUL[:2])
    cases = [
        dict(formatted_prompts=[], layers=[0], positions=[-1]),
        dict(formatted_prompts=prompts, layers=[9], positions=[-1]),
        dict(formatted_prompts=prompts, layers=[0], positions=[0]),
        dict(formatted_prompts=prompts, layers=[0], positions=[-1, -1]),
        dict(formatted_prompts=prompts, layers=[0], positions=[-500]),
        dict(formatted_prompts="one string", layers=[0], positions=[-1]),
    ]
    for kw in cases:
        with pytest.raises(SteerscopeError) as e:
            mean_activations(model, tok, **kw)
        _one_line(e)


@pytest.mark.acceptance
def test_candidate_directions_equal_brute_force(tok):
    model = tiny_model("gemma2", n_layers=3)
    harmful, harmless = _fmt(tok, HARMFUL), _fmt(tok, HARMLESS)
    k = len(post_instruction_tokens(tok))
    got = candidate_directions(model, tok, harmful, harmless, batch_size=2, progress=False)
    assert got.shape == (3, k, 64) and got.dtype == torch.float64
    positions = list(range(-k, 0))
    ref = (_brute_mean(model, tok, harmful, [0, 1, 2], positions)
           - _brute_mean(model, tok, harmless, [0, 1, 2], positions))
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------
# selection on a constructed table
# ---------------------------------------------------------------------------------------
def _row(layer, bypass, induce, kl, position=-1):
    return {"layer": layer, "position": position, "bypass": bypass, "induce": induce, "kl": kl}


def test_select_candidate_picks_best_and_applies_each_filter():
    L = 10  # layer rule: layer >= 8 is discarded
    rows = [
        _row(0, bypass=-1.0, induce=1.0, kl=0.01),  # 0: survivor, score σ(1)-σ(-1) = 0.462
        _row(2, bypass=-3.0, induce=2.0, kl=0.05),  # 1: survivor, the best: 0.833
        _row(3, bypass=-9.0, induce=9.0, kl=0.1),  # 2: KL >= 0.1 (boundary)
        _row(4, bypass=-9.0, induce=0.0, kl=0.0),  # 3: induce <= 0 (boundary)
        _row(8, bypass=-9.0, induce=9.0, kl=0.0),  # 4: layer >= 0.8 L (boundary)
        _row(5, bypass=math.nan, induce=9.0, kl=0.0),  # 5: NaN
        _row(6, bypass=-9.0, induce=9.0, kl=None),  # 6: unscored = NaN
        _row(1, bypass=-2.0, induce=1.5, kl=0.099),  # 7: survivor, 0.699
    ]
    frozen = json.dumps(rows)
    assert select_candidate(rows, n_layers=L) == 1
    assert json.dumps(rows) == frozen, "select_candidate must not modify the table"
    reasons = [discard_reason(r, n_layers=L) for r in rows]
    assert reasons == [None, None, "kl", "induce", "layer", "nan", "nan", None]
    assert selection_score(-3.0, 2.0) == pytest.approx(
        1 / (1 + math.exp(-2.0)) - 1 / (1 + math.exp(3.0)))
    # each filter, removed one at a time, lets its excluded candidate win
    assert select_candidate(rows, n_layers=L, kl_threshold=0.2) == 2
    assert select_candidate(rows, n_layers=L, max_layer_fraction=1.0) == 4
    without_best = rows[:1] + rows[2:]
    assert select_candidate(without_best, n_layers=L) == 6  # rows[7] (0.699 > 0.462)
    # ties go to the earliest row
    assert select_candidate([_row(0, -1, 1, 0), _row(1, -1, 1, 0)], n_layers=L) == 0
    # a row failing several filters lists every reason
    assert discard_reason(_row(2, -1.0, -1.0, 0.5), n_layers=L) == "kl,induce"


def test_select_candidate_no_survivor_is_one_line_error():
    rows = [_row(0, -1.0, -1.0, 0.01), _row(1, -1.0, 1.0, 0.5), _row(4, -1.0, 1.0, 0.0)]
    with pytest.raises(SteerscopeError) as e:
        select_candidate(rows, n_layers=5)
    msg = _one_line(e)
    for part in ("KL >= 0.1", "induce <= 0", "0.8*L", "kl_threshold", "max_layer_fraction"):
        assert part in msg
    with pytest.raises(SteerscopeError):
        select_candidate([], n_layers=5)


# ---------------------------------------------------------------------------------------
# KL
# ---------------------------------------------------------------------------------------
def test_next_token_kl_zero_effect_and_manual(llama5, tok):
    prompts = _fmt(tok, HARMLESS[:3])
    zero = next_token_kl(llama5, tok, prompts, [], batch_size=2)
    assert zero.shape == (3,) and zero.dtype == torch.float64
    assert torch.equal(zero, torch.zeros(3, dtype=torch.float64))
    identity = next_token_kl(llama5, tok, prompts, [Edit("resid_pre", 2, fn=lambda x, c: x)])
    assert identity.abs().max() < 1e-9
    d = torch.randn(64, generator=torch.Generator().manual_seed(0))
    ops = ablate_direction(d, range(5))
    kl = next_token_kl(llama5, tok, prompts, ops, batch_size=2)
    assert (kl > 0).all()
    # manual: each prompt alone
    for i, p in enumerate(prompts):
        ids = torch.tensor([tok(p, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            base = torch.log_softmax(llama5(input_ids=ids).logits[0, -1].double(), -1)
            with Runtime(llama5, ops):
                abl = torch.log_softmax(llama5(input_ids=ids).logits[0, -1].double(), -1)
        manual = float((base.exp() * (base - abl)).sum())
        assert kl[i].item() == pytest.approx(manual, rel=1e-4, abs=1e-7)


# ---------------------------------------------------------------------------------------
# filtering
# ---------------------------------------------------------------------------------------
def test_filter_by_refusal_score_keeps_the_right_prompts(llama5, tok):
    harmful, harmless = _fmt(tok, HARMFUL), _fmt(tok, HARMLESS)
    s_harmful = refusal_scores(llama5, tok, harmful, refusal_ids=STRADDLE_IDS)
    s_harmless = refusal_scores(llama5, tok, harmless, refusal_ids=STRADDLE_IDS)
    want_h = [p for p, s in zip(harmful, s_harmful) if s > 0]
    want_s = [p for p, s in zip(harmless, s_harmless) if s < 0]
    assert want_h and want_s and len(want_h) < len(harmful), "test needs scores around 0"
    got_h, got_s = filter_by_refusal_score(llama5, tok, harmful, harmless,
                                           refusal_ids=STRADDLE_IDS, batch_size=2)
    assert got_h == want_h and got_s == want_s
    # a random model does not refuse with the paper's refusal token: nothing harmful is left
    with pytest.raises(SteerscopeError) as e:
        filter_by_refusal_score(llama5, tok, harmful, harmless, label="train")
    msg = _one_line(e)
    assert "present train" in msg and "more present prompts" in msg and "refuses" in msg
    with pytest.raises(SteerscopeError) as e:
        filter_by_refusal_score(llama5, tok, harmful, [])
    _one_line(e)


# ---------------------------------------------------------------------------------------
# select_dim end to end
# ---------------------------------------------------------------------------------------
def _select(model, tok, **kw):
    harmful, harmless = _fmt(tok, HARMFUL), _fmt(tok, HARMLESS)
    kw = {"filter": False, "kl_threshold": math.inf, "induce_threshold": -math.inf,
          "progress": False, "batch_size": 2, "score_all": True, **kw}  # the full table
    return select_dim(model, tok, harmful[:3], harmless[:3], harmful[2:], harmless[2:],
                      model_id="tiny-llama", **kw)


def test_select_dim_end_to_end(llama5, short_tok, tmp_path):
    L, k = 5, len(post_instruction_tokens(short_tok))
    assert k == 2
    res = _select(llama5, short_tok)
    assert isinstance(res, DimResult)
    rows = res.candidates
    assert len(rows) == L * k
    assert [(r["layer"], r["position"]) for r in rows] == [
        (layer, p) for layer in range(L) for p in (-2, -1)]
    # layer rule: 4 >= 0.8 * 5 -> discarded and not scored
    for r in rows:
        if r["layer"] >= 4:
            assert r["discarded"] == "layer"
            assert r["bypass"] is None and r["induce"] is None and r["kl"] is None
        else:
            assert r["discarded"] in (None, "nan")
            assert r["bypass"] is not None and r["kl"] is not None
    # the chosen row maximises sigma(induce) - sigma(bypass) among the survivors
    survivors = [r for r in rows if r["discarded"] is None]
    assert survivors
    best = max(survivors, key=lambda r: selection_score(r["bypass"], r["induce"]))
    assert rows[res.selected] is best
    assert res.chosen["score"] == pytest.approx(selection_score(best["bypass"], best["induce"]))
    # the vector is the raw mean difference of the chosen candidate
    v = res.vector
    assert isinstance(v, SteeringVector) and v.method == "dim" and v.model_id == "tiny-llama"
    assert (v.layer, v.position) == (best["layer"], best["position"])
    j, p = res.layers.index(v.layer), res.positions.index(v.position)
    assert torch.equal(v.vector, res.directions[j, p].float())
    assert v.norm == pytest.approx(best["norm"], rel=1e-6)
    assert v.hyperparameters["max_layer_fraction"] == 0.8
    assert v.hyperparameters["kl_threshold"] == math.inf
    assert "sigmoid(induce) - sigmoid(bypass)" in v.hyperparameters["selection"]
    assert v.metadata["bypass"] == best["bypass"] and v.metadata["kl"] == best["kl"]
    assert v.metadata["n_present_train"] == 3 and v.metadata["n_absent_val"] == 3
    assert v.metadata["n_candidates"] == L * k
    # bypass / induce of the chosen row are what steering gives
    harmful_val = _fmt(short_tok, HARMFUL)[2:]
    with Runtime(llama5, [steer(res.directions[j, p], v.layer, -1.0)]):
        bypass = refusal_scores(llama5, short_tok, harmful_val).mean().item()
    assert bypass == pytest.approx(best["bypass"], rel=1e-6)
    # the vector survives its own file format
    assert torch.equal(SteeringVector.load(v.save(tmp_path / "dim.safetensors")).vector,
                       v.vector)
    # the candidate table is written atomically as JSON
    out = res.save_candidates(tmp_path / "cands" / "dim_candidates.json")
    assert json.loads(out.read_text()) == json.loads(json.dumps(rows).replace("NaN", "null"))
    assert [f.name for f in out.parent.iterdir()] == ["dim_candidates.json"]


def test_select_dim_default_positions_and_layer_zero(llama5, tok):
    # default template: k = 14 post-instruction tokens; restrict to two layers to stay fast
    k = len(post_instruction_tokens(tok))
    res = _select(llama5, tok, layers=[0, 2])
    assert len(res.candidates) == 2 * k
    assert res.positions == list(range(-k, 0))
    # layer 0 = token embeddings: the template tokens are identical in every prompt, so every
    # layer-0 candidate is the zero vector, its ablation is undefined and it is discarded
    zero = [r for r in res.candidates if r["layer"] == 0]
    assert all(r["norm"] == 0 and r["discarded"] == "nan" for r in zero)
    assert res.vector.layer == 2


def test_select_dim_with_filter_and_default_thresholds(llama5, short_tok):
    # the straddling refusal ids let the filter keep some prompts of each kind
    res = _select(llama5, short_tok, filter=True, refusal_ids=STRADDLE_IDS)
    md = res.vector.metadata
    assert md["n_prompts_before_filter"]["present_train"] == 3
    assert 1 <= md["n_present_train"] <= 3 and 1 <= md["n_absent_val"] <= 3
    assert res.vector.hyperparameters["filter"] is True
    # the paper's thresholds on a random model: either a survivor or a one-line error
    try:
        res = _select(llama5, short_tok, kl_threshold=0.1, induce_threshold=0.0,
                      refusal_ids=STRADDLE_IDS)
    except SteerscopeError as e:
        assert "\n" not in str(e) and "kl_threshold" in str(e)
    else:
        assert res.chosen["kl"] < 0.1 and res.chosen["induce"] > 0


def test_select_dim_bad_input(llama5, short_tok):
    p = _fmt(short_tok, HARMFUL[:2])
    for i in range(4):
        sets = [p, p, p, p]
        sets[i] = []
        with pytest.raises(SteerscopeError) as e:
            select_dim(llama5, short_tok, *sets, filter=False, progress=False)
        name = ["present_train", "absent_train", "present_val", "absent_val"][i]
        assert name in _one_line(e)
    # filtering empties a set: the message names it and suggests fixes
    with pytest.raises(SteerscopeError) as e:
        select_dim(llama5, short_tok, p, p, p, p, progress=False)
    msg = _one_line(e)
    assert "present train" in msg and "refuses" in msg and "filter=False" in msg
    with pytest.raises(SteerscopeError) as e:
        _select(llama5, short_tok, layers=[7])
    _one_line(e)
    with pytest.raises(SteerscopeError) as e:
        _select(llama5, short_tok, max_layer_fraction=0.0)
    _one_line(e)


def test_dim_vector_fits_only_its_model(llama5, short_tok):
    res = _select(llama5, short_tok, layers=[1], positions=[-1])
    res.vector.check_fits(validate_model(llama5))
    other = validate_model(tiny_model("llama", n_layers=1))
    with pytest.raises(SteerscopeError) as e:
        res.vector.check_fits(other)
    _one_line(e)


def test_lazy_scoring_selects_the_same_candidate(llama5, short_tok):
    """score_all=False stops scoring a candidate at its first failed filter: with an induce
    threshold that discards about half the rows, the selection equals the full table's."""
    full = _select(llama5, short_tok)
    induces = sorted(r["induce"] for r in full.candidates if r["induce"] is not None
                     and not math.isnan(r["induce"]))
    threshold = induces[len(induces) // 2]
    expected = select_candidate(full.candidates, n_layers=5, kl_threshold=math.inf,
                                induce_threshold=threshold)
    lazy = _select(llama5, short_tok, induce_threshold=threshold, score_all=False)
    assert lazy.candidates[lazy.selected]["layer"] == full.candidates[expected]["layer"]
    assert lazy.candidates[lazy.selected]["position"] == full.candidates[expected]["position"]
    assert lazy.chosen["bypass"] == pytest.approx(full.candidates[expected]["bypass"])
    skipped = [r for r in lazy.candidates if r["discarded"] == "induce"]
    assert skipped and all(r["bypass"] is None and r["kl"] is None for r in skipped)


def test_relax_kl_doubles_the_threshold_until_a_candidate_survives(llama5, short_tok):
    """relax_kl=True: with a KL threshold below every candidate's KL, the chosen row is the one
    the full table gives at the smallest doubled threshold some row passes; it is recorded."""
    full = _select(llama5, short_tok)
    kls = [r["kl"] for r in full.candidates if r["kl"] is not None and not math.isnan(r["kl"])]
    requested = min(kls) / 5  # 2**3 * requested > min(kl) >= 2**2 * requested
    with pytest.raises(SteerscopeError) as e:
        _select(llama5, short_tok, kl_threshold=requested, score_all=False)
    assert "relax_kl" in _one_line(e)
    with pytest.warns(UserWarning, match="no DIM candidate passed KL"):
        relaxed = _select(llama5, short_tok, kl_threshold=requested, score_all=False,
                          relax_kl=True)
    used = requested * 8
    hp = relaxed.vector.hyperparameters
    assert hp["kl_threshold"] == pytest.approx(used) and hp["kl_threshold_requested"] == requested
    expected = full.candidates[select_candidate(full.candidates, n_layers=5, kl_threshold=used,
                                                induce_threshold=-math.inf)]
    assert (relaxed.chosen["layer"], relaxed.chosen["position"]) == (
        expected["layer"], expected["position"])
    assert relaxed.chosen["bypass"] == pytest.approx(expected["bypass"])
    assert relaxed.chosen["discarded"] is None and relaxed.chosen["kl"] < used
    assert all(r["discarded"] is not None for r in relaxed.candidates
               if r["kl"] is not None and r["kl"] >= used)
    # a strict selection that succeeds is untouched by relax_kl
    same = _select(llama5, short_tok, kl_threshold=math.inf, relax_kl=True)
    assert same.vector.hyperparameters["kl_threshold"] == math.inf
    assert same.selected == full.selected


# ---------------------------------------------------------------------------------------
# the layer rule's two conventions (issue 12.9)
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_layers,first_cut_int,first_cut_real", [
    (26, 20, 21),  # Gemma-2-2B: 0.8 * 26 = 20.8
    (28, 22, 23),  # Llama-3.2-3B: 0.8 * 28 = 22.4
    (30, 24, 24),  # SmolLM2-135M: 0.8 * 30 = 24, both rules agree
])
def test_layer_cutoff_int_is_the_released_rule(n_layers, first_cut_int, first_cut_real):
    # one row per layer, the deeper the better: the best survivor is the last kept layer
    rows = [_row(layer, bypass=-0.1 * layer, induce=0.1 * layer + 0.1, kl=0.0)
            for layer in range(n_layers)]
    assert first_cut_int == int(n_layers * (1.0 - 0.2))  # the released code's expression
    cut = {"int": first_cut_int, "real": first_cut_real}
    for rule in ("int", "real"):
        reasons = [discard_reason(r, n_layers=n_layers, layer_cutoff=rule) for r in rows]
        assert reasons == [None] * cut[rule] + ["layer"] * (n_layers - cut[rule])
        assert select_candidate(rows, n_layers=n_layers, layer_cutoff=rule) == cut[rule] - 1
    # the default is the released rule
    assert select_candidate(rows, n_layers=n_layers) == first_cut_int - 1
    with pytest.raises(SteerscopeError, match="unknown layer cutoff 'round'"):
        select_candidate(rows, n_layers=n_layers, layer_cutoff="round")


def test_select_dim_never_selects_a_filtered_layer(short_tok):
    L = 4  # int(0.8 * 4) = 3: layer 3 is filtered by the released rule, kept by the real one
    model = tiny_model("llama", n_layers=L)
    res = _select(model, short_tok)  # default: the released rule
    assert res.vector.hyperparameters["layer_cutoff"] == "int"
    for r in res.candidates:
        filtered = r["layer"] >= int(0.8 * L)
        assert (r["discarded"] == "layer") == filtered
        if filtered:  # never scored, never chosen
            assert r["bypass"] is None and r["induce"] is None and r["kl"] is None
    assert res.vector.layer < 3
    # only the filtered layer offered: no survivor under the released rule ...
    with pytest.raises(SteerscopeError) as e:
        _select(model, short_tok, layers=[3])
    assert "layer >= int(0.8*L)" in _one_line(e)
    # ... while the real-number rule keeps and selects it
    real = _select(model, short_tok, layers=[3], layer_cutoff="real")
    assert real.vector.layer == 3 and real.vector.hyperparameters["layer_cutoff"] == "real"
    assert all(r["discarded"] != "layer" for r in real.candidates)


def test_relaxed_kl_threshold_doubles_up_to_the_cap():
    """The smallest doubled threshold some KL-only discard passes, at most MAX_RELAXED_KL
    (6.4: 0.1 doubled 6 times); beyond it None. Rows discarded for another reason never count."""
    from steerscope.vectors.dim_selection import MAX_RELAXED_KL, relaxed_kl_threshold

    def rows(*kls, reason="kl"):
        return [{"kl": k, "discarded": reason} for k in kls]

    assert MAX_RELAXED_KL == pytest.approx(6.4)
    assert relaxed_kl_threshold(rows(0.15), 0.1) == pytest.approx(0.2)
    assert relaxed_kl_threshold(rows(4.35, 7.0), 0.1) == pytest.approx(6.4)  # demo-gemma's layer 10
    assert relaxed_kl_threshold(rows(6.5), 0.1) is None
    assert relaxed_kl_threshold(rows(0.15, reason="induce"), 0.1) is None
    assert relaxed_kl_threshold(rows(float("nan")) + rows(0.3), 0.1) == pytest.approx(0.4)


@pytest.mark.parametrize("score_all", [True, False])
def test_at_threshold_keep_keeps_a_candidate_exactly_at_the_kl_threshold(llama5, short_tok,
                                                                         score_all):
    table = _select(llama5, short_tok, layers=[1, 2]).candidates
    best = max(table, key=lambda r: r["score"])  # the candidate every filter would pick
    t = best["kl"]  # a threshold exactly at its KL
    # steerscope's rule discards it (kl >= t); the released strict rule keeps it (kl > t)
    kw = dict(layers=[1, 2], kl_threshold=t, score_all=score_all)
    kept = _select(llama5, short_tok, at_threshold="keep", **kw)
    assert (kept.chosen["layer"], kept.chosen["position"]) == (best["layer"], best["position"])
    assert kept.vector.hyperparameters["at_threshold"] == "keep"
    try:
        dropped = _select(llama5, short_tok, **kw).chosen
    except SteerscopeError:
        dropped = None  # nothing else survives
    assert dropped is None or (dropped["layer"], dropped["position"]) != (
        best["layer"], best["position"])
