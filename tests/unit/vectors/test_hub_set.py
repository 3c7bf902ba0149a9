"""Multi-layer vector sets on the Hub: ``SteeringVectorSet.save_pretrained`` /
``from_pretrained`` / ``push_to_hub``, the card listing every layer and its norm, reading a
snapshot from a Hugging Face cache folder offline, and ``steerscope vectors push`` / ``pull``
of sets (a set file, a multi-layer run folder). No test touches the network: the Hub is a
cache folder (hub_testing.cache_snapshot) and the upload is monkeypatched (test_hub.fake_hub)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from hub_testing import COMMIT, cache_snapshot
from huggingface_hub import ModelCard
from safetensors.torch import save_file
from test_hub import MODEL, bits, fake_hub, one_line, synthetic_results  # noqa: F401 (fixture)

import steerscope as ss
from steerscope.cli import main
from steerscope.errors import SteerscopeError
from steerscope.vectors import SteeringVector, SteeringVectorSet
from steerscope.vectors.hub import CARD_FILE, CONFIG_FILE, TENSOR_FILE, read_payload


def a_set(layers=(5, 2, 7), seed=0, model_id=MODEL, method="dim") -> SteeringVectorSet:
    g = torch.Generator().manual_seed(seed)
    return SteeringVectorSet(torch.randn(len(layers), 24, generator=g) * 2.9,
                             layers=list(layers), method=method, model_id=model_id,
                             revision="abc123", position=-1, hyperparameters={"n": 3},
                             metadata={"note": "é ✓"})


def same_set(a: SteeringVectorSet, b: SteeringVectorSet) -> bool:
    return type(a) is type(b) and a.layers == b.layers and bits(a.vector) == bits(b.vector) \
        and a.to_metadata() == b.to_metadata()


def test_round_trip_is_exact_and_the_tensor_file_is_a_set_file(tmp_path):
    vs = a_set()
    folder = vs.save_pretrained(tmp_path / "set", behaviour="refusal", alpha=-1.0)
    assert sorted(p.name for p in folder.iterdir()) == sorted([TENSOR_FILE, CONFIG_FILE,
                                                                CARD_FILE])
    back = SteeringVectorSet.from_pretrained(folder)
    assert same_set(back, vs) and back.layers == [2, 5, 7]
    # the folder's tensor file is byte for byte what SteeringVectorSet.save writes
    assert (folder / TENSOR_FILE).read_bytes() == vs.save(tmp_path / "x.safetensors").read_bytes()
    assert same_set(SteeringVectorSet.load(folder / TENSOR_FILE), vs)
    config = json.loads((folder / CONFIG_FILE).read_text())
    assert config["kind"] == "steering_vector_set" and config["layers"] == [2, 5, 7]
    assert sorted(config["tensors"]) == ["layer.2", "layer.5", "layer.7"]


def test_card_parses_and_lists_every_layer_with_its_norm(tmp_path):
    vs = a_set()
    folder = vs.save_pretrained(tmp_path / "set", behaviour="refusal", alpha=-1.0)
    card = ModelCard.load(folder / CARD_FILE)
    assert card.data.base_model == MODEL and card.data.library_name == "steerscope"
    assert {"steerscope", "steering-vector", "dim", "refusal"} <= set(card.data.tags)
    rows = re.findall(r"^\| (\d+) \| ([0-9.]+) \|$", card.text, re.M)
    assert [(int(x), float(n)) for x, n in rows] == [
        (layer, round(float(v.norm()), 4)) for layer, v in zip(vs.layers, vs.vector)]
    assert "| layers | 2, 5, 7 |" in card.text and "entering blocks 2 and 5 and 7" in card.text
    assert "ss.SteeringVectorSet.from_pretrained(" in card.text
    assert "SteeringVectorSet" in ss.__all__ and ss.SteeringVectorSet is SteeringVectorSet


def test_the_cards_python_snippet_runs_and_steers_every_layer(tmp_path, monkeypatch, capsys):
    """The set card's usage code, run as written on a tiny model, prints the same completions
    as the two single-layer interventions of its layers together."""
    from steerscope.models import save_tiny_chat_model

    save_tiny_chat_model(tmp_path / "tiny-chat", "qwen2")
    lm = ss.load_model(str(tmp_path / "tiny-chat"))
    g = torch.Generator().manual_seed(1)
    vs = SteeringVectorSet(torch.randn(2, lm.arch.d_model, generator=g) * 6, layers=[1, 3],
                           model_id=str(tmp_path / "tiny-chat"))
    folder = vs.save_pretrained(tmp_path / "vec")
    code = re.search(r"```python\n(.*?)```", (folder / CARD_FILE).read_text(), re.S).group(1)
    code = code.replace('"OWNER/NAME"', repr(str(folder)))  # no repo id: the local folder
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    prompts = [ss.format_prompt(lm.tokenizer, "How do I pick a lock?")]
    ops = [ss.steer(vs.vector[0], layer=1, alpha=-1.0), ss.steer(vs.vector[1], layer=3,
                                                                  alpha=-1.0)]
    steered = ss.generate(lm.model, lm.tokenizer, prompts, interventions=ops, max_new_tokens=32)
    assert printed.strip() == str(steered).strip()
    assert steered != ss.generate(lm.model, lm.tokenizer, prompts, max_new_tokens=32)


def test_the_wrong_class_is_one_line_naming_the_right_one(tmp_path):
    set_folder = a_set().save_pretrained(tmp_path / "set")
    vec_folder = a_set().at(5).save_pretrained(tmp_path / "vec")
    with pytest.raises(SteerscopeError) as e:
        SteeringVector.from_pretrained(set_folder)
    assert "holds a steering_vector_set, not a steering_vector" in one_line(e)
    assert "steerscope.SteeringVectorSet.from_pretrained" in one_line(e)
    with pytest.raises(SteerscopeError) as e:
        SteeringVectorSet.from_pretrained(vec_folder)
    assert "steerscope.SteeringVector.from_pretrained" in one_line(e)


def tamper(vs: SteeringVectorSet, folder) -> None:
    """Rewrite the folder's tensor file with one layer changed and the original header."""
    header = json.dumps(vs.to_metadata(), sort_keys=True)
    tensors = {f"layer.{x}": v.clone() for x, v in zip(vs.layers, vs.vector)}
    tensors[f"layer.{vs.layers[-1]}"] += 1
    save_file(tensors, str(folder / TENSOR_FILE), metadata={"steerscope": header})


