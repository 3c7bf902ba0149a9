"""``steerscope vectors push`` / ``pull``: from a run folder (each vector with the run's
headline figures in its card) and from vector files; pull from a Hugging Face cache folder
offline. The upload is monkeypatched: no test touches the network."""

from __future__ import annotations

import json

import huggingface_hub
import pytest
from hub_testing import COMMIT, cache_snapshot
from huggingface_hub import ModelCard
from test_hub import (
    MODEL,
    a_vector,
    bits,
    fake_hub,  # noqa: F401 (fixture)
    synthetic_results,
)

from steerscope.cli import main
from steerscope.vectors import SteeringVector
from steerscope.vectors.hub import CARD_FILE, CONFIG_FILE, TENSOR_FILE, card_info, save_many


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def run_dir(tmp_path):
    """A run folder as steerscope run leaves it: results.json and the vector files it names
    (paths relative to the run folder)."""
    run = tmp_path / "hubrun-0123"
    results = synthetic_results()
    for i, (m, entry) in enumerate(results["vectors"].items()):
        a_vector(m, seed=i, model_id=results["model"]["id"]).save(run / entry["path"])
    (run / "results.json").write_text(json.dumps(results))
    return run


def test_push_a_run_folder_writes_one_card_per_vector_with_the_run_figures(
        capsys, run_dir, tmp_path, fake_hub):  # noqa: F811
    code, out, err = _run(capsys, "vectors", "push", run_dir, "--repo", "someone/hubrun",
                          "--out", tmp_path / "out", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["url"] == f"https://huggingface.co/someone/hubrun/commit/{COMMIT}"
    assert [v["subfolder"] for v in doc["vectors"]] == ["dim", "ntp"]
    (repo_id, uploaded, _), = fake_hub["upload"]
    assert repo_id == "someone/hubrun"
    for i, m in enumerate(("dim", "ntp")):
        for folder in (tmp_path / "out" / m, uploaded / m):
            back = SteeringVector.from_pretrained(folder)
            assert bits(back.vector) == bits(a_vector(m, seed=i).vector)
            card = ModelCard.load(folder / CARD_FILE)
            # the local model folder appears by its name, never as a path
            assert card.data.base_model == "tiny-chat"
            assert {"steering-vector", m, "refusal"} <= set(card.data.tags)
            assert "-1 to remove, +1 to induce" in card.text
            assert f"{900 + 100 * i:,} of 8,790 edges" in card.text
            assert f"| harmful (prompts with the behaviour) | {m} (remove) | -1.00 | " in card.text
    index = ModelCard.load(uploaded / CARD_FILE)
    assert index.data.library_name == "steerscope" and "ntp: results" in index.text


def test_push_picks_methods_and_writes_without_pushing(capsys, run_dir, tmp_path):
    code, out, err = _run(capsys, "vectors", "push", run_dir, "--methods", "ntp",
                          "--base-model", MODEL, "--out", tmp_path / "out")
    assert code == 0, err
    folder = tmp_path / "out"  # one vector: at the root
    assert sorted(p.name for p in folder.iterdir()) == sorted([TENSOR_FILE, CONFIG_FILE,
                                                                CARD_FILE])
    assert ModelCard.load(folder / CARD_FILE).data.base_model == MODEL
    assert SteeringVector.from_pretrained(folder).method == "ntp"


def test_push_vector_files(capsys, tmp_path, fake_hub):  # noqa: F811
    for i, m in enumerate(("dim", "pca")):
        a_vector(m, seed=i).save(tmp_path / f"{m}.safetensors")
    code, out, err = _run(capsys, "vectors", "push", tmp_path / "dim.safetensors",
                          tmp_path / "pca.safetensors", "--repo", "someone/two",
                          "--behaviour", "refusal", "--alpha", "-1")
    assert code == 0, err
    (_, uploaded, _), = fake_hub["upload"]
    for m in ("dim", "pca"):
        card = ModelCard.load(uploaded / m / CARD_FILE)
        assert card.data.base_model == MODEL and "refusal" in card.data.tags
        assert "| α used | -1 |" in card.text


def test_pull_copies_a_cached_repo_offline(capsys, tmp_path, monkeypatch):
    sv = a_vector()
    sv.save_pretrained(tmp_path / "src")
    cache_snapshot(tmp_path / "hub", "someone/refusal-dim", tmp_path / "src")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    code, out, err = _run(capsys, "vectors", "pull", "someone/refusal-dim", "--out",
                          tmp_path / "got", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert [v["sha256"] for v in doc["vectors"]] == [sv.sha256]
    for name in (TENSOR_FILE, CONFIG_FILE, CARD_FILE):  # byte-identical plain files
        got = tmp_path / "got" / name
        assert not got.is_symlink() and got.read_bytes() == (tmp_path / "src" / name).read_bytes()
    assert bits(SteeringVector.load(tmp_path / "got" / TENSOR_FILE).vector) == bits(sv.vector)


@pytest.mark.parametrize("argv,needle", [
    (["push", "{vec_nomodel}", "--repo", "someone/x"], "no base_model"),
    (["push", "{vec}", "--repo", "someone/na me"], "is not a valid Hugging Face Hub repo id"),
    (["push", "{vec}"], "pass --repo OWNER/NAME"),
    (["push", "{empty}", "--repo", "someone/x"], "has no results.json"),
    (["push", "{run}", "--methods", "po", "--repo", "someone/x"], "has no po vector"),
    (["pull", "someone/not-cached", "--out", "{out}"], "HF_HUB_OFFLINE is set"),
    (["pull", "bad//id", "--out", "{out}"], "is not a valid Hugging Face Hub repo id"),
])
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, run_dir, monkeypatch, argv, needle):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub, "upload_folder", None)  # never reached
    files = {"vec": tmp_path / "v.safetensors", "vec_nomodel": tmp_path / "n.safetensors",
             "empty": tmp_path / "empty", "run": run_dir, "out": tmp_path / "out"}
    a_vector().save(files["vec"])
    a_vector(model_id=None).save(files["vec_nomodel"])
    files["empty"].mkdir()
    code, out, err = _run(capsys, "vectors", *[a.format(**files) for a in argv])
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert not (tmp_path / "out").exists()


