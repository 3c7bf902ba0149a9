"""The resumable pipeline on a tiny random chat model: config validation before any compute,
results.json, skipping finished stages, --force/--until, and resuming after a SIGKILL with
byte-identical artifacts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import PIPELINE_HARMFUL, PIPELINE_HARMLESS, write_pipeline_workdir

from steerscope.errors import SteerscopeError
from steerscope.pipeline import (
    check_results,
    config_from_dict,
    dump_config,
    load_config,
    prepare,
    run_pipeline,
)
from steerscope.pipeline import registry as reg
from steerscope.pipeline.demo import demo_config
from steerscope.pipeline.runner import KILL_ENV

REPO = Path(__file__).resolve().parents[2]
HARMFUL, HARMLESS = PIPELINE_HARMFUL, PIPELINE_HARMLESS


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny matrices: one thread


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return write_pipeline_workdir(tmp_path_factory.mktemp("pipeline"))


def tiny_config(root: Path, **changes) -> dict:
    """A pipeline config for the tiny model: every stage takes well under a second."""
    cfg = {
        "name": "tiny",
        "model": {"source": str(root / "model")},
        "data": {
            "harmful_train": str(root / "harmful.txt"),
            "harmless_train": str(root / "harmless.txt"),
            "harmful_val": str(root / "harmful.txt"),
            "harmless_val": str(root / "harmless.txt"),
            "harmful_test": str(root / "harmful.txt"),
            "harmless_test": str(root / "harmless.txt"),
            "n_train": 4, "n_val": 3, "n_test": 4,
        },
        "vectors": {
            "methods": ["dim", "pca", "ntp", "po"],
            "batch_size": 4,
            # a random model neither refuses nor is filtered sensibly: keep every candidate
            "dim": {"filter": False, "kl_threshold": 1e9, "induce_threshold": -1e9,
                    "positions": [-1]},
            "preference": {"max_new_tokens": 4, "val_fraction": 0.25},
            "ntp": {"lr": [0.04], "epochs": 1, "max_response_tokens": 4},
            "po": {"lr": [0.04], "epochs": 1, "max_response_tokens": 4},
        },
        "evaluation": {"max_new_tokens": 4, "batch_size": 3},
        # a random model never refuses: patch the prompts whose steered tokens change
        "patching": {"flip": "tokens", "n_prompts": 1, "ig_steps": 2, "max_new_tokens": 4},
        "circuits": {"sizes": [10, 50, 1000], "n_random": 1, "refine_steps": 1},
        "freeze": {"n_prompts": 3, "max_new_tokens": 4},
        "svv": {"top_tokens": 5, "n_heads": 3},
        "sparsify": {"taus": [0, 1], "n_prompts": 3, "max_new_tokens": 4},
    }
    for k, v in changes.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    return cfg


# --- config validation --------------------------------------------------------------------
def test_unknown_keys_name_the_path_and_the_valid_keys():
    with pytest.raises(SteerscopeError, match=r"unknown config key 'modle'.*valid keys: name, seed"):
        config_from_dict({"modle": {}})
    with pytest.raises(SteerscopeError,
                       match=r"unknown config key 'vectors.dim.kl'.*valid keys of vectors.dim: "
                             r"layers, positions"):
        config_from_dict({"vectors": {"dim": {"kl": 0.1}}})


@pytest.mark.parametrize("data, match", [
    ({"data": {"n_train": -3}}, r"'data.n_train' must be a positive integer"),
    ({"data": {"n_val": "ten"}}, r"'data.n_val' must be int"),
    ({"vectors": {"methods": ["dim", "magic"]}}, r"'vectors.methods' has unknown value 'magic'"),
    ({"vectors": {"methods": ["pca"]}}, r"'vectors.methods' must include 'dim'"),
    ({"vectors": {"ntp": {"preset": "huge"}}}, r"'vectors.ntp.preset' has unknown value"),
    ({"freeze": {"modes": ["qk", "xy"]}}, r"'freeze.modes' has unknown value 'xy'"),
    ({"model": {"dtype": "int3"}}, r"'model.dtype'.*unknown dtype"),
    ({"name": "a/b"}, r"'name' .* is not a valid run name"),
    ({"vectors": {"dim": {"layers": [1, True]}}}, r"'vectors.dim.layers\[1\]' must be int"),
])
def test_bad_values_fail_with_one_line(data, match):
    with pytest.raises(SteerscopeError, match=match) as info:
        config_from_dict(data)
    assert "\n" not in str(info.value)


def test_yaml_round_trip_and_exponent_floats(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("vectors:\n  dim:\n    kl_threshold: 1.0e9\n")  # PyYAML reads a string
    cfg = load_config(path)
    assert cfg.vectors.dim.kl_threshold == 1e9
    again = tmp_path / "d.yaml"
    again.write_text(dump_config(cfg))
    assert load_config(again) == cfg
    path.write_text("model: [unclosed\n")
    with pytest.raises(SteerscopeError, match="not valid YAML at line"):
        load_config(path)


def test_demo_config_is_valid_and_uses_the_demo_model():
    cfg = demo_config()
    assert cfg.model.source == "demo"
    assert cfg.vectors.methods == ["dim", "ntp", "po"]
    assert demo_config(vectors={"methods": ["dim"]}).vectors.methods == ["dim"]
    assert demo_config(vectors={"methods": ["dim"]}).vectors.preference.max_new_tokens == 48


def test_inputs_checked_before_any_compute(workdir, tmp_path, monkeypatch):
    """A bad layer (from config.json), a missing prompt file or model folder fails before a
    weight is read or a folder is written."""
    import transformers

    def no_weights(*a, **k):
        raise AssertionError("weights were loaded during validation")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_weights)
    out = tmp_path / "runs"
    with pytest.raises(SteerscopeError, match=r"'vectors.layer': layer 4 is out of range for "
                                              r"this 4-layer model: use a layer from 0 to 3"):
        run_pipeline(tiny_config(workdir, vectors={"layer": 4}), out)
    with pytest.raises(SteerscopeError, match=r"'vectors.dim.layers': layer 9 is out of range"):
        run_pipeline(tiny_config(workdir, vectors={"dim": {"layers": [0, 9]}}), out)
    with pytest.raises(SteerscopeError, match=r"data.present_test.*'nope.txt' is neither an "
                                              r"existing file"):
        run_pipeline(tiny_config(workdir, data={"harmful_test": "nope.txt"}), out)
    with pytest.raises(SteerscopeError, match=r"'model.source'.*does not exist"):
        run_pipeline(tiny_config(workdir, model={"source": str(tmp_path / "missing")}), out)
    with pytest.raises(SteerscopeError, match=r"has 12 prompts but present_train \(4\) \+ "
                                              r"present_val \(3\) \+ present_test \(40\) need 47"):
        run_pipeline(tiny_config(workdir, data={"n_test": 40}), out)
    with pytest.raises(SteerscopeError, match="unknown stage 'vector'"):
        run_pipeline(tiny_config(workdir), out, force="vector")
    assert not out.exists()


# --- a whole run --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished(workdir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    res = run_pipeline(tiny_config(workdir), out, progress=False)
    return res


def test_run_writes_every_artifact_and_results_json(finished):
    res = finished
    assert res.ran == ORDER
    results = json.loads(res.results_path.read_text())
    assert set(check_results(results)) == {
        "model", "vectors", "steering", "cosine", "circuits", "overlap", "interchange",
        "edge_types", "freeze", "svv", "sparsify"}
    assert all(s == "done" for s in results["run"]["stages"].values())
    m = results["model"]
    assert (m["architecture"], m["n_layers"], m["revision"]) == ("llama", 4, None)
    assert list(results["vectors"]) == ["dim", "pca", "ntp", "po"]
    assert all(v["layer"] == m["steering_layer"] for v in results["vectors"].values())
    assert set(results["steering"]) == {"none", "dim", "pca", "ntp", "po"}
    cos = results["cosine"]
    assert cos["methods"] == ["dim", "pca", "ntp", "po"]
    assert cos["matrix"][0][0] == pytest.approx(1.0)
    html = (res.run_dir / "report.html").read_text()
    assert "Steering" in html and "Circuits" in html and "not run" not in html
    for fig in ("steering", "faithfulness", "interchange", "edge_types"):
        assert (res.run_dir / "figures" / f"{fig}.png").is_file(), fig


def test_trained_vectors_validate_on_dim_val_prompts_and_keep_the_best_epoch(finished):
    """Paper conventions (vectors.preference.val_prompts: dim_val): the NTP/PO validation
    pairs come from DIM's validation prompts, the training pairs from every train prompt."""
    from steerscope.vectors import SteeringVector

    run = finished.run_dir
    (data_dir,) = run.glob("data-*")
    (trained_dir,) = run.glob("trained-*")
    prompts = json.loads((data_dir / "prompts.json").read_text())
    val = json.loads((trained_dir / "preference_val.json").read_text())["examples"]
    train = json.loads((trained_dir / "preference_data.json").read_text())["examples"]
    assert {e["instruction"] for e in val} <= set(prompts["present_val"] + prompts["absent_val"])
    assert {e["instruction"] for e in train} <= set(prompts["present_train"]
                                                    + prompts["absent_train"])
    for obj in ("ntp", "po"):
        meta = SteeringVector.load(trained_dir / f"{obj}.safetensors").metadata
        assert meta["epoch_choice"] == "best_epoch" and meta["val"]["validation"] == "deployed"
        assert meta["val"]["n"] == len(val)


