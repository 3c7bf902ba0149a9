"""``data.sampling: released``: the authors' one random stream, checked against an
independent ``random.seed(42); random.sample(...)`` sequence on the standard splits."""

from __future__ import annotations

import json
import random

import pytest

from steerscope.data.sampling import released_splits, released_training_prompts
from steerscope.errors import SteerscopeError
from steerscope.pipeline.config import load_config
from steerscope.pipeline.inputs import (
    check_released_sources,
    data_plan,
    load_source,
    released_pools,
    sample_splits,
)

SPLITS = ("harmful_train", "harmless_train", "harmful_val", "harmless_val", "harmless_test")


def _instructions(folder, name):
    """The split file's instruction strings, read with plain json (as the released code)."""
    return [d["instruction"] for d in json.loads((folder / "splits" / f"{name}.json").read_text())]


def _config(data_dir, **data):
    return load_config({"data": {"data_dir": str(data_dir), "sampling": "released",
                                 "harmful_train": "harmful_train",
                                 "harmless_train": "harmless_train",
                                 "harmful_val": "harmful_val", "harmless_val": "harmless_val",
                                 "harmful_test": "harmful_test",
                                 "harmless_test": "harmless_test", **data}})


def test_released_splits_equal_one_seeded_stream(shared_data):
    files = {k: _instructions(shared_data, k) for k in SPLITS}
    # the released code, written out independently: one global stream, five draws
    random.seed(42)
    expected = [random.sample(files["harmful_train"], 128),
                random.sample(files["harmless_train"], 128),
                random.sample(files["harmful_val"], 32),
                random.sample(files["harmless_val"], 32),
                random.sample(files["harmless_test"], 100)]
    got = released_splits(files, n_train=128, n_val=32, n_test=100)
    assert [got[k] for k in SPLITS] == expected
    # the paper's 100 Alpaca test prompts are the first 100 of the released config's 200
    released_200 = released_splits(files, n_train=128, n_val=32, n_test=200)["harmless_test"]
    assert got["harmless_test"] == released_200[:100]
    # today's per-split mode shares only the harmful train set with it
    per_split = {k: random.Random(42).sample(files[k], len(v)) for k, v in got.items()}
    assert per_split["harmful_train"] == got["harmful_train"]
    assert per_split["harmless_train"] != got["harmless_train"]


def test_pipeline_data_stage_samples_the_released_stream(shared_data):
    cfg = _config(shared_data, n_test=50)
    loaded = {src: load_source(src, cfg.data.data_dir) for src in data_plan(cfg)}
    check_released_sources(cfg)
    splits = sample_splits(cfg, loaded)
    files = {k: _instructions(shared_data, k) for k in (*SPLITS, "harmful_test")}
    random.seed(42)
    for key, split, n in (("harmful_train", "present_train", 128),
                          ("harmless_train", "absent_train", 128),
                          ("harmful_val", "present_val", 32), ("harmless_val", "absent_val", 32),
                          ("harmless_test", "absent_test", 50)):
        assert splits[split] == random.sample(files[key], n), key
    assert splits["present_test"] == files["harmful_test"][:50]  # file order, not sampled
    # the per-split mode (the default) is unchanged and differs
    default = sample_splits(load_config({**cfg.to_dict(),
                                         "data": {**cfg.to_dict()["data"],
                                                  "sampling": "per_split"}}), loaded)
    assert default["present_train"] == splits["present_train"]
    assert default["absent_val"] != splits["absent_val"]


def test_released_training_prompts_continue_a_fresh_stream(shared_data):
    files = {k: _instructions(shared_data, k) for k in SPLITS}
    random.seed(42)
    first = [random.sample(files[k], n) for k, n in (("harmful_train", 128),
                                                      ("harmless_train", 128),
                                                      ("harmful_val", 32),
                                                      ("harmless_val", 32))]
    extra_harmful = random.sample([x for x in files["harmful_train"] if x not in first[0]], 128)
    extra_harmless = random.sample([x for x in files["harmless_train"] if x not in first[1]],
                                   128)
    got = released_training_prompts(files, n_train=128, n_val=32, n_total=256)
    assert got["harmful"] == first[0] + extra_harmful
    assert got["harmless"] == first[1] + extra_harmless
    cfg = _config(shared_data)
    assert released_pools(cfg)["harmful_train"] == files["harmful_train"]


def test_released_sample_larger_than_its_split_is_one_line(shared_data):
    files = {k: _instructions(shared_data, k) for k in SPLITS}
    with pytest.raises(SteerscopeError, match="harmful_val, which has 39") as e:
        released_splits(files, n_train=128, n_val=40)
    assert "\n" not in str(e.value)


def test_released_sampling_needs_one_source_per_split(shared_data):
    cfg = _config(shared_data, harmful_val="harmful_train")
    with pytest.raises(SteerscopeError, match="'data.harmful_val' names the same source"):
        check_released_sources(cfg)


def test_split_file_without_instruction_field_is_named(shared_data, tmp_path):
    bad = tmp_path / "harmful_val.json"
    bad.write_text(json.dumps([{"prompt": "a"}, {"prompt": "b"}]))
    cfg = _config(shared_data, harmful_val=str(bad))
    with pytest.raises(SteerscopeError, match=r"harmful_val.json item 1 has no 'instruction'") as e:
        check_released_sources(cfg)
    assert "\n" not in str(e.value)


def test_unknown_sampling_is_a_config_error():
    with pytest.raises(SteerscopeError, match="'data.sampling' has unknown value 'paper'"):
        load_config({"data": {"sampling": "paper"}})