def test_push_a_saved_folder_as_it_is(capsys, tmp_path, fake_hub):  # noqa: F811
    folder = a_vector().save_pretrained(tmp_path / "v", alpha=-1.0)
    card = (folder / CARD_FILE).read_text() + "\nEdited by hand.\n"
    (folder / CARD_FILE).write_text(card)
    code, out, err = _run(capsys, "vectors", "push", folder, "--repo", "someone/v")
    assert code == 0, err
    (_, uploaded, _), = fake_hub["upload"]
    assert sorted(p.name for p in uploaded.iterdir()) == sorted(p.name for p in folder.iterdir())
    for p in folder.iterdir():
        assert (uploaded / p.name).read_bytes() == p.read_bytes()


def test_pushing_a_folder_uploads_only_the_vector_files(capsys, tmp_path, fake_hub):  # noqa: F811
    from steerscope.vectors.hub import card_info, save_many

    vecs = [a_vector("dim"), a_vector("ntp", seed=1)]
    folder = save_many([(v.method, v.hub_payload(), card_info(v.hub_payload())) for v in vecs],
                       tmp_path / "v")
    (folder / ".env").write_text("HF_TOKEN=secret\n")  # a stray file lying in the folder
    (folder / "ntp" / "notes.txt").write_text("draft\n")
    code, out, err = _run(capsys, "vectors", "push", folder, "--repo", "someone/v")
    assert code == 0, err
    (_, uploaded, _), = fake_hub["upload"]
    got = sorted(p.relative_to(uploaded).as_posix() for p in uploaded.rglob("*") if p.is_file())
    assert got == sorted([CARD_FILE] + [f"{m}/{n}" for m in ("dim", "ntp")
                                        for n in (TENSOR_FILE, CONFIG_FILE, CARD_FILE)])


