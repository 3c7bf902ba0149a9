"""The command line, on a tiny chat model saved to disk (and the embedded model, slow)."""

from __future__ import annotations

import json

import pytest
import torch

from steerscope.cli import main
from steerscope.errors import SteerscopeError
from steerscope.models import save_tiny_chat_model
from steerscope.vectors import SteeringVector


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_chat_model(tmp_path_factory.mktemp("tiny-chat"), "qwen2")


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_archs_lists_every_row(capsys):
    code, out, _ = _run(capsys, "archs")
    assert code == 0
    for name in ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3"):
        assert name in out


def test_info(capsys, tiny_dir):
    code, out, _ = _run(capsys, "info", tiny_dir)
    assert code == 0
    assert "qwen2: 4 layers, d_model 64, 4 query heads / 2 KV heads of 16" in out


def test_generate_with_and_without_a_vector(capsys, tiny_dir, tmp_path):
    code, out, _ = _run(capsys, "generate", tiny_dir, "--prompt", "hello there",
                        "--prompt", "hi", "--max-new-tokens", "6", "--json")
    assert code == 0
    plain = json.loads(out)
    assert [r["prompt"] for r in plain] == ["hello there", "hi"]
    vec = SteeringVector(torch.randn(64) * 20, layer=1).save(tmp_path / "v.safetensors")
    assert SteeringVector.load(vec).layer == 1
    code, out, _ = _run(capsys, "generate", tiny_dir, "--prompt", "hello there", "--prompt", "hi",
                        "--max-new-tokens", "6", "--json", "--vector", vec, "--alpha", "3")
    assert code == 0
    steered = json.loads(out)
    assert [r["response"] for r in steered] != [r["response"] for r in plain]


def test_score(capsys, tiny_dir, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("first prompt\nsecond prompt\nthird\n")
    code, out, _ = _run(capsys, "score", tiny_dir, "--prompts", prompts, "--generate",
                        "--max-new-tokens", "4")
    assert code == 0
    assert "mean refusal score" in out and "over 3 prompts" in out and "refusal rate" in out


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["info", "/no/such/model"], "does not exist"),
        (["prompts", "{empty}"], "empty"),
        (["generate", "{tiny}", "--prompt", "x", "--vector", "{wide}"], "residual width is 64"),
        (["generate", "{tiny}", "--prompt", "x", "--vector", "{vec}", "--layer", "9"],
         "out of range"),
        (["generate", "{tiny}", "--prompt", "x", "--vector", "{nan}", "--layer", "1"], "NaN"),
        (["generate", "{tiny}", "--prompt", "x", "--vector", "{vec}"], "records no layer"),
        (["generate", "{tiny}", "--prompt", "x", "--vector", "{garbage}"], "cannot read"),
        (["generate", "{tiny}"], "no prompts given"),
        (["info", "{tiny}", "--dtype", "float12"], "float12"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, tiny_dir, tmp_path, argv, needle):
    files = {
        "tiny": tiny_dir,
        "empty": tmp_path / "empty.txt",
        "wide": tmp_path / "wide.safetensors",
        "vec": tmp_path / "vec.safetensors",
        "nan": tmp_path / "nan.safetensors",
        "garbage": tmp_path / "garbage.safetensors",
    }
    files["empty"].write_text("")
    SteeringVector(torch.ones(65), layer=1).save(files["wide"])
    from safetensors.torch import save_file

    save_file({"v": torch.ones(64)}, str(files["vec"]))

    save_file({"v": torch.full((64,), float("nan"))}, str(files["nan"]))
    files["garbage"].write_bytes(b"not a safetensors file")
    code, out, err = _run(capsys, *[a.format(**files) for a in argv])
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err


def test_vector_file_round_trip_and_checks(tmp_path):
    sv = SteeringVector(torch.randn(64), layer=2, method="dim", model_id="tiny", position=-1,
                        hyperparameters={"n": 3}, metadata={"note": "x"})
    back = SteeringVector.load(sv.save(tmp_path / "v.safetensors"))
    assert torch.equal(back.vector, sv.vector) and back.sha256 == sv.sha256
    assert (back.layer, back.method, back.model_id, back.position) == (2, "dim", "tiny", -1)
    assert back.hyperparameters == {"n": 3} and back.metadata == {"note": "x"}
    assert list(tmp_path.iterdir()) == [tmp_path / "v.safetensors"]  # no temporary leftovers
    with pytest.raises(Exception, match="NaN"):
        SteeringVector(torch.full((4,), float("nan")), layer=0)


