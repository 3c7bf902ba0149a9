"""Extraction methods on synthetic data, extract_vector, and the GGUF control-vector format."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGUFReader, GGUFValueType, GGUFWriter

from steerscope.errors import SteerscopeError
from steerscope.models.archs import validate_model
from steerscope.models.chat import format_prompt
from steerscope.models.tiny import tiny_model, tiny_tokenizer
from steerscope.vectors import (
    METHODS,
    SteeringVector,
    collect_activations,
    export_control_vector,
    extract,
    extract_vector,
    import_control_vector,
    register_method,
)
from steerscope.vectors.gguf import gguf_index, layer_of

D = 32


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg
    return msg


def _planted(n=500, sep=3.0, seed=0):
    """Paired Gaussian data: positive = noise + sep·u, negative = noise; returns (pos, neg, u)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(D, generator=g, dtype=torch.float64)
    u = u / u.norm()
    neg = torch.randn(n, D, generator=g, dtype=torch.float64)  # [n, D]
    pos = torch.randn(n, D, generator=g, dtype=torch.float64) + sep * u  # [n, D]
    return pos, neg, u


def _cos(a, b) -> float:
    return float(a.double() @ b.double() / (a.double().norm() * b.double().norm()))


# ---------------------------------------------------------------------------------------
# methods
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["dim", "caa", "pca", "probe"])
def test_each_method_recovers_a_planted_direction(method):
    pos, neg, u = _planted()
    v = extract(method, pos, neg)
    assert v.shape == (D,) and v.dtype == torch.float64
    assert _cos(v, u) > 0.95
    # reversing the classes reverses the direction
    assert _cos(extract(method, neg, pos), u) < -0.95
    # float32 input works too
    assert _cos(extract(method, pos.float(), neg.float()), u) > 0.95


def test_dim_and_caa_definitions():
    pos, neg, _ = _planted(n=50)
    assert torch.equal(extract("dim", pos, neg), pos.mean(0) - neg.mean(0))
    assert torch.equal(extract("caa", pos, neg), (pos - neg).mean(0))
    torch.testing.assert_close(extract("caa", pos, neg), extract("dim", pos, neg))
    # DIM takes unpaired sets; CAA and PCA need pairs
    assert extract("dim", pos, neg[:10]).shape == (D,)
    for m in ("caa", "pca"):
        with pytest.raises(SteerscopeError) as e:
            extract(m, pos, neg[:10])
        assert "paired" in _one_line(e)


def test_pca_sign_alignment_and_scale():
    pos, neg, _ = _planted(n=200, seed=1)
    dim = extract("dim", pos, neg)
    for center in (False, True):
        v = extract("pca", pos, neg, center=center)
        assert float(v @ dim) > 0, "PCA must point along the mean difference"
        assert v.norm().item() == pytest.approx(dim.norm().item(), rel=1e-9)
        unit = extract("pca", pos, neg, center=center, scale="unit")
        assert unit.norm().item() == pytest.approx(1.0, rel=1e-9)
        torch.testing.assert_close(unit * dim.norm(), v)
    # uncentred PCA = top right singular vector of the difference matrix, up to sign
    _, _, vh = torch.linalg.svd(pos - neg, full_matrices=False)
    assert abs(_cos(extract("pca", pos, neg), vh[0])) == pytest.approx(1.0, abs=1e-12)
    # centred PCA of pairs whose differences are a constant shift + a varying spread along w:
    # finds w (centring removes the constant part), signed along the mean difference
    g = torch.Generator().manual_seed(2)
    shift = torch.zeros(D, dtype=torch.float64)
    shift[0] = 1.0
    w = torch.zeros(D, dtype=torch.float64)
    w[1] = 1.0
    neg2 = torch.randn(300, D, generator=g, dtype=torch.float64) * 0.01
    spread = torch.randn(300, 1, generator=g, dtype=torch.float64) * 5
    pos2 = neg2 + shift + spread * w + 0.5 * w
    v = extract("pca", pos2, neg2, center=True, scale="unit")
    assert abs(_cos(v, w)) > 0.99 and float(v @ w) > 0


def test_probe_is_deterministic_signed_and_scaled():
    pos, neg, _ = _planted(n=200, sep=1.5, seed=3)
    a = extract("probe", pos, neg)
    b = extract("probe", pos.clone(), neg.clone())
    assert torch.equal(a, b)
    dim = extract("dim", pos, neg)
    assert a.norm().item() == pytest.approx(dim.norm().item(), rel=1e-9)
    assert float(pos.mean(0) @ a) > float(neg.mean(0) @ a)
    unit = extract("probe", pos, neg, scale="unit")
    assert unit.norm().item() == pytest.approx(1.0, rel=1e-9)
    # stronger regularisation moves the probe toward the mean difference (isotropic noise)
    assert _cos(extract("probe", pos, neg, C=1e-4), dim) > _cos(extract("probe", pos, neg,
                                                                        C=100.0), dim)
    # a feature that is constant in the data does not break standardisation
    pos[:, 0] = 7.0
    neg[:, 0] = 7.0
    v = extract("probe", pos, neg)
    assert torch.isfinite(v).all() and v[0] == 0


