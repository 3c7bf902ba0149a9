"""steerscope.testing: the public tiny-model helpers, and the example in docs/testing.md."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import REPO, left_padded

import steerscope.models as models
import steerscope.models.tiny as tiny
from steerscope import testing
from steerscope.errors import SteerscopeError
from steerscope.models import load_model


def test_the_builders_are_the_models_ones():
    for name in ("TINY_ARCHS", "tiny_config", "tiny_model", "tiny_tokenizer",
                 "save_tiny_chat_model"):
        assert getattr(testing, name) is getattr(tiny, name) is getattr(models, name)
    assert testing.TINY_CHAT_TEMPLATE is tiny.TINY_CHAT_TEMPLATE
    assert set(testing.__all__) <= set(dir(testing))


def test_left_padded_batch_by_hand():
    ids, mask, prompts = testing.random_left_padded_batch(seed=3, lengths=(4, 1, 3), vocab=10)
    assert ids.shape == mask.shape == (3, 4) and ids.dtype == mask.dtype == torch.long
    assert [len(p) for p in prompts] == [4, 1, 3]
    for row, m, p in zip(ids, mask, prompts):
        n = len(p)
        assert m.tolist() == [0] * (4 - n) + [1] * n
        assert row[: 4 - n].tolist() == [0] * (4 - n)
        assert torch.equal(row[4 - n :], p)
        assert int(p.min()) >= 3 and int(p.max()) < 10
    again = testing.random_left_padded_batch(seed=3, lengths=(4, 1, 3), vocab=10)
    assert torch.equal(again[0], ids)
    assert not torch.equal(testing.random_left_padded_batch(seed=4, lengths=(4, 1, 3))[0], ids)
    assert left_padded is testing.random_left_padded_batch


@pytest.mark.parametrize("kwargs, needle", [
    (dict(lengths=()), "lengths"),
    (dict(lengths=(3, 0)), "lengths"),
    (dict(lengths=(2.5,)), "lengths"),
    (dict(vocab=3), "vocab"),
])
def test_left_padded_batch_bad_input(kwargs, needle):
    with pytest.raises(SteerscopeError, match=needle) as err:
        testing.random_left_padded_batch(**kwargs)
    assert "\n" not in str(err.value)


def test_saved_tiny_chat_model_loads(tmp_path):
    folder = testing.save_tiny_chat_model(tmp_path / "tiny", "qwen2", n_layers=2)
    lm = load_model(folder)
    assert lm.model.config.model_type == "qwen2" and lm.model.config.num_hidden_layers == 2
    ids = lm.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}],
                                           add_generation_prompt=True)
    assert lm.tokenizer.decode(ids) == "<|user|>hi</s><|assistant|>"


def test_the_docs_example_runs():
    text = (REPO / "docs" / "testing.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1
    namespace: dict = {}
    exec(compile(blocks[0], "docs/testing.md", "exec"), namespace)
    test = namespace["test_a_runtime_without_interventions_is_the_plain_model"]
    for arch in testing.TINY_ARCHS:
        test(arch)
