"""The strength sweep in the pipeline (evaluation.alpha: auto) and the coherence columns of
every table, on a tiny random chat model."""

from __future__ import annotations

import json

import pytest
from conftest import write_pipeline_workdir
from test_pipeline import tiny_config

from steerscope.errors import SteerscopeError
from steerscope.pipeline import config_from_dict, run_pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")

AUTO = {"alpha": "auto", "alpha_grid": [0.5, 2.0], "fluency_threshold": 100.0,
        "n_reference": 2}


@pytest.mark.slow
def test_auto_alpha_is_chosen_on_val_and_used_by_every_table(tmp_path):
    workdir = write_pipeline_workdir(tmp_path / "w")
    cfg = tiny_config(workdir, vectors={"methods": ["dim", "pca"]},
                      evaluation={**AUTO, "max_new_tokens": 4, "batch_size": 3},
                      circuits={"enabled": False}, svv={"enabled": False})
    res = run_pipeline(cfg, tmp_path / "out", progress=False)
    results = json.loads(res.results_path.read_text())
    from steerscope.pipeline import check_results

    assert {"alpha_curve", "alpha_chosen", "steering", "freeze"} <= set(check_results(results))
    curve, chosen = results["alpha_curve"], results["alpha_chosen"]
    assert {(e["method"], e["use"]) for e in curve} >= {
        ("dim", "remove"), ("dim", "induce"), ("pca", "induce")}
    assert sorted(e["alpha"] for e in curve if e["method"] == "dim") == [-2.0, -0.5, 0.5, 2.0]
    for e in curve:
        for k in ("behaviour_rate", "coherent_success", "repetition_rate", "fluency",
                  "ce_reference", "coherent_share"):
            assert k in e
    assert next(e for e in curve if e["method"] == "none")["ce_reference"] == 0.0
    for m in ("dim", "pca"):
        for use, side in (("remove", "present"), ("induce", "absent")):
            a = chosen[m][use]["alpha"]
            assert a in {e["alpha"] for e in curve if e["method"] == m and e["use"] == use} \
                or chosen[m][use]["rule"] == "fallback"
            row = results["steering"][m][side]
            assert row["alpha"] == a
            for k in ("fluency", "ce_reference", "coherent_behaviour_rate", "coherent_share",
                      "n_coherent", "fluency_threshold"):
                assert k in row
    assert results["steering"]["none"]["present"]["ce_reference"] == 0.0
    fr = results["freeze"]["none"]
    assert fr["present"]["alpha"] == chosen["dim"]["remove"]["alpha"]
    assert fr["absent"]["alpha"] == chosen["dim"]["induce"]["alpha"]
    assert fr["present"]["coherence"]["ce_reference"] == pytest.approx(
        results["steering"]["dim"]["present"]["ce_reference"])
    assert results["freeze"]["qk"]["present"]["coherence"]["ce_reference"] is None
    pts = [p for rule in results["sparsify"]["dim"].values() for p in rule]
    assert pts and all(p["coherence"][side]["fluency_threshold"] == 100.0
                       for p in pts for side in ("present", "absent"))
    assert all(p["present_alpha"] == chosen["dim"]["remove"]["alpha"] for p in pts)
    html = (res.run_dir / "report.html").read_text()
    assert "Steering strength" in html and "fluency" in html
    # a changed grid changes the sweep's key (and what reads it), not the stages before it
    again = run_pipeline(tiny_config(workdir, vectors={"methods": ["dim", "pca"]},
                                     evaluation={**AUTO, "alpha_grid": [0.5, 1.0],
                                                 "max_new_tokens": 4, "batch_size": 3},
                                     circuits={"enabled": False}, svv={"enabled": False}),
                         tmp_path / "out", progress=False)
    assert again.outputs["strength"].key != res.outputs["strength"].key
    assert again.outputs["evaluation"].key != res.outputs["evaluation"].key
    assert again.outputs["vectors"].key == res.outputs["vectors"].key


def test_fixed_alpha_number_steers_both_uses(tmp_path):
    from steerscope.pipeline.strength import fixed_alphas

    cfg = config_from_dict({"evaluation": {"alpha": 0.5}})
    assert fixed_alphas(cfg.evaluation) == {"remove": -0.5, "induce": 0.5}
    assert fixed_alphas(config_from_dict({}).evaluation) == {"remove": -1.0, "induce": 1.0}


@pytest.mark.parametrize("evaluation, match", [
    ({"alpha_grid": []}, r"'evaluation.alpha_grid' is empty"),
    ({"alpha_grid": [1.0, 0.5]}, r"'evaluation.alpha_grid' .* not strictly increasing"),
    ({"alpha_grid": [0.5, ".nan"]}, r"alpha_grid"),
    ({"alpha": float("nan")}, r"'evaluation.alpha'"),
    ({"alpha": float("inf")}, r"'evaluation.alpha'"),
    ({"alpha": -1.0}, r"'evaluation.alpha' must be a finite positive"),
    ({"alpha": "fast"}, r"'evaluation.alpha' is 'fast', neither auto nor a number"),
    ({"fluency_threshold": 0}, r"'evaluation.fluency_threshold' must be a positive number"),
    ({"fluency_threshold": -2.0}, r"fluency_threshold"),
    ({"auto_share": 1.5}, r"'evaluation.auto_share' must be in"),
])
def test_bad_strength_settings_fail_before_compute(evaluation, match):
    with pytest.raises(SteerscopeError, match=match) as info:
        config_from_dict({"evaluation": evaluation})
    assert "\n" not in str(info.value)


def test_batch_size_auto_off_cuda_equals_16(tmp_path):
    """evaluation.batch_size: auto reaches every stage that generates or scores (strength
    sweep, steering table, freezing, sparsity); off CUDA it is the default 16: the same
    tables as batch_size 16, number for number."""
    workdir = write_pipeline_workdir(tmp_path / "w")
    tables = []
    for bs in ("auto", 16):
        cfg = tiny_config(workdir, vectors={"methods": ["dim"]},
                          evaluation={**AUTO, "max_new_tokens": 4, "batch_size": bs},
                          circuits={"enabled": False}, svv={"enabled": False})
        res = run_pipeline(cfg, tmp_path / f"out{bs}", progress=False)
        results = json.loads(res.results_path.read_text())
        tables.append({k: results[k] for k in ("alpha_curve", "alpha_chosen", "steering",
                                               "freeze", "sparsify")})
    assert tables[0] == tables[1]
