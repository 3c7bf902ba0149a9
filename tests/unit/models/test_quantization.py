"""Quantized models (``load_model(..., quantization="int8")``, torchao int8 weight-only) on a
tiny random Llama: storage, the dequantized-weight accessor, and every analysis run on the
quantized model against an independent computation (a float "twin" whose linear weights are
the dequantized int8 weights, the real modules called one by one, the float model itself)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from steerscope.errors import SteerscopeError
from steerscope.mechanisms.svv import decompose_attention, logit_lens, steering_value_vectors
from steerscope.models import load_model
from steerscope.models.quantization import (
    QUANTIZATIONS,
    linear_shape,
    linear_weight,
    parameter_bytes,
    quantization_config,
)
from steerscope.models.tiny import save_tiny_chat_model, tiny_model
from steerscope.patching.forward import GraphModel
from steerscope.runtime import Capture, Edit, Runtime, steer
from steerscope.testing import random_left_padded_batch

pytest.importorskip("torchao", reason="the int8 backend (pip install 'steerscope[quant]')")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

LAYER, ALPHA = 1, -4.0
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# int8 vs float32 steered logits on the tiny model: max |Δ| <= 5% of the largest |logit|
FLOAT_TOLERANCE = 0.05
# ... and at least 0.01% of it: int8 rounding changes the logits (float32 noise is ~1e-7)
MIN_ROUNDING_GAP = 1e-4


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_chat_model(tmp_path_factory.mktemp("quant") / "tiny", "llama")


@pytest.fixture(scope="module")
def fp(folder):
    return load_model(folder)


@pytest.fixture(scope="module")
def q8(folder):
    return load_model(folder, quantization="int8")


@pytest.fixture(scope="module")
def twin(q8):
    """The float model whose every linear weight is the int8 model's dequantized weight."""
    model = tiny_model("llama")
    quantized = dict(q8.model.named_modules())
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear):
                module.weight.copy_(linear_weight(quantized[name]))
    return model


def _vector(seed: int = 2) -> torch.Tensor:
    return torch.randn(64, generator=torch.Generator().manual_seed(seed))


def _steered_logits(model, arch, vector, ids, mask):
    with Runtime(model, [steer(vector, LAYER, ALPHA)], arch=arch), torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits  # [B, T, V]


# --- loading and storage -------------------------------------------------------------------
def test_int8_weights_are_int8_and_parameters_take_at_most_0_6_of_float32(fp, q8):
    assert q8.quantization == "int8" and fp.quantization is None
    for layer in range(q8.arch.n_layers):
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            w = q8.arch.component(layer, name).weight
            assert w.qdata.dtype == torch.int8 and w.qdata.shape == w.shape
    # independent count: float32 = 4 bytes per value; int8 = 1 byte per quantized weight
    # plus a float32 scale and an int8 zero point per output row, 4 bytes for the rest
    assert parameter_bytes(fp.model) == 4 * sum(p.numel() for p in fp.model.parameters()) + \
        4 * sum(b.numel() for b in fp.model.buffers())
    expect = parameter_bytes(fp.model)
    for name, module in q8.model.named_modules():
        if name.rsplit(".", 1)[-1] in LINEARS:
            out_f, in_f = linear_shape(module)
            expect += out_f * in_f * (1 - 4) + out_f * (4 + 1)
    assert parameter_bytes(q8.model) == expect
    assert parameter_bytes(q8.model) <= 0.6 * parameter_bytes(fp.model)


def test_linear_weight_is_what_the_layer_computes(fp, q8):
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(0))
    float_v = fp.arch.component(0, "v_proj")
    assert linear_weight(float_v) is float_v.weight  # a float layer: the weight itself
    for layer in range(q8.arch.n_layers):
        for name in ("q_proj", "v_proj", "o_proj"):
            module = q8.arch.component(layer, name)
            w = linear_weight(module)  # [out, in] float32
            assert w.dtype == torch.float32 and tuple(w.shape) == linear_shape(module)
            xi = x[:, : w.shape[1]] if w.shape[1] <= 64 else torch.randn(5, w.shape[1])
            torch.testing.assert_close(module(xi), xi @ w.T, atol=1e-5, rtol=1e-5)
            # symmetric per-row int8: |W_deq - W| <= max_row |W| / 127 / 2 (+ rounding)
            ref = fp.arch.component(layer, name).weight
            bound = ref.abs().amax(1, keepdim=True) / 127 / 2 * 1.001 + 1e-7
            assert ((w - ref).abs() <= bound).all()


