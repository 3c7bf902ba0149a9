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


class _TwoLayer:
    """A multi-layer vector's stand-in: ``intervention`` returns one steer per layer."""

    def __init__(self, seed):
        self.vs = {1: _vec(seed), 3: _vec(seed + 10)}

    def intervention(self, alpha):
        from steerscope.runtime import steer

        return [steer(v, layer, alpha) for layer, v in self.vs.items()]


def test_multi_layer_cells_pack_too():
    from steerscope.evaluate.steered import packed_generate
    from steerscope.generation import generate

    model, tok = tiny_model("qwen2"), tiny_tokenizer()
    texts = ["hello there", "a", "xyz xyz"]
    sets = [_TwoLayer(1), _TwoLayer(2)]
    cells = [(texts, sets[0].intervention(-1.0)), (texts, None), (texts, sets[1].intervention(2.0))]
    got = packed_generate(model, tok, cells, max_new_tokens=6, batch_size=2)
    for (t, op), g in zip(cells, got):
        assert g == generate(model, tok, t, interventions=op or [], max_new_tokens=6,
                             batch_size=2, refill=False)
