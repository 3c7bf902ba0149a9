"""Hub-ready vectors: save_pretrained / from_pretrained / push_to_hub, the model card, and
reading a snapshot from a Hugging Face cache folder offline. No test touches the network:
the Hub is a cache folder laid out as huggingface_hub lays it out, and the upload is
monkeypatched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch
from hub_testing import COMMIT, cache_snapshot
from huggingface_hub import ModelCard
from safetensors.torch import save_file

from steerscope.errors import SteerscopeError
from steerscope.results_schema import check_results
from steerscope.vectors import SteeringVector
from steerscope.vectors.hub import CARD_FILE, CONFIG_FILE, TENSOR_FILE, read_payload
from steerscope.vectors.hub_card import alpha_of, model_name, run_figures

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg
    return msg


def a_vector(method="dim", layer=5, seed=0, model_id=MODEL) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    return SteeringVector(torch.randn(24, generator=g) * 3.7, layer=layer, method=method,
                          model_id=model_id, revision="abc123", position=-2,
                          hyperparameters={"lr": 0.04, "grid": [1, 2]},
                          metadata={"note": "é ✓", "nested": {"k": [0.1, None]}})


def synthetic_results(methods=("dim", "ntp")) -> dict:
    """A results.json with the sections the card quotes (docs/results.md), made-up numbers."""
    def cell(asr, alpha, loops):
        return {"behaviour_rate": 1 - asr, "mean_score": 0.5,
                "repetition_rate": loops, "alpha": alpha, "n": 32}

    steering = {"none": {"present": cell(0.125, 0.0, 0.0), "absent": cell(0.96875, 0.0, 0.0)}}
    for i, m in enumerate(methods):
        steering[m] = {"present": cell(0.90625 - i / 32, -1.0, 0.0625 * i),
                       "absent": cell(0.03125, 1.0, 0.0)}
    return {"format_version": 2, "run": {"name": "hubrun", "dir": ".", "config": "config.yaml",
                                         "stages": {}},
            "behaviour": {"name": "refusal", "definition": {"labels": {
                "behaviour": "refusal", "present": "harmful", "absent": "harmless"}}},
            "model": {"id": "/home/me/models/tiny-chat", "revision": None,
                      "architecture": "qwen2", "path": "/home/me/models/tiny-chat",
                      "steering_layer": 5},
            "vectors": {m: {"path": f"vectors-abc/{m}.safetensors", "layer": 5,
                            "position": -1, "norm": 3.0} for m in methods},
            "steering": steering,
            "circuits": {m: {"total_edges": 8790, "faithfulness_curve": [[900, 0.87]],
                             "min_faithful_size": 900 + 100 * i, "complement_faithfulness": 0.01,
                             "random_faithfulness": 0.05, "threshold": 0.85}
                         for i, m in enumerate(methods)}}


def bits(t: torch.Tensor) -> bytes:
    return t.contiguous().numpy().tobytes()


# --- round trip -----------------------------------------------------------------------------
def test_round_trip_is_exact(tmp_path):
    sv = a_vector()
    folder = sv.save_pretrained(tmp_path / "v")
    assert sorted(p.name for p in folder.iterdir()) == sorted([TENSOR_FILE, CONFIG_FILE,
                                                                CARD_FILE])
    back = SteeringVector.from_pretrained(folder)
    assert bits(back.vector) == bits(sv.vector)  # bitwise
    assert back.to_metadata() == sv.to_metadata()
    assert (back.layer, back.method, back.model_id, back.revision, back.position,
            back.hyperparameters, back.metadata) == (sv.layer, sv.method, sv.model_id,
                                                      sv.revision, sv.position,
                                                      sv.hyperparameters, sv.metadata)
    # the tensor file is byte for byte the vector file SteeringVector.save writes
    sv.save(tmp_path / "plain.safetensors")
    assert (folder / TENSOR_FILE).read_bytes() == (tmp_path / "plain.safetensors").read_bytes()
    config = json.loads((folder / CONFIG_FILE).read_text())
    assert config["layers"] == [5] and config["kind"] == "steering_vector"
    assert config["metadata"]["sha256"] == sv.sha256
    assert config["tensors"] == {"vector": {"shape": [24], "dtype": "float32"}}


def test_card_parses_with_huggingface_hub_and_states_the_facts(tmp_path):
    sv = a_vector()
    results = synthetic_results()
    check_results(results)
    figures = run_figures(results, "ntp")
    folder = sv.save_pretrained(tmp_path / "v", behaviour="refusal",
                                alpha=alpha_of(figures, "ntp"), figures=figures)
    card = ModelCard.load(folder / CARD_FILE)
    assert card.data.library_name == "steerscope"
    assert card.data.base_model == MODEL
    assert {"steering-vector", "dim", "refusal"} <= set(card.data.tags)
    text = card.text
    assert "entering block 5 of the model" in text and "| method | dim |" in text and "| layer | 5 |" in text
    assert f"| norm | {sv.norm:.4f} |" in text
    assert "-1 to remove, +1 to induce" in text
    # the run's figures for ntp: behaviour rate 1 - 0.875, loop rate 0.0625, circuit 1000/8790
    assert "| harmful (prompts with the behaviour) | dim (remove) | -1.00 | 0.125 | " \
           "0.062 | 32 |" in text
    assert "| harmless (prompts without it) | none | 0.00 | 0.031 | 0.000 | 32 |" in text
    assert "1,000 of 8,790 edges (11.38%)" in text
    assert "Results of run `hubrun`" in text


def test_a_card_from_a_quantized_run_says_the_figures_are_the_quantized_models(tmp_path):
    results = synthetic_results()
    assert "quantization" not in run_figures(results, "dim")  # a float run: nothing said
    results["model"]["quantization"] = "int8"
    check_results(results)
    figures = run_figures(results, "dim")
    folder = a_vector().save_pretrained(tmp_path / "v", figures=figures)
    assert f"| model | {MODEL} (revision abc123), loaded with quantization int8 in the run |" \
        in (folder / CARD_FILE).read_text()
    assert json.loads((folder / CONFIG_FILE).read_text())["figures"]["quantization"] == "int8"


def test_card_without_alpha_or_figures_says_so(tmp_path):
    folder = a_vector().save_pretrained(tmp_path / "v")
    text = (folder / CARD_FILE).read_text()
    assert "α used | not recorded" in text and "Results of run" not in text
    assert "refusal" not in ModelCard.load(folder / CARD_FILE).data.tags


def test_base_model_is_a_hub_id_or_a_local_name():
    assert model_name(MODEL) == MODEL
    assert model_name("/home/me/models/tiny-chat") == "tiny-chat"
    assert model_name("smollm2-135m-refusal-demo") == "smollm2-135m-refusal-demo"
    assert model_name(None) is None


# --- bad input --------------------------------------------------------------------------------
def test_a_card_without_base_model_is_refused(tmp_path):
    with pytest.raises(SteerscopeError) as e:
        a_vector(model_id=None).save_pretrained(tmp_path / "v")
    assert "base_model" in one_line(e) and not (tmp_path / "v").exists()
    folder = a_vector().save_pretrained(tmp_path / "w")
    card = (folder / CARD_FILE).read_text().replace(f"base_model: {MODEL}\n", "")
    (folder / CARD_FILE).write_text(card)
    with pytest.raises(SteerscopeError) as e:
        SteeringVector.from_pretrained(folder)
    assert "has no base_model" in one_line(e) and "base_model:" in one_line(e)


def test_folders_without_the_files_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SteerscopeError) as e:
        SteeringVector.from_pretrained(tmp_path / "empty")
    assert f"has no {CONFIG_FILE}" in one_line(e)
    with pytest.raises(SteerscopeError) as e:
        SteeringVector.from_pretrained(tmp_path / "missing")
    assert "does not exist" in one_line(e)
    a_vector().save(tmp_path / "v.safetensors")
    with pytest.raises(SteerscopeError) as e:
        SteeringVector.from_pretrained(str(tmp_path / "v.safetensors"))
    assert "is a file, not a vector folder" in one_line(e)
    folder = a_vector().save_pretrained(tmp_path / "v")
    (folder / TENSOR_FILE).unlink()
    with pytest.raises(SteerscopeError) as e:
        SteeringVector.from_pretrained(folder)
    assert TENSOR_FILE in one_line(e)
    folder = a_vector().save_pretrained(tmp_path / "t")
    config = json.loads((folder / CONFIG_FILE).read_text())
    (folder / CONFIG_FILE).write_text(json.dumps({**config, "tensor_file": "../v/x"}))
    with pytest.raises(SteerscopeError) as e:
        SteeringVector.from_pretrained(folder)
    assert "not a file name in the folder" in one_line(e)
    folder = a_vector().save_pretrained(tmp_path / "c")
    (folder / CARD_FILE).unlink()
    with pytest.raises(SteerscopeError) as e:
        SteeringVector.from_pretrained(folder)
    assert "model card" in one_line(e)


def test_several_vectors_are_checked_before_any_is_written(tmp_path):
    from steerscope.vectors.hub import card_info, save_many

    vecs = [a_vector("dim"), a_vector("ntp", model_id=None)]
    entries = [(v.method, v.hub_payload(), card_info(v.hub_payload())) for v in vecs]
    with pytest.raises(SteerscopeError) as e:
        save_many(entries, tmp_path / "out")
    assert "no base_model" in one_line(e) and not (tmp_path / "out").exists()


def test_a_subfolder_name_from_metadata_never_leaves_the_target_folder(tmp_path):
    """A method name from a run's results.json names a subfolder: '../x' is refused, before
    anything is written anywhere."""
    from steerscope.vectors.hub import card_info, save_many

    vecs = [a_vector("dim"), a_vector("ntp")]
    for bad in ("../escaped", "a/b", ".."):
        entries = [(name, v.hub_payload(), card_info(v.hub_payload()))
                   for name, v in zip(("dim", bad), vecs)]
        with pytest.raises(SteerscopeError) as e:
            save_many(entries, tmp_path / "out")
        assert repr(bad) in one_line(e)
        assert not (tmp_path / "out").exists() and not (tmp_path / "escaped").exists()


def test_pull_never_writes_through_a_link_out_of_the_output_folder(tmp_path, monkeypatch):
    from steerscope.vectors.hub import card_info, pull, save_many

    vecs = [a_vector("dim"), a_vector("ntp", seed=1)]
    save_many([(v.method, v.hub_payload(), card_info(v.hub_payload())) for v in vecs],
              tmp_path / "src")
    cache_snapshot(tmp_path / "hub", "someone/two", tmp_path / "src")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "got").mkdir()
    (tmp_path / "got" / "ntp").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(SteerscopeError) as e:
        pull("someone/two", tmp_path / "got")
    assert "symbolic link" in one_line(e) and not any((tmp_path / "elsewhere").iterdir())
    (tmp_path / "got" / "ntp").unlink()
    assert [f.name for f in pull("someone/two", tmp_path / "got")] == ["dim", "ntp"]
    assert SteeringVector.from_pretrained(tmp_path / "got", subfolder="ntp").sha256 \
        == vecs[1].sha256


def test_a_tampered_tensor_is_caught(tmp_path):
    sv = a_vector()
    folder = sv.save_pretrained(tmp_path / "v")
    header = json.dumps(sv.to_metadata(), sort_keys=True)
    save_file({"vector": sv.vector + 1}, str(folder / TENSOR_FILE),
              metadata={"steerscope": header})
    with pytest.raises(SteerscopeError) as e:
        SteeringVector.from_pretrained(folder)
    assert "sha256" in one_line(e)


def test_malformed_repo_ids_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    for bad in ("owner/na me", "-owner/--name", "owner/name.."):
        with pytest.raises(SteerscopeError) as e:
            SteeringVector.from_pretrained(bad)
        assert f"'{bad}' is not a valid Hugging Face Hub repo id" in one_line(e)
    with pytest.raises(SteerscopeError) as e:
        a_vector().push_to_hub("owner/na me")
    assert "not a valid Hugging Face Hub repo id" in one_line(e)


# --- the Hugging Face cache, offline -------------------------------------------------------
def test_from_pretrained_reads_a_cached_snapshot_offline(tmp_path, monkeypatch):
    sv = a_vector()
    sv.save_pretrained(tmp_path / "src")
    snap = cache_snapshot(tmp_path / "hub", "someone/refusal-dim", tmp_path / "src")
    # huggingface_hub itself reads the layout as a cached repo: main -> COMMIT, three files
    (repo,) = huggingface_hub.scan_cache_dir(tmp_path / "hub").repos
    (rev,) = repo.revisions
    assert (repo.repo_id, rev.commit_hash, rev.refs) == ("someone/refusal-dim", COMMIT,
                                                         frozenset({"main"}))
    assert sorted(f.file_name for f in rev.files) == sorted([TENSOR_FILE, CONFIG_FILE,
                                                              CARD_FILE])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    back = SteeringVector.from_pretrained("someone/refusal-dim")
    assert bits(back.vector) == bits(sv.vector) and back.to_metadata() == sv.to_metadata()
    assert read_payload(snap).path == snap / TENSOR_FILE
    assert SteeringVector.from_pretrained("someone/refusal-dim", revision=COMMIT).sha256 \
        == sv.sha256
    with pytest.raises(SteerscopeError) as e:
        SteeringVector.from_pretrained("someone/not-cached")
    msg = one_line(e)
    assert "'someone/not-cached'" in msg and "HF_HUB_OFFLINE is set" in msg and "pull" in msg


def test_offline_from_the_environment_at_startup(tmp_path):
    """The real setting: HF_HUB_OFFLINE and HF_HUB_CACHE set before Python starts."""
    sv = a_vector()
    sv.save_pretrained(tmp_path / "src")
    cache_snapshot(tmp_path / "hub", "someone/refusal-dim", tmp_path / "src")
    code = ("import sys; from steerscope.vectors import SteeringVector as S; "
            "print(S.from_pretrained('someone/refusal-dim').sha256)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"),
           "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == sv.sha256


def test_several_vectors_sit_in_subfolders(tmp_path, monkeypatch):
    from steerscope.vectors.hub import card_info, save_many

    vecs = {m: a_vector(m, seed=i) for i, m in enumerate(("dim", "ntp"))}
    entries = [(m, v.hub_payload(), card_info(v.hub_payload(), behaviour="refusal"))
               for m, v in vecs.items()]
    save_many(entries, tmp_path / "src")
    index = ModelCard.load(tmp_path / "src" / CARD_FILE)
    assert index.data.base_model == MODEL and {"dim", "ntp", "steering-vector"} <= set(
        index.data.tags)
    cache_snapshot(tmp_path / "hub", "someone/vecs", tmp_path / "src")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    for m, v in vecs.items():
        assert bits(SteeringVector.from_pretrained("someone/vecs", subfolder=m).vector) \
            == bits(v.vector)
    with pytest.raises(SteerscopeError) as e:
        SteeringVector.from_pretrained("someone/vecs")
    assert "holds several vectors (dim, ntp)" in one_line(e) and "subfolder=" in one_line(e)
    with pytest.raises(SteerscopeError) as e:
        SteeringVector.from_pretrained("someone/vecs", subfolder="po")
    assert "no subfolder 'po'" in one_line(e) and "dim, ntp" in one_line(e)


# --- push ----------------------------------------------------------------------------------
@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """Replaces create_repo / upload_folder: records the calls and copies the uploaded
    folder (a temporary one) so the test can read what would have been pushed."""
    calls = {"create": [], "upload": []}

    def create_repo(repo_id, **kw):
        calls["create"].append((repo_id, kw))

    def upload_folder(*, repo_id, folder_path, allow_patterns=None, **kw):
        import shutil

        from huggingface_hub.utils import filter_repo_objects

        dest = tmp_path / "uploaded" / str(len(calls["upload"]))
        root = Path(folder_path)
        files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
        for rel in filter_repo_objects(files, allow_patterns=allow_patterns):  # as upload_folder
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / rel, dest / rel)
        calls["upload"].append((repo_id, dest, kw))
        return huggingface_hub.CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/{COMMIT}",
            commit_message=kw.get("commit_message") or "", commit_description="", oid=COMMIT)

    monkeypatch.setattr(huggingface_hub, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub, "upload_folder", upload_folder)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return calls


def test_push_to_hub_uploads_the_saved_folder(fake_hub):
    sv = a_vector()
    url = sv.push_to_hub("someone/refusal-dim", behaviour="refusal", alpha=-1.0, private=True)
    assert url == f"https://huggingface.co/someone/refusal-dim/commit/{COMMIT}"
    assert fake_hub["create"] == [("someone/refusal-dim", {"private": True, "token": None,
                                                           "exist_ok": True})]
    (repo_id, folder, kw), = fake_hub["upload"]
    assert repo_id == "someone/refusal-dim" and "steerscope" in kw["commit_message"]
    back = SteeringVector.from_pretrained(folder)
    assert bits(back.vector) == bits(sv.vector) and back.to_metadata() == sv.to_metadata()
    card = ModelCard.load(folder / CARD_FILE)
    assert card.data.base_model == MODEL and "| α used | -1 |" in card.text
    assert 'SteeringVector.from_pretrained("someone/refusal-dim", arch=lm.arch)' in card.text


def test_push_refuses_offline_before_uploading(fake_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SteerscopeError) as e:
        a_vector().push_to_hub("someone/refusal-dim")
    assert "HF_HUB_OFFLINE" in one_line(e) and not fake_hub["upload"]


def test_the_cards_python_snippet_runs_and_steers(tmp_path, monkeypatch, capsys):
    """The card's usage code, run as written on a tiny model, prints the same completions as
    steering with the tensor directly."""
    import re

    import steerscope as ss
    from steerscope.models import save_tiny_chat_model
    from steerscope.vectors.hub import card_info, save_pretrained

    save_tiny_chat_model(tmp_path / "tiny-chat", "qwen2")
    lm = ss.load_model(str(tmp_path / "tiny-chat"))
    g = torch.Generator().manual_seed(1)
    sv = SteeringVector(torch.randn(lm.arch.d_model, generator=g) * 8, layer=2, method="dim",
                        model_id=str(tmp_path / "tiny-chat"))
    payload = sv.hub_payload()
    folder = save_pretrained(payload, tmp_path / "vec", card_info(payload),
                             repo_hint=str(tmp_path / "vec"))
    code = re.search(r"```python\n(.*?)```", (folder / CARD_FILE).read_text(), re.S).group(1)
    assert 'ss.load_model("tiny-chat")' in code  # the local model by its name
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    prompts = [ss.format_prompt(lm.tokenizer, "How do I pick a lock?")]
    ops = [ss.steer(sv.vector, layer=2, alpha=-1.0)]
    steered = ss.generate(lm.model, lm.tokenizer, prompts, interventions=ops, max_new_tokens=32)
    assert printed.strip() == str(steered).strip()
    assert steered != ss.generate(lm.model, lm.tokenizer, prompts, max_new_tokens=32)  # it steers


def test_a_multi_tensor_payload_round_trips_through_the_same_folder(tmp_path):
    """The interface a multi-layer vector set uses: any kind, one tensor per layer."""
    from steerscope.vectors.hub import HubPayload, card_info, load_pretrained, save_pretrained

    g = torch.Generator().manual_seed(3)
    rows = torch.randn(2, 24, generator=g)  # [K, d]: a set's rows share one storage
    tensors = {"layer.2": rows[0], "layer.4": rows[1]}
    meta = {"kind": "steering_vector_set", "layers": [2, 4], "note": [1.5, "x"]}
    payload = HubPayload(kind="steering_vector_set", tensors=tensors, metadata=meta,
                         layers=[2, 4], method="dim", model_id=MODEL)
    folder = save_pretrained(payload, tmp_path / "set", card_info(payload, alpha=-1.0))
    back = load_pretrained(folder, "steering_vector_set")
    assert back.layers == [2, 4] and back.metadata == meta and back.method == "dim"
    assert {k: bits(t) for k, t in back.tensors.items()} == {k: bits(t) for k, t in
                                                                 tensors.items()}
    text = ModelCard.load(folder / CARD_FILE).text
    norms = ", ".join(f"{float(t.norm()):.4f}" for t in tensors.values())
    assert "| layers | 2, 4 |" in text and f"| norms | {norms} |" in text
    assert "entering blocks 2 and 4 of the model" in text and "ss.SteeringVectorSet.from_pretrained(" in text
    with pytest.raises(SteerscopeError) as e:
        SteeringVector.from_pretrained(folder)
    assert "holds a steering_vector_set, not a steering_vector" in one_line(e)
