"""NTP and PO steering-vector trainers and their preference data, on a tiny random Llama."""

from __future__ import annotations

import json

import pytest
import torch

import steerscope.vectors.training_data as td
from steerscope.errors import SteerscopeError
from steerscope.models.chat import format_prompt
from steerscope.models.tiny import tiny_model, tiny_tokenizer
from steerscope.runtime import Add
from steerscope.vectors.train_config import STEERSCOPE_CONVENTIONS
from steerscope.vectors.trained import (
    TrainConfig,
    TrainResult,
    encode_teacher_forced,
    paper_grid,
    response_logprobs,
    score_responses,
    selection_key,
    train_grid,
    train_vector,
)
from steerscope.vectors.training_data import (
    REFUSE_INSTRUCTION,
    PreferenceData,
    PreferenceExample,
    build_preference_data,
)
from steerscope.vectors.vector import SteeringVector

LAYER = 1
REFUSE, COMPLY = "I cannot help.", "Sure, here it is."


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models run much faster single-threaded, above all on a busy shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def synthetic(tok, n_per_kind=6, offset=0) -> PreferenceData:
    """Harmful: sign −1, winner complies; harmless: sign +1, winner refuses."""
    ex = []
    for i in range(offset, offset + n_per_kind):
        ex.append(PreferenceExample(format_prompt(tok, f"How do I break thing {i}?"),
                                    COMPLY, REFUSE, -1, "harmful"))
        ex.append(PreferenceExample(format_prompt(tok, f"Tell me about item {i}."),
                                    REFUSE, COMPLY, 1, "harmless"))
    return PreferenceData(ex)


CFG = dict(epochs=4, batch_size=4, factors=(1.0, 2.0, 3.0), max_response_tokens=16)


@pytest.fixture(scope="module")
def trained(model, tok):
    data = synthetic(tok)
    return {obj: train_vector(model, tok, data, layer=LAYER, progress=False,
                              config=TrainConfig(objective=obj, **CFG))
            for obj in ("ntp", "po")}


