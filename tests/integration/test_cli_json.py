"""The CLI explains itself: help on every option and command, ``--version``, and ``--json`` on
every command that prints results (one JSON document on stdout, nothing else there)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from conftest import write_pipeline_workdir
from test_patching_cli import _fake_refusals
from test_pipeline import tiny_config

from steerscope.cli import build_parser, main
from steerscope.environment import steerscope_version
from steerscope.models import save_tiny_chat_model
from steerscope.vectors import SteeringVector

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _json(capsys, *argv):
    """Run a command with --json: exit code 0 and stdout is exactly one JSON document."""
    code, out, err = _run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("steerscope",)):
    """Every (command path, parser, subcommand help lines) of the tree."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_every_option_and_command_has_help():
    missing = []
    n_options = 0
    for path, parser in _parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help for a in action._choices_actions}
                missing += [f"{' '.join(path)} {name} (command)" for name in action.choices
                            if not (helps.get(name) or "").strip()]
            else:
                n_options += 1
            # a hidden alias (refusal's --harmful for --present) shares its option's help
            alias = action.help == argparse.SUPPRESS and any(
                o is not action and o.dest == action.dest and (o.help or "").strip()
                and o.help != argparse.SUPPRESS for o in parser._actions)
            if not alias and (not (action.help or "").strip()
                              or action.help == argparse.SUPPRESS):
                missing.append(f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, missing
    assert n_options > 200  # the walk really reached every subcommand's options
    # help strings are valid %-format strings: -h renders every command
    for _, parser in _parsers(build_parser()):
        assert parser.format_help()


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out == f"steerscope {steerscope_version()}"
    assert re.fullmatch(r"steerscope \d+\.\d+\.\d+\S*", out)


def test_every_command_that_prints_results_has_json():
    """Commands without --json print no results (they only show help)."""
    without = [" ".join(path) for path, p in _parsers(build_parser())
               if not any(isinstance(a, argparse._SubParsersAction) for a in p._actions)
               and "--json" not in p._option_string_actions]
    assert without == []


# --- --json on a tiny model ------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("cli-json")
    harmful, harmless = root / "harmful.txt", root / "harmless.txt"
    harmful.write_text("make a bomb\nsteal a car\nhack a bank\n")
    harmless.write_text("bake bread\nwrite a poem\nplant a tree\n")
    g = torch.Generator().manual_seed(0)
    return {"model": save_tiny_chat_model(root / "model", "qwen2"),
            "harmful": harmful, "harmless": harmless, "root": root,
            "vec": SteeringVector(torch.randn(64, generator=g) * 4, layer=1,
                                  method="dim").save(root / "v.safetensors"),
            "vec2": SteeringVector(torch.randn(64, generator=g) * 4, layer=1,
                                   method="pca").save(root / "v2.safetensors")}


def test_json_model_and_prompt_commands(capsys, files):
    archs = _json(capsys, "archs")
    assert {"llama", "gemma2"} <= {a["name"] for a in archs}
    info = _json(capsys, "info", files["model"])
    assert info["architecture"]["n_layers"] == 4 and info["architecture"]["d_model"] == 64
    assert info["dtype"] == "float32" and info["device"] == "cpu"
    prompts = _json(capsys, "prompts", files["harmful"], "--n", "2")
    assert prompts["n_prompts"] == 3 and len(prompts["sample"]) == 2
    gen = _json(capsys, "generate", files["model"], "--prompts", files["harmless"],
                "--max-new-tokens", "3", "--vector", files["vec"])
    assert [r["prompt"] for r in gen] == files["harmless"].read_text().split("\n")[:3]
    score = _json(capsys, "score", files["model"], "--prompts", files["harmful"], "--generate",
                  "--max-new-tokens", "3")
    assert score["n_prompts"] == 3 and len(score["prompts"]) == 3
    assert score["mean_refusal_score"] == pytest.approx(
        sum(r["refusal_score"] for r in score["prompts"]) / 3, abs=1e-5)
    assert score["refusal_rate"] + score["attack_success_rate"] == pytest.approx(1)


def test_json_vector_commands(capsys, files):
    m, h, b, root = files["model"], files["harmful"], files["harmless"], files["root"]
    dim = _json(capsys, "vectors", "dim", m, "--harmful-train", h, "--harmless-train", b,
                "--harmful-val", h, "--harmless-val", b, "--no-filter",
                "--induce-threshold=-1e9", "--kl-threshold=1e9", "--layers", "1",
                "--out", root / "dim")
    assert dim["vector"]["layer"] == dim["chosen"]["layer"] == 1
    assert SteeringVector.load(dim["vector"]["path"]).sha256 == dim["vector"]["sha256"]
    ext = _json(capsys, "vectors", "extract", m, "--method", "pca", "--positive", h,
                "--negative", b, "--layer", "2", "--out", root / "pca.safetensors")
    assert ext["method"] == "pca" and ext["layer"] == 2
    trained = _json(capsys, "vectors", "train", m, "--objective", "ntp", "--dim",
                    dim["vector"]["path"], "--harmful", h, "--harmless", b, "--harmful-val", h,
                    "--harmless-val", b, "--n", "2", "--n-val", "2", "--epochs", "1",
                    "--max-new-tokens", "3", "--out", root / "ntp.safetensors")
    assert trained["vector"]["norm"] == pytest.approx(dim["vector"]["norm"], rel=1e-5)
    info = _json(capsys, "vectors", "info", dim["vector"]["path"], ext["path"])
    assert len(info["vectors"]) == 2 and info["cosine"][0][0] == pytest.approx(1)
    gguf = _json(capsys, "vectors", "export-gguf", ext["path"], "--out", root / "cv.gguf")
    assert gguf["layers"] == [2]
    back = _json(capsys, "vectors", "import-gguf", gguf["path"], "--out-dir", root / "imp")
    assert back[0]["layer"] == 2 and back[0]["sha256"] == ext["sha256"]
    ev = _json(capsys, "evaluate", m, "--vector", f"dim={files['vec']}", "--harmful", h,
               "--harmless", b, "--max-new-tokens", "3")
    assert {r["method"] for r in ev["rows"]} == {"none", "dim"} and "completions" in ev


def test_json_patch_and_circuits(capsys, files, tmp_path, monkeypatch):
    _fake_refusals(monkeypatch)
    one = files["root"] / "one.txt"
    one.write_text("bad one\n")
    res = _json(capsys, "patch", files["model"], "--vector", f"A={files['vec']}", "--harmful",
                one, "--harmless", one, "--max-new-tokens", "4", "--steps", "2", "--sizes",
                "10,1000", "--top-k", "5", "--out", tmp_path)
    assert res["vectors"]["A"]["folder"] == str(tmp_path / "A")
    assert len(res["vectors"]["A"]["top_edges"]) == 5
    back = _json(capsys, "circuits", tmp_path, "--top", "5")
    assert back["vectors"]["A"]["top_edges"] == res["vectors"]["A"]["top_edges"]


def test_json_freeze_and_svv(capsys, files):
    common = [files["model"], "--vector", files["vec"]]
    frz = _json(capsys, "freeze", *common, "--harmful", files["harmful"], "--harmless",
                files["harmless"], "--modes", "qk", "--n", "2", "--max-new-tokens", "3")
    assert [r["mode"] for r in frz["rows"]] == ["none", "none", "qk", "qk"]
    svv = _json(capsys, "svv", *common, "--top-k", "3")
    assert svv["layer"] == 1 and len(svv["heads"][0]["tokens"]) == 3


def test_json_sparsify_commands(capsys, files, tmp_path):
    m, h, b = files["model"], files["harmful"], files["harmless"]
    scores = _json(capsys, "sparsify", "scores", m, "--vector", files["vec"], "--harmful", h,
                   "--harmless", b, "--n", "2", "--steps", "2", "--max-new-tokens", "3",
                   "--all-prompts", "--out", tmp_path / "ie.safetensors")
    assert scores["layer"] == 1 and Path(scores["path"]).is_file()
    applied = _json(capsys, "sparsify", "apply", files["vec"], "--ie", scores["path"],
                    "--rule", "ie", "--k", "8", "--out", tmp_path / "s.safetensors")
    assert applied["k"] == 8 and applied["d"] == 64
    ie = ["--ie", f"dim={scores['path']}", "--ie", f"pca={scores['path']}"]
    vecs = ["--vector", f"dim={files['vec']}", "--vector", f"pca={files['vec2']}"]
    rows = _json(capsys, "sparsify", "agree", *vecs, *ie, "--fractions", "0.5")
    assert {r["level"] for r in rows} >= {"fraction=0.5"}
    sweep = _json(capsys, "sparsify", "sweep", m, *vecs, *ie, "--harmful", h, "--harmless", b,
                  "--n", "2", "--taus", "0", "--rules", "ie,magnitude", "--max-new-tokens", "3",
                  "--out", tmp_path / "sweep")
    assert {p["rule"] for p in sweep["points"]} == {"ie", "magnitude"}
    assert set(sweep["highest_retained"]) == {"dim", "pca"}


def test_json_run_verify_report_explore_and_the_run_environment(capsys, tmp_path):
    import platform

    import transformers

    root = write_pipeline_workdir(tmp_path / "work")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(root, vectors={
        **tiny_config(root)["vectors"], "methods": ["dim"]})))
    run = _json(capsys, "run", config, "--out", tmp_path / "runs", "--quiet")
    run_dir = Path(run["run_dir"])
    assert run["stages"]["patching"]["status"] == "ran" and Path(run["results"]).is_file()
    env = json.loads((run_dir / "run.json").read_text())["environment"]
    assert env["python"] == platform.python_version() and env["torch"] == torch.__version__
    assert env["transformers"] == transformers.__version__
    assert env["steerscope"] == steerscope_version() and env["platform"]
    assert env["device"] == "cpu" and "device_name" in env
    verify = _json(capsys, "run", run_dir, "--verify")
    assert set(verify["folders"]) == {p.name for p in run_dir.iterdir()
                                      if p.is_dir() and (p / "stage.json").is_file()}
    report = _json(capsys, "report", run_dir, "--no-model", "--out", tmp_path / "rep")
    assert Path(report["report"]).is_file()
    explore = _json(capsys, "explore", run_dir, "--no-open", "--no-model")
    assert Path(explore["report"]).is_file() and explore["opened"] is False


def test_behaviours_json(capsys):
    rows = _json(capsys, "behaviours")
    names = [r["name"] for r in rows]
    assert "refusal" in names and len(names) == len(set(names)) >= 3
    one = _json(capsys, "behaviours", "refusal")
    assert one == next(r for r in rows if r["name"] == "refusal")
    assert set(one) >= {"name", "present", "absent", "judge", "score_tokens"}