def test_an_int8_checkpoint_saves_and_reloads_quantized(q8, tmp_path):
    q8.model.save_pretrained(tmp_path)
    q8.tokenizer.save_pretrained(tmp_path)
    again = load_model(tmp_path)  # no quantization= : the checkpoint says torchao
    assert again.quantization == "torchao"
    for name in ("v_proj", "o_proj"):
        assert torch.equal(linear_weight(again.arch.component(LAYER, name)),
                           linear_weight(q8.arch.component(LAYER, name)))
    assert parameter_bytes(again.model) == parameter_bytes(q8.model)


# --- steering, capture, gradients ----------------------------------------------------------
def test_steered_logits_equal_the_dequantized_twin_and_stay_near_float(fp, q8, twin):
    ids, mask, _ = random_left_padded_batch(seed=3)
    s = _vector()
    got = _steered_logits(q8.model, q8.arch, s, ids, mask)
    exact = _steered_logits(twin, None, s, ids, mask)
    ref = _steered_logits(fp.model, fp.arch, s, ids, mask)
    real = mask.bool()
    torch.testing.assert_close(got[real], exact[real], atol=1e-4, rtol=1e-4)
    gap = (got[real] - ref[real]).abs().max()
    assert gap <= FLOAT_TOLERANCE * ref[real].abs().max()
    # the weights really were rounded: not the float model under another name (a skipped
    # quantization would pass both checks above, the twin then being the float model)
    assert gap >= MIN_ROUNDING_GAP * ref[real].abs().max()
    assert (got - _steered_logits(q8.model, q8.arch, 0 * s, ids, mask))[real].abs().max() > 0.5


def test_gradients_reach_the_steering_vector_through_the_int8_weights(q8, twin):
    ids, mask, _ = random_left_padded_batch(seed=5)
    grads = []
    for model in (q8.model, twin):
        v = _vector(7).requires_grad_(True)
        with Runtime(model, [steer(v, LAYER, 1.0)]):
            logp = model(input_ids=ids, attention_mask=mask).logits.log_softmax(-1)
        logp[:, -1, 17].sum().backward()
        grads.append(v.grad)
    assert grads[0].norm() > 0
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)
    assert all(p.grad is None for p in q8.model.parameters())


def test_dim_on_int8_is_the_mean_difference_of_the_int8_activations(q8, twin, fp):
    """DIM on the int8 model: its capture hook reads the quantized model's residual (the
    twin's to float rounding, not the float model's), and the vector is the difference of
    means computed here by hand from those captures."""
    from steerscope.models.chat import format_prompt
    from steerscope.models.tiny import tiny_tokenizer
    from steerscope.vectors.methods import extract_vector

    tok = tiny_tokenizer()
    pos = [format_prompt(tok, f"Tell me how to do thing {i}.") for i in range(4)]
    neg = [format_prompt(tok, f"Say hello {i} times.") for i in range(4)]
    got, other, flt = (extract_vector(m, tok, pos, neg, method="dim", layer=LAYER, batch_size=3,
                                      progress=False).vector for m in (q8.model, twin, fp.model))

    def last_resid(prompts):  # [N, d]: hidden_states[LAYER] = residual entering block LAYER
        rows = []
        for p in prompts:
            ids = tok(p, return_tensors="pt", add_special_tokens=False).input_ids
            with torch.no_grad():
                rows.append(q8.model(ids, output_hidden_states=True).hidden_states[LAYER][0, -1])
        return torch.stack(rows)

    torch.testing.assert_close(got, last_resid(pos).mean(0) - last_resid(neg).mean(0),
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got, other, atol=1e-5, rtol=1e-4)
    assert not torch.equal(got, flt)  # the int8 model's activations, not the float model's


