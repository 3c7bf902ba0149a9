"""``steerscope patch`` and ``steerscope circuits`` on a tiny chat model saved to disk."""

from __future__ import annotations

import json

import pytest
import torch

from steerscope.cli import main
from steerscope.models import save_tiny_chat_model
from steerscope.vectors import SteeringVector

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny matrices: one thread


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_chat_model(tmp_path_factory.mktemp("tiny-chat"), "llama", n_layers=3)


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _fake_refusals(monkeypatch):
    """Tiny random models never refuse: for each vector, the base completions of the
    harmful prompts (steered with a negative alpha) and the steered completions of the
    harmless prompts 'refuse'. Rollouts judge a batch's base completions, then its steered
    ones (the prompt sets here fit one batch)."""
    import steerscope.patching.data as data

    state = {"n": 0, "i": 0, "harmful": True}
    rollouts = data.rollouts

    def counted(model, tokenizer, instructions, vector, alpha, **kw):
        state.update(n=len(instructions), i=0, harmful=alpha < 0)
        return rollouts(model, tokenizer, instructions, vector, alpha, **kw)

    def fake(text):
        steered = state["i"] >= state["n"]
        state["i"] += 1
        return steered != state["harmful"]

    monkeypatch.setattr(data, "rollouts", counted)
    monkeypatch.setattr(data, "is_refusal_substring", fake)


def test_patch_then_circuits(capsys, tiny_dir, tmp_path, monkeypatch):
    _fake_refusals(monkeypatch)
    harmful, harmless = tmp_path / "harmful.txt", tmp_path / "harmless.txt"
    harmful.write_text("bad one\nbad two\n")
    harmless.write_text("good one\ngood two\n")
    vecs = []
    for i in range(2):
        v = torch.randn(64, generator=torch.Generator().manual_seed(i)) * 4
        vecs.append(SteeringVector(v, 1).save(tmp_path / f"v{i}.safetensors"))
    out = tmp_path / "patch"
    code, text, err = _run(capsys, "patch", tiny_dir, "--vector", f"A={vecs[0]}",
                           "--vector", f"B={vecs[1]}", "--harmful", harmful, "--harmless",
                           harmless, "--max-new-tokens", "5", "--steps", "2",
                           "--sizes", "10,30,1000", "--max-per-dataset", "1", "--out", out)
    assert code == 0, err
    assert "minimum faithful circuit" in text and "interchange" in text
    for name in ("A", "B"):
        assert (out / name / "result.json").is_file()
        assert (out / name / "scores.safetensors").is_file()
        ex = json.loads((out / name / "examples.json").read_text())
        assert len(ex["present/steered"]) == 1
    cmp = json.loads((out / "comparison.json").read_text())
    assert set(cmp["interchange"]) == {"A", "B"}
    code, text, _ = _run(capsys, "circuits", out)
    assert code == 0 and "== A ==" in text and "top edges" in text and "Jaccard" in text
    code, text, _ = _run(capsys, "circuits", out / "A", "--json", "--top", "3")
    assert code == 0 and len(json.loads(text)["vectors"]["A"]["top_edges"]) == 3
    code, text, _ = _run(capsys, "circuits", out, "--json", "--top", "2")
    both = json.loads(text)  # stdout is one JSON document: both vectors and the comparison
    assert set(both["vectors"]) == {"A", "B"} and set(both["comparison"]["interchange"]) == {
        "A", "B"}
    assert all(len(v["top_edges"]) == 2 for v in both["vectors"].values())


