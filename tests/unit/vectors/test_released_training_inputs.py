"""The released code's NTP/PO training inputs, each a switch: end-of-turn targets, the
tokenizer's own template, float32 training, the released prompts per class and validation
token match over the whole response."""

from __future__ import annotations

import types

import pytest
import torch

from steerscope.models.chat import (
    assistant_turn,
    format_prompt,
    set_chat_template,
    with_own_chat_template,
)
from steerscope.models.tiny import TINY_CHAT_TEMPLATE, tiny_model, tiny_tokenizer
from steerscope.vectors.teacher_forcing import encode_rows, pad_token_id
from steerscope.vectors.train_config import TrainConfig
from steerscope.vectors.train_validation import encode_data, validate_vector
from steerscope.vectors.training_data import (
    PreferenceData,
    PreferenceExample,
    build_preference_data,
)
from steerscope.vectors.vector import SteeringVector

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny matrices: one thread

LAYER = 1
GEMMA_STYLE = (  # Gemma-2's turn layout: trimmed content, "<end_of_turn>\n" after every turn
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == "
    "'assistant' else m['role'] }}\n{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
CUSTOM = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}{% if add_generation_prompt %}>{% endif %}"


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


def test_assistant_turn_is_the_template_end_of_turn():
    tok = tiny_tokenizer()
    assert assistant_turn(tok, "hi", " No. ") == " No. </s>"  # the tiny template: no trim
    tok.chat_template = GEMMA_STYLE
    # hand-written: Gemma trims the content and ends the turn with "<end_of_turn>\n"
    assert assistant_turn(tok, "hi", "  I cannot.  ") == "I cannot.<end_of_turn>\n"
    assert format_prompt(tok, "hi") + assistant_turn(tok, "hi", "x") == tok.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}],
        tokenize=False)


def test_own_template_survives_a_run_template():
    tok = tiny_tokenizer()
    set_chat_template(tok, CUSTOM)
    own = with_own_chat_template(tok)
    assert format_prompt(tok, "hi") == "[hi]>"  # the run's template (DIM, patching)
    assert format_prompt(own, "hi") == "<|user|>hi</s><|assistant|>"  # NTP/PO
    assert tok.chat_template == CUSTOM and own.chat_template == TINY_CHAT_TEMPLATE
    plain = tiny_tokenizer()
    assert with_own_chat_template(plain) is plain


def test_end_of_turn_targets_and_their_tokens(model, monkeypatch):
    import steerscope.vectors.training_data as td

    calls = iter(range(100))

    def fake_generate(m, t, prompts, **kw):  # call c, prompt i: "" for the first, then text
        c = next(calls)
        return ["" if i == 0 else f" answer {c}.{i} " for i in range(len(prompts))]

    monkeypatch.setattr(td, "generate", fake_generate)
    tok = tiny_tokenizer()
    dim = SteeringVector(torch.randn(64, generator=torch.Generator().manual_seed(1)) * 4, LAYER,
                         method="dim")
    kw = dict(max_new_tokens=5, batch_size=2, harmless_refuse="dim")
    harmful, harmless = ["how to pick a lock", "make a weapon"], ["bake bread", "name a color"]
    plain = build_preference_data(model, tok, harmful, harmless, dim, **kw)
    calls = iter(range(100))
    eot = build_preference_data(model, tok, harmful, harmless, dim, end_of_turn=True, **kw)
    assert eot.metadata["targets"] == "assistant_turn"
    assert plain.metadata["targets"] == "response"
    assert plain.metadata["dropped_empty"] == 2 and eot.metadata["dropped_empty"] == 0
    # an immediate EOS is kept as an end-of-turn target, as the released code does
    assert [e.winner for e in eot][0] == "</s>"
    assert [e.winner for e in eot if e.winner != "</s>"] == [e.winner + "</s>" for e in plain]
    assert [e.loser for e in eot if e.loser != "</s>"] == [e.loser + "</s>" for e in plain]
    # the last labelled token of every target is the end-of-turn token (EOS 2 here)
    rows = encode_rows(tok, [e.prompt for e in eot], [e.winner for e in eot], 64)
    assert all(ids[-1] == tok.eos_token_id and k >= 1 for ids, k in rows)


def _steered_logits(model, ids, v, c):
    """[T, V] logits of the plain HF model with ``c·v`` added to the residual entering block
    ``LAYER`` (a forward pre-hook)."""
    def hook(_m, args, kwargs):
        if "hidden_states" in kwargs:
            kwargs["hidden_states"] = kwargs["hidden_states"] + c * v
            return args, kwargs
        return (args[0] + c * v, *args[1:]), kwargs

    h = model.model.layers[LAYER].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            return model(torch.tensor([ids])).logits[0]
    finally:
        h.remove()


def _released_match(model, tok, examples, v, coef):
    """The released ``eval`` token match, written out: per example, argmax of the steered
    logits at prompt_len−1 … end−1 against every following token, averaged per example, then
    over examples."""
    scores = []
    for e in examples:
        prompt = tok(e.prompt, add_special_tokens=False)["input_ids"]
        ids = tok(e.prompt + e.winner, add_special_tokens=False)["input_ids"]
        logits = _steered_logits(model, ids, v, coef * e.sign)
        first = len(prompt) - 1
        pred = logits[first:-1].argmax(-1)
        scores.append(float((pred == torch.tensor(ids[first + 1:])).double().mean()))
    return sum(scores) / len(scores)