@pytest.mark.parametrize("objective", ["ntp", "po"])
def test_training_on_int8_matches_the_dequantized_twin(q8, twin, objective):
    from steerscope.models.chat import format_prompt
    from steerscope.models.tiny import tiny_tokenizer
    from steerscope.vectors.trained import TrainConfig, train_vector
    from steerscope.vectors.training_data import PreferenceData, PreferenceExample

    tok = tiny_tokenizer()
    data = PreferenceData([PreferenceExample(format_prompt(tok, f"Question {i}?"), "Sure.",
                                             "No.", 1 if i % 2 else -1,
                                             "harmless" if i % 2 else "harmful")
                           for i in range(6)])
    cfg = TrainConfig(objective=objective, epochs=2, batch_size=3, max_response_tokens=6)
    weight = q8.arch.component(LAYER, "v_proj").weight.qdata.clone()
    results = [train_vector(m, tok, data, layer=LAYER, config=cfg, progress=False)
               for m in (q8.model, twin)]
    assert results[0].losses[-1] < results[0].losses[0]
    torch.testing.assert_close(torch.tensor(results[0].losses), torch.tensor(results[1].losses),
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(results[0].vector.vector, results[1].vector.vector,
                               atol=1e-4, rtol=1e-3)
    assert torch.equal(q8.arch.component(LAYER, "v_proj").weight.qdata, weight)  # frozen


# --- svv, logit lens, patching -------------------------------------------------------------
@pytest.mark.parametrize("mode", ["qk", "ov", "svv", "mlp"])
def test_freezing_on_int8_equals_the_reference_and_the_dequantized_twin(q8, twin, mode):
    """Freezing (svv reads W_V dequantized) on the int8 model: the cached lockstep run equals
    the paper's two full passes per step on the same model, and the dequantized twin."""
    from steerscope.mechanisms import frozen_generate_ids, frozen_generate_reference

    ids, mask, _ = random_left_padded_batch(seed=7)
    s, kw = _vector(6) * 2, dict(max_new_tokens=4, stop_at_eos=False)
    got = frozen_generate_ids(q8.model, ids, mask, s, LAYER, 1.0, mode, arch=q8.arch, **kw)
    ref = frozen_generate_reference(q8.model, ids, mask, s, LAYER, 1.0, mode, **kw)
    other = frozen_generate_ids(twin, ids, mask, s, LAYER, 1.0, mode, **kw)
    assert torch.equal(got.new_tokens, ref.new_tokens)
    torch.testing.assert_close(got.first_logits, ref.first_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.first_logits, other.first_logits, atol=1e-4, rtol=1e-4)


def test_svv_equals_the_quantized_attention_output(q8):
    """A one-token prompt whose residual entering block ℓ is s: its attention attends to
    itself only, so the hooked o_proj output is Σ_h svv^h(s) · rsqrt(mean(s²) + ε)."""
    arch = q8.arch
    s = _vector()
    scale = torch.rsqrt(s.pow(2).mean() + arch.norm_eps(arch.component(LAYER, "attn_norm")))
    cap = Capture("attn_out", LAYER)
    to_s = Edit("resid_pre", LAYER, fn=lambda x, ctx: s.to(x.dtype).expand_as(x).clone())
    with Runtime(q8.model, [to_s, cap], arch=arch), torch.no_grad():
        q8.model(input_ids=torch.tensor([[7]]))
    svv = steering_value_vectors(arch, s, LAYER)  # [H, d]
    torch.testing.assert_close(cap.value[0, 0], svv.sum(0) * scale, atol=1e-5, rtol=1e-4)


def test_attention_decomposition_equals_the_quantized_run(q8):
    arch = q8.arch
    s = _vector()
    ids, mask, _ = random_left_padded_batch(seed=4)
    layers = range(LAYER, arch.n_layers)
    caps = {p: {lv: Capture(p, lv) for lv in layers} for p in ("attn_out", "resid_pre",
                                                             "pattern")}
    ops = [steer(s, LAYER, ALPHA)] + [c for d in caps.values() for c in d.values()]
    with Runtime(q8.model, ops, arch=arch), torch.no_grad():
        q8.model(input_ids=ids, attention_mask=mask,
                 position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=False)
    real = mask.bool()
    for lv in layers:
        dec = decompose_attention(arch, lv, caps["resid_pre"][lv].value,
                                  caps["pattern"][lv].value, s, ALPHA)
        out = caps["attn_out"][lv].value
        assert dec.svv_term[real].abs().max() > 1e-2
        torch.testing.assert_close(dec.total[real], out[real], atol=5e-5, rtol=1e-4)


def test_logit_lens_reads_a_quantized_unembedding_dequantized(folder):
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    lm = load_model(folder, quantization="int8")
    quantize_(lm.model.lm_head, Int8WeightOnlyConfig())  # the unembedding too
    head = lm.arch.unembed
    assert type(head.weight) is not nn.Parameter
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(9))
    vals, ids = logit_lens(lm.arch, x, top_k=5)
    with torch.no_grad():
        expect = head(lm.arch.final_norm(x))  # the quantized module itself: [3, V]
    torch.testing.assert_close(vals, expect.topk(5, -1).values, atol=1e-5, rtol=1e-5)
    assert torch.equal(ids, expect.topk(5, -1).indices)


