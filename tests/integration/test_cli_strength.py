"""``steerscope sweep-alpha`` and the coherence columns of ``steerscope evaluate`` on a tiny
chat model; bad strength flags are one-line errors before the model loads."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import write_pipeline_workdir

from steerscope.cli import main
from steerscope.vectors.vector import SteeringVector

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = write_pipeline_workdir(tmp_path_factory.mktemp("strength"))
    v = torch.randn(64, generator=torch.Generator().manual_seed(0)) * 3
    SteeringVector(v, 1, method="dim").save(root / "dim.safetensors")
    return root


def _run(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # an argparse usage error
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_sweep_alpha_json(capsys, work):
    code, out, err = _run(capsys, "sweep-alpha", work / "model", "--vector",
                          f"dim={work / 'dim.safetensors'}", "--present-val",
                          work / "harmful.txt", "--absent-val", work / "harmless.txt",
                          "--n", "3", "--max-new-tokens", "3", "--grid", "0.5", "1",
                          "--fluency-threshold", "50", "--n-reference", "2", "--json")
    assert code == 0, err
    res = json.loads(out)
    dim = [e for e in res["alpha_curve"] if e["method"] == "dim"]
    assert sorted(e["alpha"] for e in dim) == [-1.0, -0.5, 0.5, 1.0]
    assert set(res["alpha_chosen"]["dim"]) == {"remove", "induce"}
    assert all(e["fluency_threshold"] == 50.0 for e in res["alpha_curve"])


def test_evaluate_prints_coherence(capsys, work, tmp_path):
    code, out, err = _run(capsys, "evaluate", work / "model", "--vector",
                          f"dim={work / 'dim.safetensors'}", "--present", work / "harmful.txt",
                          "--absent", work / "harmless.txt", "--n", "3",
                          "--max-new-tokens", "3", "--out", tmp_path / "e.json")
    assert code == 0, err
    assert "fluency" in out and "ce_ref" in out
    coh = json.loads((tmp_path / "e.json").read_text())["coherence"]
    assert coh["none"]["absent"]["ce_reference"] == 0.0
    assert set(coh["dim"]) == {"present", "absent"}


@pytest.mark.parametrize("flags, match", [
    (("--grid", "1", "0.5"), "--grid"), (("--grid", "nan"), "--grid"),
    (("--grid", "0"), "--grid"), (("--fluency-threshold", "0"), "fluency-threshold"),
    (("--fluency-threshold", "-1"), "fluency-threshold"), (("--share", "2"), "share"),
])
def test_bad_flags_are_one_line(capsys, work, flags, match):
    code, _, err = _run(capsys, "sweep-alpha", "no-such-model", "--vector",
                        f"dim={work / 'dim.safetensors'}", *flags)
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("value, match", [("fast", "neither auto nor a number"),
                                          ("-1", "evaluation.alpha"), ("nan", "alpha")])
def test_demo_set_alpha_is_checked_before_compute(capsys, value, match, tmp_path):
    code, _, err = _run(capsys, "demo", "--set", f"evaluation.alpha={value}", "--out", tmp_path)
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.iterdir())


def test_demo_config_takes_alpha():
    from steerscope.pipeline.demo import demo_run_config
    from steerscope.pipeline.overrides import load_config_with_sets

    base = demo_run_config()
    assert base.evaluation.alpha is None
    assert load_config_with_sets(base, ["evaluation.alpha=auto"]).evaluation.alpha == "auto"
    assert load_config_with_sets(base, ["evaluation.alpha=0.5"]).evaluation.alpha == 0.5