def test_results_paths_load_with_plain_libraries(finished):
    """model.path loads with AutoModelForCausalLM; each vector file holds exactly one tensor,
    added at the recorded layer."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    results = json.loads(finished.results_path.read_text())
    model = AutoModelForCausalLM.from_pretrained(results["model"]["path"])
    d = model.config.hidden_size
    for name, v in results["vectors"].items():
        with safe_open(finished.run_dir / v["path"], framework="pt") as f:
            keys = list(f.keys())
            assert len(keys) == 1, name
            t = f.get_tensor(keys[0])
        assert t.shape == (d,)
        assert float(t.norm()) == pytest.approx(v["norm"], rel=1e-6)
        assert 0 <= v["layer"] < model.config.num_hidden_layers


def test_rerun_skips_everything_and_force_recomputes_one_stage(finished, workdir):
    out = finished.run_dir.parent
    stamp = {p: p.stat().st_mtime_ns for p in finished.run_dir.glob("*/stage.json")}
    again = run_pipeline(tiny_config(workdir), out, progress=False)
    assert again.ran == [] and again.run_dir == finished.run_dir
    assert {p: p.stat().st_mtime_ns for p in finished.run_dir.glob("*/stage.json")} == stamp
    forced = run_pipeline(tiny_config(workdir), out, force=["vectors"], progress=False)
    # the recomputed vectors are byte-identical, so nothing downstream reruns
    assert forced.ran == ["vectors"]
    assert forced.outputs["vectors"].digest == finished.outputs["vectors"].digest
    until = run_pipeline(tiny_config(workdir), out, until="data", progress=False)
    assert until.skipped == ["model", "data"]
    assert until.records["evaluation"].status == "not run"


def test_changed_config_gets_its_own_run_folder(finished, workdir):
    _, _, other = prepare(tiny_config(workdir, evaluation={"max_new_tokens": 5}),
                          finished.run_dir.parent)
    assert other != finished.run_dir and other.parent == finished.run_dir.parent


ORDER = ["model", "data", "vectors", "trained", "strength", "evaluation", "patching", "circuits", "freeze",
         "svv", "sparsify", "report"]


@pytest.mark.parametrize("stage", ORDER)
def test_a_failing_stage_leaves_nothing_and_the_rerun_resumes(stage, workdir, tmp_path,
                                                              monkeypatch):
    """An exception in the middle of any stage (after it wrote a file) leaves no stage folder;
    the rerun skips every earlier stage and recomputes from the failed one."""
    original = reg.get_stage(stage)  # imports the built-in stages first

    def boom(ctx, section, inputs):
        original.fn(ctx, section, inputs)
        (ctx.out / "partial.json").write_text("{}")
        raise RuntimeError(f"crash in the middle of {stage}")

    monkeypatch.setitem(reg.STAGES, stage, original.__class__(
        **{**original.__dict__, "fn": boom}))
    with pytest.raises(RuntimeError, match="crash in the middle"):
        run_pipeline(tiny_config(workdir), tmp_path, progress=False)
    run_dir = next(tmp_path.iterdir())
    assert not list(run_dir.glob(f"{stage}-*")) and not list(run_dir.glob(".*tmp*"))
    monkeypatch.setitem(reg.STAGES, stage, original)
    res = run_pipeline(tiny_config(workdir), tmp_path, progress=False)
    k = ORDER.index(stage)
    assert res.skipped == ORDER[:k]
    assert res.ran == ORDER[k:]


# --- kill -9 and resume, in fresh processes ----------------------------------------------------
RUNNER = """
import json, sys
from steerscope.pipeline import run_pipeline
r = run_pipeline(sys.argv[1], sys.argv[2], progress=False)
print(json.dumps({"ran": r.ran, "skipped": r.skipped}))
"""


def _run_process(config: Path, out: Path, kill_in: str | None = None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop(KILL_ENV, None)
    if kill_in:
        env[KILL_ENV] = kill_in
    return subprocess.run([sys.executable, "-c", RUNNER, str(config), str(out)], env=env,
                          capture_output=True, text=True, timeout=300, cwd=REPO)


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run folder; timings removed from stage.json, run.json left out."""
    files = {}
    for p in sorted(run_dir.rglob("*")):
        rel = p.relative_to(run_dir).as_posix()
        if not p.is_file() or rel in ("run.json", ".lock"):
            continue
        data = p.read_bytes()
        if p.name == "stage.json":
            rec = json.loads(data)
            for k in ("started", "finished", "seconds", "record_digest"):  # the seal: timings
                rec.pop(k)
            data = json.dumps(rec, sort_keys=True).encode()
        files[rel] = data
    return files