# --- teacher forcing -----------------------------------------------------------------------
@pytest.mark.acceptance
def test_zero_coefficient_logprob_equals_plain_forward(model, tok):
    prompts = [format_prompt(tok, q) for q in ("Hi?", "A much longer question here?", "Why")]
    responses = ["Hello there.", "No.", "Because the sky is blue and wide"]
    max_tokens = 10
    batch = encode_teacher_forced(tok, prompts, responses, max_response_tokens=max_tokens)
    v = torch.randn(64, generator=torch.Generator().manual_seed(0)) * 5
    with torch.no_grad():
        steered0 = response_logprobs(model, batch, layer=LAYER, vector=v, coef=torch.zeros(3))
        plain = response_logprobs(model, batch)
        moved = response_logprobs(model, batch, layer=LAYER, vector=v, coef=torch.ones(3))
    for i, (p, r) in enumerate(zip(prompts, responses)):
        n_p = len(tok(p, add_special_tokens=False)["input_ids"])
        ids = tok(p + r, add_special_tokens=False)["input_ids"]
        k = min(len(ids) - n_p, max_tokens)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0]  # [T, V]
        logp = torch.log_softmax(logits.double(), -1)  # [T, V]
        targets = torch.tensor(ids[n_p:n_p + k])  # [k]
        expected = logp[n_p - 1:n_p - 1 + k].gather(-1, targets[:, None]).sum()
        assert int(plain.n_tokens[i]) == k
        torch.testing.assert_close(plain.logprob[i].double(), expected, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(steered0.logprob[i].double(), expected, atol=1e-4, rtol=1e-5)
        argmax = logits[n_p - 1:n_p - 1 + k].argmax(-1)
        assert int(plain.matches[i]) == int((argmax == targets).sum())
    assert (moved.logprob - plain.logprob).abs().max() > 1e-3


def test_label_mask_covers_exactly_the_first_response_tokens(tok):
    prompts = [format_prompt(tok, q) for q in ("one", "second prompt", "3")]
    responses = ["abc", "abcde", "abcdefghijkl"]
    batch = encode_teacher_forced(tok, prompts, responses, max_response_tokens=5)
    assert batch.label_mask.sum(1).tolist() == [3, 5, 5]
    assert batch.n_tokens.tolist() == [3, 5, 5]
    width = batch.input_ids.shape[1]
    for i, (p, r) in enumerate(zip(prompts, responses)):
        k = int(batch.n_tokens[i])
        p_ids = tok(p, add_special_tokens=False)["input_ids"]
        r_ids = tok(r, add_special_tokens=False)["input_ids"]
        # labelled positions: the last k of the row, holding the first k response tokens
        assert batch.label_mask[i].nonzero().flatten().tolist() == list(range(width - k, width))
        assert batch.input_ids[i, batch.label_mask[i]].tolist() == r_ids[:k]
        real = batch.attention_mask[i].bool()
        assert batch.input_ids[i, real].tolist() == p_ids + r_ids[:k]
        assert not (batch.label_mask[i] & ~real).any()


# --- training ------------------------------------------------------------------------------
@pytest.mark.parametrize("objective", ["ntp", "po"])
def test_training_loss_decreases(trained, objective):
    res = trained[objective]
    losses = res.losses
    q = len(losses) // 4
    assert len(losses) == CFG["epochs"] * 3  # 12 examples / batch 4
    assert sum(losses[-q:]) / q < sum(losses[:q]) / q
    assert [h["step"] for h in res.history] == list(range(len(losses)))
    assert res.history[-1]["lr"] < res.history[0]["lr"] == pytest.approx(0.04)
    v = res.vector
    assert v.method == objective and v.layer == LAYER and v.position is None
    assert v.hyperparameters["objective"] == objective
    assert v.metadata["loss_curve"]["steps"] == len(losses)


@pytest.mark.parametrize("objective", ["ntp", "po"])
def test_trained_vector_moves_targets_the_right_way(model, tok, trained, objective):
    data = synthetic(tok, offset=100)  # unseen prompts
    v = trained[objective].vector.vector
    f_val = TrainConfig(**CFG).validation_factor
    prompts = [e.prompt for e in data]
    signs = torch.tensor([float(e.sign) for e in data])

    def score(responses, vector):
        return score_responses(model, tok, prompts, responses, layer=LAYER, vector=vector,
                               coefs=signs * f_val, max_response_tokens=16)

    winners, losers = [e.winner for e in data], [e.loser for e in data]
    w_on, w_off = score(winners, v), score(winners, torch.zeros(64))
    l_on, l_off = score(losers, v), score(losers, torch.zeros(64))
    for sign in (-1, 1):
        rows = signs == sign
        assert (w_on.logprob[rows] > w_off.logprob[rows]).all()
        if objective == "po":
            margin_on = w_on.logprob / w_on.n_tokens - l_on.logprob / l_on.n_tokens
            margin_off = w_off.logprob / w_off.n_tokens - l_off.logprob / l_off.n_tokens
            assert (margin_on[rows] > margin_off[rows]).all()


def test_model_parameters_stay_frozen_and_unchanged(model, tok):
    before = {k: p.clone() for k, p in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    train_vector(model, tok, synthetic(tok, 2), layer=LAYER, progress=False,
                 config=TrainConfig(epochs=1, batch_size=4, max_response_tokens=8))
    assert all(torch.equal(before[k], p) for k, p in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("objective", ["ntp", "po"])
def test_training_is_deterministic_for_a_seed(model, tok, objective):
    data = synthetic(tok, 3)
    cfg = TrainConfig(objective=objective, epochs=2, batch_size=3, max_response_tokens=8)
    a = train_vector(model, tok, data, layer=LAYER, config=cfg, progress=False)
    b = train_vector(model, tok, data, layer=LAYER, config=cfg, progress=False)
    assert torch.equal(a.vector.vector, b.vector.vector)
    assert a.losses == b.losses
    c = train_vector(model, tok, data, layer=LAYER, progress=False,
                     config=TrainConfig(objective=objective, epochs=2, batch_size=3,
                                        max_response_tokens=8, seed=5))
    assert not torch.equal(a.vector.vector, c.vector.vector)


def test_rescaling_gives_the_requested_norm(model, tok, tmp_path):
    res = train_vector(model, tok, synthetic(tok, 2), layer=LAYER, rescale_to=3.5,
                       model_id="tiny-llama", progress=False,
                       config=TrainConfig(objective="po", epochs=1, batch_size=4,
                                          max_response_tokens=8))
    sv = res.vector
    assert sv.norm == pytest.approx(3.5, rel=1e-5)
    assert sv.metadata["rescaled_to"] == 3.5 and sv.metadata["trained_norm"] > 0
    assert sv.model_id == "tiny-llama"
    loaded = SteeringVector.load(sv.save(tmp_path / "po.safetensors"))
    assert torch.equal(loaded.vector, sv.vector) and loaded.method == "po"
    assert loaded.hyperparameters["factors"] == list(TrainConfig().factors)


# --- model selection -----------------------------------------------------------------------
def test_grid_selects_the_best_validation_loss(model, tok):
    train, val = synthetic(tok, 4), synthetic(tok, 2, offset=50)
    base = dict(epochs=2, batch_size=4, factors=(1.0, 2.0, 3.0), max_response_tokens=16,
                **STEERSCOPE_CONVENTIONS)  # steerscope's earlier selection, kept as an option
    configs = [TrainConfig(lr=1e-6, **base), TrainConfig(lr=0.04, **base),
               TrainConfig(lr=1e-5, seed=5, **base)]
    res = train_grid(model, tok, train, layer=LAYER, configs=configs, val_data=val,
                     rescale_to=2.0, progress=False)
    losses = [g["val_loss"] for g in res.grid]
    assert res.config == configs[1]
    assert losses[1] == min(losses) and losses[1] < losses[0] - 1e-3
    assert [g["selected"] for g in res.grid] == [False, True, False]
    assert res.val_loss == losses[1]
    assert res.vector.norm == pytest.approx(2.0, rel=1e-5)
    assert res.vector.metadata["grid"] == res.grid
    assert len(paper_grid("ntp")) == 8 and len(paper_grid("po")) == 16


def test_selection_key_is_lexicographic():
    sv = SteeringVector(torch.ones(4), 0)

    def result(loss, match):
        return TrainResult(sv, TrainConfig(), [], val_loss=loss, val_match=match)

    candidates = [result(1.00001, 0.2), result(1.0, 0.5), result(0.9, 0.0), result(None, 1.0)]
    order = sorted(range(4), key=lambda i: selection_key(candidates[i], i))
    assert order == [2, 1, 0, 3]  # lowest loss; equal loss (to 1e-4): higher match; missing last


# --- preference data -----------------------------------------------------------------------
def test_build_preference_data_pairs_and_prompts(model, tok, monkeypatch, tmp_path):
    calls = []
    real_generate = td.generate

    def recording_generate(m, t, prompts, **kw):
        out = real_generate(m, t, prompts, **kw)
        calls.append({"prompts": list(prompts), "interventions": list(kw["interventions"])
                      if kw.get("interventions") else [], "out": out})
        return out

    monkeypatch.setattr(td, "generate", recording_generate)
    dim = SteeringVector(torch.randn(64, generator=torch.Generator().manual_seed(1)) * 4, LAYER,
                         method="dim")
    harmful, harmless = ["how to pick a lock", "make a weapon"], ["bake bread", "name a color"]
    data = build_preference_data(model, tok, harmful, harmless, dim, max_new_tokens=6,
                                 batch_size=2)
    assert len(calls) == 4
    by_prompts = {}
    for c in calls:
        told = [REFUSE_INSTRUCTION in p for p in c["prompts"]]
        assert all(told) or not any(told)
        by_prompts.setdefault(("told" if all(told) else "plain", bool(c["interventions"]),
                               c["prompts"][0] in [format_prompt(tok, q) for q in harmful]), c)
    plain_harmful = [format_prompt(tok, q) for q in harmful]
    plain_harmless = [format_prompt(tok, q) for q in harmless]
    h_refuse = by_prompts[("plain", False, True)]
    h_comply = by_prompts[("plain", True, True)]
    hl_comply = by_prompts[("plain", False, False)]
    hl_refuse = by_prompts[("told", False, False)]
    assert h_refuse["prompts"] == h_comply["prompts"] == plain_harmful
    assert hl_comply["prompts"] == plain_harmless
    assert hl_refuse["prompts"] == [format_prompt(tok, q, system=REFUSE_INSTRUCTION)
                                    for q in harmless]
    (op,) = h_comply["interventions"]
    assert isinstance(op, Add) and op.alpha == -1.0 and op.scope == "all"
    assert op.layer == LAYER and torch.equal(op.vector, dim.vector)

    expected = []
    for i, q in enumerate(harmful):
        expected.append(PreferenceExample(plain_harmful[i], h_comply["out"][i],
                                          h_refuse["out"][i], -1, "harmful", q))
    for i, q in enumerate(harmless):
        expected.append(PreferenceExample(plain_harmless[i], hl_refuse["out"][i],
                                          hl_comply["out"][i], 1, "harmless", q))
    kept = [e for e in expected if e.winner and e.loser]
    assert data.examples == kept
    assert data.metadata["dropped_empty"] == len(expected) - len(kept)
    assert all(REFUSE_INSTRUCTION not in e.prompt for e in data)

    # JSON round trip and split
    path = data.save(tmp_path / "prefs.json")
    assert PreferenceData.load(path) == data
    assert json.loads(path.read_text())["format_version"] == 1


def test_split_is_seeded_and_stratified(tok):
    data = synthetic(tok, 10)
    train, val = data.split(0.2, seed=3)
    assert len(train) + len(val) == 20
    assert val.counts() == {"present": 2, "absent": 2}
    assert set(map(id, train.examples)).isdisjoint(map(id, val.examples))
    assert data.split(0.2, seed=3)[1].examples == val.examples
    assert data.split(0.2, seed=4)[1].examples != val.examples


# --- bad input -----------------------------------------------------------------------------
def test_bad_inputs_give_one_line_errors(model, tok, tmp_path):
    data = synthetic(tok, 2)
    quick = TrainConfig(epochs=1, batch_size=4, max_response_tokens=8)
    bad = [
        (lambda: train_vector(model, tok, PreferenceData([]), layer=LAYER), "no examples"),
        (lambda: train_vector(model, tok, data, layer=99, config=quick), "out of range"),
        (lambda: train_vector(model, tok, data, layer=LAYER, progress=False,
                              config=TrainConfig(lr=3e37, epochs=3, batch_size=4,
                                                 max_response_tokens=8)), "lower learning rate"),
        (lambda: train_vector(model, tok, data, layer=LAYER, config=quick, rescale_to=-1.0),
         "rescale_to"),
        (lambda: train_grid(model, tok, data, layer=LAYER, val_data=data,
                            configs=[quick, TrainConfig(objective="po")]), "mixes objectives"),
        (lambda: train_grid(model, tok, data, layer=LAYER, configs=[quick], val_data=None),
         "needs validation data"),
        (lambda: TrainConfig(objective="dpo"), "unknown training objective"),
        (lambda: TrainConfig(lr=0), "TrainConfig.lr"),
        (lambda: PreferenceExample("p", "w", "l", 0, "harmful"), "sign"),
        (lambda: PreferenceData.load(tmp_path / "missing.json"), "does not exist"),
        (lambda: data.split(1.5), "val_fraction"),
        (lambda: train_vector(model, tok, PreferenceData([PreferenceExample(
            data[0].prompt, "", "x", 1, "harmless")]), layer=LAYER, config=quick),
         "empty winner"),
        (lambda: build_preference_data(model, tok, [], ["x"], SteeringVector(torch.ones(64), 1)),
         "no present"),
        (lambda: build_preference_data(model, tok, ["x"], ["y"],
                                       SteeringVector(torch.ones(64), 9)), "out of range"),
    ]
    for make, text in bad:
        with pytest.raises(SteerscopeError) as exc:
            make()
        msg = str(exc.value)
        assert text in msg and "\n" not in msg, msg
