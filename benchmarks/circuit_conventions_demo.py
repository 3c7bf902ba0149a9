"""What the circuit conventions of issue 12 (points 2 and 8) change on one model.

    OMP_NUM_THREADS=1 python benchmarks/circuit_conventions_demo.py [--model demo]
        [--layer 16] [--n-test 12] [--max-new-tokens 24] [--n-prompts 2] [--steps 5]
        [--flip refusal|tokens] [--out conventions.json]

One DIM vector (difference of the last-position means of the built-in demo train prompts at
``--layer``), patching datasets from greedy rollouts on the held-out demo prompts, EAP-IG
scores once, then the circuits twice, by real reverted-edge runs:

- steerscope's demo default: the demo config's curve sizes, the logit-difference ratio over
  the four datasets, random circuits drawn uniformly (``unpruned``);
- the paper convention: the 3.41% size grid up to half the edges, pruned random circuits of
  exactly twice the minimum size, and the released code's per-position metrics.

It prints the minimum faithful circuit under every metric and the random control of both
kinds at both minimum sizes.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from steerscope.models import load_model
from steerscope.models.chat import format_prompt
from steerscope.patching import add_circuits, evaluate_circuits, random_circuit, score_vector
from steerscope.patching.data import datasets_from_rollouts, rollouts
from steerscope.patching.faithfulness import PAPER_GRID_STEP
from steerscope.patching.forward import GraphModel
from steerscope.pipeline.inputs import load_source
from steerscope.pipeline.stages.patching import token_flips
from steerscope.vectors import SteeringVector
from steerscope.vectors.activations import mean_activations

DEMO_SIZES = [151, 301, 753, 1505, 3010, 15051]  # the demo config's circuits.sizes


def dim_vector(lm, layer: int, n_train: int) -> SteeringVector:
    """Difference of the last-position means (harmful − harmless) at ``layer``."""
    means = []
    for side in ("harmful", "harmless"):
        prompts = load_source(f"builtin:demo_{side}_train", None).instructions[:n_train]
        text = [format_prompt(lm.tokenizer, p) for p in prompts]
        means.append(mean_activations(lm.model, lm.tokenizer, text, layers=[layer],
                                      positions=[-1], arch=lm.arch)[0, 0])  # [d]
    return SteeringVector((means[0] - means[1]).float(), layer, method="dim")


def _random_faithfulness(gm, examples, v, size: int, kind: str, n: int = 2) -> list[float]:
    rs = [random_circuit(gm.graph, size, seed=42 + i, kind=kind) for i in range(n)]
    return evaluate_circuits(gm, examples, v.vector, rs).faithfulness.tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--layer", type=int, default=16)  # 15,051 edges, the demo sizes
    ap.add_argument("--n-train", type=int, default=32)
    ap.add_argument("--n-test", type=int, default=12)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--n-prompts", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--flip", choices=["refusal", "tokens"], default="refusal")
    ap.add_argument("--out")
    args = ap.parse_args()
    t0 = time.time()
    lm = load_model(args.model)
    v = dim_vector(lm, args.layer, args.n_train)
    rolls = {}
    for side, alpha in (("harmful", -1.0), ("harmless", 1.0)):
        prompts = load_source(f"builtin:demo_{side}_held_out", None).instructions[:args.n_test]
        rolls[side] = rollouts(lm.model, lm.tokenizer, prompts, v, alpha,
                               max_new_tokens=args.max_new_tokens, batch_size=args.n_test)
        if args.flip == "tokens":
            rolls[side] = token_flips(rolls[side], side == "harmful")
    data = datasets_from_rollouts(rolls["harmful"], rolls["harmless"],
                                  max_per_dataset=args.n_prompts)
    counts = {k: len(x) for k, x in data.items()}
    print(f"examples {counts} ({time.time() - t0:.0f} s)", flush=True)
    res = score_vector(lm.model, v, data, arch=lm.arch, steps=args.steps)
    E = res.graph.n_edges
    print(f"EAP-IG over {E} edges ({time.time() - t0:.0f} s)", flush=True)
    examples = [e for x in data.values() for e in x]
    gm = GraphModel(lm.model, v.layer, arch=lm.arch)
    rows = {}
    for name, kw in (("default", dict(sizes=[n for n in DEMO_SIZES if n <= E] or None,
                                      random_kind="unpruned")),
                     ("paper", dict(grid_step=PAPER_GRID_STEP, grid_max=0.5,
                                    random_kind="pruned", position_metrics=True))):
        r = add_circuits(lm.model, v, data, copy.deepcopy(res), arch=lm.arch, n_random=2,
                         refine_steps=2, **kw)
        s = r.tables["summary"]
        size = int(s["min_faithful_size"])
        rows[name] = {"summary": s, "curve": r.curves["eap_ig"].to_json(),
                      "random_pruned": _random_faithfulness(gm, examples, v, 2 * size, "pruned"),
                      "random_unpruned": _random_faithfulness(gm, examples, v, 2 * size,
                                                              "unpruned")}
        print(f"[{name}] min faithful {size} ({size / E:.1%}), faithfulness "
              f"{s['min_faithfulness']:.3f}; random 2x pruned "
              f"{rows[name]['random_pruned']}, unpruned {rows[name]['random_unpruned']} "
              f"({time.time() - t0:.0f} s)", flush=True)
        for metric, per in s.get("min_size_by_metric", {}).items():
            print(f"  {metric}: " + ", ".join(
                f"{k} {n} ({n / E:.1%})" if n else f"{k} none" for k, n in per.items()))
        for n, pos in zip(r.curves["eap_ig"].actual, r.curves["eap_ig"].positions or []):
            print(f"  {n:6d}: " + " | ".join(
                f"{k} kl {p.get('kl_ratio', {}).get('overall')} match "
                f"{p.get('token_match', {}).get('overall')}" for k, p in pos.items()))
    if args.out:
        from steerscope.artifacts import atomic_write_json

        atomic_write_json(args.out, {"model": args.model, "layer": args.layer,
                                     "examples": counts, "n_edges": E, "rows": rows,
                                     "seconds": time.time() - t0})


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
