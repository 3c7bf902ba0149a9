"""EAP-IG vs exact patching on the demo refusal model: speed, agreement and memory.

1. A DIM vector at ``--layer`` from harmful_train vs harmless_train (last prompt token).
2. Patching examples from steered/unsteered rollouts on test prompts (flipped prompts; if too
   few flip, the steered responses of the first prompts are teacher-forced anyway, noted).
3. Per example: EAP-IG (T steps) for every edge and node, timed; exact edge patching timed
   on a random sample of edges and extrapolated to all edges (one real forward pass per
   edge); exact node patching of every node; Spearman(EAP-IG nodes, exact nodes).
4. Memory (a separate process): EAP-IG on one example with a ``--mem-tokens`` response;
   peak resident memory of the whole process (model included).

    .venv/bin/python benchmarks/bench_patching.py [--layer 16] [--n-examples 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                        "refusal")
os.environ.setdefault("STEERSCOPE_DATA_DIR", os.path.normpath(DATA_DIR))

def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB


def _vector(lm, layer: int, n: int):
    from steerscope.data import load_prompts
    from steerscope.models.chat import format_prompt
    from steerscope.vectors.methods import extract_vector

    tok = lm.tokenizer
    pos = load_prompts("harmful_train").sample(n, seed=42, allow_fewer=True).instructions
    neg = load_prompts("harmless_train").sample(n, seed=42, allow_fewer=True).instructions
    return extract_vector(lm.model, tok, [format_prompt(tok, p) for p in pos],
                          [format_prompt(tok, p) for p in neg], method="dim", layer=layer,
                          model_id=lm.model_id, arch=lm.arch)


def _examples(lm, sv, n_prompts: int, n_examples: int, max_new_tokens: int):
    from steerscope.data import load_prompts
    from steerscope.patching.data import PatchingExample, datasets_from_rollouts, rollouts

    harmful = load_prompts("harmful_test").sample(n_prompts, seed=1, allow_fewer=True).instructions
    harmless = load_prompts("harmless_test").sample(n_prompts, seed=1,
                                                    allow_fewer=True).instructions
    rh = rollouts(lm.model, lm.tokenizer, harmful, sv, -1.0, max_new_tokens=max_new_tokens)
    rl = rollouts(lm.model, lm.tokenizer, harmless, sv, 1.0, max_new_tokens=max_new_tokens)
    ds = datasets_from_rollouts(rh, rl)
    counts = {k: len(v) for k, v in ds.items()}
    picked = [ex for name in ("harmful/steered", "harmless/steered", "harmful/base",
                              "harmless/base") for ex in ds[name][:1]][:n_examples]
    note = "flipped prompts"
    if len(picked) < n_examples:  # not enough flips: teacher-force steered responses anyway
        note = "too few flips; some steered responses teacher-forced without a flip"
        for r, alpha, name in [(r, -1.0, "harmful/steered") for r in rh] + \
                              [(r, 1.0, "harmless/steered") for r in rl]:
            if len(picked) >= n_examples:
                break
            picked.append(PatchingExample(torch.tensor(r.prompt_ids + r.steered_ids),
                                          len(r.prompt_ids), alpha, name))
    return picked, counts, note


def main_speed(args) -> dict:
    from steerscope.models.loading import load_model
    from steerscope.patching.forward import GraphModel
    from steerscope.patching.run import spearman
    from steerscope.patching.scores import (
        eap_ig_example,
        exact_example,
        prepare_example,
    )

    torch.manual_seed(0)
    lm = load_model(args.model)
    sv = _vector(lm, args.layer, args.n_vec)
    examples, counts, note = _examples(lm, sv, args.n_prompts, args.n_examples,
                                       args.max_new_tokens)
    gm = GraphModel(lm.model, args.layer, arch=lm.arch)
    g = gm.graph
    rows = []
    for ex in examples:
        t0 = time.perf_counter()
        ctx = prepare_example(gm, ex, sv.vector)
        t_prep = time.perf_counter() - t0
        if not ctx.weight:
            print(f"skipping an example with no unmasked position ({ex.dataset})")
            continue
        t0 = time.perf_counter()
        ig = eap_ig_example(gm, ctx, args.steps)
        t_ig = time.perf_counter() - t0
        sample = torch.randperm(g.n_edges, generator=torch.Generator().manual_seed(0))
        sample = sample[: args.exact_edges].tolist()
        t0 = time.perf_counter()
        exact_e = exact_example(gm, ctx, nodes=[], edges=sample)
        t_edge = (time.perf_counter() - t0) / len(sample)
        t0 = time.perf_counter()
        exact_n = exact_example(gm, ctx, nodes=None, edges=[])
        t_nodes = time.perf_counter() - t0
        ig_edges = g.from_matrix(ig["edges"])[sample]
        ex_edges = g.from_matrix(exact_e["edges"])[sample]
        row = {
            "dataset": ex.dataset, "tokens": ex.input_ids.numel(),
            "response_tokens": ex.input_ids.numel() - ex.prompt_len,
            "unmasked_positions": ctx.weight,
            "prepare_s": t_prep, "eap_ig_s": t_ig, "exact_edge_s_per_edge": t_edge,
            "exact_all_edges_s_extrapolated": t_edge * g.n_edges,
            "speedup_vs_exact_edges": t_edge * g.n_edges / t_ig,
            "exact_all_nodes_s": t_nodes,
            "spearman_nodes": spearman(ig["nodes"], exact_n["nodes"]),
            "spearman_sampled_edges": spearman(ig_edges, ex_edges),
            "steer_node_eap_ig": float(ig["nodes"][0]),
            "steer_node_exact": float(exact_n["nodes"][0]),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"model": lm.model_id, "layer": args.layer, "n_edges": g.n_edges,
            "n_nodes": g.n_up, "steps": args.steps, "examples": rows, "datasets": counts,
            "data_note": note, "threads": torch.get_num_threads()}


def main_memory(args) -> dict:
    from steerscope.models.chat import format_prompt
    from steerscope.models.loading import load_model
    from steerscope.patching.data import PatchingExample
    from steerscope.patching.forward import GraphModel
    from steerscope.patching.scores import eap_ig_example, prepare_example

    lm = load_model(args.model)
    tok = lm.tokenizer
    rss_model = _peak_rss_gb()
    sv = _vector(lm, args.layer, args.n_vec)
    prompt = tok(format_prompt(tok, "Write a long story about a lighthouse keeper."),
                 add_special_tokens=False)["input_ids"]
    g = torch.Generator().manual_seed(0)
    response = torch.randint(100, lm.arch.vocab_size, (args.mem_tokens,), generator=g).tolist()
    ex = PatchingExample(torch.tensor(prompt + response), len(prompt), 1.0, "memory")
    gm = GraphModel(lm.model, args.layer, arch=lm.arch)
    t0 = time.perf_counter()
    ctx = prepare_example(gm, ex, sv.vector, metric="kl")  # KL: every position counts
    eap_ig_example(gm, ctx, args.mem_steps)
    return {"tokens": ex.input_ids.numel(), "response_tokens": args.mem_tokens,
            "steps": args.mem_steps, "seconds": time.perf_counter() - t0,
            "peak_rss_gb": _peak_rss_gb(), "rss_after_model_load_gb": rss_model}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--layer", type=int, default=16)
    ap.add_argument("--n-vec", type=int, default=32, help="prompts per class for DIM")
    ap.add_argument("--n-prompts", type=int, default=8, help="test prompts per set for rollouts")
    ap.add_argument("--n-examples", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--exact-edges", type=int, default=150, help="edges timed exactly")
    ap.add_argument("--mem-tokens", type=int, default=512)
    ap.add_argument("--mem-steps", type=int, default=10)
    ap.add_argument("--memory-only", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--out", help="write the results as JSON")
    args = ap.parse_args()
    if args.memory_only:
        print(json.dumps(main_memory(args)))
        return
    res = main_speed(args)
    if not args.skip_memory:
        cmd = [sys.executable, __file__, "--memory-only", "--model", args.model, "--layer",
               str(args.layer), "--mem-tokens", str(args.mem_tokens), "--mem-steps",
               str(args.mem_steps), "--n-vec", str(args.n_vec)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        if out.returncode:
            print(out.stderr[-3000:], file=sys.stderr)
        res["memory"] = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 \
            else {"error": out.stderr[-500:]}
    rows = res["examples"]
    if rows:
        speed = [r["speedup_vs_exact_edges"] for r in rows]
        rho = [r["spearman_nodes"] for r in rows]
        res["summary"] = {"speedup_min": min(speed), "speedup_mean": sum(speed) / len(speed),
                          "spearman_nodes_min": min(rho),
                          "spearman_nodes_mean": sum(rho) / len(rho)}
    print(json.dumps({k: v for k, v in res.items() if k != "examples"}, indent=2))
    if args.out:
        from steerscope.artifacts import atomic_write_json

        atomic_write_json(args.out, res)


if __name__ == "__main__":
    main()
