"""Every check runs before compute: judges, devices, positions, extraction keywords, options
keys, Hub datasets and architectures fail in one line with nothing written and no weights
read; relative paths in a config file mean files next to it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from conftest import write_pipeline_workdir
from test_pipeline import tiny_config

from steerscope.cli import main
from steerscope.errors import SteerscopeError
from steerscope.pipeline import prepare, run_pipeline


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return write_pipeline_workdir(tmp_path_factory.mktemp("preflight"))


@pytest.fixture
def no_weights(monkeypatch):
    import transformers

    def fail(*a, **k):
        raise AssertionError("weights were loaded during validation")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fail)


CASES = [
    ({"evaluation": {"judge": "classifier:/missing/path"}},
     r"'evaluation.judge': judge model folder /missing/path does not exist"),
    ({"vectors": {"position": -999}},
     r"'vectors.position': position -999 is before the start of the shortest formatted "
     r"train/val prompt \(\d+ tokens\): use a position from -1 to -\d+"),
    ({"vectors": {"dim": {"positions": [-1, -500]}}},
     r"'vectors.dim.positions': position -500 is before the start"),
    ({"vectors": {"methods": ["dim", "pca"], "extraction": {"pca": {"bogus": 1}}}},
     r"'vectors.extraction.pca': method 'pca' does not take \['bogus'\]"),
    ({"patching": {"options": {"speed": "fast"}}},
     r"unknown config key 'patching.options.speed': keys patching.options takes: none yet"),
    ({"sparsify": {"options": {"x": 1}}}, r"unknown config key 'sparsify.options.x'"),
]


@pytest.mark.parametrize("changes,match", CASES)
def test_checked_before_anything_is_written(workdir, tmp_path, no_weights, changes, match):
    out = tmp_path / "runs"
    cfg = tiny_config(workdir)
    for k, v in changes.items():
        cfg[k] = {**cfg[k], **v}
    with pytest.raises(SteerscopeError, match=match):
        run_pipeline(cfg, out)
    assert not out.exists()


def test_a_cuda_device_without_cuda(workdir, tmp_path, no_weights, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config(workdir, model={"device": "cuda"})))
    assert main(["run", str(config), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: config key 'model.device': 'cuda' but CUDA is not available on this "
                   "machine: set model.device: cpu (or auto).")
    assert not (tmp_path / "runs").exists()


def test_an_offline_hub_judge(workdir, tmp_path, no_weights, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SteerscopeError, match=r"'evaluation.judge': judge model "
                                              r"'meta-llama/Meta-Llama-Guard-2-8B' is not in the "
                                              r"local Hugging Face cache"):
        run_pipeline(tiny_config(workdir, evaluation={"judge": "llamaguard"}), tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_a_local_classifier_judge_folder_passes(workdir, tmp_path):
    from steerscope.pipeline.preflight import check_judge

    check_judge(f"classifier:{workdir / 'model'}")  # a folder with config.json: accepted
    check_judge("substring")
    check_judge(None)


def test_an_empty_config_fails_on_its_hub_datasets_before_writing(tmp_path, monkeypatch,
                                                                  no_weights):
    """Named datasets without a data folder come from the Hub: fetched during validation."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("STEERSCOPE_DATA_DIR", raising=False)
    config = tmp_path / "empty.yaml"
    config.write_text("")
    out = tmp_path / "runs"
    with pytest.raises(SteerscopeError, match=r"config key data.present_train: dataset 'harmful_train'"):
        run_pipeline(config, out)
    assert not out.exists()


def test_a_gpt2_folder_is_an_unsupported_architecture(workdir, tmp_path, no_weights):
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2,
                                                    "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(SteerscopeError, match=r"'model.source': unsupported architecture "
                                              r"'gpt2': steerscope supports"):
        run_pipeline(tiny_config(workdir, model={"source": str(folder)}), tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_relative_paths_in_a_config_file_resolve_against_its_folder(workdir, tmp_path,
                                                                    monkeypatch):
    cfg = tiny_config(workdir)
    cfg["model"]["source"] = os.path.relpath(workdir / "model", tmp_path)
    for key in ("harmful_train", "harmful_val", "harmful_test"):
        cfg["data"][key] = os.path.relpath(workdir / "harmful.txt", tmp_path)
    for key in ("harmless_train", "harmless_val", "harmless_test"):
        cfg["data"][key] = os.path.relpath(workdir / "harmless.txt", tmp_path)
    cfg["evaluation"]["judge"] = "classifier:" + os.path.relpath(workdir / "model", tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    elsewhere = tmp_path / "elsewhere" / "deeper"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    loaded, _, run_dir = prepare(config, "runs")
    assert loaded.model.source == str(workdir / "model")
    assert loaded.data.present_test == str(workdir / "harmful.txt")
    assert loaded.evaluation.judge == f"classifier:{workdir / 'model'}"
    # the same run folder as the config written with absolute paths
    absolute = tiny_config(workdir, evaluation={"judge": f"classifier:{workdir / 'model'}"})
    assert prepare(absolute, "runs")[2] == run_dir
    assert loaded.name == "tiny" and not Path("runs").exists()