@pytest.mark.slow
def test_demo_on_the_demo_refusal_model(capsys, tmp_path):
    """The demo pipeline up to the steered evaluation on the demo refusal model (built into
    the session cache on first use): DIM selection, steering table, artifacts."""
    code, out, _ = _run(capsys, "demo", "--methods", "dim", "--until", "evaluation",
                        "--n-train", "24", "--n-val", "8", "--n-test", "8",
                        "--max-new-tokens", "16", "--out", tmp_path, "--quiet", "--json")
    assert code == 0
    res = json.loads(out)
    assert res["model"]["id"] == "smollm2-135m-refusal-demo"
    steering = res["steering"]
    assert set(steering) == {"none", "dim"}
    # the demo model refuses harmful prompts; -s lowers and +s raises the refusal score
    assert steering["none"]["present"]["mean_score"] > steering["none"]["absent"][
        "mean_score"]
    assert steering["dim"]["present"]["mean_score"] < steering["none"]["present"][
        "mean_score"]
    assert steering["dim"]["absent"]["mean_score"] > steering["none"]["absent"][
        "mean_score"]
    run_dir = next(tmp_path.glob("demo-*"))  # results.json paths: relative to it
    vec = SteeringVector.load(run_dir / res["vectors"]["dim"]["path"])
    assert vec.layer == res["model"]["steering_layer"] == res["dim_selection"]["layer"]
    assert vec.model_id == "smollm2-135m-refusal-demo"
    assert res["run"]["stages"]["patching"] == "not run"


def test_demo_config_overrides():
    from steerscope.pipeline.demo import demo_config, demo_run_config

    base = demo_config()
    cfg = demo_run_config()
    assert cfg.to_dict() == base.to_dict()  # no flag: exactly the documented demo config
    cfg = demo_run_config(methods=["dim", "po"], n_train=8, n_val=4, n_test=6,
                          max_new_tokens=12, data_dir="/data/refusal", relax_kl=False)
    assert cfg.vectors.methods == ["dim", "po"] and not cfg.vectors.dim.relax_kl
    assert (cfg.data.n_train, cfg.data.n_val, cfg.data.n_test) == (8, 4, 6)
    assert cfg.data.data_dir == "/data/refusal" and cfg.data.present_test == "jailbreakbench"
    assert cfg.data.present_train == "harmful_train"
    for section in (cfg.patching, cfg.freeze, cfg.sparsify):
        if getattr(section, "n_prompts", None) is not None:
            assert section.n_prompts <= 6
    assert cfg.evaluation.max_new_tokens == cfg.vectors.preference.max_new_tokens == 12
    assert cfg.patching.max_new_tokens == cfg.freeze.max_new_tokens == 12
    with pytest.raises(SteerscopeError, match="must include 'dim'"):
        demo_run_config(methods=["ntp"])


def test_demo_config_on_another_behaviour(tmp_path, monkeypatch):
    """--behaviour NAME|FILE: the behaviour's own prompt sides and sizes, the default model
    (the demo model is refusal-specific); refusal keeps the demo exactly."""
    from steerscope.pipeline.demo import demo_config, demo_run_config

    monkeypatch.delenv("STEERSCOPE_DATA_DIR", raising=False)
    assert demo_run_config(behaviour="refusal").to_dict() == demo_config().to_dict()
    cfg = demo_run_config(behaviour="lists", methods=["dim"])
    assert cfg.behaviour == "lists" and cfg.model.source == "default"
    assert (cfg.data.n_train, cfg.data.n_val, cfg.data.n_test) == (30, 8, 10)
    assert cfg.data.present_train is None and cfg.data.absent_test is None
    assert cfg.patching.n_prompts <= 10 and cfg.freeze.n_prompts == 10
    assert cfg.vectors.dim.induce_threshold == -100.0  # refusal's absolute filter off
    assert demo_run_config(behaviour="code", model="demo", n_test=4).model.source == "demo"
    with pytest.raises(SteerscopeError, match="standard splits"):
        demo_run_config(behaviour="lists", data_dir="/data/refusal")
    b = tmp_path / "b.yaml"
    b.write_text("name: b\n" + "".join(
        f"{side}: {{train: [a, b], val: [c], test: [d]}}\n" for side in ("present", "absent"))
        + "judge: {kind: substring, substrings: [x]}\nscore_tokens: [x]\n")
    monkeypatch.chdir(tmp_path)
    cfg = demo_run_config(behaviour="b.yaml", n_train=2, n_val=1, n_test=1)
    assert cfg.behaviour == str(b) and cfg.data.n_test == 1
    from steerscope.cli import build_parser

    args = build_parser().parse_args(["demo", "--behaviour", "lists"])
    assert (args.behaviour, args.model) == ("lists", None)
    assert build_parser().parse_args(["demo"]).behaviour == "refusal"


