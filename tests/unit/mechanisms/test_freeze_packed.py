"""Frozen generation with one alpha per row (the freezing table packs its two prompt sets
into shared batches) = each row alone with its alpha, token for token."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from steerscope.errors import SteerscopeError
from steerscope.mechanisms import frozen_generate_ids
from steerscope.testing import random_left_padded_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
@pytest.mark.parametrize("mode", ["none", "qk", "ov", "svv", "mlp"])
def test_per_row_alpha_equals_rows_alone(arch, mode):
    model = tiny_model(arch)
    ids, mask, prompts = random_left_padded_batch(seed=3, lengths=(8, 5, 6))
    s = torch.randn(64, generator=torch.Generator().manual_seed(1)) * 4.0
    alphas = [-1.0, 1.0, 2.0]
    got = frozen_generate_ids(model, ids, mask, s, 1, torch.tensor(alphas), mode,
                              max_new_tokens=6, eos_token_id=[], pad_token_id=0)
    for r, p in enumerate(prompts):
        alone = frozen_generate_ids(model, p[None], torch.ones(1, len(p), dtype=torch.long), s,
                                    1, alphas[r], mode, max_new_tokens=6, eos_token_id=[],
                                    pad_token_id=0)
        assert got.new_tokens[r].tolist() == alone.new_tokens[0].tolist(), (arch, mode, r)
        assert torch.allclose(got.first_logits[r], alone.first_logits[0], atol=1e-5)


def test_wrong_alpha_length_is_one_line():
    model = tiny_model("llama")
    ids, mask, _ = random_left_padded_batch(seed=3, lengths=(8, 5))
    with pytest.raises(SteerscopeError, match=r"alpha of shape \[2\] is expected"):
        frozen_generate_ids(model, ids, mask, torch.ones(64), 1, torch.tensor([1.0, 2.0, 3.0]),
                            "qk")