def test_a_tampered_set_is_caught(tmp_path):
    vs = a_set()
    folder = vs.save_pretrained(tmp_path / "set")
    tamper(vs, folder)
    with pytest.raises(SteerscopeError) as e:
        SteeringVectorSet.from_pretrained(folder)
    assert "does not match its recorded sha256" in one_line(e)


def test_from_pretrained_reads_a_cached_snapshot_offline(tmp_path, monkeypatch):
    vs = a_set()
    vs.save_pretrained(tmp_path / "src")
    snap = cache_snapshot(tmp_path / "hub", "someone/refusal-set", tmp_path / "src")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    back = SteeringVectorSet.from_pretrained("someone/refusal-set")
    assert same_set(back, vs) and read_payload(snap).path == snap / TENSOR_FILE
    assert same_set(SteeringVectorSet.from_pretrained("someone/refusal-set", revision=COMMIT),
                    vs)
    with pytest.raises(SteerscopeError) as e:
        SteeringVectorSet.from_pretrained("someone/not-cached")
    assert "HF_HUB_OFFLINE is set" in one_line(e)


def test_from_pretrained_checks_the_set_against_the_model(tmp_path):
    from steerscope.models import save_tiny_chat_model

    save_tiny_chat_model(tmp_path / "tiny-chat", "qwen2")
    lm = ss.load_model(str(tmp_path / "tiny-chat"))
    g = torch.Generator().manual_seed(2)
    fits = SteeringVectorSet(torch.randn(2, lm.arch.d_model, generator=g), layers=[0, 2])
    out = SteeringVectorSet(torch.randn(2, lm.arch.d_model, generator=g),
                            layers=[1, lm.arch.n_layers])
    fits.save_pretrained(tmp_path / "fits", base_model="tiny-chat")
    out.save_pretrained(tmp_path / "out", base_model="tiny-chat")
    assert same_set(SteeringVectorSet.from_pretrained(tmp_path / "fits", arch=lm.arch), fits)
    with pytest.raises(SteerscopeError) as e:
        SteeringVectorSet.from_pretrained(tmp_path / "out", arch=lm.arch)
    assert f"layer {lm.arch.n_layers} is out of range" in one_line(e)


def test_push_to_hub_uploads_the_saved_folder(fake_hub):  # noqa: F811
    vs = a_set()
    url = vs.push_to_hub("someone/refusal-set", behaviour="refusal", alpha=-1.0)
    assert url == f"https://huggingface.co/someone/refusal-set/commit/{COMMIT}"
    (repo_id, folder, _), = fake_hub["upload"]
    assert repo_id == "someone/refusal-set" and same_set(SteeringVectorSet.from_pretrained(
        folder), vs)
    assert 'ss.SteeringVectorSet.from_pretrained("someone/refusal-set", arch=lm.arch)' in \
        ModelCard.load(folder / CARD_FILE).text