def test_patching_graph_and_eap_ig_gradients_on_int8(q8, twin):
    ids = torch.randint(3, 256, (1, 9), generator=torch.Generator().manual_seed(1))
    s = _vector(4) * 3
    with Runtime(q8.model, [steer(s, LAYER, -1.0)], arch=q8.arch), torch.no_grad():
        steered_hf = q8.model(ids).logits
    grads = []
    for model, arch in ((q8.model, q8.arch), (twin, None)):
        gm = GraphModel(model, LAYER, arch=arch)
        prep = gm.prepare(ids)
        run = gm.run(prep, s, -1.0, track=True)
        if model is q8.model:
            torch.testing.assert_close(run.logits, steered_hf, atol=2e-5, rtol=1e-5)
        grads.append(torch.autograd.grad(run.logits[0, -1, 5], run.up_parts + run.down_parts))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_every_architecture_int8_equals_its_dequantized_twin(arch_name, tmp_path):
    """Steered logits and the attention decomposition (post-norms, soft-caps, q/k norms,
    biases) on each tiny architecture, loaded int8."""
    lm = load_model(save_tiny_chat_model(tmp_path / arch_name, arch_name), quantization="int8")
    twin = tiny_model(arch_name)
    quantized = dict(lm.model.named_modules())
    with torch.no_grad():
        for name, module in twin.named_modules():
            if isinstance(module, nn.Linear):
                module.weight.copy_(linear_weight(quantized[name]))
    ids, mask, _ = random_left_padded_batch(seed=3)
    s, real = _vector(), mask.bool()
    got = _steered_logits(lm.model, lm.arch, s, ids, mask)
    torch.testing.assert_close(got[real], _steered_logits(twin, None, s, ids, mask)[real],
                               atol=1e-4, rtol=1e-4)
    caps = {p: Capture(p, LAYER + 1) for p in ("attn_out", "resid_pre", "pattern")}
    with Runtime(lm.model, [steer(s, LAYER, ALPHA), *caps.values()]), torch.no_grad():
        lm.model(input_ids=ids, attention_mask=mask,
                 position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=False)
    dec = decompose_attention(lm.arch, LAYER + 1, caps["resid_pre"].value,
                              caps["pattern"].value, s, ALPHA)
    torch.testing.assert_close(dec.total[real], caps["attn_out"].value[real], atol=5e-5,
                               rtol=1e-4)


# --- bad input -----------------------------------------------------------------------------
def _one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_unknown_quantization_is_one_line_before_loading(folder):
    with pytest.raises(SteerscopeError) as exc:
        load_model(folder / "does-not-exist", quantization="int3")
    msg = _one_line(exc)
    assert "'int3'" in msg and all(n in msg for n in QUANTIZATIONS)


def test_missing_backend_names_the_package_and_the_extra(folder, monkeypatch):
    import steerscope.models.quantization as quant

    real = quant.importlib.util.find_spec
    monkeypatch.setattr(quant.importlib.util, "find_spec",
                        lambda name, *a: None if name == "torchao" else real(name, *a))
    with pytest.raises(SteerscopeError) as exc:
        load_model(folder, quantization="int8")
    msg = _one_line(exc)
    assert "'torchao'" in msg and "steerscope[quant]" in msg


