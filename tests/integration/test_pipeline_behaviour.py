"""The pipeline runs on a behaviour (issue 13): ``behaviour: refusal`` (the default, the
paper's choices) or ``behaviour: FILE.yaml``; sources come from the behaviour unless the data
section overrides them; results.json records the behaviour; judge and fast score come from
it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import PIPELINE_HARMFUL, PIPELINE_HARMLESS, write_pipeline_workdir

from steerscope.behaviours import REFUSAL
from steerscope.errors import SteerscopeError
from steerscope.pipeline import check_results, config_from_dict, load_config, run_pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return write_pipeline_workdir(tmp_path_factory.mktemp("behaviour"))


def _config(root: Path, **changes) -> dict:
    """Tiny model, DIM only, 4-token generations; no data keys (the behaviour's sources)."""
    cfg = {
        "name": "beh",
        "model": {"source": str(root / "model")},
        "data": {"n_train": 4, "n_val": 3, "n_test": 4},
        "vectors": {"methods": ["dim"], "batch_size": 4,
                    "dim": {"filter": False, "kl_threshold": 1e9, "induce_threshold": -1e9,
                            "positions": [-1]}},
        "evaluation": {"max_new_tokens": 4, "batch_size": 3},
    }
    cfg.update(changes)
    return cfg


def _behaviour_file(root: Path) -> Path:
    """A behaviour written by a user: relative prompt files, a regex judge, listed tokens."""
    folder = root / "mine"
    folder.mkdir(exist_ok=True)
    (folder / "on.txt").write_text("\n".join(PIPELINE_HARMFUL) + "\n")
    (folder / "off.txt").write_text("\n".join(PIPELINE_HARMLESS) + "\n")
    path = folder / "mine.yaml"
    path.write_text(yaml.safe_dump({
        "name": "mine",
        "present": {"train": "on.txt", "val": "on.txt", "test": "on.txt"},
        "absent": {"train": "off.txt", "val": "off.txt", "test": "off.txt"},
        "judge": {"kind": "regex", "patterns": ["[aeiou]"], "min_matches": 1},
        "score_tokens": ["The"],
        "labels": {"present": "on", "absent": "off"},
    }))
    return path


def test_the_default_behaviour_is_refusal_with_its_old_keys():
    cfg = config_from_dict({})
    assert cfg.behaviour == "refusal"
    from steerscope.pipeline.behaviour import split_sources

    src = {k: v[0] for k, v in split_sources(cfg).items()}
    assert src == {"present_train": "harmful_train", "absent_train": "harmless_train",
                   "present_val": "harmful_val", "absent_val": "harmless_val",
                   "present_test": "jailbreakbench", "absent_test": "harmless_test"}
    # refusal's keys and the generic keys override the same split
    over = config_from_dict({"data": {"present_test": "a.txt", "harmless_test": "b.txt"}})
    src = {k: v for k, v in split_sources(over).items()}
    assert src["present_test"] == ("a.txt", "data.present_test")
    assert src["absent_test"] == ("b.txt", "data.harmless_test")


@pytest.mark.parametrize("changes, match", [
    ({"behaviour": "sycophancy-nope"}, r"config key 'behaviour': behaviour 'sycophancy-nope'"),
    ({"data": {"harmful_train": "a.txt", "present_train": "b.txt"}},
     r"config key 'data.harmful_train' and data.present_train name the same split"),
])
def test_bad_behaviour_keys_fail_in_one_line(changes, match):
    with pytest.raises(SteerscopeError, match=match) as e:
        config_from_dict(changes)
    assert "\n" not in str(e.value)


def test_refusal_fast_score_is_the_refusal_tokens(workdir):
    """The behaviour path gives refusal's exact token ids, so refusal runs keep their
    numbers."""
    from transformers import AutoTokenizer

    from steerscope.evaluate.refusal import refusal_token_ids

    tok = AutoTokenizer.from_pretrained(workdir / "model")
    assert REFUSAL.score_token_ids(tok) == refusal_token_ids(tok)


def test_a_user_behaviour_runs_through_the_pipeline(workdir, tmp_path):
    behaviour = _behaviour_file(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_config(workdir, behaviour="mine/mine.yaml")))
    assert load_config(config).behaviour == str(behaviour)  # relative to the config's folder
    res = run_pipeline(config, tmp_path / "runs", until="evaluation", progress=False)
    results = json.loads(res.results_path.read_text())
    check_results(results)
    assert results["behaviour"]["name"] == "mine"
    definition = results["behaviour"]["definition"]
    assert definition["judge"]["kind"] == "regex" and definition["score_tokens"] == ["The"]
    assert definition["labels"]["present"] == "on"
    # prompts from the behaviour's files
    prompts = json.loads(res.outputs["data"].path("prompts.json").read_text())
    assert set(prompts["present_test"]) <= set(PIPELINE_HARMFUL)
    assert set(prompts["absent_train"]) <= set(PIPELINE_HARMLESS)
    # the fast score is the behaviour's token, the rates are its judge's
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(workdir / "model")
    assert res.outputs["vectors"].outputs["score_ids"] == \
        tok("The", add_special_tokens=False)["input_ids"][:1]
    table = json.loads(res.outputs["evaluation"].path("evaluation.json").read_text())
    for row in table["rows"]:
        outs = table["completions"][row["method"]][row["side"]]
        rate = sum(bool(re.search("[aeiou]", o, re.IGNORECASE)) for o in outs) / len(outs)
        assert row["behaviour_rate"] == pytest.approx(rate)