def test_kill_mid_stage_then_resume_equals_an_uninterrupted_run(workdir, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_config(workdir)))
    out = tmp_path / "runs"
    # the uninterrupted reference, in this process (one thread, like the subprocesses)
    run_dir = run_pipeline(config, out, progress=False).run_dir
    reference = _snapshot(run_dir)
    shutil.rmtree(out)

    killed = _run_process(config, out, kill_in="trained")
    assert killed.returncode == -signal.SIGKILL
    assert sorted(p.name.split("-")[0] for p in run_dir.glob("[!.]*-*") if p.is_dir()) == \
        ["data", "model", "vectors"]
    assert list(run_dir.glob(".trained-*.tmp-*"))  # the interrupted stage's files, uncommitted
    before = {p.parent.name: p.read_bytes() for p in run_dir.glob("*/stage.json")}

    resumed = _run_process(config, out)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    status = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert status == {"ran": ORDER[3:],
                      "skipped": ["model", "data", "vectors"]}
    for folder, data in before.items():  # finished stages untouched (timestamps included)
        assert (run_dir / folder / "stage.json").read_bytes() == data
    assert not list(run_dir.glob(".*tmp*"))
    assert _snapshot(run_dir) == reference


def test_sharded_evaluate_steering_equals_one_process():
    """evaluate_steering with its units spread over two simulated ranks (two threads, each
    with its own copy of the model, exchanging their units at the gather) gives exactly the
    one-process table: same completions, rates, scores and rows on both ranks; the
    evaluation judge runs on the main rank only."""
    import copy
    import threading

    from steerscope.evaluate.steering import evaluate_steering
    from steerscope.models import tiny_model, tiny_tokenizer, validate_model
    from steerscope.vectors import SteeringVector

    model, tok = tiny_model("qwen2"), tiny_tokenizer()
    tok.padding_side = "left"
    arch = validate_model(model)
    g = torch.Generator().manual_seed(0)
    vecs = {"a": SteeringVector(torch.randn(64, generator=g) * 8, layer=1),
            "b": SteeringVector(torch.randn(64, generator=g) * 8, layer=2)}
    present, absent = HARMFUL[:5], HARMLESS[:7]

    class Flags:
        def judge(self, prompts, responses):
            return [len(r) % 2 == 0 for r in responses]

    kw = dict(max_new_tokens=5, batch_size=3, judge=Flags())
    ref = evaluate_steering(model, tok, vecs, present, absent, arch=arch, **kw)
    barrier, parts = threading.Barrier(2), {}

    class Rank:
        def __init__(self, rank):
            self.rank, self.is_main = rank, rank == 0

        def indices(self, n):
            return list(range(self.rank, n, 2))

        def gather(self, local, n):
            parts[self.rank] = local
            barrier.wait()
            merged = {**parts[0], **parts[1]}
            assert sorted(merged) == list(range(n)) and not set(parts[0]) & set(parts[1])
            return [merged[i] for i in range(n)]

    got = {}

    def run(rank):
        m = copy.deepcopy(model)
        got[rank] = evaluate_steering(m, tok, vecs, present, absent, arch=validate_model(m),
                                      shard=Rank(rank), **kw)

    threads = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(parts[0]) and set(parts[1])  # both ranks computed units
    for rank in (0, 1):
        assert got[rank].completions == ref.completions
        assert got[rank].scores == ref.scores
        assert got[rank].cosine == ref.cosine
        for r, g_ in zip(ref.rows, got[rank].rows):
            judge = r.judge_rate if rank == 0 else None
            assert (g_.method, g_.side, g_.n, g_.behaviour_rate, g_.score_rate, g_.mean_score,
                    g_.alpha, g_.repetition_rate, g_.judge_rate) == \
                (r.method, r.side, r.n, r.behaviour_rate, r.score_rate, r.mean_score, r.alpha,
                 r.repetition_rate, judge)
    assert ref.row("a", "present").judge_rate is not None


def test_dtype_and_device_map_pass_through_to_the_model(workdir, tmp_path):
    """bf16 and device_map come from the model section (here device_map='cpu' via
    accelerate; on GPUs 'auto' shards the model)."""
    cfg = tiny_config(workdir, model={"dtype": "bfloat16", "device_map": "cpu"})
    res = run_pipeline(cfg, tmp_path, until="model", progress=False)
    results = json.loads(res.results_path.read_text())
    assert results["model"]["dtype"] == "bfloat16"
    assert res.records["data"].status == "not run"
    assert "vectors" not in results


def test_cli_run_reports_config_errors_in_one_line(tmp_path, capsys):
    from steerscope.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  n_tets: 3\n")
    assert main(["run", str(bad), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown config key 'data.n_tets'") and "\n" not in err
    assert not (tmp_path / "runs").exists()
