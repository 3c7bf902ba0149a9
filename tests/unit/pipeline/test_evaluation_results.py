"""results.json's ``steering`` section from an evaluation stage's table (stages/evaluation.py)."""

from __future__ import annotations

import json

from steerscope.evaluate.repetition import repetition_rate
from steerscope.pipeline.registry import StageOutput
from steerscope.pipeline.stages.evaluation import EVAL_FILE, evaluation_results

LOOP = "I I I I I I I I I I I I I I I I"
ANSWER = "Bread needs flour, water, salt and yeast; knead it, let it rise, then bake it."


def _row(method, side, **extra):
    return {"method": method, "side": side, "alpha": 1.0, "n": 2, "behaviour_rate": 0.0,
            "score_rate": 0.5, "mean_score": 0.1, "judge_rate": None, **extra}


def _stage(tmp_path, rows):
    table = {"rows": rows, "cosine": {"dim": {"dim": 1.0}},
             "completions": {"dim": {"present": [LOOP, ANSWER], "absent": [LOOP, LOOP]}}}
    (tmp_path / EVAL_FILE).write_text(json.dumps(table))
    return StageOutput("evaluation", "k", tmp_path, {"file": EVAL_FILE}, "d")


def test_repetition_rate_is_read_from_the_rows(tmp_path):
    out = _stage(tmp_path, [_row("dim", "present", repetition_rate=0.25),
                            _row("dim", "absent", repetition_rate=0.75)])
    cells = evaluation_results(out, {})["steering"]["dim"]
    assert (cells["present"]["repetition_rate"], cells["absent"]["repetition_rate"]) == (0.25, 0.75)


def test_older_tables_get_it_from_their_completions(tmp_path):
    out = _stage(tmp_path, [_row("dim", "present"), _row("dim", "absent")])
    res = evaluation_results(out, {})
    cells = res["steering"]["dim"]
    assert cells["present"]["repetition_rate"] == 0.5 == repetition_rate([LOOP, ANSWER])
    assert cells["absent"]["repetition_rate"] == 1.0
    assert cells["present"]["behaviour_rate"] == 0.0 and res["cosine"] == {"methods": ["dim"],
                                                                 "matrix": [[1.0]]}
