"""Compiled decoding (static KV cache, compiled decode step) = the eager loop, token for token."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_ARCHS, tiny_model

from steerscope.errors import SteerscopeError
from steerscope.generation import generate_ids
from steerscope.generation_compiled import compiled_supported, generate_compiled
from steerscope.runtime import Capture, steer
from steerscope.testing import random_left_padded_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _ops(scope="all"):
    g = torch.Generator().manual_seed(3)
    vecs = torch.randn(3, 64, generator=g) * 4.0  # [3, d]
    return [steer(vecs, 1, [1.0, -1.0, 0.5], scope=scope), steer(vecs[0], 3, 0.7, scope=scope)]


@pytest.mark.parametrize("arch", TINY_ARCHS)
@pytest.mark.parametrize("scope", ["all", "generated", "prompt"])
def test_static_cache_loop_equals_eager(arch, scope):
    """The static-cache loop with the decode-step hooks (not compiled) = generate_ids."""
    model = tiny_model(arch)
    ids, mask, _ = random_left_padded_batch(seed=1, lengths=(9, 6, 4))
    ops = _ops(scope)
    ref = generate_ids(model, ids, mask, max_new_tokens=7, interventions=ops, eos_token_id=[])
    got = generate_compiled(model, ids, mask, max_new_tokens=7, interventions=ops,
                            eos_token_id=[], compile=False)
    assert got.new_tokens.tolist() == ref.new_tokens.tolist(), arch


def test_stops_at_eos_like_the_eager_loop():
    model = tiny_model("llama")
    ids, mask, _ = random_left_padded_batch(seed=2, lengths=(5, 8))
    free = generate_ids(model, ids, mask, max_new_tokens=6, eos_token_id=[])
    eos = int(free.new_tokens[0, 2])
    ref = generate_ids(model, ids, mask, max_new_tokens=6, eos_token_id=eos)
    got = generate_compiled(model, ids, mask, max_new_tokens=6, eos_token_id=eos, compile=False)
    assert got.new_tokens.tolist() == ref.new_tokens.tolist()
    assert got.lengths.tolist() == ref.lengths.tolist()


def test_unsupported_interventions_are_refused():
    assert not compiled_supported([Capture("resid_pre", 1)])
    assert not compiled_supported([steer(torch.ones(64), 1, 1.0, scope=[0, -1])])
    model = tiny_model("llama")
    ids, mask, _ = random_left_padded_batch(seed=2, lengths=(5, 8))
    with pytest.raises(SteerscopeError, match="compiled decoding supports only steering"):
        generate_compiled(model, ids, mask, interventions=[Capture("resid_pre", 1)])


@pytest.mark.slow
def test_compiled_step_equals_eager():
    """torch.compile of the decode step on CPU (needs a C compiler; minutes on a busy machine:
    466 s measured at load 17 on 2 cores)."""
    model = tiny_model("llama")
    ids, mask, _ = random_left_padded_batch(seed=1, lengths=(9, 6, 4))
    ops = _ops()
    ref = generate_ids(model, ids, mask, max_new_tokens=6, interventions=ops, eos_token_id=[])
    got = generate_compiled(model, ids, mask, max_new_tokens=6, interventions=ops,
                            eos_token_id=[])
    assert got.new_tokens.tolist() == ref.new_tokens.tolist()
