"""Slot decoding (preallocated KV cache, rows refilled in place, one decode step that can be
compiled) = separate runs of the plain greedy loop, token for token."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import TINY_ARCHS, tiny_model

from steerscope.errors import SteerscopeError
from steerscope.generation import generate_ids
from steerscope.generation_slots import (
    cache_length,
    generate_slots,
    release_slots,
    slot_count,
    slots_supported,
)
from steerscope.models.tiny import tiny_config
from steerscope.runtime import Capture, steer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LAYER = 1
EOS = torch.tensor([], dtype=torch.long)


def _vectors(n: int, d: int = 64, seed: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * 4.0  # [n, d]


def _prompts(lengths, seed=1, vocab=256) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g) for n in lengths]


def _alone(model, prompt, ops, n_new, eos=()) -> list[int]:
    """The reference: one prompt, one setting, the plain KV-cached loop."""
    gen = generate_ids(model, prompt[None], torch.ones(1, len(prompt), dtype=torch.long),
                       max_new_tokens=n_new, interventions=ops, eos_token_id=list(eos),
                       pad_token_id=0)
    return gen.new_tokens[0, : int(gen.lengths[0])].tolist()


def _check(model, prompts, settings, vecs, alphas, scope, n_new, *, batch, eos=(),
           limits=None, refill_at=None):
    ops = [steer(vecs, LAYER, alphas, scope=scope), steer(vecs[0], 3, 0.5, scope=scope)]
    got = generate_slots(model, prompts, batch_size=batch, max_new_tokens=n_new,
                         eos=torch.tensor(list(eos), dtype=torch.long), pad_token_id=0,
                         interventions=ops, row_ids=settings, row_limits=limits,
                         compile=False, refill_at=refill_at)
    for i, p in enumerate(prompts):
        s = settings[i]
        ref_ops = [steer(vecs[s], LAYER, alphas[s], scope=scope),
                   steer(vecs[0], 3, 0.5, scope=scope)]
        limit = n_new if limits is None else limits[i]
        assert got[i].tolist() == _alone(model, p, ref_ops, limit, eos), (i, scope)


@pytest.mark.parametrize("arch", TINY_ARCHS)
@pytest.mark.parametrize("scope", ["all", "generated", "prompt"])
def test_slots_equal_separate_runs(arch, scope):
    """7 prompts x 3 per-row settings in 3 slots: rows end at EOS or their limit at
    different steps, the freed slots are refilled, every row = its separate run."""
    model = tiny_model(arch)
    prompts = _prompts((9, 6, 4, 11, 5, 8, 3))
    settings = [0, 1, 2, 0, 1, 2, 1]
    vecs, alphas = _vectors(3), [1.5, -1.0, 0.0]
    free = _alone(model, prompts[1], [steer(vecs[1], LAYER, -1.0, scope=scope),
                                      steer(vecs[0], 3, 0.5, scope=scope)], 8)
    eos = (free[2],)  # prompt 1 ends early; others end at EOS or their limit
    limits = [8, 8, 3, 8, 1, 6, 8]
    _check(model, prompts, settings, vecs, alphas, scope, 8, batch=3, eos=eos, limits=limits,
           refill_at=1)
    release_slots(model)


@pytest.mark.parametrize("arch", ["gemma2", "gemma3", "mistral"])
def test_sliding_window_rows_longer_than_the_window(arch):
    """A window of 5 columns with prompts of up to 12 tokens and 9 new ones: the slots' mask
    keeps each row's own window (the prefill cache kept only its last columns)."""
    import transformers

    config = tiny_config(arch)
    config.sliding_window = 5
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in model.parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    prompts = _prompts((12, 4, 9, 7), seed=3)
    # weak steering, so that the tokens depend on the window (strong steering dominates)
    _check(model, prompts, [0, 1, 1, 0], _vectors(2) / 40, [1.0, -2.0], "all", 9, batch=2,
           refill_at=1)


def test_default_refill_threshold_and_one_setting():
    """A batch larger than the prompts, one shared setting, the default refill rule."""
    model = tiny_model("llama")
    prompts = _prompts((5, 9, 2, 7, 6), seed=4)
    ops = [steer(_vectors(1)[0], LAYER, 2.0)]
    got = generate_slots(model, prompts, batch_size=16, max_new_tokens=6, eos=EOS,
                         pad_token_id=0, interventions=ops, compile=False)
    for i, p in enumerate(prompts):
        assert got[i].tolist() == _alone(model, p, ops, 6)
    got2 = generate_slots(model, prompts[::-1], batch_size=2, max_new_tokens=6, eos=EOS,
                          pad_token_id=0, interventions=ops, compile=False)
    assert [t.tolist() for t in got2] == [t.tolist() for t in got[::-1]]


