"""The public face: ``import steerscope as ss`` is cheap, gives the user's names, and the
README's ten-minute tour runs with that one import (on a tiny model)."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys

import pytest
import torch
from conftest import REPO

import steerscope as ss


def test_import_steerscope_is_cheap():
    code = "import sys, steerscope; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_every_public_name_is_the_defining_modules_object():
    from steerscope.generation import generate
    from steerscope.models.loading import load_model
    from steerscope.vectors.vector import SteeringVector

    for name in ss.__all__:
        assert getattr(ss, name) is not None, name
    assert set(ss.__all__) <= set(dir(ss))
    assert ss.load_model is load_model and ss.SteeringVector is SteeringVector
    importlib.import_module("steerscope.generation")
    assert ss.generate is generate  # a function, not the module that defines it
    assert isinstance(ss.__version__, str) and ss.__version__
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ss.nope  # noqa: B018


def _tour() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Ten-minute tour"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_tour_uses_one_import_and_public_names():
    code = _tour()
    imports = [line for line in code.splitlines() if re.match(r"\s*(import|from)\s", line)]
    assert imports == ["import steerscope as ss"]
    used = set(re.findall(r"\bss\.(\w+)", code))
    assert used and used <= set(ss.__all__), used - set(ss.__all__)


def test_readme_tour_runs_on_a_tiny_model(tmp_path, monkeypatch):
    from steerscope.models import save_tiny_chat_model

    folder = save_tiny_chat_model(tmp_path / "model", "llama")
    code = _tour()
    assert code.count('ss.load_model("default")') == 1
    code = code.replace('ss.load_model("default")', f"ss.load_model({str(folder)!r})")
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(code, "README.md tour", "exec"), scope)
    vec = ss.SteeringVector.load(tmp_path / "dim.safetensors")
    assert vec.layer == scope["layer"] == 2 and vec.method == "dim"
    assert ss.SteeringVector.from_pretrained(tmp_path / "refusal-dim").sha256 == vec.sha256
    assert scope["scores"].dtype == torch.float64 and scope["scores"].shape == (2,)
    assert scope["cap"].value.shape[:2] == (2, scope["lm"].arch.n_heads)
