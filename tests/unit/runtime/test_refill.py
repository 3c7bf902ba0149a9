"""Per-row steering, and generation where finished rows leave the batch (refill).

Every packed / compacted result is compared with separate runs of the plain greedy loop
(``generate_ids`` on one prompt, one setting at a time): token for token.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_ARCHS, tiny_model

from steerscope.errors import SteerscopeError
from steerscope.generation import generate, generate_ids
from steerscope.generation_refill import generate_refill
from steerscope.models.tiny import tiny_tokenizer
from steerscope.runtime import Add, Capture, Runtime, steer
from steerscope.testing import random_left_padded_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LAYER = 1


def _vectors(n: int, d: int = 64, seed: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * 4.0  # [n, d]


def _alone(model, prompt, ops, n_new, eos=None) -> list[int]:
    """The reference: one prompt, one setting, the plain KV-cached loop."""
    gen = generate_ids(model, prompt[None], torch.ones(1, len(prompt), dtype=torch.long),
                       max_new_tokens=n_new, interventions=ops,
                       eos_token_id=eos if eos is not None else [], pad_token_id=0)
    return gen.new_tokens[0, : int(gen.lengths[0])].tolist()


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_packed_rows_equal_separate_runs(arch):
    """steer(V [B, d], alpha [B]) on a left-padded batch = each row alone with its setting."""
    model = tiny_model(arch)
    ids, mask, prompts = random_left_padded_batch(seed=1, lengths=(9, 6, 4, 7))
    vecs = _vectors(4)
    alphas = [-1.0, 0.0, 1.0, 2.5]
    for scope in ("all", "generated", "prompt", [0, -1]):
        gen = generate_ids(model, ids, mask, max_new_tokens=6, eos_token_id=[],
                           pad_token_id=0,
                           interventions=[steer(vecs, LAYER, alphas, scope=scope)])
        for r, p in enumerate(prompts):
            ref = _alone(model, p, [steer(vecs[r], LAYER, alphas[r], scope=scope)], 6)
            assert gen.new_tokens[r].tolist() == ref, (arch, scope, r)


def test_shared_vector_with_per_row_alpha():
    model = tiny_model("llama")
    ids, mask, prompts = random_left_padded_batch(seed=2, lengths=(5, 8))
    v = _vectors(1)[0]
    gen = generate_ids(model, ids, mask, max_new_tokens=5, eos_token_id=[], pad_token_id=0,
                       interventions=[steer(v, LAYER, torch.tensor([-2.0, 3.0]))])
    for r, a in enumerate((-2.0, 3.0)):
        assert gen.new_tokens[r].tolist() == _alone(model, prompts[r], [steer(v, LAYER, a)], 5)


def test_zero_alpha_row_is_exactly_unsteered():
    model = tiny_model("qwen2")
    ids, mask, prompts = random_left_padded_batch(seed=3, lengths=(6, 6))
    gen = generate_ids(model, ids, mask, max_new_tokens=5, eos_token_id=[], pad_token_id=0,
                       interventions=[steer(_vectors(2), LAYER, [0.0, 1.0])])
    assert gen.new_tokens[0].tolist() == _alone(model, prompts[0], [], 5)


@pytest.mark.parametrize("bad, match", [
    (dict(vector=_vectors(3), alpha=[1.0, 2.0]), r"alpha has 2 values .* \[3\] is expected"),
    (dict(vector=_vectors(2, d=10), alpha=1.0), r"\[2, 64\] is expected"),
    (dict(vector=_vectors(2), alpha=[1.0, float("nan")]), r"alpha\[1\] must be a finite"),
    (dict(vector=_vectors(2) * float("inf"), alpha=1.0), "NaN or infinite"),
    (dict(vector=_vectors(3), alpha=1.0), r"3 settings .* batch has 2 rows: vector \[2, d\]"),
    (dict(vector=_vectors(1)[0], alpha=[[1.0, 2.0]]), r"alpha must have shape \[B\]"),
])
def test_bad_per_row_input_is_one_line_before_compute(bad, match):
    model = tiny_model("llama")
    ids, mask, _ = random_left_padded_batch(seed=1, lengths=(5, 4))
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(SteerscopeError, match=match) as err:
        generate_ids(model, ids, mask, max_new_tokens=3,
                     interventions=[steer(bad["vector"], LAYER, bad["alpha"])])
    handle.remove()
    assert "\n" not in str(err.value) and not calls


def _eos_for(model, prompts, ops_for, n_new):
    """Stop ids that end the rows at different steps: tokens from the middle of some rows."""
    toks = [_alone(model, p, ops_for(i), n_new) for i, p in enumerate(prompts)]
    return sorted({toks[0][2], toks[1][5], toks[3][1]} - {0})


@pytest.mark.parametrize("arch", TINY_ARCHS)
@pytest.mark.parametrize("batch_size, refill_at", [(3, 1), (4, 2), (16, None)])
def test_refill_equals_separate_runs(arch, batch_size, refill_at):
    """Rows leave at EOS and waiting prompts join: every row = its plain run alone, with a
    per-row vector following the row through compaction, and the scopes right per row."""
    model = tiny_model(arch)
    _, _, prompts = random_left_padded_batch(seed=4, lengths=(11, 9, 9, 7, 5, 4, 3))
    n = len(prompts)
    vecs, alphas = _vectors(n), [(-1.0) ** i * (i % 3) for i in range(n)]
    for scope in ("all", "generated", [1, -2]):
        def ops_for(i, scope=scope):
            return [steer(vecs[i], LAYER, alphas[i], scope=scope)]

        eos = _eos_for(model, prompts, ops_for, 9)
        refs = [_alone(model, p, ops_for(i), 9, eos) for i, p in enumerate(prompts)]
        assert len({len(r) for r in refs}) > 1  # rows finish at different steps
        with Runtime(model, [steer(vecs, LAYER, alphas, scope=scope)]):
            got = generate_refill(model, prompts, batch_size=batch_size, max_new_tokens=9,
                                  eos=torch.tensor(eos), pad_token_id=0, refill_at=refill_at)
        assert [g.tolist() for g in got] == refs, (arch, scope)


def test_refill_row_ids_map_prompts_to_settings():
    model = tiny_model("mistral")
    _, _, prompts = random_left_padded_batch(seed=6, lengths=(4, 8, 6))
    vecs = _vectors(3)
    order = [2, 0, 1]  # prompt k is setting order[k]
    with Runtime(model, [steer(vecs, LAYER, 1.5)]):
        got = generate_refill(model, prompts, batch_size=2, max_new_tokens=6,
                              eos=torch.tensor([], dtype=torch.long), pad_token_id=0,
                              row_ids=order)
    for k, p in enumerate(prompts):
        assert got[k].tolist() == _alone(model, p, [steer(vecs[order[k]], LAYER, 1.5)], 6)


def test_generate_text_refill_equals_fixed_batches_and_packs_settings():
    """generate(): per-row settings over the prompt list; refilled = fixed batches = alone."""
    model, tok = tiny_model("llama"), tiny_tokenizer()
    texts = ["hello there", "a", "steering vectors are", "xyz xyz", "ok", "the end is near"]
    vecs = _vectors(len(texts))
    alphas = [1.0, -1.0, 0.0, 2.0, -2.0, 0.5]
    ops = [steer(vecs, LAYER, alphas)]
    refilled = generate(model, tok, texts, interventions=ops, max_new_tokens=8, batch_size=2)
    fixed = generate(model, tok, texts, interventions=ops, max_new_tokens=8, batch_size=2,
                     refill=False)
    alone = [generate(model, tok, [t], interventions=[steer(vecs[i], LAYER, alphas[i])],
                      max_new_tokens=8)[0] for i, t in enumerate(texts)]
    assert refilled == fixed == alone
    with pytest.raises(SteerscopeError, match="prompt list has 6 rows"):
        generate(model, tok, texts, interventions=[steer(vecs[:2], LAYER, 1.0)])


def test_captures_fall_back_to_fixed_batches():
    """A Capture sees whole batches, so generate() does not compact under one."""
    model, tok = tiny_model("llama"), tiny_tokenizer()
    cap = Capture("resid_pre", 2)
    outs = generate(model, tok, ["ab", "abc"], interventions=[cap], max_new_tokens=3)
    assert len(outs) == 2 and cap.steps and cap.steps[0].shape[0] == 2


def test_add_per_row_needs_a_residual_point():
    model = tiny_model("llama")
    with pytest.raises(SteerscopeError, match="per-row settings need a residual point"):
        Runtime(model, [Add("q", 1, vector=torch.zeros(2, 4, 16), alpha=[1.0, 2.0])])


def test_refill_row_limits_equal_runs_with_that_budget():
    model = tiny_model("qwen3")
    _, _, prompts = random_left_padded_batch(seed=7, lengths=(6, 3, 8, 5, 4))
    limits = [1, 7, 3, 5, 2]
    with Runtime(model, [steer(_vectors(5), LAYER, 1.0)]):
        got = generate_refill(model, prompts, batch_size=2, max_new_tokens=7,
                              eos=torch.tensor([], dtype=torch.long), pad_token_id=0,
                              row_limits=limits, refill_at=1)
    for i, p in enumerate(prompts):
        assert got[i].tolist() == _alone(model, p, [steer(_vectors(5)[i], LAYER, 1.0)],
                                         limits[i])



def test_kv_bytes_match_the_cache_hf_builds():
    """The batch-size rule's KV bytes per token = the bytes of a real DynamicCache."""
    from transformers import DynamicCache

    from steerscope.generation import batch_size_for_free_memory, kv_bytes_per_token

    for arch in ("llama", "qwen3"):
        model = tiny_model(arch)
        cache = DynamicCache(config=model.config)
        ids = torch.randint(3, 200, (2, 11))
        with torch.no_grad():
            model(input_ids=ids, cache=cache, use_cache=True)
        size = sum(t.numel() * t.element_size() for layer in cache.layers
                   for t in (layer.keys, layer.values))
        assert size == kv_bytes_per_token(model) * 2 * 11
        per_row = kv_bytes_per_token(model) * 100 + 8 * 100 * 64 * 4 + 4 * 256 * 2
        assert batch_size_for_free_memory(model, 100, 10 * per_row, headroom=1.0) == 10
        assert batch_size_for_free_memory(model, 100, 0) == 1
        assert batch_size_for_free_memory(model, 100, 10**15) == 512