def test_the_hubs_reason_for_refusing_an_upload_is_quoted_in_one_line(capsys, tmp_path,
                                                                      monkeypatch):
    from types import SimpleNamespace

    from huggingface_hub.errors import HfHubHTTPError

    def refuse(**kw):  # what the Hub answers a card whose base_model is no Hub model id
        response = SimpleNamespace(status_code=400, headers={}, request=None)
        raise HfHubHTTPError("400 Client Error: Bad Request\n\nmore", response=response,
                             server_message='"base_model" with value "tiny" is not valid.\n'
                                            'Use a model id from https://hf.co/models.')

    monkeypatch.setattr(huggingface_hub, "create_repo", lambda *a, **kw: None)
    monkeypatch.setattr(huggingface_hub, "upload_folder", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    a_vector(model_id="/models/tiny").save(tmp_path / "v.safetensors")
    code, out, err = _run(capsys, "vectors", "push", tmp_path / "v.safetensors", "--repo",
                          "someone/v")
    assert code == 2
    (line,) = err.strip().splitlines()
    assert "failed (HfHubHTTPError 400: the Hub says" in line and "is not valid." in line
    assert "https://hf.co/models" in line and "--base-model" in line


def test_a_failed_upload_is_one_line_exit_2(capsys, tmp_path, monkeypatch):
    def refuse(**kw):
        raise ConnectionError("no route to host\nsecond line")

    monkeypatch.setattr(huggingface_hub, "create_repo", lambda *a, **kw: None)
    monkeypatch.setattr(huggingface_hub, "upload_folder", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    a_vector().save(tmp_path / "v.safetensors")
    code, out, err = _run(capsys, "vectors", "push", tmp_path / "v.safetensors", "--repo",
                          "someone/v")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "pushing to Hub repo 'someone/v' failed (ConnectionError)" \
        in lines[0] and "hf auth login" in lines[0], err


def _files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# (id, argv after "vectors", what is planted, the one-line message): names from a run's
# results.json, a vector file's name or a Hub repo, and links planted in --out, never lead a
# write outside --out (issue 29.3: every writer goes through artifacts.child_path)
HUB_ESCAPES = [
    ("run-vector-name-climbs-out", ["push", "{run}", "--out", "{out}"], "results",
     "vector subfolder '../../ESCAPED' cannot name a file"),
    ("file-named-dotdot", ["push", "{dots}", "{vec}", "--out", "{out}"], None,
     "vector subfolder '..' cannot name a file"),
    ("push-out-subfolder-is-a-link", ["push", "{run}", "--out", "{out}"], "link:dim",
     "is a symbolic link to"),
    ("pull-out-subfolder-is-a-link", ["pull", "someone/two", "--out", "{out}"], "link:dim",
     "is a symbolic link to"),
]


@pytest.mark.parametrize("argv,plant,needle", [c[1:] for c in HUB_ESCAPES],
                         ids=[c[0] for c in HUB_ESCAPES])
def test_hub_writers_stay_inside_out(capsys, tmp_path, run_dir, monkeypatch, argv, plant,
                                     needle):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub, "upload_folder", None)  # never reached
    sv_a, sv_b = a_vector("dim"), a_vector("pca", seed=1)
    save_many([(sv.method, sv.hub_payload(), card_info(sv.hub_payload())) for sv in (sv_a, sv_b)],
              tmp_path / "two")
    cache_snapshot(tmp_path / "hub", "someone/two", tmp_path / "two")
    files = {"run": run_dir, "out": tmp_path / "deep" / "out", "vec": tmp_path / "v.safetensors",
             "dots": tmp_path / "...safetensors"}
    sv_a.save(files["vec"])
    sv_b.save(files["dots"])  # stem '..'
    if plant == "results":
        results = json.loads((run_dir / "results.json").read_text())
        results["vectors"]["../../ESCAPED"] = results["vectors"].pop("ntp")
        (run_dir / "results.json").write_text(json.dumps(results))
    outside = tmp_path / "outside"
    outside.mkdir()
    if plant and plant.startswith("link:"):
        files["out"].mkdir(parents=True)
        (files["out"] / plant[5:]).symlink_to(outside, target_is_directory=True)
    before = _files_under(tmp_path)
    code, out, err = _run(capsys, "vectors", *[a.format(**files) for a in argv])
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert list(outside.iterdir()) == []
    if argv[0] == "push":  # push checks every subfolder before writing; pull file by file
        assert _files_under(tmp_path) == before
