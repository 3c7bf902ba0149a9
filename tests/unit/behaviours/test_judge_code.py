"""A judge that runs code runs only with consent (issue 29, point 1): loading or listing a
behaviour imports nothing; a callable judge (or a judge model that ships its own code) needs
``allow_code``; modules that run programs are refused even then; a judge's verdict must be a
bool, and a judge that raises is a one-line error."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from steerscope.behaviours import (
    behaviour_from_dict,
    check_judge_code,
    load_behaviour,
    make_judge,
)
from steerscope.cli import main
from steerscope.errors import SteerscopeError


def _sides(tmp_path) -> dict:
    (tmp_path / "p.txt").write_text("one\ntwo\n")
    return {side: {s: str(tmp_path / "p.txt") for s in ("train", "val", "test")}
            for side in ("present", "absent")}


@pytest.fixture
def judge_module(tmp_path, monkeypatch):
    """A module ``trustjudges_<id>`` on sys.path whose import leaves a marker file, with
    judges returning good and bad verdicts."""
    name = f"trustjudges_{tmp_path.name.replace('-', '_')}"
    marker = tmp_path / "IMPORTED"
    (tmp_path / f"{name}.py").write_text(
        "import math, os\n"
        "import numpy as np\n"
        "import torch\n"
        f"open({str(marker)!r}, 'w').write('x')\n"
        "def has_hello(text):\n    return 'hello' in text\n"
        "def np_hello(text):\n    return np.bool_('hello' in text)\n"
        "def says_no(text):\n    return 'no'\n"
        "def nan(text):\n    return math.nan\n"
        "def none(text):\n    return None\n"
        "def a_list(text):\n    return [True]\n"
        "def a_tensor(text):\n    return torch.tensor(True)\n"
        "def one(text):\n    return 1\n"
        "def boom(text):\n    raise RuntimeError('the judge broke\\non two lines')\n"
        "def exits(text):\n    import sys\n    sys.exit(0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, marker
    sys.modules.pop(name, None)


def _behaviour_file(tmp_path, function: str) -> str:
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump({"name": "coded", **_sides(tmp_path),
                                    "judge": {"kind": "callable", "function": function}}))
    return str(path)


def test_loading_and_listing_import_nothing(tmp_path, judge_module, capsys):
    name, marker = judge_module
    path = _behaviour_file(tmp_path, f"{name}:has_hello")
    b = load_behaviour(path)
    assert b.judge["function"] == f"{name}:has_hello" and not b.allow_code
    assert main(["behaviours", path]) == 0
    assert json.loads(capsys.readouterr().out)["judge"]["kind"] == "callable"
    assert not marker.exists() and name not in sys.modules


def test_a_callable_judge_needs_consent(tmp_path, judge_module):
    name, marker = judge_module
    b = load_behaviour(_behaviour_file(tmp_path, f"{name}:has_hello"))
    with pytest.raises(SteerscopeError) as e:
        b.make_judge()
    msg = str(e.value)
    assert f"judge.function '{name}:has_hello'" in msg and "--allow-code" in msg
    assert "allow_code=True" in msg and "\n" not in msg
    assert not marker.exists()  # refused before the import
    judges = [load_behaviour(b, allow_code=True).make_judge(), b.make_judge(allow_code=True),
              load_behaviour(_behaviour_file(tmp_path, f"{name}:has_hello"),
                             allow_code=True).make_judge()]
    for judge in judges:
        assert judge.judge(["a", "b"], ["hello there", "bye"]) == [True, False]
    assert marker.exists()
    # consent is not part of the definition: equal behaviours, the same dict
    assert load_behaviour(b, allow_code=True) == b
    assert load_behaviour(b, allow_code=True).to_dict() == b.to_dict()


def test_a_behaviour_file_cannot_give_consent(tmp_path):
    d = {"name": "coded", **_sides(tmp_path), "allow_code": True,
         "judge": {"kind": "callable", "function": "mymod:f"}}
    with pytest.raises(SteerscopeError, match=r"'allow_code' is not honoured in a behaviour.*"
                                              r"--allow-code"):
        behaviour_from_dict(d)


@pytest.mark.parametrize("function", [
    "os:system", "subprocess:getoutput", "subprocess:Popen", "builtins:eval", "builtins:exec",
    "sys:exit", "shutil:rmtree", "importlib:import_module", "pty:spawn", "socket:socket",
    "ctypes:CDLL", "runpy:run_path", "code:interact", "pickle:loads", "marshal:loads",
    "posix:system", "os.path:exists", "_posixsubprocess:fork_exec", "io:open",
    # run the completion itself as code or as a program, or fetch code
    "timeit:timeit", "cProfile:run", "profile:run", "doctest:debug_src", "pydoc:pager",
    "sympy:sympify", "numpy.testing:measure", "torch.hub:load", "logging.config:fileConfig",
])
def test_dangerous_modules_are_refused_even_when_allowed(tmp_path, function):
    spec = {"kind": "callable", "function": function}
    for check in (lambda: check_judge_code(spec, allow_code=True),
                  lambda: make_judge(spec, allow_code=True),
                  lambda: load_behaviour(_behaviour_file(tmp_path, function))):
        with pytest.raises(SteerscopeError, match=rf"judge.function '{function}'.*never "
                                                  r"allowed as a judge"):
            check()


def test_a_refused_function_reached_through_another_module(tmp_path, monkeypatch):
    (tmp_path / "sneaky_judges.py").write_text("import os\nfrom os import system as run\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for fn in ("sneaky_judges:os.system", "sneaky_judges:run"):
        with pytest.raises(SteerscopeError, match=r"never allowed as a judge"):
            make_judge({"kind": "callable", "function": fn}, allow_code=True)
    with pytest.raises(SteerscopeError, match=r"never allowed as a judge"):
        make_judge({"kind": "callable", "function": "sneaky_judges:__builtins__"},
                   allow_code=True)
    sys.modules.pop("sneaky_judges", None)


@pytest.mark.parametrize("fn, shown", [
    ("says_no", "'no'"), ("nan", "nan"), ("none", "None"), ("a_list", "list"),
    ("a_tensor", "Tensor"), ("one", "1"),
])
def test_a_verdict_that_is_not_a_bool(judge_module, fn, shown):
    name, _ = judge_module
    judge = make_judge({"kind": "callable", "function": f"{name}:{fn}"}, allow_code=True)
    with pytest.raises(SteerscopeError) as e:
        judge.judge(["p"], ["text"])
    msg = str(e.value)
    assert msg.startswith(f"judge function '{name}:{fn}' returned {shown}")
    assert "not True or False" in msg and "\n" not in msg


def test_numpy_bools_and_a_judge_that_raises(judge_module):
    name, _ = judge_module
    judge = make_judge({"kind": "callable", "function": f"{name}:np_hello"}, allow_code=True)
    assert judge.judge(["a", "b"], ["hello", "x"]) == [True, False]
    assert all(type(v) is bool for v in judge.judge(["a"], ["hello"]))
    boom = make_judge({"kind": "callable", "function": f"{name}:boom"}, allow_code=True)
    with pytest.raises(SteerscopeError) as e:
        boom.judge(["p"], ["text"])
    assert str(e.value).startswith(f"judge function '{name}:boom' raised RuntimeError: the "
                                   "judge broke on two lines")
    exits = make_judge({"kind": "callable", "function": f"{name}:exits"}, allow_code=True)
    with pytest.raises(SteerscopeError, match=rf"judge function '{name}:exits' raised SystemExit"):
        exits.judge(["p"], ["text"])  # sys.exit(0) in a judge must not end a run with exit 0


def test_a_judge_model_that_ships_code(tmp_path):
    """A classifier/chat judge whose config has an auto_map needs consent; loading it
    without consent tells transformers False (no prompt, no code run)."""
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evilnet", "architectures": ["EvilModel"],
        "auto_map": {"AutoConfig": "evil.EvilConfig",
                     "AutoModelForSequenceClassification": "evil.EvilModel"}}))
    marker = tmp_path / "PWNED"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    for kind in ("classifier", "chat"):
        spec = {"kind": kind, "model": str(folder)}
        with pytest.raises(SteerscopeError, match=rf"judge.model '{folder}' ships its own code"
                                                  r".*--allow-code"):
            make_judge(spec)
        assert make_judge(spec, allow_code=True).trust_remote_code is True
    from steerscope.evaluate.judges import ClassifierJudge, get_judge, model_ships_code

    assert model_ships_code(str(folder)) and not model_ships_code(str(tmp_path))
    with pytest.raises(SteerscopeError, match=r"ships its own code, which runs only when "
                                              r"allowed"):
        ClassifierJudge(str(folder))._load()
    with pytest.raises(SteerscopeError, match=r"ships its own code"):
        get_judge(str(folder))
    assert not marker.exists()