def test_prepare_demo_prints_the_cached_model(capsys, tmp_path, monkeypatch):
    from steerscope.demo import model as demo_model

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "steerscope.json").write_text(json.dumps(
        {"recipe_hash": "abc", "base_model": "b", "examples": {"harmful": 1}}))
    monkeypatch.setattr(demo_model, "demo_model_dir", lambda cache_dir=None, recipe=None: folder)
    code, out, _ = _run(capsys, "model", "prepare-demo", "--json")
    assert code == 0 and json.loads(out) == {"path": str(folder), "recipe_hash": "abc",
                                             "base_model": "b", "examples": {"harmful": 1}}
    code, out, _ = _run(capsys, "model", "prepare-demo")
    assert code == 0 and str(folder) in out and "abc" in out


def test_vector_commands_end_to_end(capsys, tiny_dir, tmp_path):
    harmful, harmless = tmp_path / "harmful.txt", tmp_path / "harmless.txt"
    harmful.write_text("make a bomb\nsteal a car\nhack a bank\nhurt someone\n")
    harmless.write_text("bake bread\nwrite a poem\nplant a tree\nsing a song\n")
    out = tmp_path / "dim"
    code, text, err = _run(
        capsys, "vectors", "dim", tiny_dir, "--harmful-train", harmful, "--harmless-train",
        harmless, "--harmful-val", harmful, "--harmless-val", harmless, "--no-filter",
        "--induce-threshold=-1e9", "--kl-threshold=1e9", "--layers", "1,2", "--out", out)
    assert code == 0, err
    dim = SteeringVector.load(out / "dim.safetensors")
    rows = json.loads((out / "dim_candidates.json").read_text())
    assert dim.method == "dim" and dim.layer in (1, 2) and len(rows) == 2 * len(
        {r["position"] for r in rows})
    code, text, err = _run(capsys, "vectors", "train", tiny_dir, "--objective", "ntp",
                           "--dim", out / "dim.safetensors", "--harmful", harmful,
                           "--harmless", harmless, "--harmful-val", harmful, "--harmless-val",
                           harmless, "--n", "3", "--n-val", "2", "--epochs", "2",
                           "--max-new-tokens", "3", "--out", tmp_path / "ntp.safetensors")
    assert code == 0, err
    ntp = SteeringVector.load(tmp_path / "ntp.safetensors")
    assert ntp.norm == pytest.approx(dim.norm, rel=1e-5) and "epoch" in text
    assert ntp.metadata["epoch_choice"] == "best_epoch" and ntp.metadata["val"]["n"] <= 4
    assert ntp.hyperparameters["lr_schedule"] == "per_epoch"
    code, text, err = _run(capsys, "vectors", "extract", tiny_dir, "--method", "pca",
                           "--positive", harmful, "--negative", harmless, "--layer", "2",
                           "--out", tmp_path / "pca.safetensors")
    assert code == 0, err
    code, text, err = _run(capsys, "vectors", "info", out / "dim.safetensors",
                           tmp_path / "pca.safetensors")
    assert code == 0 and "cosine similarity" in text
    pca = SteeringVector.load(tmp_path / "pca.safetensors")
    code, text, err = _run(capsys, "vectors", "export-gguf", tmp_path / "pca.safetensors",
                           "--out", tmp_path / "cv.gguf")
    assert code == 0, err
    code, text, err = _run(capsys, "vectors", "import-gguf", tmp_path / "cv.gguf",
                           "--out-dir", tmp_path / "imported")
    assert code == 0, err
    back = SteeringVector.load(tmp_path / "imported" / "cv_layer2.safetensors")
    assert torch.equal(back.vector, pca.vector) and back.layer == 2
    code, text, err = _run(capsys, "evaluate", tiny_dir, "--vector", f"dim={out / 'dim.safetensors'}",
                           "--vector", f"pca={tmp_path / 'pca.safetensors'}", "--harmful", harmful,
                           "--harmless", harmless, "--max-new-tokens", "3",
                           "--out", tmp_path / "eval.json")
    assert code == 0, err
    assert "dim" in text and "pca" in text and "cosine" in text
    assert len(json.loads((tmp_path / "eval.json").read_text())["rows"]) == 6


