"""Header checks of model files (steerscope.models.file_checks) and the self-digest of JSON
records (steerscope.artifacts.seal), each against an independent reading."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from steerscope.artifacts import read_sealed_json, seal, seal_problem
from steerscope.errors import SteerscopeError
from steerscope.models.file_checks import check_depth, layer_counts, safetensors_tensor_names


def test_safetensors_names_match_the_library_and_extra_bytes_are_damage(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"model.layers.0.w": torch.ones(3, 2), "model.norm.w": torch.zeros(5)}, path)
    with safe_open(path, "pt") as fh:
        expected = sorted(fh.keys())
    assert sorted(safetensors_tensor_names(path)) == expected
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(SteerscopeError, match="truncated or damaged"):
        safetensors_tensor_names(path)


def test_layer_counts_group_each_stack():
    names = ["model.layers.0.a", "model.layers.3.a", "vision.encoder.layers.26.b", "lm_head.w"]
    assert layer_counts(names) == {4, 27}
    assert layer_counts(["embed.w"]) == set()


@pytest.mark.parametrize("depth,ok", [(4, True), (27, True), (5, False), (1e9, False),
                                      (0, False), (True, False), (4.5, False), ("4", False)])
def test_check_depth(depth, ok):
    config = {"num_hidden_layers": depth}
    if ok:
        check_depth(config, "config.json", {4, 27})
    else:
        with pytest.raises(SteerscopeError, match="config.json: num_hidden_layers"):
            check_depth(config, "config.json", {4, 27})


def test_text_config_depth_is_the_one_checked():
    check_depth({"num_hidden_layers": 99, "text_config": {"num_hidden_layers": 4}}, "c", {4})


def test_seal_finds_any_edit_and_survives_a_json_round_trip(tmp_path):
    record = seal({"outputs": {"layer": 2, "alphas": (1.0, float("nan"))}, "key": "abc"})
    path = tmp_path / "r.json"
    path.write_text(json.dumps(record, indent=2))
    assert read_sealed_json(path) == (record, None)
    assert record["outputs"]["alphas"] == [1.0, None]
    edited = json.loads(path.read_text())
    edited["outputs"]["layer"] = 7
    assert seal_problem(edited, "r.json") == "r.json was edited after it was written"
    del edited["record_digest"]
    assert "records no digest of itself" in seal_problem(edited, "r.json")
    path.write_text("[1")
    assert read_sealed_json(path)[1] == "r.json is unreadable (JSONDecodeError)"