def test_extract_bad_input_is_one_line():
    pos, neg, _ = _planted(n=20)
    cases = [
        ("nope", pos, neg, {}),
        ("dim", pos[0], neg, {}),
        ("dim", pos, neg[:, :5], {}),
        ("dim", pos[:0], neg, {}),
        ("dim", pos, torch.full_like(neg, float("nan")), {}),
        ("dim", pos, neg, {"C": 1.0}),
        ("probe", pos, neg, {"C": -1.0}),
        ("pca", pos, neg, {"scale": "big"}),
        ("pca", pos, pos.clone(), {}),  # identical pairs: no direction
        ("dim", pos.tolist(), neg, {}),
    ]
    for method, p, n, hp in cases:
        with pytest.raises(SteerscopeError) as e:
            extract(method, p, n, **hp)
        _one_line(e)


def test_register_method():
    name = "test-first-positive"
    register_method(name, lambda positive, negative: positive[0].double())
    try:
        pos, neg, _ = _planted(n=5)
        assert torch.equal(extract(name, pos, neg), pos[0])
        with pytest.raises(SteerscopeError):
            register_method(name, lambda positive, negative: positive[0])

        @register_method(name, overwrite=True)
        def bad(positive, negative):
            return positive  # wrong shape

        with pytest.raises(SteerscopeError) as e:
            extract(name, pos, neg)
        _one_line(e)
    finally:
        METHODS.pop(name, None)
    assert {"dim", "caa", "pca", "probe"} <= set(METHODS)


@pytest.fixture(scope="module")
def qwen():
    return tiny_model("qwen2"), tiny_tokenizer()


@pytest.mark.parametrize("method", ["dim", "caa", "pca", "probe"])
def test_extract_vector_on_a_tiny_model(method, qwen):
    model, tok = qwen
    pos_p = [format_prompt(tok, t) for t in ["Say yes", "Agree with me!", "Be positive."]]
    neg_p = [format_prompt(tok, t) for t in ["Say no", "Disagree with me", "Be negative?"]]
    hp = {"scale": "dim"} if method in ("pca", "probe") else {}
    v = extract_vector(model, tok, pos_p, neg_p, method=method, layer=2, position=-2,
                       model_id="tiny-qwen2", batch_size=2, **hp)
    assert isinstance(v, SteeringVector)
    assert v.hyperparameters == hp
    assert (v.layer, v.position, v.method, v.model_id) == (2, -2, method, "tiny-qwen2")
    assert v.metadata == {"n_positive": 3, "n_negative": 3}
    acts_p = collect_activations(model, tok, pos_p, layers=[2], positions=[-2])[:, 0, 0]
    acts_n = collect_activations(model, tok, neg_p, layers=[2], positions=[-2])[:, 0, 0]
    torch.testing.assert_close(v.vector, extract(method, acts_p, acts_n).float())
    v.check_fits(validate_model(model))


# ---------------------------------------------------------------------------------------
# GGUF control vectors
# ---------------------------------------------------------------------------------------
def _vectors(layers=(2, 3, 5), d=64, model_id="tiny-llama"):
    g = torch.Generator().manual_seed(0)
    return [SteeringVector(torch.randn(d, generator=g) * 3, layer, method="dim",
                           model_id=model_id) for layer in layers]


def test_gguf_round_trip_is_exact(tmp_path):
    vecs = _vectors()
    path = export_control_vector(vecs[::-1], tmp_path / "cv.gguf", model_hint="llama")
    assert [f.name for f in tmp_path.iterdir()] == ["cv.gguf"], "no temporary file left"
    back = import_control_vector(path)
    assert [v.layer for v in back] == [2, 3, 5]
    for a, b in zip(vecs, back):
        assert torch.equal(a.vector, b.vector)
        assert b.method == "gguf-control-vector"
        assert b.metadata["model_hint"] == "llama"
    # default model_hint: the vectors' model_id; one vector alone is accepted
    one = import_control_vector(export_control_vector(vecs[0], tmp_path / "one.gguf"))
    assert len(one) == 1 and one[0].metadata["model_hint"] == "tiny-llama"
    assert torch.equal(one[0].vector, vecs[0].vector)