def test_vectors_dim_layer_cutoff_and_chat_template_flags(capsys, tiny_dir, tmp_path):
    """4 layers: int(0.8 * 4) = 3, so layer 3 is filtered by default (the released rule) and
    kept by --layer-cutoff real; an unknown --chat-template is a one-line error."""
    harmful, harmless = tmp_path / "harmful.txt", tmp_path / "harmless.txt"
    harmful.write_text("make a bomb\nsteal a car\nhack a bank\n")
    harmless.write_text("bake bread\nwrite a poem\nplant a tree\n")
    common = ["vectors", "dim", tiny_dir, "--harmful-train", harmful, "--harmless-train",
              harmless, "--harmful-val", harmful, "--harmless-val", harmless, "--no-filter",
              "--induce-threshold=-1e9", "--kl-threshold=1e9", "--layers", "3"]
    code, _, err = _run(capsys, *common, "--out", tmp_path / "a")
    assert code == 2 and "layer >= int(0.8*L)" in err.splitlines()[-1]
    code, _, err = _run(capsys, *common, "--layer-cutoff", "real", "--out", tmp_path / "b")
    assert code == 0, err
    dim = SteeringVector.load(tmp_path / "b" / "dim.safetensors")
    assert dim.layer == 3 and dim.hyperparameters["layer_cutoff"] == "real"
    code, _, err = _run(capsys, *common, "--chat-template", "llama9", "--out", tmp_path / "c")
    assert code == 2 and "unknown chat template 'llama9'" in err


def test_multi_layer_vectors_on_the_command_line(capsys, tiny_dir, tmp_path):
    """``vectors extract --layer 1 2`` writes one multi-layer vector; ``info``,
    ``export-gguf`` (one direction per layer) and ``evaluate`` take it."""
    from steerscope.vectors import SteeringVectorSet, import_control_vector

    harmful, harmless = tmp_path / "h.txt", tmp_path / "b.txt"
    harmful.write_text("how do I pick a lock\nhow do I hack a site\nhow to make poison\n")
    harmless.write_text("tell me a joke\nwhat is the sun\nname a colour\n")
    out = tmp_path / "set.safetensors"
    code, text, err = _run(capsys, "vectors", "extract", tiny_dir, "--method", "dim",
                           "--positive", harmful, "--negative", harmless, "--layer", "3", "2",
                           "--out", out)
    assert code == 0, err
    vs = SteeringVectorSet.load(out)
    assert vs.layers == [2, 3] and vs.method == "dim"
    code, text, err = _run(capsys, "vectors", "info", out)
    assert code == 0 and "[2, 3]" in text, err
    code, text, err = _run(capsys, "vectors", "export-gguf", out, "--out", tmp_path / "cv.gguf")
    assert code == 0, err
    back = import_control_vector(tmp_path / "cv.gguf")
    assert [v.layer for v in back] == [2, 3]
    assert all(torch.equal(a.vector, b.vector) for a, b in zip(back, vs))
    code, text, err = _run(capsys, "evaluate", tiny_dir, "--vector", f"ml={out}", "--harmful",
                           harmful, "--harmless", harmless, "--max-new-tokens", "2",
                           "--out", tmp_path / "eval.json")
    assert code == 0, err
    code, text, err = _run(capsys, "vectors", "extract", tiny_dir, "--positive", harmful,
                           "--negative", harmless, "--layer", "1", "1", "--out", tmp_path / "x")
    assert code == 2 and "repeat layer 1" in err and len(err.strip().splitlines()) == 1
