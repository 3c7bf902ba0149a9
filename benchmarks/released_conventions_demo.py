"""What the released-code choices of issue 26 change on one model (default: the demo
refusal model). Three measurements, one per sub-command::

    OMP_NUM_THREADS=1 python benchmarks/released_conventions_demo.py sampling \\
        --data-dir ../shared/data/refusal [--n-train 128] [--n-val 32] [--layers 10,13,16,19,22]
    OMP_NUM_THREADS=1 python benchmarks/released_conventions_demo.py eot \\
        [--n-prompts 16] [--n-test 12] [--max-new-tokens 24] [--epochs 2]
    OMP_NUM_THREADS=1 python benchmarks/released_conventions_demo.py circuits \\
        [--layer 16] [--n-test 8] [--max-new-tokens 16] [--n-prompts 2] [--steps 5]
        [--flip refusal|tokens]

- ``sampling``: DIM (``select_dim``, the released refusal-score filter, candidates restricted
  to ``--layers``) on the standard splits sampled per split (steerscope's default) and on the
  released one-stream sample (``data.sampling: released``): the chosen layer and position,
  the norms and the cosine between the two vectors, and how many sampled prompts coincide.
- ``eot``: NTP and PO (one config each: lr 0.04, batch 6, ``--epochs``, 32 response tokens,
  the paper's selection) trained on the same self-generated pairs (built-in demo prompts,
  harmless refusals by DIM +1 as in the demo; validation pairs from the next train prompts)
  with and without the end-of-turn token in the
  targets; held-out bypass (harmful ASR ↑, α = −1) and induce (harmless ASR ↓, α = +1) rates
  by the substring matcher.
- ``circuits``: one DIM vector (last-position mean difference at ``--layer``), EAP-IG once on
  the flipped held-out demo prompts, then the circuits under every ``circuits.metric``
  (logit-difference ratio and the released position measures): minimum faithful size, its
  faithfulness, the complement and one pruned random circuit of twice its size.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from steerscope.models import load_model
from steerscope.models.chat import assistant_turn, format_prompt
from steerscope.pipeline.inputs import load_source

SPLITS = ("harmful_train", "harmless_train", "harmful_val", "harmless_val")


def _builtin(name: str, n: int) -> list[str]:
    return load_source(f"builtin:{name}", None).instructions[:n]


def demo_dim(lm, layer: int):
    """Difference of the last-position means (harmful − harmless) of 32 + 32 built-in demo
    train prompts at ``layer``."""
    from steerscope.vectors.activations import mean_activations
    from steerscope.vectors.vector import SteeringVector

    means = []
    for side in ("harmful", "harmless"):
        text = [format_prompt(lm.tokenizer, p) for p in _builtin(f"demo_{side}_train", 32)]
        means.append(mean_activations(lm.model, lm.tokenizer, text, layers=[layer],
                                      positions=[-1], arch=lm.arch)[0, 0])  # [d]
    return SteeringVector((means[0] - means[1]).float(), layer, method="dim")


def cmd_sampling(args, lm) -> dict:
    from steerscope.data.sampling import released_splits
    from steerscope.vectors import select_dim

    pools = {k: load_source(k, args.data_dir).instructions for k in SPLITS}
    sizes = {"harmful_train": args.n_train, "harmless_train": args.n_train,
             "harmful_val": args.n_val, "harmless_val": args.n_val}
    samples = {
        "per_split": {k: load_source(k, args.data_dir).sample(n, seed=42).instructions
                      for k, n in sizes.items()},
        "released": released_splits(pools, n_train=args.n_train, n_val=args.n_val),
    }
    layers = [int(x) for x in args.layers.split(",")]
    out = {"shared_prompts": {k: len(set(samples["per_split"][k]) & set(samples["released"][k]))
                              for k in SPLITS}}
    vectors = {}
    for mode, s in samples.items():
        t = time.time()
        f = {k: [format_prompt(lm.tokenizer, p) for p in v] for k, v in s.items()}
        res = select_dim(lm.model, lm.tokenizer, f["harmful_train"], f["harmless_train"],
                         f["harmful_val"], f["harmless_val"], layers=layers, relax_kl=True,
                         arch=lm.arch, progress=False, batch_size=16)
        v = res.vector
        vectors[mode] = v
        out[mode] = {"layer": v.layer, "position": v.position, "norm": v.norm,
                     "kl_threshold": v.hyperparameters["kl_threshold"],
                     **{k: v.metadata[k] for k in ("bypass", "induce", "kl", "n_survivors")},
                     "n_after_filter": {k: v.metadata[f"n_{k}"] for k in SPLITS},
                     "seconds": time.time() - t}
        print(mode, json.dumps(out[mode]), flush=True)
    out["cosine"] = vectors["per_split"].cosine(vectors["released"])
    print(f"shared prompts {out['shared_prompts']}; cosine per_split·released "
          f"{out['cosine']:+.4f}")
    return out


def cmd_eot(args, lm) -> dict:
    from steerscope.evaluate.steering import evaluate_steering
    from steerscope.vectors.train_config import PAPER_CONVENTIONS, TrainConfig
    from steerscope.vectors.trained import train_grid
    from steerscope.vectors.training_data import PreferenceData, build_preference_data

    dim = demo_dim(lm, args.layer)
    opts = dict(max_new_tokens=args.max_new_tokens, batch_size=16, progress=False,
                harmless_refuse="dim")
    n, n_val = args.n_prompts, max(4, args.n_prompts // 4)
    train = {side: _builtin(f"demo_{side}_train", n + n_val) for side in ("harmful", "harmless")}
    data = {kind: build_preference_data(lm.model, lm.tokenizer, train["harmful"][part],
                                        train["harmless"][part], dim, **opts)
            for kind, part in (("train", slice(0, n)), ("val", slice(n, n + n_val)))}

    def with_eot(d: PreferenceData) -> PreferenceData:  # the same pairs, targets + EOT
        ex = [copy.copy(e) for e in d.examples]
        for e in ex:
            e.winner = assistant_turn(lm.tokenizer, e.instruction, e.winner)
            e.loser = assistant_turn(lm.tokenizer, e.instruction, e.loser)
        return PreferenceData(ex, {**d.metadata, "targets": "assistant_turn"})

    variants = {"response": data, "end_of_turn": {k: with_eot(v) for k, v in data.items()}}
    vectors, out = {"dim": dim}, {}
    for obj in ("ntp", "po"):
        for name, d in variants.items():
            t = time.time()
            cfg = TrainConfig(objective=obj, lr=0.04, epochs=args.epochs, batch_size=6, seed=42,
                              max_response_tokens=32, **PAPER_CONVENTIONS)
            r = train_grid(lm.model, lm.tokenizer, d["train"], layer=dim.layer, configs=[cfg],
                           val_data=d["val"], rescale_to=dim.norm, progress=False)
            vectors[f"{obj}_{name}"] = r.vector
            out[f"{obj}_{name}"] = {"cosine_dim": r.vector.cosine(dim),
                                    "best_epoch": r.best_epoch, "val_loss": r.val_loss,
                                    "seconds": time.time() - t}
    out["cosine_ntp"] = vectors["ntp_response"].cosine(vectors["ntp_end_of_turn"])
    out["cosine_po"] = vectors["po_response"].cosine(vectors["po_end_of_turn"])
    table = evaluate_steering(lm.model, lm.tokenizer, vectors,
                              _builtin("demo_harmful_held_out", args.n_test),
                              _builtin("demo_harmless_held_out", args.n_test), arch=lm.arch,
                              max_new_tokens=args.max_new_tokens, batch_size=16)
    out["asr"] = {f"{row.method}/{table.labels[row.side]}": row.absence_rate
                  for row in table.rows}
    out["loops"] = {f"{row.method}/{table.labels[row.side]}": row.repetition_rate
                    for row in table.rows}
    out["completions"] = table.completions  # to read what is behind each rate
    for row in table.rows:
        print(f"{row.method:20s} {table.labels[row.side]:9s} ASR {row.absence_rate:.3f} "
              f"loops {row.repetition_rate:.3f}")
    print(json.dumps({k: v for k, v in out.items() if k not in ("asr", "loops", "completions")}),
          flush=True)
    return out


def cmd_circuits(args, lm) -> dict:
    from steerscope.patching import add_circuits, score_vector
    from steerscope.patching.data import datasets_from_rollouts, rollouts
    from steerscope.patching_conventions import FAITHFULNESS_METRICS

    v = demo_dim(lm, args.layer)
    rolls = {side: rollouts(lm.model, lm.tokenizer,
                            _builtin(f"demo_{side}_held_out", args.n_test), v, alpha,
                            max_new_tokens=args.max_new_tokens, batch_size=args.n_test)
             for side, alpha in (("harmful", -1.0), ("harmless", 1.0))}
    if args.flip == "tokens":  # a model that does not refuse: greedy tokens that changed
        from steerscope.pipeline.stages.patching import token_flips

        rolls = {side: token_flips(r, side == "harmful") for side, r in rolls.items()}
    data = datasets_from_rollouts(rolls["harmful"], rolls["harmless"],
                                  max_per_dataset=args.n_prompts)
    res = score_vector(lm.model, v, data, arch=lm.arch, steps=args.steps)
    E = res.graph.n_edges
    sizes = sorted({max(1, round(f * E)) for f in (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)})
    out = {"examples": {k: len(x) for k, x in data.items()}, "n_edges": E, "sizes": sizes,
           "rollouts": {side: [{"prompt": r.prompt, "base": r.base_text, "steered": r.steered_text,
                                "base_refused": r.base_refused,
                                "steered_refused": r.steered_refused} for r in rs]
                        for side, rs in rolls.items()}}
    print(f"examples {out['examples']}, {E} edges", flush=True)
    for metric in FAITHFULNESS_METRICS:
        t = time.time()
        r = add_circuits(lm.model, v, data, copy.deepcopy(res), arch=lm.arch, sizes=sizes,
                         n_random=1, refine_steps=2, faithfulness_metric=metric,
                         position_metrics=metric != "logit_diff")
        s = r.tables["summary"]
        out[metric] = {k: s[k] for k in ("min_faithful_size", "faithful", "min_faithfulness",
                                         "complement_faithfulness", "random_2x_faithfulness",
                                         "faithfulness_metric")}
        out[metric]["curve"] = r.curves["eap_ig"].faithfulness
        out[metric]["seconds"] = time.time() - t
        n = s["min_faithful_size"]
        print(f"{metric:12s} min {n} ({n / E:.1%}) faithful {s['faithful']} "
              f"f {s['min_faithfulness']:.3f} complement {s['complement_faithfulness']:.3f} "
              f"random 2x {s['random_2x_faithfulness']} ({time.time() - t:.0f} s)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["sampling", "eot", "circuits"])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--data-dir", help="sampling: the folder with splits/ (Arditi et al.)")
    ap.add_argument("--n-train", type=int, default=128)
    ap.add_argument("--n-val", type=int, default=32)
    ap.add_argument("--layers", default="10,13,16,19,22")
    ap.add_argument("--layer", type=int, default=16)
    ap.add_argument("--n-prompts", type=int, default=16)
    ap.add_argument("--n-test", type=int, default=12)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--flip", choices=["refusal", "tokens"], default="refusal",
                    help="circuits: patching examples whose refusal flipped (the paper) or "
                         "whose greedy tokens changed (a model that does not refuse)")
    ap.add_argument("--out")
    args = ap.parse_args()
    t0 = time.time()
    lm = load_model(args.model)
    result = {"sampling": cmd_sampling, "eot": cmd_eot, "circuits": cmd_circuits}[args.what](
        args, lm)
    result.update(model=args.model, args=vars(args), seconds=time.time() - t0)
    print(f"total {time.time() - t0:.0f} s")
    if args.out:
        from steerscope.artifacts import atomic_write_json

        atomic_write_json(args.out, result)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
