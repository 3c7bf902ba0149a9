"""Config keys of earlier versions (refusal's side words, ``harmless_refuse``) are read by the
config loader as today's keys: the same config, config.yaml and run hash as the new spelling."""

from __future__ import annotations

import pytest
import yaml

from steerscope.errors import SteerscopeError
from steerscope.pipeline.config import config_from_dict, dump_config, load_config
from steerscope.pipeline.runner import prepare
from steerscope.pipeline.store import hash_json

NEW = {"data": {"present_train": "p.txt", "absent_train": "a.txt", "present_val": "p.txt",
                "absent_val": "a.txt", "present_test": "pt.txt", "absent_test": "at.txt",
                "n_train": 2, "n_val": 1, "n_test": 2},
       "vectors": {"methods": ["dim", "ntp"], "preference": {"absent_shown": "dim"}}}
OLD_SPELLING = {"present": "harmful", "absent": "harmless"}


def _old(cfg: dict) -> dict:
    """``cfg`` as an earlier version spelled it."""
    data = {}
    for key, value in cfg["data"].items():
        side, _, split = key.partition("_")
        data[f"{OLD_SPELLING[side]}_{split}" if side in OLD_SPELLING else key] = value
    return {"data": data, "vectors": {"methods": cfg["vectors"]["methods"],
                                      "preference": {"harmless_refuse": "dim"}}}


def test_old_keys_give_the_same_config_and_hash():
    new, old = config_from_dict(NEW), config_from_dict(_old(NEW))
    assert old == new and dump_config(old) == dump_config(new)
    assert hash_json(old.to_dict()) == hash_json(new.to_dict())
    assert new.data.present_test == "pt.txt" and new.vectors.preference.absent_shown == "dim"
    assert "harmful" not in dump_config(new) and "harmless_refuse" not in dump_config(new)


def test_an_old_config_file_runs_in_the_same_folder(tmp_path):
    """An old config file next to its prompt files (relative paths anchored for both
    spellings) prepares the same run folder as the new spelling."""
    from steerscope.testing import save_tiny_chat_model

    save_tiny_chat_model(tmp_path / "model", "llama")
    for name in ("p.txt", "a.txt", "pt.txt", "at.txt"):
        (tmp_path / name).write_text("".join(f"{name} prompt {i}\n" for i in range(8)))
    folders = []
    for i, cfg in enumerate((NEW, _old(NEW))):
        path = tmp_path / f"c{i}.yaml"
        path.write_text(yaml.safe_dump({"model": {"source": "model"}, **cfg}))
        assert load_config(path).data.present_train == str(tmp_path / "p.txt")
        folders.append(prepare(path, tmp_path / "runs")[2])
    assert folders[0] == folders[1]


def test_the_config_yaml_of_an_earlier_version_reads():
    """Earlier versions' config.yaml listed both spellings, one of them null."""
    old = {"data": {"present_train": None, "harmful_train": "p.txt",
                    "harmless_train": None, "absent_train": "a.txt"}}
    cfg = config_from_dict(old)
    assert (cfg.data.present_train, cfg.data.absent_train) == ("p.txt", "a.txt")


@pytest.mark.parametrize("data, key", [
    ({"data": {"harmful_train": "a.txt", "present_train": "b.txt"}}, "data.harmful_train"),
    ({"vectors": {"preference": {"harmless_refuse": "dim", "absent_shown": "instruction"}}},
     "vectors.preference.harmless_refuse"),
])
def test_both_spellings_with_two_values_fail_in_one_line(data, key):
    with pytest.raises(SteerscopeError, match=f"config key '{key}' and .* name the same "
                                              "setting") as e:
        config_from_dict(data)
    assert "\n" not in str(e.value)


def test_an_unknown_key_is_still_unknown():
    with pytest.raises(SteerscopeError, match="unknown config key 'data.harmfull_train'"):
        config_from_dict({"data": {"harmfull_train": "a.txt"}})


def test_a_set_replaces_the_old_spelling_of_its_key():
    """--set data.present_train=... over a config file that spells the key data.harmful_train
    replaces that value (no 'same setting' error)."""
    from steerscope.pipeline.overrides import load_config_with_sets

    cfg = load_config_with_sets(_old(NEW), ["data.present_train=q.txt",
                                            "vectors.preference.absent_shown=instruction"])
    assert cfg.data.present_train == "q.txt" and cfg.data.absent_train == "a.txt"
    assert cfg.vectors.preference.absent_shown == "instruction"
