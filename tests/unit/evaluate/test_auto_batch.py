"""batch_size "auto" through the evaluation path: on CUDA the batch that fits the memory,
elsewhere the default 16 (the same results as batch_size=16)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_model

from steerscope.errors import SteerscopeError
from steerscope.evaluate.coherence import completion_ce
from steerscope.evaluate.steering import AUTO_UNIT_PROMPTS, evaluate_steering, unit_batches
from steerscope.generation_sizes import fixed_batch_size
from steerscope.models.tiny import tiny_tokenizer
from steerscope.vectors.vector import SteeringVector

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PRESENT = [f"make a thing number {i}" for i in range(18)]
ABSENT = [f"bake bread {'x ' * (i % 5)}" for i in range(17)]


def _on(device: str):
    """A stand-in model whose parameters live on ``device``."""
    return SimpleNamespace(parameters=lambda: iter([SimpleNamespace(device=torch.device(device))]))


def test_auto_units_and_batches():
    assert unit_batches(_on("cuda"), "auto") == (AUTO_UNIT_PROMPTS, "auto")
    assert unit_batches(_on("cpu"), "auto") == (16, None)
    assert unit_batches(_on("cuda"), 8) == (8, None)
    assert fixed_batch_size("auto") == 16 and fixed_batch_size(5) == 5
    for bad in (0, "big", 2.5, True):
        with pytest.raises(SteerscopeError, match="batch_size must be a positive integer"):
            unit_batches(_on("cpu"), bad)


def test_auto_off_cuda_is_the_default_batch():
    """More prompts than one batch of 16, so the units differ from one batch of all: the
    table under auto equals the table at 16, row for row and completion for completion."""
    model, tok = tiny_model("qwen2"), tiny_tokenizer()
    g = torch.Generator().manual_seed(0)
    vecs = {"a": SteeringVector(torch.randn(64, generator=g) * 8, layer=1, method="a")}
    auto = evaluate_steering(model, tok, vecs, PRESENT, ABSENT, max_new_tokens=4,
                             batch_size="auto")
    fixed = evaluate_steering(model, tok, vecs, PRESENT, ABSENT, max_new_tokens=4,
                              batch_size=16)
    assert auto.completions == fixed.completions
    assert [r.__dict__ for r in auto.rows] == [r.__dict__ for r in fixed.rows]
    texts, outs = PRESENT[:5], ["a b c", "d", "e f", "g h i j", "k"]
    a = completion_ce(model, tok, texts, outs, batch_size="auto")
    b = completion_ce(model, tok, texts, outs, batch_size=2)
    assert torch.allclose(a[0], b[0], atol=1e-5) and torch.equal(a[1], b[1])


def test_cli_batch_size_takes_a_number_or_auto():
    from steerscope.cli import build_parser

    p = build_parser()
    base = ["evaluate", "m", "--vector", "v.safetensors"]
    assert p.parse_args([*base, "--batch-size", "auto"]).batch_size == "auto"
    assert p.parse_args([*base, "--batch-size", "8"]).batch_size == 8
    assert p.parse_args(base).batch_size == 16
