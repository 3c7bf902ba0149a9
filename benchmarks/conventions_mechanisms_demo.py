"""What the EAP-IG conventions of issue 12 (``patching.grad_at``, ``patching.pooling``) change
downstream on one model: circuits, top-100 edge types, and the sparsity at 90% retention;
plus the freezing table, which no switch measurable on the demo changes.

    OMP_NUM_THREADS=1 python benchmarks/conventions_mechanisms_demo.py [--model demo]
        [--layer 16] [--n-test 12] [--max-new-tokens 24] [--n-prompts 2] [--steps 5]
        [--n-eval 12] [--eval-tokens 24] [--vector NAME=PATH ...] [--no-circuits]
        [--no-sparsity] [--no-dim] [--freeze] [--grad-at pre_norm,post_norm] [--taus 0,0.1,...]
        [--fractions 0.9,0.95,0.98] [--out conventions_mechanisms.json]

1. A DIM vector: difference of the last-position means of ``--n-train`` built-in demo train
   prompts per class at ``--layer`` (as ``circuit_conventions_demo.py``); ``--vector`` adds
   saved vectors (e.g. NTP/PO trained under two selection conventions) for the sparsity part.
2. Per vector: patching examples from greedy rollouts on the first ``--n-test`` held-out demo
   prompts per class (flipped prompts, at most ``--n-prompts`` per dataset), EAP-IG (T =
   ``--steps``) once per gradient location (``pre_norm``, ``post_norm``); the per-example
   records are then combined under each pooling (``dataset_mean``, ``positions``), so the four
   settings differ only in the convention, not in the examples or the run.
3. Per setting (first vector only): Spearman between the edge rankings of the two poolings,
   top-100 overlap, top-100 edge types (``in``: q/k/v/mlp/logits), the steering node's IE
   (cosine, top-10% overlap), and unless ``--no-circuits`` the minimum faithful circuit
   (``add_circuits``: the demo config's sizes, 2 bisection steps, logit-difference ratio over
   the four datasets, which no pooling enters).
4. Unless ``--no-sparsity``: per vector and distinct IE, ``sparsity_sweep`` with the two
   patching rules (gradient, ie) at ``--taus`` and the sparsities ``--fractions`` on
   ``--n-eval`` further held-out prompts per class (``--eval-tokens`` new tokens, substring
   matcher); the highest sparsity keeping ≥ 90% of the dense bypass and induce effects.
   Each distinct IE is also written next to ``--out`` (``<out>.<vector>.<grad_at>.<pooling>
   .ie.safetensors``). The steering-node IE does not depend on ``grad_at`` (to rounding), so
   ``--grad-at post_norm`` halves the EAP-IG cost when only the sparsity is wanted.
5. ``--freeze`` (run first): ``freeze_evaluation`` (QK, OV, SVV, MLP) of the DIM vector on
   the same ``--n-eval`` prompts per class.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from circuit_conventions_demo import DEMO_SIZES, dim_vector  # benchmarks/ is on sys.path

from steerscope.mechanisms import freeze_evaluation
from steerscope.models import load_model
from steerscope.patching import add_circuits, score_vector
from steerscope.patching.circuits import edge_type_shares, top_k_edges
from steerscope.patching.data import datasets_from_rollouts, rollouts
from steerscope.patching.run import spearman
from steerscope.patching.scores import steer_dimension_scores
from steerscope.patching_conventions import GRAD_AT, POOLING
from steerscope.pipeline.inputs import load_source
from steerscope.sparsify import sparsity_sweep
from steerscope.vectors import SteeringVector


def floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def held_out(side: str, start: int, n: int) -> list[str]:
    return load_source(f"builtin:demo_{side}_held_out", None).instructions[start:start + n]


def patching_data(lm, v: SteeringVector, args) -> dict:
    rolls = {side: rollouts(lm.model, lm.tokenizer, held_out(side, 0, args.n_test), v, alpha,
                            max_new_tokens=args.max_new_tokens, batch_size=args.n_test)
             for side, alpha in (("harmful", -1.0), ("harmless", 1.0))}
    return datasets_from_rollouts(rolls["harmful"], rolls["harmless"],
                                  max_per_dataset=args.n_prompts)


def scored(lm, v: SteeringVector, data, steps: int, grad_ats=GRAD_AT) -> dict:
    """(grad_at, pooling) -> PatchingResult; EAP-IG runs once per grad_at (records reused)."""
    out = {}
    for grad_at in grad_ats:
        memo: list = []

        def map_fn(fn, examples, memo=memo):
            if not memo:
                memo.extend(fn(e) for e in examples)
            return memo

        for pooling in POOLING:
            out[grad_at, pooling] = score_vector(lm.model, v, data, arch=lm.arch, steps=steps,
                                                 grad_at=grad_at, pooling=pooling,
                                                 map_fn=map_fn)
    return out


def in_types(graph, edges: torch.Tensor) -> dict[str, float]:
    """Shares of incoming types among the top-100 edges of ``edges`` [E]."""
    return {k: round(x, 3) for k, x in
            edge_type_shares(graph, top_k_edges(edges, 100))["incoming"].items()}


def compare(res: dict) -> dict:
    """Pooling vs pooling per grad_at (and grad_at vs grad_at per pooling): rank agreement."""
    rows = {}
    pairs = [((g, POOLING[0]), (g, POOLING[1])) for g in GRAD_AT] + \
        [((GRAD_AT[0], p), (GRAD_AT[1], p)) for p in POOLING]
    for a, b in [(a, b) for a, b in pairs if a in res and b in res]:
        ea, eb = res[a].scores["eap_ig"].edges, res[b].scores["eap_ig"].edges
        ia, ib = steer_dimension_scores(res[a].scores["eap_ig"])[1], \
            steer_dimension_scores(res[b].scores["eap_ig"])[1]
        k = max(1, ia.numel() // 10)
        top_a = set(ia.abs().argsort(descending=True)[:k].tolist())
        top_b = set(ib.abs().argsort(descending=True)[:k].tolist())
        rows[f"{'/'.join(a)} vs {'/'.join(b)}"] = {
            "spearman_edges": spearman(ea, eb),
            "top100_overlap": int((top_k_edges(ea, 100) & top_k_edges(eb, 100)).sum()) / 100,
            "ie_cosine": float(torch.nn.functional.cosine_similarity(ia, ib, dim=0)),
            "ie_top10pct_overlap": len(top_a & top_b) / k}
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--layer", type=int, default=16)  # 15,051 edges, the demo sizes
    ap.add_argument("--n-train", type=int, default=32)
    ap.add_argument("--n-test", type=int, default=12)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--n-prompts", type=int, default=2, help="patching examples per dataset")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--n-eval", type=int, default=12, help="sweep / freeze prompts per class")
    ap.add_argument("--eval-tokens", type=int, default=24)
    ap.add_argument("--vector", action="append", default=[], help="NAME=PATH (sparsity)")
    ap.add_argument("--no-circuits", action="store_true")
    ap.add_argument("--no-dim", action="store_true",
                    help="patch and sweep only the --vector vectors (DIM: --freeze only)")
    ap.add_argument("--no-sparsity", action="store_true")
    ap.add_argument("--freeze", action="store_true")
    ap.add_argument("--grad-at", default=",".join(GRAD_AT),
                    help="gradient locations scored (the steering-node IE is the same for both)")
    ap.add_argument("--taus", default="0,0.1,0.3,0.5,1,1.5,2,2.5", help="sweep τ levels")
    ap.add_argument("--fractions", default="0.9,0.95,0.98", help="sweep extra sparsities")
    ap.add_argument("--out")
    args = ap.parse_args()
    t0 = time.time()
    lm = load_model(args.model)
    vectors = {"dim": dim_vector(lm, args.layer, args.n_train)}
    for spec in args.vector:
        name, _, path = spec.partition("=")
        vectors[name] = SteeringVector.load(path, lm.arch)
    report: dict = {"model": args.model, "layer": args.layer, "args": vars(args),
                    "vectors": {k: {"sha256": v.sha256, "norm": v.norm, "layer": v.layer}
                                for k, v in vectors.items()}, "per_vector": {}}
    eval_h, eval_l = held_out("harmful", args.n_test, args.n_eval), \
        held_out("harmless", args.n_test, args.n_eval)

    def save():
        if args.out:
            from steerscope.artifacts import atomic_write_json

            atomic_write_json(args.out, {**report, "seconds": time.time() - t0})

    if args.freeze:
        fr = freeze_evaluation(lm.model, lm.tokenizer, vectors["dim"], eval_h, eval_l,
                               max_new_tokens=args.eval_tokens, batch_size=args.n_eval,
                               arch=lm.arch, vector_name="dim")
        report["freeze"] = fr.to_json()
        print(fr.table(), f"({time.time() - t0:.0f} s)", flush=True)
        save()
    for name, v in vectors.items():
        if name == "dim" and args.no_dim:
            continue
        data = patching_data(lm, v, args)
        counts = {k: len(x) for k, x in data.items()}
        res = scored(lm, v, data, args.steps, args.grad_at.split(","))
        first = next(iter(res.values())).scores["eap_ig"]
        row: dict = {"examples": counts,
                     "positions": {k: int(w) for k, w in first.weights.items()}}
        print(f"[{name}] examples {counts}, positions {row['positions']} "
              f"({time.time() - t0:.0f} s)", flush=True)
        row["compare"] = compare(res)
        for k, c in row["compare"].items():
            print(f"  {k}: " + ", ".join(f"{a} {b:.3f}" for a, b in c.items()), flush=True)
        row["settings"] = {f"{g}/{p}": {"top100_in": in_types(r.graph, r.scores["eap_ig"].edges)}
                           for (g, p), r in res.items()}
        if name == "dim" and not args.no_circuits:
            for (g, p), r in res.items():
                r = add_circuits(lm.model, v, data, r, arch=lm.arch, sizes=DEMO_SIZES,
                                 refine_steps=2, n_random=1)
                s = r.tables["summary"]
                row["settings"][f"{g}/{p}"].update(
                    min_faithful_size=s["min_faithful_size"],
                    min_faithful_fraction=s["min_faithful_fraction"],
                    min_faithfulness=s["min_faithfulness"],
                    curve=r.curves["eap_ig"].to_json())
                print(f"  {g}/{p}: min faithful {s['min_faithful_size']} "
                      f"({s['min_faithful_fraction']:.1%}), faithfulness "
                      f"{s['min_faithfulness']:.3f}; top-100 in "
                      f"{row['settings'][f'{g}/{p}']['top100_in']} ({time.time() - t0:.0f} s)",
                      flush=True)
        report["per_vector"][name] = row
        save()
        if not args.no_sparsity:
            ies, seen = {}, []
            for (g, p), r in res.items():
                ie = steer_dimension_scores(r.scores["eap_ig"])[1]
                same = next((k for k, x in seen if torch.equal(x, ie)), None)
                if same:
                    row["settings"][f"{g}/{p}"]["ie_same_as"] = same
                    continue
                seen.append((f"{g}/{p}", ie))
                ies[f"{name}@{g}/{p}"] = ie
                if args.out:
                    from safetensors.torch import save_file

                    save_file({"ie": ie.contiguous()}, f"{args.out}.{name}.{g}.{p}.ie.safetensors")
            sweep = sparsity_sweep(lm.model, lm.tokenizer, {k: v for k in ies}, ies, eval_h,
                                   eval_l, rules=("gradient", "ie"), taus=floats(args.taus),
                                   fractions=floats(args.fractions),
                                   max_new_tokens=args.eval_tokens, batch_size=args.n_eval,
                                   arch=lm.arch, progress=False)
            row["sparsity"] = {"unsteered": sweep.unsteered, "dense": sweep.dense,
                               "highest_retained_0.9": sweep.highest_retained(0.9),
                               "points": sweep.points}
            print(sweep.table(0.9), f"({time.time() - t0:.0f} s)", flush=True)
            save()
    print(json.dumps({"seconds": round(time.time() - t0)}))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
