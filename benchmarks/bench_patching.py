"""EAP-IG vs exact patching on the demo refusal model: speed, agreement and memory.

1. A DIM vector at ``--layer`` from harmful_train vs harmless_train (last prompt token).
2. Patching examples from steered/unsteered rollouts on test prompts (flipped prompts; if too
   few flip, the steered responses of the first prompts are teacher-forced anyway, noted).
3. Per example: EAP-IG (T steps) for every edge and node, timed; exact edge patching timed
   on a random sample of edges and extrapolated to all edges (one real forward pass per
   edge); exact node patching of every node; Spearman(EAP-IG nodes, exact nodes).
4. Memory (a separate process): EAP-IG on one example with a ``--mem-tokens`` response;
   peak resident memory of the whole process (model included), and the peak above a warm
   model (one plain forward first). ``--mem-sweep 128,256,512,1024`` runs it per length for
   the bounded-memory backward and, with ``--mem-compare``, the one-graph backward too.
5. ``--conventions``: per example, EAP-IG with the gradient at the pre-norm residual and at
   the post-norm input (``grad_at``) for each T of ``--t-grid`` (timed), against exact
   patching of every node and of ``--exact-edges`` random edges plus the union of both
   variants' top-100 edges (T = 10): Spearman on nodes and on the random edges, and the
   overlap of each variant's top-100 with the exact top-100 among the exactly scored edges.
6. ``--circuits``: ``score_vector`` + ``add_circuits`` with each ``grad_at`` on the examples:
   minimum faithful circuit size and the edge-type shares of the top-100 edges (examples
   combined by ``--pooling``; ``conventions_mechanisms_demo.py`` compares both poolings).
7. ``--batch-sweep 1,2,4,8``: EAP-IG examples/second per batch size on ``--batch-examples``
   random sequences of ``--batch-tokens`` tokens (lengths ±10%), by wall and by process CPU
   time (the ratio a shared machine disturbs least), scores checked against batch size 1.

    .venv/bin/python benchmarks/bench_patching.py [--layer 16] [--n-examples 2]
    .venv/bin/python benchmarks/bench_patching.py --conventions --n-examples 1 --t-grid 5,10,20,50
    .venv/bin/python benchmarks/bench_patching.py --circuits --n-examples 4
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

from steerscope.patching_conventions import POOLING

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
    picked = [ex for name in ("present/steered", "absent/steered", "present/base",
                              "absent/base") for ex in ds[name][:1]][:n_examples]
    note = "flipped prompts"
    if len(picked) < n_examples:  # not enough flips: teacher-force steered responses anyway
        note = "too few flips; some steered responses teacher-forced without a flip"
        for r, alpha, name in [(r, -1.0, "present/steered") for r in rh] + \
                              [(r, 1.0, "absent/steered") for r in rl]:
            if len(picked) >= n_examples:
                break
            picked.append(PatchingExample(torch.tensor(r.prompt_ids + r.steered_ids),
                                          len(r.prompt_ids), alpha, name))
    return picked, counts, note


def _setup(args):
    """The seeded model, DIM vector and flipped patching examples every mode starts from."""
    from steerscope.models.loading import load_model

    torch.manual_seed(0)
    lm = load_model(args.model)
    sv = _vector(lm, args.layer, args.n_vec)
    examples, counts, note = _examples(lm, sv, args.n_prompts, args.n_examples,
                                       args.max_new_tokens)
    return lm, sv, examples, counts, note


def main_speed(args) -> dict:
    from steerscope.patching.forward import GraphModel
    from steerscope.patching.run import spearman
    from steerscope.patching.scores import (
        eap_ig_example,
        exact_example,
        prepare_example,
    )

    lm, sv, examples, counts, note = _setup(args)
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


def _top(scores: torch.Tensor, k: int) -> set[int]:
    ok = torch.isfinite(scores)
    idx = ok.nonzero().flatten()
    order = scores[idx].abs().argsort(descending=True)[:k]
    return set(idx[order].tolist())


def main_conventions(args) -> dict:
    """Pre- vs post-norm EAP-IG against exact patching, for each T (see the docstring, 5)."""
    from steerscope.patching.forward import GraphModel
    from steerscope.patching.run import spearman
    from steerscope.patching.scores import eap_ig_example, exact_example, prepare_example

    lm, sv, examples, counts, note = _setup(args)
    gm = GraphModel(lm.model, args.layer, arch=lm.arch)
    g = gm.graph
    t_grid = [int(t) for t in args.t_grid.split(",")]
    rows = []
    for ex in examples:
        ctx = prepare_example(gm, ex, sv.vector)
        if not ctx.weight:
            continue
        ig = {}
        for grad_at in ("pre_norm", "post_norm"):
            for t in t_grid:
                t0 = time.perf_counter()
                r = eap_ig_example(gm, ctx, t, grad_at)
                ig[grad_at, t] = (r, time.perf_counter() - t0)
        ref_t = 10 if 10 in t_grid else t_grid[0]
        rand = torch.randperm(g.n_edges, generator=torch.Generator().manual_seed(0))
        rand = rand[: args.exact_edges].tolist()
        tops = {ga: _top(g.from_matrix(ig[ga, ref_t][0]["edges"]), 100)
                for ga in ("pre_norm", "post_norm")}
        scored = sorted(set(rand) | tops["pre_norm"] | tops["post_norm"])
        t0 = time.perf_counter()
        exact = exact_example(gm, ctx, nodes=None, edges=scored)
        t_exact = time.perf_counter() - t0
        ex_edges = g.from_matrix(exact["edges"])
        ex_top = _top(ex_edges, 100)
        row = {"dataset": ex.dataset, "response_tokens": ex.input_ids.numel() - ex.prompt_len,
               "unmasked_positions": ctx.weight, "exact_edges_scored": len(scored),
               "exact_s": t_exact, "steer_node_exact": float(exact["nodes"][0]),
               "top100_overlap_pre_vs_post": len(tops["pre_norm"] & tops["post_norm"]) / 100,
               "variants": []}
        for (ga, t), (r, secs) in ig.items():
            e = g.from_matrix(r["edges"])
            row["variants"].append({
                "grad_at": ga, "steps": t, "seconds": secs,
                "spearman_nodes": spearman(r["nodes"], exact["nodes"]),
                "spearman_random_edges": spearman(e[rand], ex_edges[rand]),
                "top100_overlap_with_exact": (len(_top(e, 100) & ex_top) / 100
                                              if t == ref_t else None),
                "steer_node_eap_ig": float(r["nodes"][0])})
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"model": lm.model_id, "layer": args.layer, "n_edges": g.n_edges,
            "examples": rows, "datasets": counts, "data_note": note,
            "threads": torch.get_num_threads()}


def main_circuits(args) -> dict:
    """Minimum faithful circuit and top-100 edge types with each gradient location."""
    from steerscope.patching.run import add_circuits, score_vector

    lm, sv, examples, counts, note = _setup(args)
    out = {"model": lm.model_id, "layer": args.layer, "datasets": counts, "data_note": note,
           "examples": [ex.dataset for ex in examples], "pooling": args.pooling, "runs": {}}
    for grad_at in ("pre_norm", "post_norm"):
        t0 = time.perf_counter()
        res = score_vector(lm.model, sv, examples, arch=lm.arch, steps=args.steps,
                           grad_at=grad_at, pooling=args.pooling)
        add_circuits(lm.model, sv, examples, res, arch=lm.arch, n_random=1)
        s = res.tables["summary"]
        out["runs"][grad_at] = {
            "seconds": time.perf_counter() - t0, "n_edges": s["n_edges"],
            "min_faithful_size": s["min_faithful_size"],
            "min_faithful_fraction": s["min_faithful_fraction"],
            "min_faithfulness": s["min_faithfulness"], "faithful": s["faithful"],
            "top100_edge_types": res.tables["edge_types"]["top100"],
            "curve": res.curves["eap_ig"].to_json()}
        print(json.dumps({grad_at: out["runs"][grad_at]}), flush=True)
    return out


def main_batch_sweep(args) -> dict:
    """EAP-IG throughput per batch size (see the docstring, 7)."""
    from steerscope.models.loading import load_model
    from steerscope.patching.data import PatchingExample
    from steerscope.patching.forward import GraphModel
    from steerscope.patching.scores import eap_ig

    lm = load_model(args.model)
    gen = torch.Generator().manual_seed(0)
    d = lm.arch.d_model
    s = torch.randn(d, generator=gen)
    s = s / s.norm() * args.batch_norm
    n = args.batch_tokens
    exs = []
    for i in range(args.batch_examples):
        length = n + int(torch.randint(-n // 10, n // 10 + 1, (1,), generator=gen))
        ids = torch.randint(100, lm.arch.vocab_size, (length,), generator=gen)
        exs.append(PatchingExample(ids, 8, 1.0 if i % 2 else -1.0,
                                   "absent/steered" if i % 2 else "present/steered"))
    gm = GraphModel(lm.model, args.layer, arch=lm.arch)
    rows, ref = [], None
    for bs in [int(b) for b in args.batch_sweep.split(",")]:
        t0, c0 = time.perf_counter(), time.process_time()
        sc = eap_ig(gm, exs, s, steps=args.steps, metric="kl", batch_size=bs)
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
        ref = sc.edges if ref is None else ref
        err = float((sc.edges - ref).abs().max() / ref.abs().max())
        rows.append({"batch_size": bs, "seconds": secs, "examples_per_s": len(exs) / secs,
                     "cpu_seconds": cpu, "examples_per_cpu_s": len(exs) / cpu,
                     "max_rel_diff_vs_first": err})
        print(json.dumps(rows[-1]), flush=True)
    return {"model": lm.model_id, "layer": args.layer, "examples": len(exs), "tokens": n,
            "steps": args.steps, "threads": torch.get_num_threads(), "rows": rows}


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
    with torch.no_grad():  # touch every weight page: the peak below is above a warm model
        lm.model(input_ids=ex.input_ids[None], use_cache=False)
    rss_warm = _peak_rss_gb()
    t0 = time.perf_counter()
    ctx = prepare_example(gm, ex, sv.vector, metric="kl")  # KL: every position counts
    eap_ig_example(gm, ctx, args.mem_steps, low_memory=not args.one_graph)
    peak = _peak_rss_gb()
    return {"tokens": ex.input_ids.numel(), "response_tokens": args.mem_tokens,
            "steps": args.mem_steps, "seconds": time.perf_counter() - t0,
            "backward": "one_graph" if args.one_graph else "low_memory",
            "peak_rss_gb": peak, "rss_after_model_load_gb": rss_model,
            "rss_warm_model_gb": rss_warm, "extra_gb": peak - rss_warm}


def _memory_subprocess(args, tokens: int, one_graph: bool) -> dict:
    """:func:`main_memory` in a fresh process (its own peak RSS)."""
    cmd = [sys.executable, __file__, "--memory-only", "--model", args.model, "--layer",
           str(args.layer), "--mem-tokens", str(tokens), "--mem-steps", str(args.mem_steps),
           "--n-vec", str(args.n_vec)] + (["--one-graph"] if one_graph else [])
    out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if out.returncode:
        print(out.stderr[-3000:], file=sys.stderr)
        return {"response_tokens": tokens, "error": out.stderr[-500:]}
    res = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(res), flush=True)
    return res


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
    ap.add_argument("--one-graph", action="store_true",
                    help="memory: the one-graph backward (low_memory=False)")
    ap.add_argument("--mem-sweep", help="memory per response length, e.g. 128,256,512,1024")
    ap.add_argument("--mem-compare", action="store_true",
                    help="--mem-sweep: also the one-graph backward")
    ap.add_argument("--conventions", action="store_true",
                    help="pre- vs post-norm EAP-IG vs exact, per T of --t-grid")
    ap.add_argument("--t-grid", default="5,10,20,50")
    ap.add_argument("--batch-sweep", help="EAP-IG examples/s per batch size, e.g. 1,2,4,8")
    ap.add_argument("--batch-examples", type=int, default=8)
    ap.add_argument("--batch-tokens", type=int, default=64)
    ap.add_argument("--batch-norm", type=float, default=8.0, help="random vector's norm")
    ap.add_argument("--circuits", action="store_true",
                    help="minimum faithful circuit and top-100 edge types per grad_at")
    ap.add_argument("--pooling", default=POOLING[0], choices=list(POOLING),
                    help="--circuits: how examples combine over datasets (patching.pooling; "
                    "benchmarks/conventions_mechanisms_demo.py compares both)")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--out", help="write the results as JSON")
    args = ap.parse_args()
    if args.memory_only:
        print(json.dumps(main_memory(args)))
        return
    if args.conventions or args.circuits or args.mem_sweep or args.batch_sweep:
        res = {}
        if args.batch_sweep:
            res["batch_sweep"] = main_batch_sweep(args)
        if args.conventions:
            res["conventions"] = main_conventions(args)
        if args.circuits:
            res["circuits"] = main_circuits(args)
        if args.mem_sweep:
            res["memory"] = [_memory_subprocess(args, int(n), one_graph)
                             for n in args.mem_sweep.split(",")
                             for one_graph in ((False, True) if args.mem_compare else (False,))]
        print(json.dumps(res, indent=2))
        if args.out:
            from steerscope.artifacts import atomic_write_json

            atomic_write_json(args.out, res)
        return
    res = main_speed(args)
    if not args.skip_memory:
        res["memory"] = _memory_subprocess(args, args.mem_tokens, args.one_graph)
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