def test_a_config_object_whose_backend_is_missing_is_one_line_before_loading(folder,
                                                                              monkeypatch):
    import transformers

    calls = []
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: calls.append(a))
    if importlib.util.find_spec("optimum") is None:  # optimum-quanto not installed here
        with pytest.raises(SteerscopeError) as exc:
            load_model(folder, quantization=transformers.QuantoConfig(weights="int8"))
        msg = _one_line(exc)
        assert "QuantoConfig (quanto)" in msg and "optimum-quanto" in msg
    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(SteerscopeError) as exc:
            load_model(folder, quantization=transformers.BitsAndBytesConfig(load_in_8bit=True))
        assert "BitsAndBytesConfig (bitsandbytes)" in _one_line(exc)
    assert calls == []  # refused before transformers started loading


def test_a_torchao_config_object_loads_like_the_int8_name(folder, q8):
    import transformers
    from torchao.quantization import Int8WeightOnlyConfig

    lm = load_model(folder, quantization=transformers.TorchAoConfig(Int8WeightOnlyConfig()))
    assert lm.quantization == "torchao"
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert torch.equal(linear_weight(lm.arch.component(LAYER, name)),
                           linear_weight(q8.arch.component(LAYER, name)))


def test_bitsandbytes_schemes_refuse_cpu_and_map_to_their_configs(monkeypatch):
    import steerscope.models.quantization as quant

    monkeypatch.setattr(quant.importlib.util, "find_spec", lambda name, *a: object())
    with pytest.raises(SteerscopeError) as exc:
        quantization_config("nf4", torch.device("cpu"), torch.float32)
    msg = _one_line(exc)
    assert "'nf4'" in msg and "cuda" in msg and "quantization='int8'" in msg
    cuda = torch.device("cuda")
    nf4 = quantization_config("NF4", cuda, torch.bfloat16)
    assert nf4.load_in_4bit and nf4.bnb_4bit_quant_type == "nf4"
    assert nf4.bnb_4bit_compute_dtype == torch.bfloat16
    assert quantization_config("fp4", cuda, "auto").bnb_4bit_quant_type == "fp4"
    assert quantization_config("bnb-int8", cuda, torch.float16).load_in_8bit
    assert quantization_config(None, cuda, torch.float16) is None
    assert quantization_config("none", cuda, torch.float16) is None


def test_quantizing_a_gguf_file_is_refused(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(SteerscopeError) as exc:
        load_model(gguf, quantization="int8")
    assert ".gguf" in _one_line(exc)


@pytest.mark.parametrize("scheme", ["bnb-int8", "nf4"])
def test_bitsandbytes_weights_read_dequantized_and_validate(folder, fp, scheme):
    """bitsandbytes layers (loaded here on CPU through transformers directly, since steerscope
    runs them on CUDA only): the architecture check reads the packed 4-bit shapes right,
    ``linear_weight`` returns the [out, in] float matrix near the float weight, and the
    parameters take less storage."""
    pytest.importorskip("bitsandbytes", reason="pip install 'steerscope[bnb]'")
    import transformers

    from steerscope.models.archs import validate_model

    cfg = (transformers.BitsAndBytesConfig(load_in_8bit=True) if scheme == "bnb-int8" else
           transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                           bnb_4bit_compute_dtype=torch.float32))
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, quantization_config=cfg, dtype=torch.float32, device_map={"": "cpu"})
    arch = validate_model(model)
    for name in ("v_proj", "o_proj"):
        w = linear_weight(arch.component(LAYER, name))
        ref = fp.arch.component(LAYER, name).weight
        assert w.dtype == torch.float32 and w.shape == ref.shape
        # int8: one step of the row's absmax / 127 (bitsandbytes rounds the weight and its
        # scales to float16 first); nf4: 4 bits, blocks of 64
        tol = 1 / 127 if scheme == "bnb-int8" else 0.25
        assert ((w - ref).abs() <= tol * ref.abs().amax(1, keepdim=True) + 1e-6).all()
    assert parameter_bytes(model) < 0.6 * parameter_bytes(fp.model)
