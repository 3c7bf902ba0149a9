"""Reliability of the run folder: a damaged artifact of a finished stage is noticed (sizes and
digest in its stage.json), recomputed, and the rerun ends with the same run folder as an
undamaged run; ``steerscope run --verify`` checks a folder without computing."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from conftest import write_pipeline_workdir
from test_pipeline import ORDER, _snapshot, tiny_config

from steerscope.cli import main
from steerscope.pipeline import run_pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny matrices: one thread


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return write_pipeline_workdir(tmp_path_factory.mktemp("reliability"))


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _delete(path):
    path.unlink()


def _edit(path):
    """Same size, other content: a JSON number's digits changed, else one byte flipped."""
    data = bytearray(path.read_bytes())
    i = next((k for k, b in enumerate(data) if chr(b).isdigit()), len(data) // 2)
    data[i] = ord("7") if data[i] != ord("7") else ord("3")
    path.write_bytes(bytes(data))


DAMAGES = (_truncate, _delete, _edit)


def _victim(folder):
    """The stage's main artifact: its largest file other than stage.json."""
    files = [p for p in folder.rglob("*") if p.is_file() and p.name != "stage.json"]
    return max(files, key=lambda p: (p.stat().st_size, p.name))


def test_a_damaged_artifact_of_each_stage_is_recomputed_to_an_undamaged_run(
        workdir, tmp_path, capsys):
    """Damage one artifact of each stage in turn (truncate, delete, same-size edit): the rerun
    says so in one line, recomputes that stage only (its files come out identical, so what
    depends on it is reused) and the run folder equals the undamaged run's."""
    cfg = tiny_config(workdir)
    out = tmp_path / "runs"
    first = run_pipeline(cfg, out, progress=False)
    reference = _snapshot(first.run_dir)
    capsys.readouterr()
    for i, name in enumerate(ORDER):
        folder = first.outputs[name].dir
        victim = _victim(folder)
        DAMAGES[i % len(DAMAGES)](victim)
        again = run_pipeline(cfg, out, progress=False)
        err = capsys.readouterr().err
        assert again.ran == [name], (name, victim)
        warning = [line for line in err.splitlines() if "damaged" in line]
        assert len(warning) == 1 and f"stage '{name}'" in warning[0], err
        assert again.records[name].reason.startswith("recomputed: the earlier folder")
        assert _snapshot(again.run_dir) == reference, name


def test_edited_asr_and_truncated_stage_json_never_reach_results(workdir, tmp_path, capsys):
    """The issue's reproduction: every ASR in evaluation.json set to 0.123 (or stage.json cut
    in half) is recomputed instead of flowing into results.json."""
    cfg = tiny_config(workdir, patching={"enabled": False}, circuits={"enabled": False},
                      freeze={"enabled": False}, svv={"enabled": False},
                      sparsify={"enabled": False}, report={"enabled": False})
    cfg["vectors"] = {**cfg["vectors"], "methods": ["dim"]}
    first = run_pipeline(cfg, tmp_path, progress=False)
    results = json.loads(first.results_path.read_text())
    ev = first.outputs["evaluation"].path("evaluation.json")
    text = ev.read_text()
    edited = re.sub(r'("behaviour_rate": )[0-9.]+', r"\g<1>0.123", text)
    assert edited != text
    ev.write_text(edited)
    (first.outputs["data"].dir / "stage.json").write_text('{"status": "do')
    again = run_pipeline(cfg, tmp_path, progress=False)
    assert set(again.ran) == {"data", "evaluation"}
    assert json.loads(again.results_path.read_text())["steering"] == results["steering"]
    assert "0.123" not in again.results_path.read_text()


def test_verify_checks_a_run_folder_without_computing(workdir, tmp_path, capsys):
    cfg = tiny_config(workdir, patching={"enabled": False}, circuits={"enabled": False},
                      freeze={"enabled": False}, svv={"enabled": False},
                      sparsify={"enabled": False}, report={"enabled": False})
    cfg["vectors"] = {**cfg["vectors"], "methods": ["dim"]}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "runs"
    assert main(["run", str(config), "--out", str(out), "--verify"]) == 2
    assert "has no run folder" in capsys.readouterr().err
    res = run_pipeline(config, out, progress=False)
    capsys.readouterr()
    assert main(["run", str(config), "--out", str(out), "--verify"]) == 0
    assert "all match their stage.json" in capsys.readouterr().out
    vec = res.outputs["vectors"].dir
    before = {p: p.stat().st_mtime_ns for p in res.run_dir.rglob("*") if p.is_file()}
    (vec / "dim.safetensors").write_bytes(b"garbage")
    before[vec / "dim.safetensors"] = (vec / "dim.safetensors").stat().st_mtime_ns
    assert main(["run", str(res.run_dir), "--verify"]) == 2  # a run folder works too
    captured = capsys.readouterr()
    assert re.search(rf"{vec.name} +damaged: dim.safetensors has 7 bytes", captured.out)
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: 1 stage folder(s)") and vec.name in err[0]
    assert "rerun 'steerscope run'" in err[0]
    # nothing was recomputed or rewritten
    assert {p: p.stat().st_mtime_ns for p in res.run_dir.rglob("*") if p.is_file()} == before


def test_a_moved_run_folder_is_reused_and_its_results_json_is_unchanged(workdir, tmp_path):
    """results.json holds paths relative to the run folder: moving the folder under another
    --out changes no byte, and the rerun there skips every stage (the report included)."""
    cfg = tiny_config(workdir, patching={"enabled": False}, circuits={"enabled": False},
                      freeze={"enabled": False}, svv={"enabled": False},
                      sparsify={"enabled": False})
    cfg["vectors"] = {**cfg["vectors"], "methods": ["dim"]}
    first = run_pipeline(cfg, tmp_path / "a", progress=False)
    text = first.results_path.read_text()
    results = json.loads(text)
    assert str(tmp_path) not in text.replace(str(workdir), "")
    assert results["run"]["dir"] == "."
    vec = results["vectors"]["dim"]["path"]
    assert vec == f"{first.outputs['vectors'].dir.name}/dim.safetensors"
    (tmp_path / "b").mkdir()
    moved = tmp_path / "b" / first.run_dir.name
    first.run_dir.rename(moved)
    again = run_pipeline(cfg, tmp_path / "b", progress=False)
    assert again.run_dir == moved and again.ran == []
    assert again.results_path.read_text() == text
    assert (moved / vec).is_file()