def test_auto_batch_is_the_default_off_cuda_and_oom_halves(monkeypatch):
    import steerscope.generation as gen_mod

    model, tok = tiny_model("llama"), tiny_tokenizer()
    assert gen_mod.batch_size_from_memory(model, 100) == gen_mod.DEFAULT_BATCH_SIZE
    texts = ["hello there", "a", "xyz", "the end"]
    want = generate(model, tok, texts, max_new_tokens=4, batch_size=4)
    seen = []
    real = gen_mod.generate_refill

    def flaky(*args, batch_size, **kw):
        seen.append(batch_size)
        if batch_size > 1:
            raise torch.OutOfMemoryError("fake")
        return real(*args, batch_size=batch_size, **kw)

    monkeypatch.setattr(gen_mod, "generate_refill", flaky)
    assert generate(model, tok, texts, max_new_tokens=4, batch_size=4) == want
    assert seen == [4, 2, 1]


@pytest.mark.slow
def test_packed_refill_equals_separate_on_smollm2():
    """On the embedded SmolLM2-135M (the default model, the demo model's shape): settings ×
    prompts packed, rows leaving and joining = each setting generated alone."""
    from conftest import smollm2_settings_case

    lm, texts, s, alphas = smollm2_settings_case()
    tok = lm.tokenizer
    packed = generate(lm.model, tok, texts * 3, max_new_tokens=24, batch_size=3,
                      interventions=[steer(s.repeat(3, 1), 12, alphas)],
                      row_settings=[k for k in range(3) for _ in texts])
    alone = [t for a in alphas for t in generate(
        lm.model, tok, texts, interventions=[steer(s, 12, a)], max_new_tokens=24,
        batch_size=3, refill=False)]
    assert packed == alone
