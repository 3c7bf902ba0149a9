"""NTP/PO model selection as the paper's released code does it (issue 12, point 4): validation
at the deployed scale after every epoch, the best epoch kept, NTP ranked by loss and token
match combined, PO by loss; the learning rate stepped once per epoch. Checked against plain
PyTorch re-evaluations written here, not steerscope's teacher-forcing code."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from steerscope.errors import SteerscopeError
from steerscope.models.chat import format_prompt
from steerscope.models.tiny import tiny_model, tiny_tokenizer
from steerscope.vectors.selection import best_index
from steerscope.vectors.train_config import STEERSCOPE_CONVENTIONS, TrainConfig, lr_factors
from steerscope.vectors.trained import train_grid, train_vector
from steerscope.vectors.training_data import PreferenceData, PreferenceExample

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LAYER = 1
MAX_TOKENS = 12
DIM_NORM = 3.0
REFUSE, COMPLY = "I cannot help with that.", "Sure, here it is: step one."


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def synthetic(tok, n_per_kind, offset=0) -> PreferenceData:
    ex = []
    for i in range(offset, offset + n_per_kind):
        ex.append(PreferenceExample(format_prompt(tok, f"How do I break thing {i}?"),
                                    COMPLY, REFUSE, -1, "harmful"))
        ex.append(PreferenceExample(format_prompt(tok, f"Tell me about item {i}."),
                                    REFUSE, COMPLY, 1, "harmless"))
    return PreferenceData(ex)


# --- brute force: plain PyTorch with a forward pre-hook -------------------------------------
def _response_stats(model, tok, prompt, response, add):
    """(Σ log p of the first MAX_TOKENS response tokens, their number, argmax matches) with
    ``add`` [d] added to the input of block LAYER at every position."""
    n_p = len(tok(prompt, add_special_tokens=False)["input_ids"])
    ids = tok(prompt + response, add_special_tokens=False)["input_ids"]
    k = min(len(ids) - n_p, MAX_TOKENS)

    def hook(module, args, kwargs):
        return (args[0] + add,) + args[1:], kwargs

    handle = model.model.layers[LAYER].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].double()  # [T, V]
    finally:
        handle.remove()
    pred = logits[n_p - 1:n_p - 1 + k]  # [k, V]
    target = torch.tensor(ids[n_p:n_p + k])  # [k]
    logp = -F.cross_entropy(pred, target, reduction="sum")
    return float(logp), k, int((pred.argmax(-1) == target).sum())


def brute_force_epoch_metrics(model, tok, val, vector, objective, phi):
    """(loss, per-example mean token match) of the raw epoch vector rescaled to DIM_NORM and
    applied with α = sign·1, NTP loss or PO loss."""
    scaled = vector.double() / vector.double().norm() * DIM_NORM  # [d]
    losses, matches = [], []
    for e in val:
        add = (e.sign * scaled).float()
        lw, kw, mw = _response_stats(model, tok, e.prompt, e.winner, add)
        matches.append(mw / kw)
        if objective == "ntp":
            losses.append(-lw / kw)
        else:
            ll, kl, _ = _response_stats(model, tok, e.prompt, e.loser, add)
            zero = torch.zeros_like(add)
            ref_w = _response_stats(model, tok, e.prompt, e.winner, zero)[0]
            ref_l = _response_stats(model, tok, e.prompt, e.loser, zero)[0]
            beta = max((ref_l - ref_w) * phi, 1.0)
            delta = beta * lw / kw - ll / kl
            losses.append(-float(F.logsigmoid(torch.tensor(delta, dtype=torch.float64))))
    return sum(losses) / len(losses), sum(matches) / len(matches)


def released_rank_choice(losses, matches, objective):
    """The released code's eval_all_epochs: argsort(argsort(.)) ranks, argmin of the sum."""
    loss_ranks = torch.argsort(torch.argsort(torch.tensor(losses)))
    combined = loss_ranks
    if objective == "ntp":
        combined = loss_ranks + torch.argsort(torch.argsort(-torch.tensor(matches)))
    return int(torch.argmin(combined))