def test_patch_reverse_roles_on_the_coarse_graph(capsys, tiny_dir, tmp_path, monkeypatch):
    _fake_refusals(monkeypatch)
    harmful, harmless = tmp_path / "harmful.txt", tmp_path / "harmless.txt"
    harmful.write_text("bad one\n")
    harmless.write_text("good one\n")
    v = torch.randn(64, generator=torch.Generator().manual_seed(0)) * 4
    vec = SteeringVector(v, 1).save(tmp_path / "v.safetensors")
    out = tmp_path / "patch"
    code, text, err = _run(capsys, "patch", tiny_dir, "--vector", f"A={vec}", "--harmful",
                           harmful, "--harmless", harmless, "--max-new-tokens", "5",
                           "--steps", "2", "--sizes", "5,1000", "--reverse", "--graph",
                           "coarse", "--grad-at", "post_norm", "--pooling", "positions",
                           "--ig-batch-size", "2", "--out", out)
    assert code == 0, err
    assert "graph: coarse" in text and "roles: reverse" in text
    res = json.loads((out / "A" / "result.json").read_text())
    assert res["graph"]["coarse"] is True and res["meta"]["reverse"] is True
    assert (res["meta"]["grad_at"], res["meta"]["pooling"]) == ("post_norm", "positions")
    with pytest.raises(SystemExit):
        _run(capsys, "patch", tiny_dir, "--vector", f"A={vec}", "--graph", "medium", "--out", out)
    assert "invalid choice: 'medium'" in capsys.readouterr().err


def test_patch_errors(capsys, tiny_dir, tmp_path):
    code, _, err = _run(capsys, "patch", tiny_dir, "--out", tmp_path / "x")
    assert code == 2 and "no steering vector" in err
    code, _, err = _run(capsys, "circuits", tmp_path)
    assert code == 2 and "no patching results" in err
    vec = SteeringVector(torch.randn(64), 1).save(tmp_path / "ok.safetensors")
    code, _, err = _run(capsys, "patch", tiny_dir, "--vector", vec, "--ig-batch-size", "0",
                        "--out", tmp_path / "z")
    assert code == 2 and "error: --ig-batch-size must be a positive integer" in err \
        and "\n" not in err.strip()
    assert not (tmp_path / "z").exists()
    v = SteeringVector(torch.randn(32), 1).save(tmp_path / "bad.safetensors")
    p = tmp_path / "p.txt"
    p.write_text("x\n")
    code, _, err = _run(capsys, "patch", tiny_dir, "--vector", v, "--harmful", p,
                        "--harmless", p, "--out", tmp_path / "y")
    assert code == 2 and "error:" in err


def test_patch_grid_position_metrics_and_random_kind(capsys, tiny_dir, tmp_path, monkeypatch):
    _fake_refusals(monkeypatch)
    harmful, harmless = tmp_path / "harmful.txt", tmp_path / "harmless.txt"
    harmful.write_text("bad one\n")
    harmless.write_text("good one\n")
    v = torch.randn(64, generator=torch.Generator().manual_seed(0)) * 4
    vec = SteeringVector(v, 1).save(tmp_path / "v.safetensors")
    out = tmp_path / "patch"
    code, text, err = _run(capsys, "patch", tiny_dir, "--vector", f"A={vec}", "--harmful",
                           harmful, "--harmless", harmless, "--max-new-tokens", "5",
                           "--steps", "2", "--grid-step", "0.25", "--position-metrics",
                           "--random", "unpruned", "--out", out)
    assert code == 0, err
    assert "random 2x (unpruned)" in text and "minimum size reaching 0.85 by kl_ratio" in text
    res = json.loads((out / "A" / "result.json").read_text())
    n = res["tables"]["summary"]["n_edges"]
    curve = res["curves"]["eap_ig"]
    assert curve["sizes"] == [round(k * 0.25 * n) for k in range(1, 5)]
    assert len(curve["positions"]) == 4
    last = curve["positions"][-1]["present"]  # all edges: the steered model itself
    assert last["token_match"]["overall"] == 1.0
    assert last["kl_ratio"]["overall"] == pytest.approx(1.0, abs=1e-5)
    code, text, _ = _run(capsys, "circuits", out)
    assert code == 0 and "kl " in text and "match" in text
    code, _, err = _run(capsys, "patch", tiny_dir, "--vector", f"A={vec}", "--grid-step",
                        "0.25", "--sizes", "5,10", "--out", out)
    assert code == 2 and "--grid-step and --sizes" in err
