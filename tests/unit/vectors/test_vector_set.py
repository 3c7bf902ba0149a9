"""Multi-layer steering vectors (issue 28 point 3): SteeringVectorSet steers like its layers'
single-layer interventions (and like hooks written in plain PyTorch), its file and GGUF round
trips are exact, extract_vector over a layer list equals per-layer extraction, bad layer
lists fail in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGUFReader

import steerscope as ss
from steerscope.errors import SteerscopeError
from steerscope.models.archs import validate_model
from steerscope.models.chat import format_prompt
from steerscope.models.tiny import tiny_model, tiny_tokenizer
from steerscope.runtime import Runtime, steer
from steerscope.vectors import (
    SteeringVector,
    SteeringVectorSet,
    extract_vector,
    load_vector_file,
)
from steerscope.vectors.vector_set import check_steering_layers

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg
    return msg


def _set(layers=(1, 2), d=64, seed=0, **kw) -> SteeringVectorSet:
    g = torch.Generator().manual_seed(seed)
    return SteeringVectorSet(torch.randn(len(layers), d, generator=g) * 2, list(layers),
                             method="dim", model_id="tiny", position=-1, **kw)


def _plain_logits(model, ids, additions: dict[int, torch.Tensor]) -> torch.Tensor:
    """Logits with ``additions[l]`` added to the input of block l: plain PyTorch hooks."""
    handles = []
    for layer, vec in additions.items():
        def hook(module, args, kwargs, vec=vec):
            if args:
                return (args[0] + vec, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + vec}
        handles.append(model.model.layers[layer].register_forward_pre_hook(hook,
                                                                           with_kwargs=True))
    try:
        with torch.no_grad():
            return model(input_ids=ids).logits
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("arch_name", ["llama", "gemma2"])
def test_a_two_layer_vector_steers_like_two_single_layer_interventions(arch_name):
    model = tiny_model(arch_name)
    ids = torch.randint(3, 256, (2, 9), generator=torch.Generator().manual_seed(1))
    vs, alpha = _set(layers=(1, 3)), -1.5
    plain = _plain_logits(model, ids, {1: alpha * vs.vector[0], 3: alpha * vs.vector[1]})
    unsteered = _plain_logits(model, ids, {})
    assert not torch.allclose(plain, unsteered, atol=1e-3), "the steering must change logits"
    with Runtime(model, [vs.intervention(alpha)]), torch.no_grad():
        as_set = model(input_ids=ids).logits
    singles = [steer(vs.vector[0], 1, alpha), steer(vs.vector[1], 3, alpha)]
    with Runtime(model, singles), torch.no_grad():
        as_two = model(input_ids=ids).logits
    with Runtime(model, ss.steer(vs, alpha=alpha)), torch.no_grad():
        public = model(input_ids=ids).logits
    torch.testing.assert_close(as_set, plain, rtol=1e-5, atol=1e-5)
    assert torch.equal(as_set, as_two) and torch.equal(as_set, public)
    # generation takes the set's list as one item of its interventions
    tok = tiny_tokenizer()
    prompts = [format_prompt(tok, "hello there")]
    a = ss.generate(model, tok, prompts, interventions=[ss.steer(vs, alpha=alpha)],
                    max_new_tokens=4)
    b = ss.generate(model, tok, prompts, interventions=singles, max_new_tokens=4)
    assert a == b


def test_set_fields_sorting_and_per_layer_views():
    g = torch.Generator().manual_seed(3)
    rows = torch.randn(3, 64, generator=g)
    vs = SteeringVectorSet(rows, [3, 1, 2], method="pca")
    assert vs.layers == [1, 2, 3] and vs.layer == 1 and len(vs) == 3
    assert torch.equal(vs.vector, rows[[1, 2, 0]])
    assert [v.layer for v in vs] == [1, 2, 3]
    assert torch.equal(vs.at(3).vector, rows[0]) and vs.at(3).method == "pca"
    assert vs.norm == pytest.approx(float(rows.norm()), rel=1e-6)
    assert vs.norms[3] == pytest.approx(float(rows[0].norm()), rel=1e-6)
    back = SteeringVectorSet.from_vectors(list(vs))
    assert torch.equal(back.vector, vs.vector) and back.layers == vs.layers
    assert back.method == "pca"
    assert vs.cosine(vs) == pytest.approx(1.0)
    assert vs.cosine(vs.with_vector(-vs.vector)) == pytest.approx(-1.0)
    assert vs.scaled_to(2.0).norm == pytest.approx(2.0, rel=1e-6)
    with pytest.raises(SteerscopeError) as e:
        vs.cosine(_set(layers=(1, 2)))
    assert "same layers" in _one_line(e)


def test_save_load_round_trip_is_exact(tmp_path):
    vs = _set(layers=(2, 3), hyperparameters={"scale": "dim"}, metadata={"note": "x"})
    path = vs.save(tmp_path / "set.safetensors")
    assert [f.name for f in tmp_path.iterdir()] == ["set.safetensors"]
    back = SteeringVectorSet.load(path, validate_model(tiny_model("llama")))
    assert torch.equal(back.vector, vs.vector)
    for name in ("layers", "method", "model_id", "revision", "position", "hyperparameters",
                 "metadata"):
        assert getattr(back, name) == getattr(vs, name), name
    assert back.sha256 == vs.sha256
    # the documented keys: one [d] float32 tensor "layer.{l}" per layer
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert sorted(f.keys()) == ["layer.2", "layer.3"]
        assert torch.equal(f.get_tensor("layer.3"), vs.vector[1])
    # load_vector_file reads either kind
    assert isinstance(load_vector_file(path), SteeringVectorSet)
    single = SteeringVector(vs.vector[0], 2).save(tmp_path / "one.safetensors")
    assert isinstance(load_vector_file(single), SteeringVector)
    with pytest.raises(SteerscopeError) as e:
        SteeringVectorSet.load(single)
    assert "not a steerscope vector set" in _one_line(e)
    for layers in ((2, 3), (2,)):  # a one-layer set file is still a set file
        path = _set(layers=layers).save(tmp_path / f"set{len(layers)}.safetensors")
        with pytest.raises(SteerscopeError) as e:
            SteeringVector.load(path)
        assert "holds a multi-layer vector set: load it with SteeringVectorSet.load" in \
            _one_line(e)


def test_gguf_export_holds_one_direction_per_layer(tmp_path):
    vs = _set(layers=(2, 3))
    path = vs.export_gguf(tmp_path / "cv.gguf", alpha=-2.0)
    reader = GGUFReader(path)
    assert [t.name for t in reader.tensors] == ["direction.1", "direction.2"]
    for t, row in zip(reader.tensors, vs.vector):
        assert np.array_equal(np.asarray(t.data), (row * -2.0).numpy())
    del reader
    back = SteeringVectorSet.from_gguf(vs.export_gguf(tmp_path / "one.gguf"))
    assert back.layers == [2, 3] and torch.equal(back.vector, vs.vector)


def test_extract_vector_over_a_layer_list_equals_per_layer_extraction():
    model, tok = tiny_model("qwen2"), tiny_tokenizer()
    pos_p = [format_prompt(tok, t) for t in ["Say yes", "Agree with me!", "Be positive."]]
    neg_p = [format_prompt(tok, t) for t in ["Say no", "Disagree with me", "Be negative?"]]
    kw = dict(method="pca", position=-2, model_id="tiny-qwen2", batch_size=2)
    vs = extract_vector(model, tok, pos_p, neg_p, layer=[3, 1], **kw)
    assert isinstance(vs, SteeringVectorSet) and vs.layers == [1, 3]
    assert (vs.method, vs.position, vs.model_id) == ("pca", -2, "tiny-qwen2")
    for layer in (1, 3):
        one = extract_vector(model, tok, pos_p, neg_p, layer=layer, **kw)
        torch.testing.assert_close(vs.at(layer).vector, one.vector, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("layers, expected", [
    ([], r"is an empty list: list at least one layer"),
    ([1, 1], r"\[1, 1\] repeat layer 1: list each layer once"),
    ([1, 9], r"layer 9 is out of range for this 4-layer model: use layers from 0 to 3"),
    ([1, True], r"hold True, not a non-negative int"),
])
def test_bad_layer_lists_fail_in_one_line(layers, expected):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    p = [format_prompt(tok, "a")]
    with pytest.raises(SteerscopeError, match=expected) as e:
        extract_vector(model, tok, p, p, method="dim", layer=layers)
    _one_line(e)
    with pytest.raises(SteerscopeError) as e:
        check_steering_layers(layers, 4)
    _one_line(e)


def test_set_checks_and_steer_arguments():
    arch = validate_model(tiny_model("llama"))
    with pytest.raises(SteerscopeError) as e:
        _set(layers=(1, 4)).check_fits(arch)
    assert "layer 4 is out of range" in _one_line(e)
    with pytest.raises(SteerscopeError) as e:
        _set(layers=(1, 2), d=32).check_fits(arch)
    assert "residual width is 64" in _one_line(e)
    with pytest.raises(SteerscopeError) as e:
        SteeringVectorSet(torch.zeros(3, 64), [1, 2])
    assert "[2, d_model]" in _one_line(e)
    with pytest.raises(SteerscopeError) as e:
        SteeringVectorSet(torch.full((2, 64), float("nan")), [1, 2])
    _one_line(e)
    with pytest.raises(SteerscopeError) as e:
        ss.steer(_set(), 1, -1.0)
    assert "drop layer=" in _one_line(e)
    with pytest.raises(SteerscopeError) as e:
        ss.steer(torch.zeros(64))
    assert "needs its layer" in _one_line(e)
    one = SteeringVector(torch.ones(64), 2)
    assert ss.steer(one, alpha=2.0).alpha == 2.0
    assert ss.steer(torch.ones(64), 2, 0.5).layer == 2
