"""Slot decoding on CUDA: the compiled step captured as a CUDA graph (mode reduce-overhead)
gives the tokens of the eager loop (float32, tiny models), without a skipped graph or an
eager fallback. Skipped without a CUDA device; run on a lent GPU with the command in
benchmarks/README.md ("GPU")."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import tiny_model

from steerscope.generation import generate, generate_ids
from steerscope.generation_slots import current_slot_decoder, generate_slots, release_slots
from steerscope.models.tiny import tiny_tokenizer
from steerscope.runtime import steer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

LAYER = 1


def _prompts(lengths, seed=1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 256, (n,), generator=g) for n in lengths]


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gemma3", "qwen2"])
def test_cuda_graph_slots_equal_eager(arch):
    model = tiny_model(arch).to("cuda")
    g = torch.Generator().manual_seed(5)
    vecs = torch.randn(3, 64, generator=g) * 4.0  # [3, d]
    alphas = [1.5, -1.0, 0.5]
    prompts = _prompts((9, 6, 4, 11, 5, 8, 3))
    settings = [0, 1, 2, 0, 1, 2, 1]
    eos = torch.tensor([], dtype=torch.long, device="cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback, no skipped graph
        got = generate_slots(model, prompts, batch_size=4, max_new_tokens=12, eos=eos,
                             pad_token_id=0, interventions=[steer(vecs, LAYER, alphas)],
                             row_ids=settings, row_limits=[12, 3, 12, 7, 12, 1, 12],
                             refill_at=1)
    dec = current_slot_decoder(model)
    assert dec.mode == "reduce-overhead" and dec.compiled_step is not None
    assert dec.cudagraph_skips == 0
    release_slots(model)
    for i, p in enumerate(prompts):
        s = settings[i]
        ref = generate_ids(model, p[None].cuda(), max_new_tokens=12, eos_token_id=[],
                           interventions=[steer(vecs[s], LAYER, alphas[s])])
        want = ref.new_tokens[0, : [12, 3, 12, 7, 12, 1, 12][i]].tolist()
        assert got[i].tolist() == want, (arch, i)


def test_generate_takes_the_slots_on_cuda_by_default():
    """A job of >= 8192 new tokens with packed per-row steering: generate's default path on
    CUDA (compiled slots, batch from memory) = the eager path, text for text."""
    model, tok = tiny_model("llama").to("cuda"), tiny_tokenizer()
    prompts = [f"prompt number {i} " + "x " * (i % 7) for i in range(64)]
    vecs = torch.randn(4, 64, generator=torch.Generator().manual_seed(2)) * 4.0
    ops = [steer(vecs, LAYER, [1.0, -1.0, 0.0, 2.0])]
    rows = [i % 4 for i in range(64)]
    kw = dict(interventions=ops, row_settings=rows, max_new_tokens=128, batch_size="auto")
    fast = generate(model, tok, prompts, **kw)
    eager = generate(model, tok, prompts, compiled=False, **kw)
    assert fast == eager