def test_default_refusal_runs_record_refusal(workdir, tmp_path):
    cfg = _config(workdir, data={"n_train": 4, "n_val": 3, "n_test": 4,
                                 **{k: str(workdir / ("harmful.txt" if "harmful" in k
                                                      else "harmless.txt"))
                                    for k in ("harmful_train", "harmless_train", "harmful_val",
                                              "harmless_val", "harmful_test",
                                              "harmless_test")}})
    res = run_pipeline(cfg, tmp_path / "runs", until="data", progress=False)
    results = json.loads(res.results_path.read_text())
    assert results["behaviour"] == {"name": "refusal", "definition": REFUSAL.to_dict()}


def test_a_user_behaviour_runs_through_every_stage(workdir, tmp_path):
    """The whole study on a user behaviour: trained vectors (DIM-steered absent examples),
    patching on token flips, circuits, freezing, svv, sparsify and the report."""
    behaviour = _behaviour_file(tmp_path)
    cfg = _config(workdir, behaviour=str(behaviour), vectors={
        "methods": ["dim", "ntp"], "batch_size": 4,
        "dim": {"filter": False, "kl_threshold": 1e9, "induce_threshold": -1e9,
                "positions": [-1]},
        "preference": {"max_new_tokens": 4, "harmless_refuse": "dim"},
        "ntp": {"lr": [0.04], "epochs": 1, "max_response_tokens": 4}},
        patching={"flip": "tokens", "n_prompts": 1, "ig_steps": 2, "max_new_tokens": 4},
        circuits={"sizes": [10, 50, 1000], "n_random": 1, "refine_steps": 1},
        freeze={"n_prompts": 3, "max_new_tokens": 4},
        svv={"top_tokens": 5, "n_heads": 3},
        sparsify={"taus": [0, 1], "n_prompts": 3, "max_new_tokens": 4})
    res = run_pipeline(cfg, tmp_path / "runs", progress=False)
    assert all(r.status in ("ran", "skipped") for r in res.records.values()), res.records
    results = json.loads(res.results_path.read_text())
    assert {"steering", "freeze", "svv", "sparsify", "circuits"} <= set(check_results(results))
    assert results["behaviour"]["name"] == "mine"
    sweep = json.loads(res.outputs["sparsify"].path("sweep.json").read_text())
    assert "mine" in json.dumps(sweep)  # the sweep records the behaviour it judged
    report = (res.run_dir / "report.html").read_text()
    assert ">on rate<" in report and ">on ASR<" not in report  # labels from the behaviour


def test_instruction_refusals_are_refusal_only(tmp_path):
    behaviour = _behaviour_file(tmp_path)
    with pytest.raises(SteerscopeError, match="vectors.preference.harmless_refuse"):
        config_from_dict({"behaviour": str(behaviour)})


def test_auto_score_tokens_reach_the_freezing_table(workdir, tmp_path, monkeypatch):
    """score_tokens: auto is derived once, by the vectors stage (from the model and the train
    prompts); the freezing table reuses those ids (it failed with "needs the model and its
    train prompts" on the lists / code study before). The tiny model's greedy first tokens
    do not separate the sides, so the derivation is replaced by a fixed id."""
    from steerscope.behaviours import score

    monkeypatch.setattr(score, "auto_score_tokens",
                        lambda *a, **k: score.ScoreTokens((7,), score.RULE_SINGLE, {7: (1.0, 0.0)}))
    behaviour = _behaviour_file(tmp_path)
    definition = yaml.safe_load(behaviour.read_text())
    behaviour.write_text(yaml.safe_dump({**definition, "score_tokens": "auto"}))
    cfg = _config(workdir, behaviour=str(behaviour),
                  patching={"enabled": False}, circuits={"enabled": False},
                  svv={"enabled": False}, sparsify={"enabled": False},
                  freeze={"n_prompts": 2, "max_new_tokens": 3, "modes": ["qk", "ov"]})
    res = run_pipeline(cfg, tmp_path / "runs", until="freeze", progress=False)
    assert res.outputs["vectors"].outputs["score_ids"] == [7]
    table = json.loads(res.outputs["freeze"].path("freeze.json").read_text())
    assert set(json.loads(res.results_path.read_text())["freeze"]) >= {"none", "qk", "ov"}
    assert table  # written