def test_slot_shapes_take_few_values():
    """Few distinct (batch, length) shapes, so that each compiles once: batches are multiples
    of 16 (from 16 up) and no wider than the power of two above the prompt count; lengths are
    multiples of 256."""
    assert [slot_count(40, n) for n in (1, 2, 3, 5, 17, 33, 1000)] == [1, 2, 4, 8, 32, 32, 32]
    assert [slot_count(b, 1000) for b in (1, 7, 16, 31, 127, 200, 500, 600)] == [
        1, 7, 16, 16, 112, 192, 448, 576]
    assert [cache_length(p, 64) for p in (10, 192, 193, 500)] == [256, 256, 512, 768]


def test_on_done_reports_every_prompt_once():
    model = tiny_model("qwen2")
    prompts = _prompts((4, 6, 3), seed=6)
    seen = []
    out = generate_slots(model, prompts, batch_size=2, max_new_tokens=4, eos=EOS,
                         pad_token_id=0, row_limits=[2, 4, 1], compile=False,
                         on_done=lambda i, toks: seen.append((i, list(toks))))
    assert sorted(seen) == [(i, out[i].tolist()) for i in range(3)]
    assert [len(t) for t in out] == [2, 4, 1]


def test_unsupported_interventions_are_refused_before_compute():
    from steerscope.runtime import Runtime

    model = tiny_model("llama")
    with Runtime(model, [Capture("resid_pre", 2)]):  # another runtime's hooks: refused
        assert not slots_supported(model, [])
        with pytest.raises(SteerscopeError, match="no other runtime attached"):
            generate_slots(model, _prompts((4,)), batch_size=2, max_new_tokens=3, eos=EOS,
                           pad_token_id=0)
    assert not slots_supported(model, [Capture("resid_pre", 1)])
    assert not slots_supported(model, [steer(torch.ones(64), 1, 1.0, scope=[0, -1])])
    with pytest.raises(SteerscopeError, match="slot decoding supports only steering"):
        generate_slots(model, _prompts((4,)), batch_size=2, max_new_tokens=3, eos=EOS,
                       pad_token_id=0, interventions=[Capture("resid_pre", 1)])
    with pytest.raises(SteerscopeError, match="one entry per prompt"):
        generate_slots(model, _prompts((4, 5)), batch_size=2, max_new_tokens=3, eos=EOS,
                       pad_token_id=0, row_limits=[1])


def test_a_step_that_fails_to_compile_runs_eagerly(monkeypatch):
    """A compiler failure (no C compiler, an unsupported op) warns once and decodes eagerly:
    the same tokens."""
    import steerscope.generation_slots as slots_module

    def broken(fn, **kwargs):
        def fail(*args):
            raise RuntimeError("inductor: no working C compiler\nsecond line")
        return fail

    monkeypatch.setattr(slots_module.torch, "compile", broken)
    monkeypatch.setattr(slots_module, "_COMPILED_STEPS", {})  # the broken step is not kept
    model = tiny_model("llama")
    prompts = _prompts((5, 7, 3))
    with pytest.warns(RuntimeWarning, match="compiled decoding failed .*no working C compiler"):
        got = generate_slots(model, prompts, batch_size=2, max_new_tokens=5, eos=EOS,
                             pad_token_id=0, compile=True)
    assert model.__dict__["_steerscope_slot_decoder"].compiled_step is None
    release_slots(model)
    for i, p in enumerate(prompts):
        assert got[i].tolist() == _alone(model, p, [], 5)
    with warnings.catch_warnings():  # a later call of that shape is eager from the start
        warnings.simplefilter("error", RuntimeWarning)
        again = generate_slots(model, prompts, batch_size=2, max_new_tokens=5, eos=EOS,
                               pad_token_id=0, compile=True)
    assert [t.tolist() for t in again] == [t.tolist() for t in got]
    release_slots(model)


