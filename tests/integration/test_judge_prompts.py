"""Judges see the prompt (issue 24, point 4): through ``steerscope run --allow-code``, a
two-argument ``callable`` judge ``function(prompt, response)`` gets, in every stage that
judges (trained vectors' label check, evaluation, patching rollouts, freezing, the sparsity
sweep), each completion's raw instruction (the prompt of ``prompts.json``, before chat
formatting), in batches (one judge call per set of completions); a two-argument judge that
raises or returns a non-bool is a one-line error naming it, with nothing half-written."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import write_pipeline_workdir
from test_pipeline import tiny_config

from steerscope.cli import main
from steerscope.evaluate.presence import CallablePresence

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODULE = "prompt_seeing_judges"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = write_pipeline_workdir(tmp_path_factory.mktemp("judgeprompt"))
    log = root / "judged.jsonl"
    (root / f"{MODULE}.py").write_text(textwrap.dedent(f"""\
        import json
        def has_e(prompt, response):
            with open({str(log)!r}, "a") as f:
                f.write(json.dumps([prompt, response]) + "\\n")
            return "e" in response
        def boom(prompt, response):
            raise ValueError("cannot judge " + prompt[:10])
        def maybe(prompt, response):
            return "maybe"
        def three(prompt, response, extra):
            return True
        """))
    return root


def _config(root: Path, tmp_path: Path, function: str) -> Path:
    behaviour = tmp_path / "b.yaml"
    behaviour.write_text(yaml.safe_dump({
        "name": "has_e",
        "present": {s: str(root / "harmful.txt") for s in ("train", "val", "test")},
        "absent": {s: str(root / "harmless.txt") for s in ("train", "val", "test")},
        "judge": {"kind": "callable", "function": f"{MODULE}:{function}"},
        "score_tokens": ["The"]}))
    cfg = tiny_config(root, circuits={"enabled": False}, svv={"enabled": False},
                      report={"enabled": False},
                      vectors={"methods": ["dim", "ntp"],
                               "preference": {"max_new_tokens": 4, "val_fraction": 0.25,
                                              "drop_mislabelled": False,
                                              "harmless_refuse": "dim"}})
    cfg["behaviour"] = str(behaviour)
    cfg["data"] = {"n_train": 4, "n_val": 3, "n_test": 4}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(root: Path, tmp_path: Path, monkeypatch, function: str) -> tuple[int, Path]:
    """``steerscope run --allow-code`` of the judge ``function`` (its module on sys.path)."""
    monkeypatch.syspath_prepend(str(root))
    out = tmp_path / "runs"
    code = main(["run", str(_config(root, tmp_path, function)), "--out", str(out),
                 "--allow-code", "--quiet"])
    return code, out


def _stage_file(run_dir: Path, stage: str, name: str):
    (folder,) = [p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith(stage + "-")]
    return json.loads((folder / name).read_text())


def test_every_judged_completion_comes_with_its_prompt_in_batches(workdir, tmp_path,
                                                                  monkeypatch):
    log = workdir / "judged.jsonl"
    log.unlink(missing_ok=True)
    batches: list[int] = []
    judge = CallablePresence.judge

    def counted(self, prompts, responses):
        batches.append(len(responses))
        return judge(self, prompts, responses)

    monkeypatch.setattr(CallablePresence, "judge", counted)
    code, out = _run(workdir, tmp_path, monkeypatch, "has_e")
    assert code == 0
    (run_dir,) = out.iterdir()
    seen = [tuple(pair) for pair in map(json.loads, log.read_text().splitlines())]
    pairs = set(seen)
    prompts = _stage_file(run_dir, "data", "prompts.json")
    instructions = {p for key, ps in prompts.items() if isinstance(ps, list) for p in ps
                    if isinstance(p, str)}
    # every prompt the judge got is a raw instruction of the run (never empty, never formatted)
    assert {p for p, _ in seen} <= instructions, sorted({p for p, _ in seen} - instructions)
    # the evaluation's completions, each judged with its own prompt
    ev = _stage_file(run_dir, "evaluation", "evaluation.json")
    for method, by_set in ev["completions"].items():
        for side, outs in by_set.items():
            assert len(outs) == len(ev["prompts"][side]) == 4
            for p, r in zip(ev["prompts"][side], outs):
                assert (p, r) in pairs, (method, side, p, r)
    # freezing: the frozen/steered completions of the test prompts, with their prompts
    fr = _stage_file(run_dir, "freeze", "freeze.json")
    frozen = [(p, r) for by_set in fr["completions"].values()
              for side, outs in by_set.items() for p, r in zip(fr["prompts"][side], outs)]
    assert len(frozen) == 5 * 2 * 3 and all(pair in pairs for pair in frozen)
    # patching: the rollouts (base and steered) of the examples it kept
    (patching,) = [p for p in run_dir.iterdir() if p.name.startswith("patching-")]
    kept = [(row["prompt"], row["response"]) for method in ("dim", "ntp")
            if (patching / method / "examples.json").is_file()
            for rows in json.loads((patching / method / "examples.json").read_text()).values()
            for row in rows]
    assert kept and all(pair in pairs for pair in kept)
    stages = {p.name.split("-")[0] for p in run_dir.iterdir() if p.is_dir()}
    assert {"trained", "evaluation", "patching", "freeze", "sparsify"} <= stages
    # batches: one judge call per set of completions, never one per completion
    assert sum(batches) == len(seen)
    assert min(batches) >= 2 and len(batches) * 2 < len(seen), batches


@pytest.mark.parametrize("function, message", [
    ("boom", f"judge function '{MODULE}:boom' raised ValueError: cannot judge how do I d: "
             "fix the function: it takes (prompt, response) and returns True or False"),
    ("maybe", f"judge function '{MODULE}:maybe' returned 'maybe', not True or False: make it "
              "return a bool for each (prompt, response)"),
])
def test_a_bad_two_argument_judge_stops_the_run(workdir, tmp_path, monkeypatch, capsys,
                                                function, message):
    code, out = _run(workdir, tmp_path, monkeypatch, function)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0] == f"error: {message}.", err
    (run_dir,) = out.iterdir()
    folders = sorted(p.name for p in run_dir.iterdir() if p.is_dir())
    assert all((run_dir / f / "stage.json").is_file() for f in folders), folders
    assert not [p for p in run_dir.rglob("*") if ".tmp" in p.name]
    assert not any(f.startswith(("evaluation-", "patching-", "freeze-")) for f in folders)


def test_a_judge_of_three_arguments_is_refused_before_any_compute(workdir, tmp_path,
                                                                 monkeypatch, capsys):
    code, out = _run(workdir, tmp_path, monkeypatch, "three")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert f"judge function '{MODULE}:three' takes 3 required positional arguments" in err[0]
    assert "(prompt, response)" in err[0] and not out.exists()
