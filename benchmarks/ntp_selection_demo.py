"""NTP/PO model-selection conventions on the demo refusal model (issue 12, point 4).

Runs the demo pipeline up to DIM (``demo_run_config``: built-in prompts, 64 train + 16 val +
24 test prompts per class), builds the preference data once (train pairs from the 64 train
prompts, validation pairs from DIM's 16 val prompts, 48 new tokens, as the demo's ``trained``
stage), then trains the demo's grid (one config: lr 0.04, batch 6, 2 epochs, 64 response
tokens) under each convention and evaluates every vector like the demo's ``evaluation``
stage (α = ∓1 at the DIM norm, 24 + 24 held-out prompts, 48 new tokens, substring ASR).

Per vector it prints the trained norm, the factor the deployed vector corresponds to
(‖dim‖/‖v‖, the paper trains with f ∈ {2, …, 20}), the cosine with DIM, the kept epoch and
the ASR. Usage::

    OMP_NUM_THREADS=2 python benchmarks/ntp_selection_demo.py [--out runs] [--objectives ntp,po]
        [--variants before,after,...] [--epochs 2] [--harmless-refuse instruction|dim]
        [--save-vectors DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from steerscope.evaluate.refusal import refusal_scores
from steerscope.evaluate.steering import evaluate_steering
from steerscope.models.chat import format_prompt
from steerscope.models.loading import load_model
from steerscope.pipeline import run_pipeline
from steerscope.pipeline.demo import demo_run_config
from steerscope.runtime.core import Runtime
from steerscope.vectors import SteeringVector
from steerscope.vectors.train_config import PAPER_CONVENTIONS, STEERSCOPE_CONVENTIONS, TrainConfig
from steerscope.vectors.trained import train_grid
from steerscope.vectors.training_data import (
    PreferenceData,
    build_preference_data,
    drop_mislabelled,
)

# name -> (conventions, validation pairs: "dim_val" or "split"[, "filtered": drop mislabelled])
VARIANTS = {
    "before": (STEERSCOPE_CONVENTIONS, "split"),
    "after": (PAPER_CONVENTIONS, "dim_val"),
    "after_filtered": (PAPER_CONVENTIONS, "dim_val", "filtered"),
    "before_filtered": (STEERSCOPE_CONVENTIONS, "split", "filtered"),
    "after_split": (PAPER_CONVENTIONS, "split"),
    "per_step_lr": ({**PAPER_CONVENTIONS, "lr_schedule": "per_step"}, "dim_val"),
    "last_epoch": ({**PAPER_CONVENTIONS, "keep": "last_epoch"}, "dim_val"),
    "mean_factor_val": ({**PAPER_CONVENTIONS, "validation": "mean_factor"}, "dim_val"),
}


def _stage_file(run_dir: Path, stage: str, name: str) -> Path:
    (folder,) = run_dir.glob(f"{stage}-*")
    return folder / name


def _preference(lm, dim, prompts, kind: str, cache: Path, refuse: str) -> PreferenceData:
    path = cache / f"preference_{kind}_{refuse}.json"
    if path.is_file():
        return PreferenceData.load(path)
    harmful, harmless = prompts[f"present_{kind}"], prompts[f"absent_{kind}"]
    data = build_preference_data(lm.model, lm.tokenizer, harmful, harmless, dim,
                                 max_new_tokens=48, batch_size=16, progress=False,
                                 harmless_refuse=refuse)
    data.save(path)
    return data


def refusal_curve(lm, sv: SteeringVector, prompts, multipliers=(0.5, 1.0, 2.0)) -> dict:
    """Mean refusal score on DIM's val prompts, harmful at α = −m and harmless at α = +m
    (no generation): does the direction work at a larger or smaller scale?"""
    out = {}
    for kind, sign in (("present", -1.0), ("absent", 1.0)):
        formatted = [format_prompt(lm.tokenizer, q) for q in prompts[f"{kind}_val"]]
        for m in multipliers:
            with Runtime(lm.model, [sv.intervention(sign * m)], arch=lm.arch):
                s = refusal_scores(lm.model, lm.tokenizer, formatted, progress=False)
            out[f"{kind}@{sign * m:+g}"] = round(float(s.mean()), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs")
    ap.add_argument("--objectives", default="ntp")
    ap.add_argument("--variants", default="before,after")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.04)
    ap.add_argument("--harmless-refuse", default="dim", choices=["instruction", "dim"],
                    help="instruction: the data behind the reported symptom; dim: the fix")
    ap.add_argument("--save-vectors", help="folder: write every trained vector there as "
                    "<objective>_<variant>_<harmless-refuse>.safetensors")
    args = ap.parse_args()

    t0 = time.time()
    res = run_pipeline(demo_run_config(methods=["dim"]), args.out, until="vectors",
                       progress=False)
    prompts = json.loads(_stage_file(res.run_dir, "data", "prompts.json").read_text())
    lm = load_model("demo")
    dim = SteeringVector.load(_stage_file(res.run_dir, "vectors", "dim.safetensors"), lm.arch)
    cache = res.run_dir / "ntp_selection"
    cache.mkdir(exist_ok=True)
    train = _preference(lm, dim, prompts, "train", cache, args.harmless_refuse)
    val = _preference(lm, dim, prompts, "val", cache, args.harmless_refuse)
    split_train, split_val = train.split(0.2, seed=42)
    print(f"DIM layer {dim.layer}, norm {dim.norm:.3f}; {len(train)} train pairs, "
          f"{len(val)} DIM-val pairs ({time.time() - t0:.0f} s)", flush=True)
    print("label check: train", train.metadata["label_check"], "val",
          val.metadata["label_check"], flush=True)
    print("dim refusal curve", refusal_curve(lm, dim, prompts), flush=True)

    vectors: dict[str, SteeringVector] = {"dim": dim}
    summary: dict[str, dict] = {}
    for obj in args.objectives.split(","):
        for name in args.variants.split(","):
            conventions, val_kind, *filtered = VARIANTS[name]
            tr, va = (train, val) if val_kind == "dim_val" else (split_train, split_val)
            if filtered:
                tr, va = drop_mislabelled(tr), drop_mislabelled(va)
            cfg = TrainConfig(objective=obj, lr=args.lr, epochs=args.epochs, batch_size=6,
                              seed=42, max_response_tokens=64, **conventions)
            t = time.time()
            r = train_grid(lm.model, lm.tokenizer, tr, layer=dim.layer, configs=[cfg],
                           val_data=va, rescale_to=dim.norm, progress=False)
            key = f"{obj}_{name}"
            vectors[key] = r.vector
            if args.save_vectors:
                r.vector.save(Path(args.save_vectors) / f"{key}_{args.harmless_refuse}"
                              ".safetensors")
            trained_norm = r.vector.metadata["trained_norm"]
            summary[key] = {
                "best_epoch": r.best_epoch, "trained_norm": trained_norm,
                "deployed_factor": dim.norm / trained_norm,
                "cosine_dim": r.vector.cosine(dim), "val_loss": r.val_loss,
                "val_match_mean": r.val_match_mean,
                "epochs": [{k: e[k] for k in ("epoch", "val_loss", "val_match_mean",
                                              "trained_norm")} for e in r.epochs],
                "train_s": time.time() - t,
                "refusal_curve": refusal_curve(lm, r.vector, prompts)}
            print(key, json.dumps(summary[key]), flush=True)

    t = time.time()
    table = evaluate_steering(lm.model, lm.tokenizer, vectors, prompts["present_test"],
                              prompts["absent_test"], arch=lm.arch, max_new_tokens=48,
                              batch_size=16)
    print(f"evaluation {time.time() - t:.0f} s")
    for row in table.rows:
        print(f"{row.method:24s} {table.labels[row.side]:8s} ASR {row.absence_rate:.3f}")
    table.save(cache / "evaluation.json")
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
