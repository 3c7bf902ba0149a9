"""Circuits in both clean/corrupt roles and on both graphs, from a finished pipeline run.

    OMP_NUM_THREADS=1 python benchmarks/patching_roles_demo.py RUN_DIR [--methods dim,ntp,po]
                                                             [--out roles.json]

RUN_DIR is a ``steerscope demo`` / ``steerscope run`` folder whose ``patching`` stage is done.
EAP-IG scores are identical in both roles (see docs/patching.md), and coarse scores are sums
of fine ones, so the stage's saved scores serve all four settings: for each method and each
of (forward, reverse) × (fine, coarse) graphs this builds the faithfulness curve, the minimum
faithful circuit (0.85), its complement and two random circuits of twice its size, by real
reverted-edge runs on the stage's own patching examples, and prints one row each.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from steerscope.models import load_model
from steerscope.patching import PatchingResult, add_circuits, coarsen
from steerscope.patching.example_files import load_examples
from steerscope.vectors import SteeringVector


def _vector_file(run: Path, method: str) -> Path:
    for stage in ("vectors-*", "trained-*"):
        for d in run.glob(stage):
            hits = sorted(d.glob(f"{method}*.safetensors"))
            if hits:
                return hits[0]
    raise SystemExit(f"error: no {method} vector under {run}: pass a finished pipeline run")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--methods", default="dim,ntp,po")
    ap.add_argument("--out")
    args = ap.parse_args()
    patching = sorted(args.run.glob("patching-*"))
    if not patching:
        raise SystemExit(f"error: no patching stage under {args.run}: run the pipeline first")
    results = args.run / "results.json"
    model = str(args.run / json.loads(results.read_text())["model"]["path"]) \
        if results.is_file() else "demo"  # results.json paths are relative to the run folder
    lm = load_model(model)
    rows = []
    print(f"{'method':6s} {'roles':8s} {'graph':6s} {'edges':>6s} {'min':>6s} {'frac':>6s} "
          f"{'faith':>6s} {'compl':>6s} {'rand2x':>13s} {'s':>5s}")
    for m in args.methods.split(","):
        v = SteeringVector.load(_vector_file(args.run, m), lm.arch)
        examples = load_examples(patching[0] / m)
        for reverse in (False, True):
            for coarse in (False, True):
                res = PatchingResult.load(patching[0] / m)
                if coarse:
                    res.scores = {k: coarsen(s, res.graph) for k, s in res.scores.items()}
                    res.graph = res.graph.coarsened()
                t = time.time()
                add_circuits(lm.model, v, examples, res, arch=lm.arch, reverse=reverse,
                             n_random=2)
                s = res.tables["summary"]
                row = {"method": m, "reverse": reverse, "graph": "coarse" if coarse else "fine",
                       "seconds": time.time() - t, **s,
                       "curve": res.curves["eap_ig"].to_json()}
                rows.append(row)
                rnd = ", ".join(f"{x:.3f}" for x in s["random_2x_faithfulness"])
                print(f"{m:6s} {'reverse' if reverse else 'forward':8s} {row['graph']:6s} "
                      f"{s['n_edges']:6d} {s['min_faithful_size']:6d} "
                      f"{s['min_faithful_fraction']:6.1%} {s['min_faithfulness']:6.3f} "
                      f"{s['complement_faithfulness']:6.3f} {rnd:>13s} {row['seconds']:5.0f}",
                      flush=True)
    if args.out:
        from steerscope.artifacts import atomic_write_json

        atomic_write_json(args.out, rows)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
