"""Is a behaviour steerable on a model? Behaviour rate on held-out test prompts without
steering and with the best DIM vector, for both uses.

    python benchmarks/behaviour_steerability.py --behaviour lists [--model default]
        [--layers 4,6,...] [--alphas 1,2] [--shortlist 1] [--max-new-tokens 32]
        [--val-new-tokens 24] [--layer L --alpha A] [--out result.json]

1. DIM candidates on the train sides: ``mean(present) - mean(absent)`` of the residual
   entering each candidate layer, at the last prompt position (float64).
2. Fast score tokens: the behaviour's ``score_tokens`` (``auto``: derived from the model's
   greedy first tokens on the train prompts, docs/behaviours.md).
3. Selection on val. Shortlist (forward passes only): per layer, the mean fast-score shift
   of the present val prompts under ``-s`` (down) and of the absent val prompts under ``+s``
   (up); the ``--shortlist`` layers with the largest minimum shift. Then, by greedy
   generation (``--val-new-tokens``) judged by the behaviour's judge, every shortlisted
   (layer, α): remove = present val rate unsteered − under ``-α s``, induce = absent val
   rate under ``+α s`` − unsteered; the largest minimum of the two wins (ties: larger sum,
   smaller α, lower layer).
4. Test: greedy completions (``--max-new-tokens``) of the present and absent test prompts,
   unsteered, present steered with ``-α s`` (remove) and absent with ``+α s`` (induce),
   judged by the behaviour's judge. The behaviour counts as steerable when remove lowers the
   present rate and induce raises the absent rate by at least 0.5 each. ``--layer`` with
   ``--alpha`` skips step 3 and tests that (layer, α).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from steerscope.behaviours import fast_scores, load_behaviour, load_source
from steerscope.generation import generate
from steerscope.models.chat import format_prompt
from steerscope.models.loading import load_model
from steerscope.runtime import Runtime
from steerscope.vectors.dim import candidate_directions
from steerscope.vectors.vector import SteeringVector


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--behaviour", required=True)
    ap.add_argument("--model", default="default")
    ap.add_argument("--layers", default=None, help="candidate layers (default: every 2nd of "
                    "the middle: L/6 .. 2L/3)")
    ap.add_argument("--alphas", default="1,2")
    ap.add_argument("--shortlist", type=int, default=1)
    ap.add_argument("--layer", type=int, default=None,
                    help="with --alpha: skip selection, test this (layer, alpha)")
    ap.add_argument("--alpha", type=float, default=None)
    ap.add_argument("--val-new-tokens", type=int, default=24)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    b = load_behaviour(args.behaviour)
    lm = load_model(args.model)
    model, tok, arch = lm.model, lm.tokenizer, lm.arch
    L = arch.n_layers
    layers = ([int(x) for x in args.layers.split(",")] if args.layers
              else list(range(L // 6, 2 * L // 3 + 1, 2)))
    alphas = [float(a) for a in args.alphas.split(",")]
    raw = {(side, split): load_source(b.source(side, split)).instructions
           for side in ("present", "absent") for split in ("train", "val", "test")}
    fmt = {k: [format_prompt(tok, p) for p in v] for k, v in raw.items()}
    ids = b.score_token_ids(tok, model=model, present_formatted=fmt["present", "train"],
                            absent_formatted=fmt["absent", "train"])
    print(f"{b.name}: score tokens {[tok.decode([i]) for i in ids]}", flush=True)

    def scores(texts, sv, alpha):
        ops = [] if sv is None else [sv.intervention(alpha)]
        with Runtime(model, ops, arch=arch), torch.no_grad():
            return fast_scores(model, tok, texts, ids, batch_size=args.batch_size)  # [n]

    judge = b.make_judge()

    def rate(side, split, sv, alpha, new_tokens):
        ops = [] if alpha == 0 else [sv.intervention(alpha)]
        outs = generate(model, tok, fmt[side, split], interventions=ops,
                        max_new_tokens=new_tokens, batch_size=args.batch_size, progress=False)
        flags = judge.judge(raw[side, split], outs)
        return sum(flags) / len(flags), outs

    fixed = args.layer is not None and args.alpha is not None
    if fixed:
        layers = [args.layer]
    cands = candidate_directions(model, tok, fmt["present", "train"], fmt["absent", "train"],
                                 layers=layers, positions=[-1], arch=arch)[:, 0]  # [nL, d]
    vecs = {layer: SteeringVector(cands[i].float(), layer=layer, method="dim")
            for i, layer in enumerate(layers)}
    shifts, base_rate = [], {}
    if fixed:
        grid = [{"layer": args.layer, "alpha": args.alpha, "remove_val": None,
                 "induce_val": None}]
    else:
        base_val = {s: scores(fmt[s, "val"], None, 0) for s in ("present", "absent")}
        for layer, v in vecs.items():
            down = float(base_val["present"].mean() - scores(fmt["present", "val"], v, -1).mean())
            up = float(scores(fmt["absent", "val"], v, 1).mean() - base_val["absent"].mean())
            shifts.append({"layer": layer, "down": down, "up": up})
            print(f"  val layer {layer:2d}: score shift down {down:+.2f} up {up:+.2f}", flush=True)
        short = [x["layer"] for x in sorted(shifts, key=lambda x: (-min(x["down"], x["up"]),
                                                                    x["layer"]))[:args.shortlist]]
        vn = args.val_new_tokens
        base_rate = {s: rate(s, "val", None, 0, vn)[0] for s in ("present", "absent")}
        print(f"  val unsteered rates {base_rate}", flush=True)
        grid = []
        for layer in short:
            for a in alphas:
                rem = base_rate["present"] - rate("present", "val", vecs[layer], -a, vn)[0]
                ind = rate("absent", "val", vecs[layer], a, vn)[0] - base_rate["absent"]
                grid.append({"layer": layer, "alpha": a, "remove_val": rem, "induce_val": ind})
                print(f"  val layer {layer:2d} alpha {a:g}: remove {rem:+.2f} induce {ind:+.2f}",
                      flush=True)
    best = max(grid, key=lambda g: (min(g["remove_val"] or 0, g["induce_val"] or 0),
                                    (g["remove_val"] or 0) + (g["induce_val"] or 0),
                                    -g["alpha"], -g["layer"]))
    sv = vecs[best["layer"]]
    a = best["alpha"]
    res = {}
    for key, side, alpha in (("present_unsteered", "present", 0), ("absent_unsteered", "absent", 0),
                             ("present_remove", "present", -a), ("absent_induce", "absent", a)):
        res[key] = rate(side, "test", sv, alpha, args.max_new_tokens)
        print(f"  test {key}: {res[key][0]:.2f}", flush=True)
    out = {
        "behaviour": b.name, "model": args.model, "score_tokens": [tok.decode([i]) for i in ids],
        "n_test": {s: len(raw[s, "test"]) for s in ("present", "absent")},
        "max_new_tokens": args.max_new_tokens, "layer": best["layer"], "alpha": a,
        "val_score_shifts": shifts, "val_unsteered_rates": base_rate, "val_grid": grid,
        "rates": {k: v[0] for k, v in res.items()},
        "remove_drop": res["present_unsteered"][0] - res["present_remove"][0],
        "induce_rise": res["absent_induce"][0] - res["absent_unsteered"][0],
        "completions": {k: v[1] for k, v in res.items()},
        "seconds": round(time.time() - t0, 1),
    }
    out["steerable"] = out["remove_drop"] >= 0.5 and out["induce_rise"] >= 0.5
    print(json.dumps({k: out[k] for k in ("behaviour", "layer", "alpha", "rates", "remove_drop",
                                          "induce_rise", "steerable", "seconds")}), flush=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=1, ensure_ascii=False)
    return out


if __name__ == "__main__":
    main()