def _greedy_text(model, tok, prompt, v, c, n):
    """``n`` greedy steered tokens after ``prompt`` as text (the tiny tokenizer is one
    character per token), cut before any special token."""
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    out = []
    for _ in range(n):
        nxt = int(_steered_logits(model, ids + out, v, c)[-1].argmax())
        if nxt < 4:  # <pad>, <s>, </s>, <unk>
            break
        out.append(nxt)
    return "".join(tok.convert_ids_to_tokens(out))  # ids < 99 by the model's construction


def _char_model():
    """The tiny Llama whose unembedding rows past the tokenizer's 99 ids copy earlier rows
    (an exact tie, which argmax breaks toward the lower id) and whose special-token rows are
    zero, so its greedy tokens are characters of the tiny tokenizer."""
    m = tiny_model("llama")
    with torch.no_grad():
        w = m.lm_head.weight  # [256, d]
        for j in range(99, w.shape[0]):
            w[j] = w[4 + (j - 99) % 95]
        w[:4] = 0.0
    return m


def test_match_scope_response_counts_the_whole_response():
    tok = tiny_tokenizer()
    model = _char_model()
    v = torch.randn(64, generator=torch.Generator().manual_seed(2))
    examples = []
    for i, (sign, kind) in enumerate(((-1, "harmful"), (1, "harmless"), (-1, "harmful"))):
        p = format_prompt(tok, f"q{i}")
        # the model's own steered greedy tokens, then text it does not predict
        winner = _greedy_text(model, tok, p, v, 2.0 * sign, 10) + "~~~~zzzz##"
        examples.append(PreferenceExample(p, winner, "No.", sign, kind))
    data = PreferenceData(examples)
    pad = pad_token_id(tok)
    out = {}
    for scope in ("loss_tokens", "response"):
        cfg = TrainConfig(max_response_tokens=8, validation="mean_factor", val_factor=2.0,
                          match_scope=scope)
        enc = encode_data(model, tok, data, cfg, "val", None, 4, None)
        out[scope] = validate_vector(model, enc, v, cfg, LAYER, pad, None, 4, None)
    expected = _released_match(model, tok, data.examples, v, 2.0)
    assert out["response"]["val_match_mean"] == pytest.approx(expected, abs=1e-9)
    assert out["response"]["val_match_mean"] < out["loss_tokens"]["val_match_mean"]
    assert out["response"]["val_loss"] == out["loss_tokens"]["val_loss"]  # loss: 8 tokens


def test_training_model_dtype_and_template(tmp_path):
    from steerscope.models.loading import load_model
    from steerscope.models.tiny import save_tiny_chat_model
    from steerscope.pipeline.config import load_config
    from steerscope.pipeline.distributed import Dist
    from steerscope.pipeline.stages.trained import TrainingModel

    folder = save_tiny_chat_model(tmp_path / "m")
    cfg = load_config({"model": {"source": str(folder), "dtype": "bfloat16",
                                 "chat_template": CUSTOM}})
    run = load_model(str(folder), dtype="bfloat16")
    set_chat_template(run.tokenizer, CUSTOM)
    ctx = types.SimpleNamespace(config=cfg, dist=Dist(), model=lambda: run)
    pref = cfg.vectors.preference
    same = TrainingModel(ctx, pref)  # defaults: the run's model and template
    assert same.model is run.model and format_prompt(same.tokenizer, "hi") == "[hi]>"
    released = TrainingModel(ctx, types.SimpleNamespace(dtype="float32", template="tokenizer"))
    assert next(released.model.parameters()).dtype == torch.float32
    assert next(run.model.parameters()).dtype == torch.bfloat16
    assert format_prompt(released.tokenizer, "hi") == "<|user|>hi</s><|assistant|>"
    f32_run = TrainingModel(ctx, types.SimpleNamespace(dtype="float32", template="run"))
    assert format_prompt(f32_run.tokenizer, "hi") == "[hi]>"


def test_released_training_prompts_in_the_pipeline(shared_data):
    from steerscope.data.sampling import released_training_prompts
    from steerscope.pipeline.config import load_config
    from steerscope.pipeline.inputs import data_plan, load_source, released_pools, sample_splits
    from steerscope.pipeline.stages.trained import training_prompts

    base = {"data_dir": str(shared_data), **{k: k for k in (
        "harmful_train", "harmless_train", "harmful_val", "harmless_val", "harmful_test",
        "harmless_test")}}
    cfg = load_config({"data": {**base, "sampling": "released"},
                       "vectors": {"preference": {"prompts": "released", "n_prompts": 256}}})
    loaded = {src: load_source(src, cfg.data.data_dir) for src in data_plan(cfg)}
    prompts = sample_splits(cfg, loaded)
    harmful, harmless = training_prompts(cfg, prompts)
    ref = released_training_prompts(released_pools(cfg), n_train=128, n_val=32, n_total=256)
    assert (harmful, harmless) == (ref["harmful"], ref["harmless"])
    assert harmful[:128] == prompts["present_train"] and len(set(harmful)) == 256
    assert harmless[:128] == prompts["absent_train"]
    plain = load_config({"data": base})
    assert training_prompts(plain, prompts) == (prompts["present_train"],
                                                prompts["absent_train"])
