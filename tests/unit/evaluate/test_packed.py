"""Packed settings (prompts × settings in shared batches) = each setting evaluated alone."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from steerscope.evaluate.steered import Setting, packed_outcomes, steered_outcome
from steerscope.models.tiny import tiny_tokenizer
from steerscope.vectors.vector import SteeringVector

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _vec(seed):
    return torch.randn(64, generator=torch.Generator().manual_seed(seed)) * 4.0


def test_packed_outcomes_equal_separate_outcomes():
    """The steering table's packing: every cell = steered_outcome of that cell alone."""
    model, tok = tiny_model("llama"), tiny_tokenizer()
    a = SteeringVector(_vec(1), 1, method="a")
    b = SteeringVector(_vec(2), 2, method="b")
    sets = [["hello there", "a"], ["steering vectors are", "xyz xyz", "ok"]]
    cells = [Setting(sets[0], sets[0], None, 0.0), Setting(sets[0], sets[0], a, -1.0),
             Setting(sets[1], sets[1], a, 1.0), Setting(sets[1], sets[1], b, 2.0)]
    got = packed_outcomes(model, tok, cells, score_ids=[5, 6], max_new_tokens=6, batch_size=2)
    for cell, g in zip(cells, got):
        ops = [] if cell.steerer is None else [cell.steerer.intervention(cell.alpha)]
        ref = steered_outcome(model, tok, cell.formatted, interventions=ops, score_ids=[5, 6],
                              max_new_tokens=6, batch_size=2)
        assert g.completions == ref.completions and g.present == ref.present
        assert torch.equal(g.scores, ref.scores)
