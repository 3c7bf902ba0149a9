"""``steerscope run CONFIG --set KEY=VALUE`` end to end on the tiny model: the value reaches
the run (config.yaml, run.json, the stage keys: only the stages it configures get a new key),
and each bad ``--set`` is one line, exit 2, before any compute, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import write_pipeline_workdir
from test_pipeline import tiny_config

from steerscope.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    root = write_pipeline_workdir(tmp_path_factory.mktemp("set"))
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config(root, vectors={"methods": ["dim"]})))
    return path


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _run_json(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def test_set_reaches_the_run_and_only_the_stages_it_configures(config_file, tmp_path, capsys):
    out = tmp_path / "runs"
    common = ["run", str(config_file), "--out", str(out), "--until", "evaluation", "--quiet",
              "--json"]
    code, text, err = _run(capsys, *common)
    assert code == 0, err
    plain = Path(json.loads(text)["run_dir"])
    code, text, err = _run(capsys, *common, "--set", "evaluation.max_new_tokens=3",
                           "--set", "evaluation.batch_size=2")
    assert code == 0, err
    changed = Path(json.loads(text)["run_dir"])
    assert changed != plain  # the config hash names the run folder
    config = yaml.safe_load((changed / "config.yaml").read_text())
    assert config["evaluation"]["max_new_tokens"] == 3
    assert config["evaluation"]["batch_size"] == 2
    record = _run_json(changed)
    assert record["overrides"] == {"evaluation.max_new_tokens": 3, "evaluation.batch_size": 2}
    assert _run_json(plain)["overrides"] == {}
    dirs = {n: (_run_json(plain)["stages"][n]["dir"], record["stages"][n]["dir"])
            for n in ("model", "data", "vectors", "trained", "evaluation")}
    assert {n for n, (a, b) in dirs.items() if a != b} == {"evaluation"}
    completions = json.loads((changed / dirs["evaluation"][1] / "evaluation.json").read_text())
    assert completions["rows"]  # the stage ran with the set values
    # the same --set again: the same run folder, every stage reused
    code, text, err = _run(capsys, *common, "--set", "evaluation.max_new_tokens=3",
                           "--set", "evaluation.batch_size=2")
    assert code == 0 and Path(json.loads(text)["run_dir"]) == changed
    assert all(rec["status"] in ("skipped", "not run")
               for rec in json.loads(text)["stages"].values())


@pytest.mark.parametrize("value, match", [
    ("evaluation.batchsize=3", "error: --set evaluation.batchsize: unknown config key"),
    ("evaluation.batch_size=many", "is 'many', neither auto nor a number"),
    ("evaluation.max_new_tokens=many", "must be int, got 'many'"),
    ("sparsify.taus=[0.1", "--set sparsify.taus: the value '[0.1' is not valid YAML"),
    ("sparsify.taus=[0.1]", "--set sparsify.taus: stage sparsify does not run (it comes after "
                            "--until evaluation)"),
    ("vectors.ntp.epochs=2", "--set vectors.ntp.epochs: the ntp vector is not made in this run"),
    ("evaluation.batch_size", "--set 'evaluation.batch_size' is not KEY=VALUE"),
])
def test_bad_set_is_one_line_exit_2_nothing_written(config_file, tmp_path, capsys, value, match):
    out = tmp_path / "runs"
    code, text, err = _run(capsys, "run", str(config_file), "--out", str(out), "--until",
                           "evaluation", "--quiet", "--set", value)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and match in lines[0], err
    assert not out.exists()


def test_set_of_a_disabled_stage(config_file, tmp_path, capsys):
    out = tmp_path / "runs"
    code, _, err = _run(capsys, "run", str(config_file), "--out", str(out), "--quiet",
                        "--set", "freeze.enabled=false", "--set", "freeze.modes=[qk]")
    assert code == 2 and "stage freeze does not run (freeze.enabled is false)" in err
    assert not out.exists()


def test_demo_takes_set_over_its_config(tmp_path, capsys):
    """`steerscope demo --set`: checked before anything is built or written."""
    out = tmp_path / "runs"
    code, _, err = _run(capsys, "demo", "--out", str(out), "--quiet",
                        "--set", "evaluation.batchsize=1")
    assert code == 2 and err.startswith("error: --set evaluation.batchsize: unknown config key")
    assert not out.exists()