@pytest.mark.slow
def test_compiled_slot_step_equals_eager():
    """torch.compile of the slot decode step on CPU (needs a C compiler; minutes)."""
    model = tiny_model("llama")
    prompts = _prompts((9, 6, 4, 7, 5))
    vecs = _vectors(2)
    ops = [steer(vecs, LAYER, [1.0, -1.5])]
    settings = [0, 1, 1, 0, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback to the eager step
        got = generate_slots(model, prompts, batch_size=2, max_new_tokens=6, eos=EOS,
                             pad_token_id=0, interventions=ops, row_ids=settings,
                             refill_at=1)
    dec = model.__dict__["_steerscope_slot_decoder"]
    assert dec.compiled_step is not None  # the compiled step ran (no eager fallback)
    for i, p in enumerate(prompts):
        ref = _alone(model, p, [steer(vecs[settings[i]], LAYER, [1.0, -1.5][settings[i]])], 6)
        assert got[i].tolist() == ref
    release_slots(model)


def test_generate_decodes_in_slots_when_asked(monkeypatch):
    """generate(compiled=True) goes through the slots (compiled off here: minutes on a CPU)
    and gives the text of generate(compiled=False); 'auto' off CUDA keeps the eager loop."""
    import steerscope.generation as generation
    from steerscope.models.tiny import tiny_tokenizer

    calls = []

    def eager_slots(*args, **kwargs):
        calls.append(kwargs["batch_size"])
        return generate_slots(*args, **kwargs, compile=False)

    monkeypatch.setattr(generation, "generate_slots", eager_slots)
    model, tok = tiny_model("llama"), tiny_tokenizer()
    prompts = ["hello there", "a b c d e f", "x", "steer me now please"]
    ops = [steer(_vectors(4), LAYER, [1.0, -1.0, 0.5, 2.0])]
    ref = generation.generate(model, tok, prompts, interventions=ops, max_new_tokens=6,
                              batch_size=2, compiled=False)
    assert generation.generate(model, tok, prompts, interventions=ops, max_new_tokens=6,
                               batch_size=2, compiled="auto") == ref
    assert calls == []
    got = generation.generate(model, tok, prompts, interventions=ops, max_new_tokens=6,
                              batch_size=2, compiled=True)
    assert got == ref and calls == [2]
    assert "_steerscope_slot_decoder" not in model.__dict__  # released after the call
    with pytest.raises(SteerscopeError, match="compiled decoding needs steering"):
        generation.generate(model, tok, prompts, interventions=[Capture("resid_pre", 1)],
                            max_new_tokens=2, compiled=True)
    with pytest.raises(SteerscopeError, match="compiled must be"):
        generation.generate(model, tok, prompts, compiled="yes")


def test_auto_uses_slots_on_cuda_for_large_supported_jobs():
    """compiled='auto': slots on CUDA for jobs of AUTO_SLOTS_MIN_TOKENS or more with
    supported steering and no other runtime attached; never off CUDA."""
    import steerscope.generation as generation
    from steerscope.runtime import Runtime

    model = tiny_model("llama")
    ops = [steer(_vectors(1)[0], LAYER, 1.0)]
    big = generation.AUTO_SLOTS_MIN_TOKENS
    assert not generation.use_slots(model, ops, "auto", n_tokens=big)  # the model's CPU
    cuda = dict(device=torch.device("cuda"))
    assert generation.use_slots(model, ops, "auto", n_tokens=big, **cuda)
    assert not generation.use_slots(model, ops, "auto", n_tokens=big - 1, **cuda)
    assert not generation.use_slots(model, [Capture("resid_pre", 1)], "auto", n_tokens=big,
                                    **cuda)
    assert not generation.use_slots(model, ops, False, n_tokens=big, **cuda)
    with Runtime(model, [Capture("resid_pre", 2)]):
        assert not generation.use_slots(model, ops, "auto", n_tokens=big, **cuda)
    model.hf_quantizer = object()  # quantized weights: not by default
    assert not generation.use_slots(model, ops, "auto", n_tokens=big, **cuda)
    assert generation.use_slots(model, ops, True, n_tokens=big, **cuda)


@pytest.mark.slow
def test_slots_equal_separate_on_smollm2(monkeypatch):
    """On the embedded SmolLM2-135M (the default model, the demo model's shape): settings x
    prompts in 4 slots, refilled as rows end at EOS = each setting generated alone (the slot
    step eager here; benchmarks/bench_generation.py --slots compares the compiled one)."""
    from conftest import smollm2_settings_case

    import steerscope.generation as generation

    monkeypatch.setattr(generation, "generate_slots",
                        lambda *a, **k: generate_slots(*a, **k, compile=False))
    lm, texts, s, alphas = smollm2_settings_case()
    tok = lm.tokenizer
    packed = generation.generate(lm.model, tok, texts * 3, max_new_tokens=24, batch_size=4,
                                 interventions=[steer(s.repeat(3, 1), 12, alphas)],
                                 row_settings=[k for k in range(3) for _ in texts],
                                 compiled=True)
    alone = [t for a in alphas for t in generation.generate(
        lm.model, tok, texts, interventions=[steer(s, 12, a)], max_new_tokens=24,
        batch_size=3, refill=False, compiled=False)]
    assert packed == alone