def test_gguf_layer_mapping_is_what_is_written(tmp_path):
    vecs = _vectors(layers=(2, 7, 4))
    path = export_control_vector(vecs, tmp_path / "cv.gguf", model_hint="llama", alpha=-2.0)
    reader = GGUFReader(path)

    def field(key):
        f = reader.get_field(key)
        return f.contents() if hasattr(f, "contents") else f.parts[-1]

    assert field("general.architecture") == "controlvector"
    assert field("controlvector.model_hint") == "llama"
    assert int(field("controlvector.layer_count")) == 3
    assert reader.get_field("controlvector.layer_count").types == [GGUFValueType.UINT32]
    names = [t.name for t in reader.tensors]
    # steerscope layer l (residual entering block l) = llama.cpp direction.{l-1} (added to the
    # output of block l-1)
    assert names == ["direction.1", "direction.3", "direction.6"]
    by_layer = {v.layer: v for v in vecs}
    for t in reader.tensors:
        layer = int(t.name.split(".")[1]) + 1
        assert t.data.dtype == np.float32 and list(t.shape) == [64]
        assert np.array_equal(np.asarray(t.data), (by_layer[layer].vector * -2.0).numpy())
    assert [gguf_index(layer) for layer in (2, 3, 10)] == [1, 2, 9]
    assert [layer_of(n) for n in (0, 1, 9)] == [1, 2, 10]


def test_gguf_unrepresentable_and_bad_exports(tmp_path):
    for layer in (0, 1):
        with pytest.raises(SteerscopeError) as e:
            export_control_vector(_vectors(layers=(layer, 3)), tmp_path / "x.gguf")
        assert "layer 2 or above" in _one_line(e)
    cases = [
        ([], {}),
        (_vectors(layers=(3, 3)), {}),
        (_vectors(layers=(3,)) + _vectors(layers=(4,), d=32), {}),
        (_vectors(), {"alpha": float("inf")}),
        (_vectors(), {"alpha": 1e39}),  # overflows float32
        ([torch.zeros(64)], {}),
    ]
    for vecs, kw in cases:
        with pytest.raises(SteerscopeError) as e:
            export_control_vector(vecs, tmp_path / "x.gguf", **kw)
        _one_line(e)
    assert not list(tmp_path.iterdir()), "a failed export must leave no file"


def test_gguf_import_checks_the_model(tmp_path):
    model = tiny_model("llama", n_layers=6)
    arch = validate_model(model)
    path = export_control_vector(_vectors(layers=(2, 5)), tmp_path / "cv.gguf")
    assert len(import_control_vector(path, arch)) == 2
    narrow = export_control_vector(_vectors(layers=(2,), d=32), tmp_path / "narrow.gguf")
    with pytest.raises(SteerscopeError) as e:
        import_control_vector(narrow, arch)
    assert "residual width is 64" in _one_line(e)
    deep = export_control_vector(_vectors(layers=(6,)), tmp_path / "deep.gguf")
    with pytest.raises(SteerscopeError) as e:
        import_control_vector(deep, arch)
    _one_line(e)
    assert import_control_vector(path, model_id="m")[0].model_id == "m"


def _write_gguf(path, arch, tensors, hint="llama"):
    w = GGUFWriter(str(path), arch)
    if hint is not None:
        w.add_string(f"{arch}.model_hint", hint)
    for name, arr in tensors:
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_import_foreign_and_bad_files(tmp_path):
    # a repeng-style file (direction.k = output of HF block k), including direction.0
    d0 = np.arange(8, dtype=np.float32)
    d4 = -np.arange(8, dtype=np.float32)
    ok = _write_gguf(tmp_path / "repeng.gguf", "controlvector",
                     [("direction.4", d4), ("direction.0", d0)], hint=None)
    vecs = import_control_vector(ok)
    assert [v.layer for v in vecs] == [1, 5]
    assert vecs[0].metadata["model_hint"] is None
    assert np.array_equal(vecs[0].vector.numpy(), d0)
    bad = [
        _write_gguf(tmp_path / "model.gguf", "llama", [("direction.1", d0)]),
        _write_gguf(tmp_path / "names.gguf", "controlvector", [("token_embd.weight", d0)]),
        _write_gguf(tmp_path / "f16.gguf", "controlvector",
                    [("direction.1", d0.astype(np.float16))]),
        _write_gguf(tmp_path / "2d.gguf", "controlvector",
                    [("direction.1", np.zeros((2, 4), np.float32))]),
        _write_gguf(tmp_path / "widths.gguf", "controlvector",
                    [("direction.1", d0), ("direction.2", d0[:4].copy())]),
        _write_gguf(tmp_path / "empty.gguf", "controlvector", []),
        tmp_path / "missing.gguf",
    ]
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    bad.append(tmp_path / "junk.gguf")
    for path in bad:
        with pytest.raises(SteerscopeError) as e:
            import_control_vector(path)
        _one_line(e)