# --- the command line -----------------------------------------------------------------------
def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_push_a_set_file_then_pull_it(capsys, tmp_path, monkeypatch, fake_hub):  # noqa: F811
    vs = a_set()
    vs.save(tmp_path / "multi.safetensors")
    code, out, err = _run(capsys, "vectors", "push", tmp_path / "multi.safetensors", "--repo",
                          "someone/multi", "--behaviour", "refusal", "--alpha", "-1", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert [(v["kind"], v["layers"]) for v in doc["vectors"]] == [("steering_vector_set",
                                                                   [2, 5, 7])]
    (_, uploaded, _), = fake_hub["upload"]
    assert same_set(SteeringVectorSet.from_pretrained(uploaded), vs)
    # pull: the pushed folder as a cached snapshot, read offline
    cache_snapshot(tmp_path / "hub", "someone/multi", uploaded)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    code, out, err = _run(capsys, "vectors", "pull", "someone/multi", "--out", tmp_path / "got",
                          "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert [(v["kind"], v["layers"], v["sha256"]) for v in doc["vectors"]] == [
        ("steering_vector_set", [2, 5, 7], vs.sha256)]
    assert same_set(SteeringVectorSet.from_pretrained(tmp_path / "got"), vs)
    assert same_set(ss.vectors.load_vector_file(tmp_path / "got" / TENSOR_FILE), vs)


def test_cli_pull_refuses_a_tampered_set(capsys, tmp_path, monkeypatch):
    tamper(a_set(), a_set().save_pretrained(tmp_path / "src"))
    cache_snapshot(tmp_path / "hub", "someone/bad", tmp_path / "src")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    code, out, err = _run(capsys, "vectors", "pull", "someone/bad", "--out", tmp_path / "got")
    assert code == 2 and "does not match its recorded sha256" in err


def test_cli_push_a_multi_layer_run_with_its_figures(capsys, tmp_path, fake_hub):  # noqa: F811
    """A run made with vectors.layers: [..] records set files; each is pushed as a set, its
    card quoting the run's figures."""
    run = tmp_path / "multirun"
    results = synthetic_results()
    sets = {}
    for i, (m, entry) in enumerate(results["vectors"].items()):
        sets[m] = a_set(layers=(2, 5), seed=i, method=m, model_id=results["model"]["id"])
        sets[m].save(run / entry["path"])
        entry.update(layer=2, layers=[2, 5], norm=sets[m].norm)
    (run / "results.json").write_text(json.dumps(results))
    code, out, err = _run(capsys, "vectors", "push", run, "--repo", "someone/multirun")
    assert code == 0, err
    (_, uploaded, _), = fake_hub["upload"]
    for i, m in enumerate(("dim", "ntp")):
        assert same_set(SteeringVectorSet.from_pretrained(uploaded, subfolder=m), sets[m])
        card = ModelCard.load(uploaded / m / CARD_FILE)
        assert card.data.base_model == "tiny-chat" and "| layers | 2, 5 |" in card.text
        assert f"{900 + 100 * i:,} of 8,790 edges" in card.text
        assert "-1 to remove, +1 to induce" in card.text
    index = ModelCard.load(uploaded / CARD_FILE).text
    assert "| [dim](dim/README.md) | dim | 2, 5 |" in index
    assert 'ss.SteeringVectorSet.from_pretrained("someone/multirun", subfolder="dim"' in index


def test_a_header_naming_the_class_attribute_is_not_a_field(tmp_path):
    """``hub_kind`` is a class attribute, not a field: a file header carrying it loads (the
    key kept out of the constructor) rather than failing with a TypeError."""
    vs = a_set()
    tensors = {f"layer.{x}": v.clone() for x, v in zip(vs.layers, vs.vector)}
    header = json.dumps({**vs.to_metadata(), "hub_kind": "x"}, sort_keys=True)
    save_file(tensors, str(tmp_path / "s.safetensors"), metadata={"steerscope": header})
    assert same_set(SteeringVectorSet.load(tmp_path / "s.safetensors"), vs)
    sv = vs.at(2)
    header = json.dumps({**sv.to_metadata(), "hub_kind": "x"}, sort_keys=True)
    save_file({"vector": sv.vector.clone()}, str(tmp_path / "v.safetensors"),
              metadata={"steerscope": header})
    assert bits(SteeringVector.load(tmp_path / "v.safetensors").vector) == bits(sv.vector)