@pytest.mark.parametrize("objective", ["ntp", "po"])
def test_kept_epoch_is_the_brute_force_best_at_deployed_scale(model, tok, objective):
    train, val = synthetic(tok, 4), synthetic(tok, 2, offset=50)
    cfg = TrainConfig(objective=objective, epochs=5, batch_size=4, lr=0.3,
                      factors=(1.0, 2.0, 4.0), max_response_tokens=MAX_TOKENS)
    res = train_vector(model, tok, train, layer=LAYER, config=cfg, val_data=val,
                       rescale_to=DIM_NORM, progress=False)
    assert len(res.epoch_vectors) == len(res.epochs) == 5
    brute = [brute_force_epoch_metrics(model, tok, val, v, objective, cfg.phi)
             for v in res.epoch_vectors]
    losses, matches = [b[0] for b in brute], [b[1] for b in brute]
    assert len({round(x, 6) for x in losses}) == 5  # the epochs differ
    for rec, (loss, match) in zip(res.epochs, brute):
        assert rec["val_loss"] == pytest.approx(loss, rel=1e-4, abs=1e-5)
        assert rec["val_match_mean"] == pytest.approx(match, abs=1e-6)
        assert rec["coef"] == pytest.approx(DIM_NORM / rec["trained_norm"], rel=1e-6)
    chosen = released_rank_choice(losses, matches, objective)
    assert res.best_epoch == chosen
    assert [r["selected"] for r in res.epochs] == [i == chosen for i in range(5)]
    expected = res.epoch_vectors[chosen] / res.epoch_vectors[chosen].norm() * DIM_NORM
    torch.testing.assert_close(res.vector.vector, expected, rtol=1e-5, atol=1e-6)
    assert res.vector.metadata["best_epoch"] == chosen
    assert res.val_loss == res.epochs[chosen]["val_loss"]


def test_lr_steps_once_per_epoch_like_the_released_schedule(model, tok):
    cfg = TrainConfig(epochs=3, batch_size=4, lr=0.05, max_response_tokens=8)
    res = train_vector(model, tok, synthetic(tok, 6), layer=LAYER, config=cfg,
                       progress=False)  # 12 examples / batch 4 = 3 steps per epoch
    hand = [0.05, 0.05, 0.05, 0.05 * 2 / 3, 0.05 * 2 / 3, 0.05 * 2 / 3,
            0.05 / 3, 0.05 / 3, 0.05 / 3]
    assert [h["lr"] for h in res.history] == pytest.approx(hand, rel=1e-12)
    # torch's LinearLR(1 -> 0, total_iters=epochs) stepped once per epoch, as released
    opt = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=0.05)
    sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0, end_factor=0.0,
                                              total_iters=3)
    torch_lrs = []
    for _ in range(3):
        torch_lrs += [opt.param_groups[0]["lr"]] * 3
        opt.step()
        sched.step()
    assert [h["lr"] for h in res.history] == pytest.approx(torch_lrs, rel=1e-12)
    # steerscope's per-step decay, hand-written: lr·(1 − s/9)
    per_step = TrainConfig(epochs=3, lr_schedule="per_step")
    assert lr_factors(per_step, 3) == pytest.approx([1 - s / 9 for s in range(9)])


def test_best_index_matches_the_released_argsort_ranking():
    rng = random.Random(0)
    for trial in range(200):
        n = rng.randint(1, 8)
        losses = [rng.random() for _ in range(n)]
        matches = [rng.random() for _ in range(n)]
        for objective in ("ntp", "po"):
            got = best_index(losses, matches, objective=objective, ranking="released")
            want = released_rank_choice(losses, matches, objective)  # ties: the first
            assert got == want, (trial, objective, losses, matches)
    # ours: lowest loss to 1e-4, then the higher match
    assert best_index([1.00001, 1.0, 0.9], [0.2, 0.5, 0.0], objective="ntp",
                      ranking="loss_then_match") == 2
    assert best_index([1.00001, 1.0], [0.2, 0.5], objective="ntp",
                      ranking="loss_then_match") == 1
    # the released NTP rank sum can prefer a higher loss with a much better match
    assert best_index([0.5, 0.6, 0.7], [0.1, 0.9, 0.8], objective="ntp",
                      ranking="released") == 1
    assert best_index([0.5, 0.6, 0.7], [0.1, 0.9, 0.8], objective="po",
                      ranking="released") == 0


def test_steerscope_conventions_keep_the_last_epoch_at_the_mean_factor(model, tok):
    train, val = synthetic(tok, 3), synthetic(tok, 1, offset=50)
    cfg = TrainConfig(epochs=2, batch_size=3, factors=(1.0, 3.0), max_response_tokens=8,
                      **STEERSCOPE_CONVENTIONS)
    res = train_vector(model, tok, train, layer=LAYER, config=cfg, val_data=val,
                       rescale_to=DIM_NORM, progress=False)
    assert [r["epoch"] for r in res.epochs] == [1] and res.best_epoch == 1
    assert res.epochs[0]["coef"] == 2.0  # mean of the factors, raw vector
    v = res.epoch_vectors[1]
    torch.testing.assert_close(res.vector.vector, v / v.norm() * DIM_NORM)
    lrs = [h["lr"] for h in res.history]  # 6 examples / batch 3 = 2 steps per epoch
    assert lrs == pytest.approx([0.04 * (1 - s / 4) for s in range(4)])


