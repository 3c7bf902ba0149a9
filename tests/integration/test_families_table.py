"""benchmarks/families_table.py: the cells it reads from results.json, on a hand-made file."""

from __future__ import annotations

import json

from conftest import load_script


def _load():
    return load_script("benchmarks/families_table.py", "families_table")


RESULTS = {
    "model": {"id": "tiny", "steering_layer": 3},
    "steering": {"none": {"harmful": {"asr": 0.1}, "harmless": {"asr": 0.9}},
                 "dim": {"harmful": {"asr": 0.8, "repetition_rate": 0.5},
                         "harmless": {"asr": 0.05}}},
    "cosine": {"methods": ["dim", "ntp"], "matrix": [[1.0, 0.25], [0.25, 1.0]]},
    "circuits": {"dim": {"min_faithful_size": 50, "total_edges": 400, "threshold": 0.85}},
    "edge_types": {"dim": {"top_n": 100, "fractions": {"q": 0.0, "k": 0.01, "v": 0.25,
                                                       "mlp": 0.7, "logits": 0.04}}},
    "freeze": {"none": {"mean_drop": 0.0}, "qk": {"mean_drop": 12.5}, "ov": {"mean_drop": 65.6},
               "svv": {"mean_drop": 0.0, "harmful_repetition_rate": 1.0,
                       "harmless_repetition_rate": 0.25}},
    "svv": {"dim": [{"head": "L5H1", "tokens": ["forbid", "illegal"]}]},
    "sparsify": {"dim": {"gradient": [
        {"sparsity": 0.5, "harmful_retention": 1.0, "harmless_retention": 0.95},
        {"sparsity": 0.8, "harmful_retention": 0.92, "harmless_retention": 0.91},
        {"sparsity": 0.9, "harmful_retention": 0.95, "harmless_retention": 0.5},  # one set lost
        {"sparsity": 0.99, "harmful_retention": None, "harmless_retention": None}]},
        "iou": []},
}


def test_cells_from_results():
    ft = _load()
    s = ft.summarise(RESULTS)
    # a results.json of format 1 (refusal's asr): the cells show the behaviour rate, 1 − asr
    assert s["steering"] == {"harmful": "0.90 / 0.20", "harmless": "0.10 / 0.95",
                             "methods": "none / dim", "harmful loops": "— / 0.50"}
    assert s["cosine"] == {"dim–ntp": "0.25"}
    assert s["circuits"] == {"dim": "50 of 400 (12.5%)"}
    assert s["edge_types (q/k/v/mlp/logits %)"] == {"dim": "top-100: 0 / 1 / 25 / 70 / 4"}
    assert s["freeze mean drop"] == {"qk": "12.5", "ov": "65.6", "svv": "0.0 (loops 1.00 / 0.25)"}
    assert s["svv"] == {"dim": "L5H1: forbid, illegal"}
    # the highest sparsity with BOTH retentions >= 0.9: 0.8 (0.9 loses the harmless effect)
    assert s["sparsity at 90% retention"] == {"dim": "gradient 80%"}
    assert s["overlap"] == "—" and s["interchange"] == "—"
    both = dict(RESULTS, overlap={"methods": ["dim", "ntp"], "by_size": [
        {"size": 50, "matrix": [[1.0, 0.5], [0.5, 1.0]]}]},
        interchange={"methods": ["dim", "ntp"], "matrix": [[0.9, 0.7], [0.6, 0.88]]})
    s = ft.summarise(both)
    assert s["overlap"] == "dim: 1.00 0.50; ntp: 0.50 1.00"
    assert s["interchange"] == "dim: 0.90 0.70; ntp: 0.60 0.88"
    assert ft.summarise(dict(RESULTS, overlap={"methods": [], "by_size": []}))["overlap"] == "—"


def test_markdown_and_errors(tmp_path, capsys):
    ft = _load()
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(RESULTS))
    assert ft.main([str(run), str(run / "results.json"), "--names", "a,b"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "| | a | b |"
    assert "| freeze mean drop: qk | 12.5 | 12.5 |" in out
    assert ft.main([str(tmp_path / "missing")]) == 2
    assert "no results.json" in capsys.readouterr().err
    assert ft.main([str(run), "--names", "a,b"]) == 2
