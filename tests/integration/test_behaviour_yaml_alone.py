"""A behaviour runs on its YAML file alone (issue 24 item 1): a persona whose present-side
answers share no first token ("talk like a pirate" on SmolLM2-135M-Instruct: they open with
"The", "A" or "Ar" as plain answers open with "A" or "The"). ``score_tokens: auto`` finds no
single token and chooses a token set; DIM's filter and induce threshold are relative to the
behaviour's scores; ``steerscope run`` goes through with no threshold option in its config."""

from __future__ import annotations

import json

import pytest
import yaml

from steerscope.pipeline import run_pipeline

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

TOPICS = """the ocean|autumn leaves|a city at night|the moon|a lost friend|morning coffee|a mountain trail|winter snow|a summer storm|an old house|the desert|a river|spring flowers|a lighthouse|a train journey|the stars|a quiet library|a forest|a rainy day|a childhood memory|the sunrise|a busy market|a cat sleeping|a garden|the wind|a candle|an empty road|a bridge|the sea shore|a thunderstorm|a small village|a field of wheat|a waterfall|the night sky|a birthday|an island|a snowy owl|the harvest|a clock tower|a hospital|a farmer|a sailor|a bakery|a violin|a letter from home|a first kiss|the last day of school|a football match|a volcano|a glacier|an astronaut|a fisherman|a busy kitchen|a soldier returning home|a wedding|a lonely tree|a meadow|a butterfly|a honeybee|a fox in the snow|the fog|a shipwreck|a carnival|a campfire|a dragon|a castle|a king|a queen|a dancer|a painter|a piano|the city park|a subway|a rooftop|a sunflower|a rose|an oak tree|a pine forest|a frozen lake|a canyon|a cave|a desert oasis|a hummingbird|an eagle|a wolf|a horse|a whale|a dolphin|a coral reef|a jungle|a storm at sea|the first snowfall|a full moon|a shooting star|a comet|a sleepy town|an old friend|a grandmother|a newborn baby|a teacher|a poet|a bookshop|a cup of tea|a clock""".split("|")[:104]
PIRATE_JUDGE = (r"\b(arr+|aye|ahoy|matey|pirates?|ye|hearties|scallywags?|landlubbers?|plunder"
                r"|booty|treasure|captain|buccaneers?|shiver|yo-ho|grog)\b")


def _pirate_behaviour(folder) -> str:
    splits = {"train": TOPICS[:64], "val": TOPICS[64:80], "test": TOPICS[80:104]}
    for split, topics in splits.items():
        (folder / f"present_{split}.txt").write_text(
            "".join(f"Talk like a pirate and tell me about {t}.\n" for t in topics))
        (folder / f"absent_{split}.txt").write_text(
            "".join(f"Tell me about {t}.\n" for t in topics))
    path = folder / "pirate.yaml"
    path.write_text(yaml.safe_dump({
        "name": "pirate",
        "labels": {"behaviour": "pirate talk", "present": "pirate requests",
                   "absent": "plain requests"},
        "present": {s: f"present_{s}.txt" for s in splits},
        "absent": {s: f"absent_{s}.txt" for s in splits},
        "judge": {"kind": "regex", "patterns": [PIRATE_JUDGE], "min_matches": 1},
        "score_tokens": "auto",
    }))
    return str(path)


def test_a_persona_behaviour_runs_on_its_yaml_alone(tmp_path):
    cfg = {
        "name": "pirate", "seed": 42, "behaviour": _pirate_behaviour(tmp_path),
        "model": {"source": "default"},
        "data": {"n_train": 64, "n_val": 16, "n_test": 24},
        # sizes and stages only: no filter, KL or induce option (the candidate layers are cut
        # to three for time)
        "vectors": {"methods": ["dim"], "dim": {"layers": [14, 16, 18], "positions": [-1]}},
        "evaluation": {"max_new_tokens": 24},
        **{s: {"enabled": False} for s in ("patching", "circuits", "freeze", "svv",
                                            "sparsify", "report")},
    }
    res = run_pipeline(cfg, tmp_path / "runs", progress=False)
    results = json.loads(res.results_path.read_text())
    sel = results["dim_selection"]
    chosen = sel["score_tokens"]
    assert chosen["rule"] == "set" and len(chosen["ids"]) >= 2 and chosen["gap"] >= 0.25
    assert all(fp > fa for fp, fa in chosen["frequencies"])
    assert sel["thresholds"] == "relative"
    # the induce filter asked +s to raise the absent prompts' score above their own level
    assert sel["induce"] > 0 and sel["layer"] in (14, 16, 18)
    assert (res.run_dir / "results.json").exists()