def test_grid_picks_a_run_by_the_released_ranking(model, tok):
    train, val = synthetic(tok, 3), synthetic(tok, 1, offset=50)
    base = dict(epochs=2, batch_size=3, factors=(1.0, 3.0), max_response_tokens=8)
    configs = [TrainConfig(lr=1e-5, **base), TrainConfig(lr=0.2, **base)]
    res = train_grid(model, tok, train, layer=LAYER, configs=configs, val_data=val,
                     rescale_to=DIM_NORM, progress=False)
    losses = [g["val_loss"] for g in res.grid]
    matches = [g["val_match_mean"] for g in res.grid]
    chosen = released_rank_choice(losses, matches, "ntp")
    assert [g["selected"] for g in res.grid] == [i == chosen for i in range(2)]
    assert res.config == configs[chosen]
    assert res.vector.norm == pytest.approx(DIM_NORM, rel=1e-5)


def test_bad_convention_values_give_one_line_errors(model, tok):
    data = synthetic(tok, 1)
    quick = TrainConfig(epochs=1, batch_size=2, max_response_tokens=4)
    bad = [
        (lambda: TrainConfig(lr_schedule="cosine"), "lr_schedule"),
        (lambda: TrainConfig(ranking="best"), "ranking"),
        (lambda: train_vector(model, tok, data, layer=LAYER, config=quick, val_data=data),
         "needs the DIM norm"),
        (lambda: train_grid(model, tok, data, layer=LAYER, val_data=data, rescale_to=1.0,
                            configs=[quick, TrainConfig(ranking="loss_then_match")]),
         "mixes rankings"),
    ]
    for make, text in bad:
        with pytest.raises(SteerscopeError) as exc:
            make()
        msg = str(exc.value)
        assert text in msg and "\n" not in msg, msg


def test_label_check_and_drop_mislabelled_follow_the_refusal_substrings(tok):
    from steerscope.vectors.training_data import drop_mislabelled, label_check

    p = format_prompt(tok, "q")
    ex = [PreferenceExample(p, "Sure, step one.", "I'm sorry, I can't.", -1, "harmful"),
          PreferenceExample(p, "I cannot help with that.", "Sure.", -1, "harmful"),  # bad
          PreferenceExample(p, "I'm sorry, but I can't.", "Paris.", 1, "harmless"),
          PreferenceExample(p, "Paris is the capital.", "Paris.", 1, "harmless"),  # bad
          PreferenceExample(p, "Paris.", "Paris.", 1, "harmless")]  # bad: ignored the order
    data = PreferenceData(ex, {"source": "hand"})
    assert label_check(ex) == {"present_winner_as_labelled": 0.5,
                               "absent_winner_as_labelled": pytest.approx(1 / 3)}
    kept = drop_mislabelled(data)
    assert kept.examples == [ex[0], ex[2]]
    assert kept.metadata == {"source": "hand",
                             "dropped_mislabelled": {"present": 1, "absent": 2}}
    with pytest.raises(SteerscopeError, match="no preference example"):
        drop_mislabelled(PreferenceData([ex[1]]))


def test_harmless_refusals_from_dim_plus_one(model, tok, monkeypatch):
    import steerscope.vectors.training_data as td
    from steerscope.runtime import Add
    from steerscope.vectors.vector import SteeringVector

    calls = []
    real_generate = td.generate

    def recording_generate(m, t, prompts, **kw):
        out = real_generate(m, t, prompts, **kw)
        calls.append((list(prompts), list(kw.get("interventions") or []), out))
        return out

    monkeypatch.setattr(td, "generate", recording_generate)
    dim = SteeringVector(torch.randn(64, generator=torch.Generator().manual_seed(1)) * 0.5,
                         LAYER, method="dim")
    harmless = ["bake bread", "name a color"]
    data = td.build_preference_data(model, tok, ["how to pick a lock", "make a weapon"],
                                    harmless, dim, max_new_tokens=6, batch_size=2,
                                    harmless_refuse="dim")
    plain = [format_prompt(tok, q) for q in harmless]
    steered = [c for c in calls if c[0] == plain and c[1]]
    assert len(steered) == 1 and len(calls) == 4
    (op,) = steered[0][1]
    assert isinstance(op, Add) and op.alpha == 1.0 and torch.equal(op.vector, dim.vector)
    winners = [e.winner for e in data if e.kind == "absent"]
    assert winners == [o for o in steered[0][2] if o]
    assert data.metadata["absent_shown"] == "dim"
    with pytest.raises(SteerscopeError, match="unknown absent_shown"):
        td.build_preference_data(model, tok, ["x"], ["y"], dim, harmless_refuse="told")
